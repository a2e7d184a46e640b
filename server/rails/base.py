"""Ratchet's own rails interface. The chat path only talks to `Rails`; NeMo Guardrails is one implementation
(`server.rails.nemo`), so the upstream move away from `LLMRails` (deprecated from 0.25) stays behind this line."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from server.exceptions import RatchetError


class Verdict(enum.StrEnum):
    PASS = "pass"
    BLOCK = "block"
    MODIFY = "modify"


class Direction(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"


class RailsConfigError(ValueError):
    """A rails config that does not load; the message says why."""


class RailsReloadRefusedError(RailsConfigError, RatchetError):
    """A reload that did not happen: the rails that were serving still serve."""

    status_code = 422
    code = "rails_config_refused"

    def __init__(self, serving: str | None, reason: str | RailsConfigError) -> None:
        super().__init__(f"Rails config refused, still serving {serving}: {reason}")


@dataclass(frozen=True, slots=True)
class RailVerdict:
    direction: Direction
    rail: str
    verdict: Verdict
    reason: str
    duration_ms: float
    # The rewritten text, for a MODIFY verdict from a rail run outside the Colang flows (never serialised).
    rewrite: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": str(self.direction),
            "rail": self.rail,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class RailsResult:
    """`text` is what to go on with: the (possibly redacted) text, or the refusal to show when blocked."""

    text: str
    verdicts: tuple[RailVerdict, ...]

    @property
    def blocked(self) -> bool:
        return any(verdict.verdict == Verdict.BLOCK for verdict in self.verdicts)

    @property
    def modified(self) -> bool:
        return any(verdict.verdict == Verdict.MODIFY for verdict in self.verdicts)


class Rails(Protocol):
    """Checks around one generation. Messages are OpenAI-style dicts (role, content), system prompt first."""

    version: str
    stream_window_chars: int
    stream_holdback_chars: int

    async def check_input(self, messages: list[dict[str, str]]) -> RailsResult:
        """Input rails on the last user message; `text` is the user message the model may see."""
        ...

    async def check_output(self, messages: list[dict[str, str]], answer: str) -> RailsResult:
        """Output rails on a whole answer; `text` is the answer the user may see."""
        ...

    async def check_output_window(self, messages: list[dict[str, str]], answer_so_far: str) -> RailsResult:
        """Output rails on a streamed answer so far (called once per window, so it must be cheap)."""
        ...

    async def aclose(self) -> None: ...
