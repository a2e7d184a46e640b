"""The chat page: conversations, streamed answers through the chat service's one path, votes and regeneration.
The chat service is scripted here (no vLLM in unit tests); tests/e2e drive the real one in a browser."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.chat.events import ChatEvent, Failed, Finished, TextDelta
from server.chat.schemas import ChatCompletionRequest, RatchetMetadata
from server.chat.services import ChatService
from server.db.models import Channel, Conversation, Message, MessageStatus, VoteValue
from server.engine.client import EngineUnavailableError
from server.feedback.services import FeedbackService
from tests.unit.feedback_store import exchange, person
from tests.unit.ui_client import post_form, sign_in

XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@dataclass
class ScriptedTurn:
    conversation_id: UUID
    message_id: UUID


@dataclass
class ScriptedChat(ChatService):
    """Stands in for the chat service (a subclass, as the page's dependency is typed): records what the page
    asked, yields a scripted answer."""

    events: list[ChatEvent]
    fail_start: Exception | None = None
    requests: list[tuple[ChatCompletionRequest, str]] = field(default_factory=list)
    closed: bool = False

    async def start_turn(self, principal: Any, request: ChatCompletionRequest, channel: str) -> Any:
        if self.fail_start is not None:
            raise self.fail_start
        self.requests.append((request, channel))
        return ScriptedTurn(request.conversation_id or UUID(str(uuid7())), UUID(str(uuid7())))

    async def stream_turn(self, turn: Any) -> AsyncIterator[ChatEvent]:
        try:
            for event in self.events:
                yield event
        finally:
            self.closed = True


def finished(content: str, reason: str = "stop") -> Finished:
    metadata = RatchetMetadata(
        message_id=uuid7(), conversation_id=uuid7(), model_alias="ratchet", model_version="v-test", adapter=None,
        system_prompt_version=None,
    )  # fmt: skip
    return Finished(reason, content, metadata)


def events_of(body: str) -> list[tuple[str, dict[str, str]]]:
    parsed = []
    for block in body.replace("\r\n", "\n").strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


async def ask(client: AsyncTestClient, question: str, conversation_id: str = "", stream: bool = True) -> Any:
    headers = {"accept": "text/event-stream", "x-ratchet-fetch": "1"} if stream else {}
    page = await client.get(f"/ui/chat/{conversation_id}")
    token = page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]
    return await client.post(
        "/ui/chat/turns",
        data={"_csrf_token": token, "question": question, "conversation_id": conversation_id},
        headers=headers,
        follow_redirects=False,
    )


async def test_a_question_streams_deltas_then_the_rendered_answer_on_the_web_channel(
    client: AsyncTestClient, user_token: str
) -> None:
    chat = ScriptedChat([TextDelta("A mutex "), TextDelta("is a **lock**."), finished("A mutex is a **lock**.")])
    client.app.state.chat = chat
    await sign_in(client, user_token)
    response = await ask(client, "What is a mutex?")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert [name for name, _ in events] == ["turn", "delta", "delta", "done"]
    assert [data["text"] for name, data in events if name == "delta"] == ["A mutex ", "is a **lock**."]
    assert "<strong>lock</strong>" in events[-1][1]["html"]
    assert f'id="m-{events[0][1]["message_id"]}"' in events[-1][1]["html"]
    [(request, channel)] = chat.requests
    assert channel == Channel.WEB
    assert [(m.role, m.text()) for m in request.messages] == [("user", "What is a mutex?")]
    assert chat.closed


async def test_a_follow_up_carries_the_conversation_as_the_user_saw_it(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-follow")
    first = await exchange(sessions, alice, "What is a mutex?", "A lock.")
    chat = ScriptedChat([finished("Yes.")])
    client.app.state.chat = chat
    await sign_in(client, alice.token)
    await ask(client, "Is it fair?", str(first.conversation_id))
    [(request, _)] = chat.requests
    assert request.conversation_id == first.conversation_id
    assert [(m.role, m.text()) for m in request.messages] == [
        ("user", "What is a mutex?"),
        ("assistant", "A lock."),
        ("user", "Is it fair?"),
    ]


async def test_a_refusal_is_shown_as_the_answer_not_as_an_error(client: AsyncTestClient, user_token: str) -> None:
    client.app.state.chat = ScriptedChat([finished("I can't help with that.", "content_filter")])
    await sign_in(client, user_token)
    name, data = events_of((await ask(client, "Something against policy")).text)[-1]
    assert name == "done"
    assert "I can't help with that." in data["html"]
    assert "Declined by the content guardrails" in data["html"]


async def test_the_engine_failing_mid_answer_keeps_the_text_and_offers_a_retry(
    client: AsyncTestClient, user_token: str
) -> None:
    client.app.state.chat = ScriptedChat([TextDelta("Half an ans"), Failed("vLLM stopped mid-answer")])
    await sign_in(client, user_token)
    name, data = events_of((await ask(client, "Tell me")).text)[-1]
    assert name == "failed"
    assert "Half an ans" in data["html"]
    assert "Try again" in data["html"]


async def test_vllm_down_is_a_clear_503_and_stores_nothing(client: AsyncTestClient, user_token: str) -> None:
    client.app.state.chat = ScriptedChat([], fail_start=EngineUnavailableError("vLLM is starting (loading the model)"))
    await sign_in(client, user_token)
    response = await ask(client, "Hello?")
    assert response.status_code == 503
    assert response.json()["detail"] == "vLLM is starting (loading the model)"


async def test_html_in_questions_and_answers_is_shown_as_text(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-xss")
    turn = await exchange(sessions, alice, XSS, f"Here: {XSS} [x](javascript:alert(3))")
    client.app.state.chat = ScriptedChat([TextDelta(XSS), finished(XSS)])
    await sign_in(client, alice.token)
    page = (await client.get(f"/ui/chat/{turn.conversation_id}")).text
    streamed = events_of((await ask(client, XSS)).text)
    for html in [page, streamed[-1][1]["html"]]:
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert 'href="javascript' not in html
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert streamed[1] == ("delta", {"text": XSS})  # raw text; the page only ever sets it as textContent


async def test_without_script_a_question_lands_on_the_conversation_page(
    client: AsyncTestClient, user_token: str
) -> None:
    client.app.state.chat = ScriptedChat([finished("Fine.")])
    await sign_in(client, user_token)
    response = await ask(client, "How are you?", stream=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/chat/")


async def test_an_empty_question_is_a_400(client: AsyncTestClient, user_token: str) -> None:
    client.app.state.chat = ScriptedChat([])
    await sign_in(client, user_token)
    assert (await ask(client, "   ")).status_code == 400
    assert client.app.state.chat.requests == []


async def test_conversations_are_listed_newest_first_searched_renamed_and_deleted(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-list")
    bob = await person(sessions, "bob-list")
    older = await exchange(sessions, alice, "Printer on floor 3", "Restart it.")
    newer = await exchange(sessions, alice, "VPN setup", "Use the client.")
    theirs = await exchange(sessions, bob, "Bob's secret plan", "No.")
    await sign_in(client, alice.token)
    page = (await client.get("/ui/chat/")).text
    assert page.index("VPN setup") < page.index("Printer on floor 3")
    assert "Bob&#39;s secret plan" not in page
    searched = (await client.get("/ui/chat/", params={"q": "printer"})).text
    assert "Printer on floor 3" in searched
    assert "VPN setup" not in searched
    renamed = await post_form(client, f"/ui/chat/{older.conversation_id}/rename", {"title": "Printers"})
    assert renamed.status_code == 303
    deleted = await post_form(client, f"/ui/chat/{newer.conversation_id}/delete", {})
    assert deleted.status_code == 303
    assert (await post_form(client, f"/ui/chat/{theirs.conversation_id}/delete", {})).status_code == 404
    async with sessions() as session:
        assert (await session.get(Conversation, older.conversation_id)).title == "Printers"
        assert await session.get(Conversation, newer.conversation_id) is None
        assert await session.get(Conversation, theirs.conversation_id) is not None
    assert (await client.get(f"/ui/chat/{theirs.conversation_id}")).status_code == 404


async def test_a_thumbs_down_with_reasons_is_stored_changeable_and_shown_on_reopen(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-vote")
    turn = await exchange(sessions, alice, "2+2?", "5")
    await sign_in(client, alice.token)
    form = {"conversation_id": str(turn.conversation_id), "value": "down", "reasons": ["wrong", "too_short"]}
    response = await client.post(
        f"/ui/messages/{turn.answer_id}/feedback",
        data={**form, "comment": "It is 4", "_csrf_token": (await post_form_token(client))},
        headers={"x-ratchet-fetch": "1"},
    )
    assert response.status_code == 200
    assert "Update my thumbs down" in response.text
    vote = await FeedbackService(sessions).get_vote(alice.principal, turn.answer_id)
    assert (vote.value, sorted(vote.reasons), vote.comment) == ("down", ["too_short", "wrong"], "It is 4")
    reopened = (await client.get(f"/ui/chat/{turn.conversation_id}")).text
    assert 'value="wrong" checked' in reopened
    assert "Your vote: not good" in reopened
    changed = await post_form(
        client, f"/ui/messages/{turn.answer_id}/feedback", {"conversation_id": str(turn.conversation_id), "value": "up"}
    )
    assert changed.status_code == 303
    vote = await FeedbackService(sessions).get_vote(alice.principal, turn.answer_id)
    assert (vote.value, vote.reasons, vote.revision) == ("up", [], 2)
    assert 'aria-pressed="true"' in (await client.get(f"/ui/chat/{turn.conversation_id}")).text


async def test_a_vote_with_an_unknown_reason_is_a_400_and_stores_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-badvote")
    turn = await exchange(sessions, alice, "Q", "A")
    await sign_in(client, alice.token)
    form = {"conversation_id": str(turn.conversation_id), "value": "down", "reasons": ["boring"]}
    assert (await post_form(client, f"/ui/messages/{turn.answer_id}/feedback", form)).status_code == 400
    assert (await FeedbackService(sessions).get_vote(alice.principal, turn.answer_id)).value is None


async def post_form_token(client: AsyncTestClient) -> str:
    page = await client.get("/ui/chat/")
    return page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]


async def test_with_the_real_chat_path_and_vllm_unreachable_the_page_gets_a_503_and_no_answer_looks_live(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], user_token: str
) -> None:
    await sign_in(client, user_token)
    response = await ask(client, "What is a mutex?")
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]
    async with sessions() as session:
        answers = (await session.scalars(select(Message).where(Message.role == "assistant"))).all()
    assert {answer.status for answer in answers} <= {MessageStatus.FAILED}


async def test_a_user_downloads_all_their_data_and_deletes_it(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-data")
    bob = await person(sessions, "bob-data")
    turn = await exchange(sessions, alice, "Where is the VPN guide?", "On the wiki.")
    await exchange(sessions, bob, "Bob's question", "Bob's answer")
    await FeedbackService(sessions).set_vote(alice.principal, turn.answer_id, VoteValue.UP, [], "")
    await sign_in(client, alice.token)
    download = await client.get("/ui/account/data.json")
    assert "attachment" in download.headers["content-disposition"]
    [conversation] = download.json()
    assert [m["content"] for m in conversation["messages"]] == ["Where is the VPN guide?", "On the wiki."]
    assert conversation["messages"][1]["vote"]["value"] == "up"
    refused = await post_form(client, "/ui/account/delete-data", {}, page="/ui/account/")
    assert refused.status_code == 400
    deleted = await post_form(client, "/ui/account/delete-data", {"confirm": "yes"}, page="/ui/account/")
    assert deleted.status_code == 200
    assert "1 conversations, 2 messages, 1 votes" in " ".join(deleted.text.split())
    assert (await client.get("/ui/account/data.json")).json() == []
    async with sessions() as session:
        assert len((await session.scalars(select(Conversation))).all()) == 1  # Bob's
