"""A turn's channel-neutral events and the API's OpenAI encoding of them. The engine and the rails are the
doubles of test_chat_speculation.py; the real ones are in tests/integration."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.chat import openai_wire
from server.chat.events import ChatEvent, Failed, Finished, TextDelta
from server.chat.turns import Turn
from server.db.models import MessageStatus
from server.engine.client import EngineUnavailableError
from server.engine.router import Route
from server.rails.base import Verdict
from server.settings import Settings
from tests.unit.test_chat_speculation import (
    ANSWER,
    RecordingEngine,
    ScriptedRails,
    ask,
    chat_service,
    principal,
    stored_answer,
)


async def test_a_streamed_answer_arrives_in_pieces_and_is_stored_whole(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    engine = RecordingEngine(delay_s=0)
    service = await chat_service(sessions, settings, engine, ScriptedRails(engine, Verdict.PASS))
    turn = await service.start_turn(await principal(sessions), ask("How do I reach the VPN?", stream=True), "web")
    events = [event async for event in service.stream_turn(turn)]
    texts = [event.text for event in events if isinstance(event, TextDelta)]
    # The output rails release text in windows: more than one piece, together the whole answer.
    assert len(texts) > 1 and "".join(texts) == ANSWER
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop" and finished.content == ANSWER
    assert finished.metadata.message_id == turn.message_id
    assert engine.closed_streams == 1
    answer = await stored_answer(sessions, turn.message_id)
    assert (answer.status, answer.content, answer.channel) == (MessageStatus.COMPLETE, ANSWER, "web")
    assert answer.ttft_ms is not None


async def test_a_consumer_that_stops_early_aborts_the_generation_and_keeps_what_was_shown(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    engine = RecordingEngine(delay_s=0)
    service = await chat_service(sessions, settings, engine, ScriptedRails(engine, Verdict.PASS))
    turn = await service.start_turn(await principal(sessions), ask("How do I reach the VPN?", stream=True), "slack")
    events = service.stream_turn(turn)
    first = await anext(events)
    await events.aclose()
    assert isinstance(first, TextDelta) and first.text != ANSWER
    assert engine.closed_streams == 1
    answer = await stored_answer(sessions, turn.message_id)
    assert (answer.status, answer.content, answer.error) == (
        MessageStatus.ABORTED,
        first.text,
        "the client disconnected",
    )


def a_turn() -> Turn:
    route = Route(requested="ratchet", alias="ratchet", version="base-v1", adapter=None)
    return Turn(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), route, {"messages": []}, "sp-1")


async def replay(*events: ChatEvent) -> AsyncGenerator[ChatEvent, None]:
    for event in events:
        yield event


def finished(turn: Turn, content: str) -> Finished:
    return Finished("stop", content, turn.metadata(), prompt_tokens=7, completion_tokens=3)


def sse_events(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n")
    events = body.decode().split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event[6:] for event in events]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_opens_with_the_role_and_ends_with_provenance_then_done(include_usage: bool) -> None:
    turn = a_turn()
    events = replay(TextDelta("Hel"), TextDelta("lo"), finished(turn, "Hello"))
    body = b"".join([chunk async for chunk in openai_wire.sse(turn, events, include_usage)])
    *chunks, done = sse_events(body)
    assert done == "[DONE]"
    decoded = [json.loads(chunk) for chunk in chunks]
    assert {chunk["id"] for chunk in decoded} == {f"chatcmpl-{turn.message_id}"}
    assert {chunk["model"] for chunk in decoded} == {"base-v1"}
    assert decoded[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert [chunk["choices"][0]["delta"].get("content") for chunk in decoded[1:3]] == ["Hel", "lo"]
    last = decoded[3]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["ratchet"]["message_id"] == str(turn.message_id)
    if include_usage:
        assert decoded[4]["choices"] == []
        assert decoded[4]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert len(decoded) == (5 if include_usage else 4)


async def test_a_stream_that_fails_mid_answer_ends_with_an_error_event_and_no_done() -> None:
    turn = a_turn()
    events = replay(TextDelta("Hel"), Failed("lost vLLM mid-answer: ReadError"))
    body = b"".join([chunk async for chunk in openai_wire.sse(turn, events, False)])
    last = json.loads(sse_events(body)[-1])
    assert last == {
        "error": {"message": "lost vLLM mid-answer: ReadError", "type": "engine_unavailable", "code": "503"}
    }


async def test_a_plain_completion_is_the_events_collected() -> None:
    turn = a_turn()
    completion = await openai_wire.completion(turn, replay(TextDelta("Hel"), TextDelta("lo"), finished(turn, "Hello")))
    assert completion.id == f"chatcmpl-{turn.message_id}" and completion.model == "base-v1"
    assert completion.choices[0].message.content == "Hello" and completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 10
    assert completion.ratchet.message_id == turn.message_id
    with pytest.raises(EngineUnavailableError):
        await openai_wire.completion(turn, replay(Failed("vLLM failed")))
