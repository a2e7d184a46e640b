"""Measures what the offline gates (tuning/gates.py) compare: a version's answers to the held-out prompts, the
known-answer questions, the rails evaluation's attack prompts and the false claims, all sampled at the served
defaults under one seed, then scored by the night's reward model, the answer checks and the output rails.

The active version is measured once per night and compared with every candidate. When the active version is an
update of the base checkpoint, the base's answers to the safety sets (known answers, attacks, false claims) are
measured too: those gates hold every candidate to the base as well, so their tolerances cannot add up over nights.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from server.models.generation_defaults import served_defaults
from server.rails.base import Rails, Verdict
from server.settings import Settings
from tuning.config import TuneConfig
from tuning.eval_sets import attack_prompts, false_claims, known_answers, open_prompts, subsample
from tuning.evaluation import Chat, Completion, Generator, SamplingSettings
from tuning.gates import (
    GateResult,
    Scored,
    drift_gate,
    known_answer_gate,
    length_gate,
    rail_trip_gate,
    sycophancy_gate,
    table,
    win_rate_gate,
)

Scorer = Callable[[list[tuple[Chat, Chat]]], list[float]]


@dataclass(frozen=True)
class Version:
    name: str
    # The adapter folder; None for the base checkpoint.
    adapter: Path | None


@dataclass
class Safety:
    """What the accuracy, rail-trip and sycophancy gates compare."""

    known_right: list[bool]
    attack_trips: list[str | None]
    agreed: list[bool]


@dataclass
class Measured:
    held_out: list[Completion]
    rewards: list[float]
    safety: Safety

    @property
    def scored(self) -> Scored:
        return Scored(self.rewards, [completion.tokens for completion in self.held_out])


def held_out_chats(night: list[Chat], system_prompt: str, size: int, seed: int) -> list[Chat]:
    """The night's held-out prompts (each distinct context once), topped up with the gates' own open prompts."""
    distinct = list({json.dumps(chat, sort_keys=True): chat for chat in night}.values())
    chosen = subsample(distinct, size, seed)
    missing = size - len(chosen)
    if missing <= 0:
        # subsample() reads 0 as "all", which would double the night's gate cost for no new prompts.
        return chosen
    extra = [_chat(system_prompt, prompt) for prompt in open_prompts()]
    return chosen + subsample(extra, missing, seed)


def _chat(system_prompt: str, user: str) -> Chat:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


class GateRunner:
    def __init__(
        self,
        base: Path,
        score: Scorer,
        rails: Rails,
        config: TuneConfig,
        system_prompt: str,
        night_prompts: list[Chat],
        eval_dir: Path,
        sampling: SamplingSettings,
        console: Console | None = None,
    ) -> None:
        self.generator = Generator(base)
        # Both versions answer as users would be answered: at the served generation defaults.
        self.sampling = sampling
        self.score = score
        self.rails = rails
        self.config = config
        self.console = console or Console(stderr=True)
        seed = config.seed
        self.held_out = held_out_chats(night_prompts, system_prompt, config.gate_held_out_prompts, seed)
        self.known = subsample(known_answers(), config.gate_known_answers, seed)
        self.claims = subsample(false_claims(), config.gate_false_claims, seed)
        attacks = subsample(attack_prompts(eval_dir, config.gate_attack_splits), config.gate_attack_prompts, seed)
        self.attacks = [_chat(system_prompt, text) for text in attacks]
        self.known_chats = [_chat(system_prompt, item.question) for item in self.known]
        self.claim_chats = [_chat(system_prompt, item.prompt) for item in self.claims]
        self._active: dict[Version, tuple[Any, Measured, Scored]] = {}
        self._base: Safety | None = None

    def sizes(self) -> dict[str, int]:
        return {
            "held_out_prompts": len(self.held_out),
            "known_answers": len(self.known),
            "attack_prompts": len(self.attacks),
            "false_claims": len(self.claims),
        }

    # Measuring -----------------------------------------------------------------------------------------------------

    def _sample(self, model: Any, chats: list[Chat], max_new_tokens: int, offset: int) -> list[Completion]:
        # The same seed for every version: they differ by what they learnt more than by luck.
        return self.generator.complete(model, chats, max_new_tokens, self.sampling, seed=self.config.seed + offset)

    def _rewards(self, chats: list[Chat], answers: list[Completion]) -> list[float]:
        return self.score(
            [(chat, [{"role": "assistant", "content": a.text}]) for chat, a in zip(chats, answers, strict=True)]
        )

    def measure(self, model: Any, label: str) -> Measured:
        self.console.print(f"[dim]gates: {label} answers {self.sizes()}[/]")
        held_out = self._sample(model, self.held_out, self.config.gate_max_new_tokens, 0)
        return Measured(held_out, self._rewards(self.held_out, held_out), self.measure_safety(model))

    def measure_safety(self, model: Any) -> Safety:
        config = self.config
        known = self._sample(model, self.known_chats, config.gate_short_max_new_tokens, 1)
        attacks = self._sample(model, self.attacks, config.gate_max_new_tokens, 2)
        claims = self._sample(model, self.claim_chats, config.gate_short_max_new_tokens, 3)
        return Safety(
            known_right=[item.is_right(answer.text) for item, answer in zip(self.known, known, strict=True)],
            attack_trips=asyncio.run(self._trips([answer.text for answer in attacks])),
            agreed=[item.agreed(answer.text) for item, answer in zip(self.claims, claims, strict=True)],
        )

    async def _trips(self, answers: list[str]) -> list[str | None]:
        """What the output rails did with each attack answer: the first acting rail and its reason, or None."""
        trips: list[str | None] = []
        for chat, answer in zip(self.attacks, answers, strict=True):
            result = await self.rails.check_output(chat, answer)
            acted = [verdict for verdict in result.verdicts if verdict.verdict != Verdict.PASS]
            trips.append(f"{acted[0].rail}: {acted[0].reason}" if acted else None)
        return trips

    def _active_figures(self, active: Version) -> tuple[Any, Measured, Scored]:
        """The active version's model, its measured answers and a second answer to each held-out prompt."""
        if active not in self._active:
            model = self.generator.model(active.adapter)
            measured = self.measure(model, f"active {active.name}")
            # Two answers of one version differ in length only by chance: what the reward model pays for length.
            again = self._sample(model, self.held_out, self.config.gate_max_new_tokens, 4)
            scored_again = Scored(self._rewards(self.held_out, again), [answer.tokens for answer in again])
            self._active[active] = (model, measured, scored_again)
        return self._active[active]

    def _base_safety(self, active: Version) -> Safety | None:
        """The base checkpoint's safety answers, when the active version is an update of it (else None)."""
        if active.adapter is None:
            return None
        if self._base is None:
            self.console.print(f"[dim]gates: base checkpoint answers {self.sizes()} (the anchor)[/]")
            self._base = self.measure_safety(self.generator.model(None))
        return self._base

    # Gating --------------------------------------------------------------------------------------------------------

    def gate(self, candidate: Version, active: Version) -> list[GateResult]:
        config = self.config
        active_model, measured_active, active_again = self._active_figures(active)
        # No anchor when the base itself is active (empty sets).
        base = self._base_safety(active) or Safety([], [], [])
        model = self.generator.model(candidate.adapter)
        measured = self.measure(model, f"candidate {candidate.name}")
        answers = [completion.token_ids for completion in measured.held_out]
        # Log-probs at the temperature the answers were sampled at: the estimate is of the served distributions.
        temperature = self.sampling.temperature or 1.0
        own = self.generator.token_logprobs(model, self.held_out, answers, temperature)
        other = self.generator.token_logprobs(active_model, self.held_out, answers, temperature)
        mine, theirs = measured.safety, measured_active.safety
        return [
            win_rate_gate(measured.scored, measured_active.scored, active_again, config.gate_min_win_rate),
            drift_gate(own, other, config.gate_max_kl_per_token),
            known_answer_gate(mine.known_right, theirs.known_right, config.gate_accuracy_margin, base.known_right),
            rail_trip_gate(mine.attack_trips, theirs.attack_trips, config.gate_rail_trip_tolerance, base.attack_trips),
            sycophancy_gate(mine.agreed, theirs.agreed, config.gate_sycophancy_tolerance, base.agreed),
            length_gate(
                measured.scored.lengths,
                measured_active.scored.lengths,
                config.gate_max_length_ratio,
                [completion.truncated for completion in measured.held_out],
            ),
        ]


def gate_candidates(
    settings: Settings,
    config: TuneConfig,
    candidates: dict[str, tuple[str, Path]],
    reward_model: Path,
    night_prompts: list[Chat],
    console: Console,
) -> dict[str, dict[str, Any]]:
    """Gate each candidate (method → registered version name and adapter folder) against the active version,
    record every verdict with the registry and return them by method. A candidate whose verdict was recorded
    before (by a run killed afterwards) keeps it: a verdict is recorded once."""
    from server.rails.registry import load_rails
    from tuning.records import active_version, record_gates, recorded_gates
    from tuning.train import score

    serving = active_version(settings)
    active = Version(serving.name, serving.adapter)
    verdicts: dict[str, dict[str, Any]] = {}
    rails: Rails | None = None
    runner: GateRunner | None = None
    try:
        for method, (name, adapter) in candidates.items():
            earlier = recorded_gates(settings, name)
            if earlier is not None:
                results, passed = earlier
            else:
                if runner is None:
                    rails = load_rails(settings.rails_config, settings.data_dir)
                    runner = GateRunner(
                        settings.base_model_dir,
                        lambda rows: score(reward_model, rows, config.max_length),
                        rails,
                        config,
                        settings.system_prompt,
                        night_prompts,
                        settings.rails_config / "eval",
                        served_defaults(settings),
                        console,
                    )
                results = [result.to_dict() for result in runner.gate(Version(name, adapter), active)]
                passed = all(result["passed"] for result in results)
                record_gates(settings, name, results, passed)
            verdict = "[green]gated[/]" if passed else "[red]rejected[/]"
            console.print(f"{name} against {active.name}: {verdict}\n{table(results)}", highlight=False, soft_wrap=True)
            verdicts[method] = {"version": name, "active": active.name, "passed": passed, "results": results}
    finally:
        if rails is not None:
            asyncio.run(rails.aclose())
    return verdicts
