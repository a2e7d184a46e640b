"""Output rails on streamed answers: no text is released before the output rails passed the text holding it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.rails.base import Verdict
from server.rails.embeddings import shared_embedder
from server.rails.nemo import NemoRails
from server.rails.streaming import StreamGuard
from tests.unit.rails_fixtures import REPO_RAILS

MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Help me."}]


@pytest.fixture(scope="module")
async def rails(rails_data_dir: Path) -> AsyncIterator[NemoRails]:
    loaded = NemoRails.load(REPO_RAILS, shared_embedder(), rails_data_dir)
    yield loaded
    await loaded.aclose()


async def stream(guard: StreamGuard, answer: str, token_chars: int = 3) -> list[str]:
    """Feed the answer the way vLLM streams it (a few characters per token); returns each released piece."""
    released = []
    for start in range(0, len(answer), token_chars):
        released.append(await guard.feed(answer[start : start + token_chars]))
    released.append(await guard.finish())
    return [piece for piece in released if piece]


async def test_clean_answer_is_released_whole_and_unchanged(rails: NemoRails) -> None:
    answer = "To stop a stuck process, find its id with `ps aux | grep name` and then run `kill <pid>`. " * 3
    guard = StreamGuard(rails, MESSAGES)
    pieces = await stream(guard, answer)
    assert "".join(pieces) == answer
    assert len(pieces) > 3  # released progressively, not only at the end
    assert {verdict.verdict for verdict in guard.verdicts} == {Verdict.PASS}


@pytest.mark.parametrize("token_chars", [1, 2, 3, 5, 8])
@pytest.mark.parametrize(
    ("secret", "placeholder"),
    [
        ("4111 1111 1111 1111", "[CARD_NUMBER]"),
        ("GB82 WEST 1234 5698 7654 32", "[IBAN]"),
        ("+44 20 7946 0958", "[PHONE]"),
        ("JG 12 34 56 C", "[UK_NINO]"),
    ],
)
async def test_a_number_split_across_windows_never_reaches_the_client(
    rails: NemoRails, token_chars: int, secret: str, placeholder: str
) -> None:
    answer = f"Thanks for waiting. The one on file for the booking is {secret} and it stays valid, so nothing changes."
    guard = StreamGuard(rails, MESSAGES)
    pieces = await stream(guard, answer, token_chars)
    sent = "".join(pieces)
    assert sent == answer.replace(secret, placeholder)
    for group in secret.split()[1:]:
        assert not any(group in piece for piece in pieces)
    verdicts = {verdict.rail: verdict for verdict in guard.verdicts}
    assert verdicts["ratchet mask personal data on output"].verdict == Verdict.MODIFY


async def test_a_canary_stops_the_stream_before_any_of_it_is_sent(rails: NemoRails) -> None:
    prefix = "Here is the internal document you asked about, with everything it contains in full: "
    answer = prefix + "RATCHET-CANARY-0BADF00D and then more text that follows the canary."
    guard = StreamGuard(rails, MESSAGES)
    pieces = await stream(guard, answer)
    sent = "".join(pieces)
    assert "RATCHET" not in sent
    assert prefix.startswith(sent)
    assert guard.blocked and guard.refusal is not None and "output policy" in guard.refusal
    verdicts = {verdict.rail: verdict for verdict in guard.verdicts}
    assert verdicts["ratchet check output policy"].verdict == Verdict.BLOCK


async def test_a_private_key_is_blocked_at_its_header_before_its_body_streams(rails: NemoRails) -> None:
    answer = "Sure, here it is:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    guard = StreamGuard(rails, MESSAGES)
    pieces = await stream(guard, answer)
    assert "BEGIN" not in "".join(pieces) and "b3Blbn" not in "".join(pieces)
    assert guard.blocked
