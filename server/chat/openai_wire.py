"""The OpenAI chat-completions wire format, the API's edge: a turn's events (server/chat/events.py) encoded as
one JSON completion or as server-sent chunks, with Ratchet's extension: the `ratchet` object (provenance and
every rail verdict; on the completion and on a stream's finishing chunk) and the `X-Ratchet-*` headers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec
from msgspec import UNSET, Struct, UnsetType

from server.chat.events import ChatEvent, Failed, Finished, TextDelta
from server.chat.schemas import RatchetMetadata
from server.chat.turns import Turn
from server.engine.client import EngineUnavailableError

DONE = b"data: [DONE]\n\n"


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnswerMessage(Struct):
    role: str
    content: str


class CompletionChoice(Struct):
    index: int
    message: AnswerMessage
    finish_reason: str


class ChatCompletion(Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    ratchet: RatchetMetadata


class _Delta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class _ChunkChoice(Struct):
    index: int
    delta: _Delta
    finish_reason: str | None


class _Chunk(Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    usage: Usage | UnsetType = UNSET
    ratchet: RatchetMetadata | UnsetType = UNSET


class _ErrorDetail(Struct):
    message: str
    type: str
    code: str


class _ErrorEvent(Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


def headers(turn: Turn, stream: bool) -> dict[str, str]:
    headers = {
        "X-Ratchet-Message-Id": str(turn.message_id),
        "X-Ratchet-Conversation-Id": str(turn.conversation_id),
        "X-Ratchet-Model-Version": turn.route.version,
    }
    if turn.rails is not None:
        # A stream's body starts before the output rails finish, so its input verdicts travel here (JSON).
        headers["X-Ratchet-Rails-Version"] = turn.rails.version
        headers["X-Ratchet-Rails-Input"] = json.dumps([verdict.to_dict() for verdict in turn.input_verdicts])
    if stream:
        headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return headers


def _usage(finished: Finished) -> Usage:
    prompt, completion = finished.prompt_tokens or 0, finished.completion_tokens or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def completion(turn: Turn, events: AsyncGenerator[ChatEvent, None]) -> ChatCompletion:
    """The answer as one `chat.completion` object: the events collected."""
    texts: list[str] = []
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text):
                    texts.append(text)
                case Finished():
                    return ChatCompletion(
                        id=f"chatcmpl-{turn.message_id}",
                        object="chat.completion",
                        created=int(time.time()),
                        model=turn.route.version,
                        choices=[CompletionChoice(0, AnswerMessage("assistant", "".join(texts)), event.finish_reason)],
                        usage=_usage(event),
                        ratchet=event.metadata,
                    )
                case Failed(message=message):
                    raise EngineUnavailableError(message)
    raise RuntimeError("a turn's events end with Finished or Failed")


async def sse(turn: Turn, events: AsyncGenerator[ChatEvent, None], include_usage: bool) -> AsyncGenerator[bytes, None]:
    """The answer as `chat.completion.chunk` server-sent events, ending with `data: [DONE]`, or with an error
    event when vLLM failed mid-answer. The usage chunk is sent only when the client asked for it."""
    chunk_id, created, model = f"chatcmpl-{turn.message_id}", int(time.time()), turn.route.version

    def chunk(
        delta: _Delta | None,
        finish_reason: str | None = None,
        usage: Usage | UnsetType = UNSET,
        ratchet: RatchetMetadata | UnsetType = UNSET,
    ) -> bytes:
        choices = [] if delta is None else [_ChunkChoice(0, delta, finish_reason)]
        body = _Chunk(chunk_id, "chat.completion.chunk", created, model, choices, usage, ratchet)
        return b"data: " + _encode(body) + b"\n\n"

    yield chunk(_Delta(role="assistant"))
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text):
                    yield chunk(_Delta(content=text))
                case Finished():
                    yield chunk(_Delta(), event.finish_reason, ratchet=event.metadata)
                    if include_usage:
                        yield chunk(None, usage=_usage(event))
                    yield DONE
                case Failed(message=message):
                    error = _ErrorEvent(_ErrorDetail(message, "engine_unavailable", "503"))
                    yield b"data: " + _encode(error) + b"\n\n"
