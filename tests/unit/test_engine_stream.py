"""Reading a streamed completion from any OpenAI-compatible server: SSE framing (LF or CRLF, one or several
`data:` lines per event, pieces split anywhere across network reads), and the ways a stream can break."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from server.engine.client import ChatChunk, ChatStream, EngineUnavailableError


class Pieces(httpx.AsyncByteStream):
    """A response body arriving in the given pieces, as a network would split it."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece


def stream_of(body: bytes, piece_size: int) -> ChatStream:
    pieces = [body[start : start + piece_size] for start in range(0, len(body), piece_size)]
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces(pieces))
    return ChatStream(response)


async def read(stream: ChatStream) -> list[ChatChunk]:
    return [chunk async for chunk in stream.chunks()]


def delta(content: str, finish_reason: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}]}


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)


@pytest.mark.parametrize("piece_size", [1, 7, 10_000])
async def test_crlf_framed_events_with_multi_line_data_read_like_plain_ones(piece_size: int) -> None:
    first = json.dumps(delta("Hello"))
    # One JSON object spread over several `data:` lines: they join with newlines, which JSON allows.
    second = json.dumps(delta(", world", "stop"), indent=1).split("\n")
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    body = (
        f": keep-alive comment\r\n\r\ndata: {first}\r\n\r\n"
        + "".join(f"data: {line}\r\n" for line in second)
        + f"\r\ndata:{usage}\r\n\r\ndata: [DONE]\r\n\r\n"
    ).encode()
    chunks = await read(stream_of(body, piece_size))
    assert text_of(chunks) == "Hello, world"
    assert chunks[1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_a_stream_that_ends_before_done_is_a_failure() -> None:
    body = f"data: {json.dumps(delta('Half an ans'))}\n\n".encode()
    with pytest.raises(EngineUnavailableError, match="ended before it finished"):
        await read(stream_of(body, 10_000))


async def test_an_error_event_mid_stream_is_a_failure_with_the_engines_message() -> None:
    error = json.dumps({"error": {"message": "engine crashed", "type": "InternalServerError", "code": 500}})
    body = f"data: {json.dumps(delta('Hi'))}\n\ndata: {error}\n\n".encode()
    with pytest.raises(EngineUnavailableError, match="vLLM failed mid-answer: engine crashed"):
        await read(stream_of(body, 10_000))


async def test_an_unreadable_event_is_a_failure_not_a_crash() -> None:
    body = b"data: {not json\n\ndata: [DONE]\n\n"
    with pytest.raises(EngineUnavailableError, match="unreadable chunk"):
        await read(stream_of(body, 10_000))
