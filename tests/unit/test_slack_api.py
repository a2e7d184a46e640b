"""The Slack bot through the real app and a real database, with Slack's Web API replaced by a local server:
signed requests, refusal of forged and stale ones, votes from buttons, reactions and the modal, retries
de-duplicated, and a clear message when vLLM is down. Answers from the real vLLM: tests/integration."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.db.models import Message, MessageVote, SlackAnswer, SlackIdentity, SlackInbox, VoteHistory
from server.settings import Settings
from tests.slack_fake import (
    TEAM,
    FakeSlack,
    button_payload,
    event_body,
    fake_slack,
    interaction_body,
    mention,
    signed_headers,
)
from tests.unit.feedback_store import count, exchange, person

SECRET = "test-signing-secret"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with fake_slack() as fake:
        yield fake


@pytest.fixture
async def slack_app(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], slack: FakeSlack
) -> AsyncIterator[AsyncTestClient]:
    configured = settings.model_copy(
        update={
            "slack_signing_secret": SECRET,
            "slack_bot_token": "xoxb-test-token",
            "slack_api_url": slack.url,
            "slack_ops_channel": "C0OPS",
        }
    )
    async with AsyncTestClient(app=create_app(Settings(**_plain(configured)))) as client:
        yield client


def _plain(settings: Settings) -> dict[str, Any]:
    values = dict(settings)
    return {name: getattr(value, "get_secret_value", lambda v=value: v)() for name, value in values.items()}


async def post_signed(client: AsyncTestClient, path: str, body: bytes, **sign: Any) -> Any:
    content_type = "application/json" if body.startswith(b"{") else "application/x-www-form-urlencoded"
    headers = {"content-type": content_type, **signed_headers(SECRET, body, **sign)}
    return await client.post(path, content=body, headers=headers)


async def eventually(check: Callable[[], Any], timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def slack_answer(sessions: async_sessionmaker[AsyncSession], channel: str = "C0GENERAL") -> Any:
    """An answer the bot posted in Slack (as the chat path and the delivery would have stored it)."""
    asker = await person(sessions, "slack-asker")
    answered = await exchange(sessions, asker, "What is our VPN?", "Use the corporate VPN client.", channel="slack")
    async with sessions.begin() as session:
        session.add(
            SlackAnswer(
                message_id=answered.answer_id,
                team_id=TEAM,
                channel_id=channel,
                thread_ts="100.000001",
                slack_ts="100.000002",
                status="delivered",
            )
        )
    return answered


async def test_a_request_with_a_forged_signature_is_refused_and_nothing_is_stored(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = event_body(mention("hello", "U1", "200.1"), "Ev-forged")
    headers = {"content-type": "application/json", **signed_headers("not-the-secret", body)}
    response = await slack_app.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 401
    assert await count(sessions, SlackInbox) == 0


async def test_a_replayed_request_older_than_five_minutes_is_refused(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = event_body(mention("hello", "U1", "200.2"), "Ev-stale")
    response = await post_signed(slack_app, "/slack/events", body, timestamp=int(time.time()) - 6 * 60)
    assert response.status_code == 401
    assert await count(sessions, SlackInbox) == 0


async def test_slack_routes_do_not_exist_when_slack_is_not_configured(client: AsyncTestClient) -> None:
    body = event_body(mention("hello", "U1", "200.3"), "Ev-off")
    response = await client.post("/slack/events", content=body, headers=signed_headers(SECRET, body))
    assert response.status_code in (401, 404)
    assert (await client.get("/healthz")).status_code == 200


def reaction_added(user: str, emoji: str) -> dict[str, Any]:
    item = {"type": "message", "channel": "C0GENERAL", "ts": "100.000002"}
    return {"type": "reaction_added", "user": user, "reaction": emoji, "item": item, "event_ts": "300.1"}


async def stored_vote(sessions: async_sessionmaker[AsyncSession], answer_id: Any) -> MessageVote | None:
    async with sessions() as session:
        return await session.scalar(select(MessageVote).where(MessageVote.message_id == answer_id))


# A retry whose first try reached the app is not a second vote; Slack also retries when its first try timed out,
# which may never have reached the app: then the retry is the event, processed once.
@pytest.mark.parametrize(("deliveries", "emoji", "value"), [((None, 1), "+1", "up"), ((1, 2), "-1", "down")])
async def test_a_reaction_on_an_answer_is_one_vote_however_often_slack_retries_it(
    slack_app: AsyncTestClient,
    sessions: async_sessionmaker[AsyncSession],
    deliveries: tuple[int | None, ...],
    emoji: str,
    value: str,
) -> None:
    answered = await slack_answer(sessions)
    body = event_body(reaction_added("U0VOTER", emoji), "Ev-reaction-1")
    for retry in deliveries:
        assert (await post_signed(slack_app, "/slack/events", body, retry=retry)).status_code == 200

    vote = await eventually(lambda: stored_vote(sessions, answered.answer_id))
    assert vote is not None and vote.value == value
    await asyncio.sleep(0.3)
    assert await count(sessions, VoteHistory, VoteHistory.message_id == answered.answer_id) == 1
    assert await count(sessions, SlackInbox) == 1
    async with sessions() as session:
        identity = await session.scalar(select(SlackIdentity).where(SlackIdentity.slack_user_id == "U0VOTER"))
    assert identity is not None and identity.user_id == vote.user_id


async def test_removing_the_reaction_withdraws_that_vote(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    answered = await slack_answer(sessions)
    added = reaction_added("U0VOTER", "-1")
    removed = {**added, "type": "reaction_removed", "event_ts": "301.2"}
    await post_signed(slack_app, "/slack/events", event_body(added, "Ev-add"))

    async def value() -> str | None:
        vote = await stored_vote(sessions, answered.answer_id)
        return vote.value if vote else "missing"

    assert await eventually(lambda: _equals(value, "down")) == "down"
    await post_signed(slack_app, "/slack/events", event_body(removed, "Ev-remove"))
    assert await eventually(lambda: _equals(value, None)) is None


async def _equals(read: Callable[[], Any], expected: Any) -> Any:
    current = await read()
    return current if current == expected else (expected is None and current is None)


async def test_thumbs_down_button_votes_then_the_modal_adds_reason_and_comment(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], slack: FakeSlack
) -> None:
    answered = await slack_answer(sessions)
    payload = button_payload(f"down:{answered.answer_id}", "U0CRITIC", "trigger-1")
    assert (await post_signed(slack_app, "/slack/interactions", interaction_body(payload))).status_code == 200
    opened = await eventually(lambda: _async(slack.ok_calls("views.open")))
    assert opened, "the thumbs-down modal was not opened"
    view = (
        json.loads(opened[0].params["view"]) if isinstance(opened[0].params["view"], str) else opened[0].params["view"]
    )
    submission = {
        "type": "view_submission",
        "team": {"id": TEAM},
        "user": {"id": "U0CRITIC", "team_id": TEAM},
        "trigger_id": "trigger-2",
        "view": {
            **view,
            "id": "V1",
            "state": {
                "values": {
                    "reason": {"value": {"type": "static_select", "selected_option": {"value": "wrong"}}},
                    "comment": {"value": {"type": "plain_text_input", "value": "The VPN client is Tunnelblick."}},
                }
            },
        },
    }
    assert (await post_signed(slack_app, "/slack/interactions", interaction_body(submission))).status_code == 200

    async def revised() -> MessageVote | None:
        async with sessions() as session:
            vote = await session.scalar(select(MessageVote).where(MessageVote.message_id == answered.answer_id))
            return vote if vote is not None and vote.revision == 2 else None

    vote = await eventually(revised)
    assert vote is not None
    assert (vote.value, vote.reasons, vote.comment) == ("down", ["wrong"], "The VPN client is Tunnelblick.")
    review = await slack_app.get(
        "/api/review/items", params={"channel": "slack"}, headers=(await person(sessions, "ops-1", role="ops")).headers
    )
    assert review.status_code == 200
    assert str(answered.answer_id) in review.text
    admin = await person(sessions, "admin-1", role="admin")
    manifest = await slack_app.get(
        "/api/exports/training-data/manifest", params={"channel": "slack"}, headers=admin.headers
    )
    assert manifest.status_code == 200, manifest.text
    assert manifest.json()["filters"]["channel"] == "slack"
    assert manifest.json()["answers_used"] == 1 and manifest.json()["rows_by_source"]["kto.thumbs_down"] == 1


async def _async(value: Any) -> Any:
    return value


async def test_a_button_naming_an_answer_that_does_not_exist_stores_nothing(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    payload = button_payload("up:not-a-uuid", "U0CRITIC", "trigger-3")
    assert (await post_signed(slack_app, "/slack/interactions", interaction_body(payload))).status_code == 200

    async def failed() -> bool:
        async with sessions() as session:
            row = await session.scalar(select(SlackInbox).where(SlackInbox.key == "block_actions:trigger-3"))
            return row is not None and row.status == "failed"

    assert await eventually(failed)
    assert await count(sessions, MessageVote) == 0


async def test_a_question_while_vllm_is_down_gets_a_clear_reply_in_its_thread(
    slack_app: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], slack: FakeSlack
) -> None:
    body = event_body(mention("What is a mutex?", "U0ASKER", "400.1"), "Ev-down")
    assert (await post_signed(slack_app, "/slack/events", body)).status_code == 200
    replies = await eventually(lambda: _async(slack.ok_calls("chat.postMessage")))
    assert replies and "can't answer right now" in replies[0].params["text"]
    assert replies[0].params["thread_ts"] == "400.1"

    async def answer_status() -> str | None:
        async with sessions() as session:
            return await session.scalar(select(Message.status).where(Message.role == "assistant"))

    # The question and its failed answer are kept (nothing lost), never left pending.
    assert await eventually(answer_status) == "failed"


async def test_an_admin_can_link_a_slack_user_to_an_existing_account(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    from server.slack.store import SlackStore

    store = SlackStore(sessions)
    first_seen = await store.principal_for(TEAM, "U0LINKED")
    assert first_seen.name == f"slack:{TEAM}:U0LINKED"
    existing = await person(sessions, "maria")
    linked = await store.link(TEAM, "U0LINKED", "maria")
    assert linked.user_id == existing.id
    assert (await store.principal_for(TEAM, "U0LINKED")).user_id == existing.id
    with pytest.raises(LookupError):
        await store.link(TEAM, "U0LINKED", "nobody-by-that-name")
