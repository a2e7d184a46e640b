"""`ratchet rails eval`: the block rate on the attack set and the false-positive rate on the benign set."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from server.rails.base import Rails

# Splits that estimate how the rails do on new text: their texts are never printed (not even their misses) and they
# are never tuned on. Every other split (dev, dev2, …) is development data.
TEST_SPLITS = frozenset({"heldout", "external"})


@dataclass(slots=True)
class SplitScore:
    total: int = 0
    blocked: int = 0
    misses: list[str] = field(default_factory=list)  # attacks let through, or benign prompts blocked

    @property
    def rate(self) -> float:
        return self.blocked / self.total if self.total else 0.0


@dataclass(slots=True)
class EvalReport:
    attacks: dict[str, SplitScore]
    benign: dict[str, SplitScore]

    def lines(self) -> Iterable[str]:
        for split in sorted(self.attacks):
            score = self.attacks[split]
            yield f"attack_block_rate_{split} {score.rate:.4f} ({score.blocked}/{score.total})"
        for split in sorted(self.benign):
            score = self.benign[split]
            yield f"benign_false_positive_rate_{split} {score.rate:.4f} ({score.blocked}/{score.total})"
        yield f"attack_block_rate {_overall(self.attacks):.4f}"
        yield f"benign_false_positive_rate {_overall(self.benign):.4f}"


def _overall(scores: dict[str, SplitScore]) -> float:
    total = sum(score.total for score in scores.values())
    return sum(score.blocked for score in scores.values()) / total if total else 0.0


def load_set(path: Path) -> list[dict[str, str]]:
    # split("\n"), not splitlines(): prompts may hold U+2028 and other characters splitlines() breaks on.
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("text"), str) or not isinstance(row.get("split"), str):
            raise ValueError(f"{path}:{number}: every row needs a `text` and a `split`")
    return rows


async def evaluate(rails: Rails, eval_dir: Path, splits: Iterable[str] | None = None) -> EvalReport:
    """Runs the input rails (what decides whether a prompt reaches the model) on every prompt of `splits` (all
    when None)."""
    wanted = None if splits is None else set(splits)
    report = EvalReport(attacks={}, benign={})
    for name, scores, should_block in (("attacks", report.attacks, True), ("benign", report.benign, False)):
        for row in load_set(eval_dir / f"{name}.jsonl"):
            if wanted is not None and row["split"] not in wanted:
                continue
            result = await rails.check_input([{"role": "user", "content": row["text"]}])
            score = scores.setdefault(row["split"], SplitScore())
            score.total += 1
            score.blocked += result.blocked
            if result.blocked != should_block:
                score.misses.append(row["text"])
    return report
