"""A turn's answer as its events (server/chat/events.py): what vLLM produced, through the output rails (checked
whole, or in windows while it streams: server/rails/streaming.py), then stored with how it ended.

Streaming is a relay: per vLLM chunk it decodes one small JSON object and, with rails on, feeds the stream guard,
which checks once per window. Nothing per token touches the database; the answer is stored once, at the end."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio

from server.chat.events import ChatEvent, Failed, Finished, TextDelta
from server.chat.turns import Outcome, Turn, TurnStore
from server.db.models import MessageStatus
from server.engine.client import ChatStream, EngineUnavailableError
from server.rails.streaming import StreamGuard


async def answer_events(turn: Turn, turns: TurnStore) -> AsyncGenerator[ChatEvent, None]:
    """TextDelta* then Finished or Failed; the answer is stored before the last event. Stopping early (the
    consumer closes the iterator, or is cancelled) aborts the generation in vLLM and stores what was shown as
    an aborted answer."""
    outcome = Outcome()
    shown: list[str] = []
    try:
        async with aclosing(_answer_text(turn, outcome)) as texts:
            async for text in texts:
                shown.append(text)
                yield TextDelta(text)
    except BaseException:
        # The consumer went away (client disconnected, cancelled): closing the stream below aborts it in vLLM.
        outcome.status, outcome.error = MessageStatus.ABORTED, "the client disconnected"
        raise
    finally:
        outcome.content = "".join(shown)
        with anyio.CancelScope(shield=True):
            if isinstance(turn.generation, ChatStream):
                await turn.generation.aclose()
            await turns.finish(turn, outcome)
    if outcome.status in (MessageStatus.COMPLETE, MessageStatus.BLOCKED):
        yield Finished(
            finish_reason=outcome.finish_reason or "stop",
            content=outcome.content,
            metadata=turn.metadata(outcome.rail_verdicts),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
    else:
        yield Failed(outcome.error or "the answer failed")


def _answer_text(turn: Turn, outcome: Outcome) -> AsyncIterator[str]:
    """The text the user may see, piece by piece; `outcome` is kept current before each piece is yielded, so it
    is right whenever the consumer stops."""
    if turn.refusal is not None:
        return _refusal(turn.refusal, outcome)
    if isinstance(turn.generation, ChatStream):
        return _relayed(turn, turn.generation, outcome)
    if turn.generation is None:
        raise ValueError("a turn is answered only after vLLM took its request (ChatService.start_turn)")
    return _checked_whole(turn, turn.generation, outcome)


async def _refusal(refusal: str, outcome: Outcome) -> AsyncIterator[str]:
    """An input rail refused the question: the refusal is the whole answer, and the model was not called."""
    outcome.status, outcome.finish_reason = MessageStatus.BLOCKED, "content_filter"
    yield refusal


async def _checked_whole(turn: Turn, body: dict[str, Any], outcome: Outcome) -> AsyncIterator[str]:
    """A non-streamed completion, after the output rails checked it whole (redacted, or replaced by a refusal)."""
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    content = choice["message"].get("content") or ""
    outcome.prompt_tokens, outcome.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    outcome.status, outcome.finish_reason = MessageStatus.COMPLETE, choice.get("finish_reason")
    if turn.rails is not None:
        checked = await turn.rails.check_output(turn.payload["messages"], content)
        content, outcome.rail_verdicts = checked.text, checked.verdicts
        if checked.blocked:
            outcome.status, outcome.finish_reason = MessageStatus.BLOCKED, "content_filter"
    if content:
        yield content


async def _relayed(turn: Turn, stream: ChatStream, outcome: Outcome) -> AsyncIterator[str]:
    """vLLM's stream, piece by piece. With rails on, text is released only once the output rails passed it; when
    they stop the answer, the rest is never shown and closing the stream (by our caller) aborts it in vLLM."""
    guard = StreamGuard(turn.rails, turn.payload["messages"]) if turn.rails is not None else None
    try:
        async for chunk in stream.chunks():
            if chunk.usage is not None:
                outcome.prompt_tokens = chunk.usage.prompt_tokens
                outcome.completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                text = choice.delta.content or ""
                if guard is not None:
                    text = await guard.feed(text) if text else ""
                    if choice.finish_reason and not guard.blocked:
                        text += await guard.finish()
                    outcome.rail_verdicts = guard.verdicts
                if text:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = time.perf_counter() - turn.started
                    yield text
                if guard is not None and guard.blocked:
                    outcome.status, outcome.finish_reason = MessageStatus.BLOCKED, "content_filter"
                    yield ("\n\n" if guard.released else "") + (guard.refusal or "")
                    return
                if choice.finish_reason:
                    outcome.finish_reason = choice.finish_reason
    except EngineUnavailableError as error:
        outcome.error = str(error)
        return
    if outcome.finish_reason is None:
        outcome.error = "vLLM sent no finish reason"
    else:
        outcome.status = MessageStatus.COMPLETE
