"""What one chat turn yields, whatever the channel. The chat service produces these; each channel (the
OpenAI-compatible API, the web UI, Slack) encodes them in its own wire format at its edge.

A channel serves a turn in two steps:

    turn = await chat_service.start_turn(principal, request, channel)   # validates, runs the input rails,
                                                                        # stores the question; raises a domain
                                                                        # error (4xx/503) with nothing stored
    async for event in chat_service.stream_turn(turn): ...              # TextDelta* then Finished or Failed

`start_turn` raising means nothing was stored, except when vLLM failed as the request reached it (503): the
answer is then kept as failed. Once it returns, the answer row exists and `stream_turn` always ends it
(complete, blocked, failed, or aborted when the consumer stops early), before its last event."""

from __future__ import annotations

from dataclasses import dataclass

from server.chat.schemas import RatchetMetadata


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Answer text the user may see now (already through the output rails when they are on)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The answer is over. `finish_reason` is `stop`, `length` or `content_filter` (a rail refused: `content`
    then ends with the polite refusal). `metadata` carries provenance and every rail verdict of the turn."""

    finish_reason: str
    content: str
    metadata: RatchetMetadata
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The engine failed mid-answer; what was shown stays stored as a failed answer. Retrying may help."""

    message: str


ChatEvent = TextDelta | Finished | Failed
