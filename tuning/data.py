"""From the feedback store to the datasets each stage trains on.

The snapshot is the export the ops team can download (``server.exports``), written into the run directory and
hashed, so a run's data can be inspected and re-created. Everything after it reads only those files.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from server.db.engine import open_sessions
from server.exports.services import KTO, PREFERENCE, REWARD, SFT, ExportFilters, ExportService, TrainingExport
from server.settings import Settings
from tuning.config import TuneConfig

Row = dict[str, Any]


async def export_since(settings: Settings, since: datetime | None, until: datetime) -> TrainingExport:
    async with open_sessions(settings) as sessions, sessions() as session:
        service = ExportService(session, settings.export_max_pairs_per_prompt)
        return await service.build(ExportFilters(since=since, until=until))


def read_jsonl(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def question(prompt: list[dict[str, str]]) -> str:
    """The last user turn: what 'the same prompt' means when pairing thumbs from different conversations."""
    return next((turn["content"] for turn in reversed(prompt) if turn["role"] == "user"), "")


def is_held_out(prompt: list[dict[str, str]], fraction: float) -> bool:
    # By question, not by row: an answer to a held-out question never teaches the model that question.
    digest = hashlib.sha256(question(prompt).strip().lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class Datasets:
    """Every stage's rows, split into train and held-out, plus the counts the report shows."""

    pairs: list[Row]
    held_out_pairs: list[Row]
    held_out_pointwise: list[Row]
    kto: list[Row]
    sft: list[Row]
    prompts: list[Row]
    counts: dict[str, int]

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("pairs", "held_out_pairs", "held_out_pointwise", "kto", "sft", "prompts"):
            write_jsonl(directory / f"{name}.jsonl", getattr(self, name))
        (directory / "counts.json").write_text(json.dumps(self.counts, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Datasets:
        rows = {
            name: read_jsonl(directory / f"{name}.jsonl")
            for name in ("pairs", "held_out_pairs", "held_out_pointwise", "kto", "sft", "prompts")
        }
        return cls(**rows, counts=json.loads((directory / "counts.json").read_text()))


def thumb_pairs(reward_rows: list[Row], cap: int) -> list[Row]:
    """Up-voted over down-voted answers to the same question, also across conversations (the export pairs only
    identical contexts). The chosen answer's context is kept for both, so the pair differs only in the answer."""
    groups: dict[str, tuple[list[Row], list[Row]]] = defaultdict(lambda: ([], []))
    for row in reward_rows:
        ups, downs = groups[question(row["prompt"]).strip().lower()]
        (ups if row["reward"] > 0 else downs).append(row)
    pairs = []
    for key in sorted(groups):
        ups, downs = groups[key]
        found = [(up, down) for up in ups for down in downs if up["completion"] != down["completion"]]
        for up, down in found[:cap]:
            pairs.append({"prompt": up["prompt"], "chosen": up["completion"], "rejected": down["completion"]})
    return pairs


def business_rows(folder: Path, chunk_chars: int) -> tuple[list[Row], Counter[str]]:
    """The company's own data: ``*.jsonl`` rows of prompt + response (or completion), and ``.txt``/``.md``
    documents cut into paragraphs-sized chunks for plain language modelling."""
    rows: list[Row] = []
    counts: Counter[str] = Counter()
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".jsonl":
            for record in read_jsonl(path):
                answer = record.get("response", record.get("completion"))
                if not isinstance(record.get("prompt"), str) or not isinstance(answer, str):
                    counts["business_rows_malformed"] += 1
                    continue
                rows.append({"prompt": record["prompt"], "completion": answer})
                counts["business_pairs"] += 1
        elif path.suffix in (".txt", ".md"):
            text = path.read_text()
            chunk = ""
            for paragraph in text.split("\n\n"):
                if chunk and len(chunk) + len(paragraph) > chunk_chars:
                    rows.append({"text": chunk.strip()})
                    counts["business_document_chunks"] += 1
                    chunk = ""
                chunk += paragraph + "\n\n"
            if chunk.strip():
                rows.append({"text": chunk.strip()})
                counts["business_document_chunks"] += 1
    return rows, counts


def build_datasets(snapshot: Path, config: TuneConfig) -> Datasets:
    fraction = config.held_out_fraction
    counts: Counter[str] = Counter()
    reward_rows = read_jsonl(snapshot / REWARD)
    counts["reward_rows"] = len(reward_rows)

    export_pairs = read_jsonl(snapshot / PREFERENCE)
    counts["pairs_from_export"] = len(export_pairs)
    seen = {json.dumps(pair, sort_keys=True) for pair in export_pairs}
    extra = [
        pair
        for pair in thumb_pairs(reward_rows, config.max_pairs_per_question)
        if json.dumps(pair, sort_keys=True) not in seen
    ]
    counts["pairs_from_thumbs_same_question"] = len(extra)
    pairs, held_out_pairs = [], []
    for pair in export_pairs + extra:
        (held_out_pairs if is_held_out(pair["prompt"], fraction) else pairs).append(pair)
    counts["pairs_train"], counts["pairs_held_out"] = len(pairs), len(held_out_pairs)

    held_out_pointwise = [row for row in reward_rows if is_held_out(row["prompt"], fraction)]
    counts["pointwise_held_out"] = len(held_out_pointwise)

    kto = [row for row in read_jsonl(snapshot / KTO) if not is_held_out(row["prompt"], fraction)]
    counts["kto_train"] = len(kto)
    counts["kto_train_desirable"] = sum(1 for row in kto if row["label"])

    sft = [row for row in read_jsonl(snapshot / SFT) if not is_held_out(row["prompt"], fraction)]
    counts["sft_from_store"] = len(sft)
    if config.business_data_dir:
        extra_rows, business_counts = business_rows(Path(config.business_data_dir), config.sft_document_chunk_chars)
        sft += extra_rows
        counts.update(business_counts)
    counts["sft_train"] = len(sft)

    # RL prompts: the logged contexts (system prompt and history) that passed the export's review filters, i.e.
    # that ops did not mark untrainable; one per distinct context.
    prompts: dict[str, Row] = {}
    for row in reward_rows:
        if not is_held_out(row["prompt"], fraction):
            prompts.setdefault(json.dumps(row["prompt"], sort_keys=True), {"prompt": row["prompt"]})
    counts["rl_prompts"] = min(len(prompts), config.rl_max_prompts)
    return Datasets(
        pairs=pairs,
        held_out_pairs=held_out_pairs,
        held_out_pointwise=held_out_pointwise,
        kto=kto,
        sft=sft,
        prompts=list(prompts.values())[: config.rl_max_prompts],
        counts=dict(sorted(counts.items())),
    )


def too_little(counts: dict[str, int], config: TuneConfig) -> str | None:
    """Why this snapshot is too thin to train on, or None when it is enough."""
    if counts["reward_rows"] < config.min_new_rows:
        return f"{counts['reward_rows']} new feedback rows, fewer than min_new_rows={config.min_new_rows}"
    if counts["pairs_train"] < config.min_new_pairs:
        return f"{counts['pairs_train']} new training pairs, fewer than min_new_pairs={config.min_new_pairs}"
    return None
