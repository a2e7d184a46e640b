"""Output rails on a streamed answer, in windows: no text reaches the client before the output rails have
passed the text that contains it.

Every `window_chars` new characters the rails check the whole answer so far (so a pattern is judged in full
context, never on a fragment). Of the checked text, everything but the last `holdback_chars` is released, cut
at a whitespace so a token (an e-mail address, a key) is never split between two windows, and never inside a
number still being written at the end (a card or phone number spans several tokens); the held back tail waits
for more text or the end. Modifying rails (redaction) rewrite the answer so far; what was
released must stay a prefix of each new rewrite, otherwise a finding reached back into text already sent and
the stream is stopped (fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from server.rails.base import Direction, Rails, RailsResult, RailVerdict, Verdict

_SEVERITY = {Verdict.PASS: 0, Verdict.MODIFY: 1, Verdict.BLOCK: 2}
# A number still being written at the end of the text (card, phone, IBAN, NINO, SSN: groups separated by spaces,
# so they span several tokens): held back whole until text that cannot belong to it follows, or the answer ends.
_OPEN_NUMBER = re.compile(r"(?:\b[A-Z]{2} ?\d{2}|[+(]?\d)[\dA-Z ()+./-]*$")


@dataclass(slots=True)
class StreamGuard:
    rails: Rails
    messages: list[dict[str, str]]
    raw: str = ""
    released: str = ""
    checked_chars: int = 0
    refusal: str | None = None
    checks: int = 0
    check_ms: float = 0.0
    _verdicts: dict[str, RailVerdict] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.refusal is not None

    @property
    def verdicts(self) -> tuple[RailVerdict, ...]:
        """One verdict per rail over the whole answer: the most severe seen, with the summed time."""
        return tuple(self._verdicts.values())

    async def feed(self, delta: str) -> str:
        """Add generated text; returns the text now safe to send ("" while a window fills or when blocked)."""
        if self.blocked:
            return ""
        self.raw += delta
        if len(self.raw) - self.checked_chars < self.rails.stream_window_chars:
            return ""
        return await self._check(final=False)

    async def finish(self) -> str:
        """The answer is complete: check and release the rest."""
        if self.blocked:
            return ""
        return await self._check(final=True)

    async def _check(self, final: bool) -> str:
        result = await self.rails.check_output_window(self.messages, self.raw)
        self.checked_chars = len(self.raw)
        self._record(result)
        if result.blocked:
            self.refusal = result.text
            return ""
        checked = result.text
        if not checked.startswith(self.released):
            self.refusal = "I can't share the rest of that answer."
            self._record_verdict(
                RailVerdict(
                    Direction.OUTPUT,
                    "stream window",
                    Verdict.BLOCK,
                    "a redaction reached into text already sent",
                    0.0,
                )
            )
            return ""
        cut = len(checked)
        if not final:
            cut = max(len(self.released), len(checked) - self.rails.stream_holdback_chars)
            if open_number := _OPEN_NUMBER.search(checked, len(self.released)):
                cut = min(cut, open_number.start())
            space = max(checked.rfind(" ", len(self.released), cut), checked.rfind("\n", len(self.released), cut))
            cut = space + 1 if space >= 0 else len(self.released)
        out = checked[len(self.released) : cut]
        self.released += out
        return out

    def _record(self, result: RailsResult) -> None:
        self.checks += 1
        for verdict in result.verdicts:
            self.check_ms += verdict.duration_ms
            self._record_verdict(verdict)

    def _record_verdict(self, verdict: RailVerdict) -> None:
        seen = self._verdicts.get(verdict.rail)
        if seen is None:
            self._verdicts[verdict.rail] = verdict
            return
        worst = verdict if _SEVERITY[verdict.verdict] > _SEVERITY[seen.verdict] else seen
        self._verdicts[verdict.rail] = RailVerdict(
            worst.direction, worst.rail, worst.verdict, worst.reason, seen.duration_ms + verdict.duration_ms
        )
