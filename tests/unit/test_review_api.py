"""The ops review queue through the real app and database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import RailEvent, ReviewDecision, ReviewState, Role
from tests.unit.feedback_store import Exchange, Person, count, exchange, person


async def rail_event(sessions: async_sessionmaker[AsyncSession], message_id: uuid.UUID, verdict: str) -> None:
    async with sessions.begin() as session:
        session.add(
            RailEvent(message_id=message_id, direction="output", rail="pii", verdict=verdict, reason="an e-mail")
        )


async def vote(client: AsyncTestClient, user: Person, turn: Exchange, value: str, *reasons: str) -> None:
    response = await client.put(
        f"/api/messages/{turn.answer_id}/feedback",
        json={"value": value, "reasons": list(reasons)},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text


def ids(page: dict) -> set[str]:
    return {item["message_id"] for item in page["items"]}


async def test_review_endpoints_refuse_users_without_the_ops_role(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    turn = await exchange(sessions, alice, "Hi", "Hello")
    calls = [
        ("get", "/api/review/items", {}),
        ("get", f"/api/review/items/{turn.answer_id}", {}),
        ("post", f"/api/review/items/{turn.answer_id}/decisions", {"json": {"decision": "reject"}}),
        ("post", "/api/review/flags", {"json": {"message_id": str(turn.answer_id)}}),
    ]
    for method, url, kwargs in calls:
        response = await getattr(client, method)(url, headers=alice.headers, **kwargs)
        assert response.status_code == 403, (url, response.text)
        assert "ops" in response.json()["detail"]
    assert await count(sessions, ReviewDecision) == 0
    olivia = await person(sessions, "olivia", Role.OPS)
    admin = await person(sessions, "root", Role.ADMIN)
    for reviewer in (olivia, admin):
        assert (await client.get("/api/review/items", headers=reviewer.headers)).status_code == 200


async def test_queue_holds_thumbs_down_rail_blocks_and_modifications_and_hand_flags(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    olivia = await person(sessions, "olivia", Role.OPS)
    downvoted = await exchange(sessions, alice, "VPN?", "Reinstall Windows.")
    upvoted = await exchange(sessions, alice, "Lunch?", "The canteen opens at noon.")
    blocked = await exchange(sessions, alice, "My card?", "It is 4111 1111 1111 1111.")
    modified = await exchange(sessions, alice, "Email?", "Write to [EMAIL].")
    passed = await exchange(sessions, alice, "Parking?", "Level -2.")
    flagged = await exchange(sessions, alice, "Stock tips?", "Buy everything.")
    await vote(client, alice, downvoted, "down", "wrong")
    await vote(client, alice, upvoted, "up")
    await rail_event(sessions, blocked.answer_id, "block")
    await rail_event(sessions, modified.answer_id, "modify")
    await rail_event(sessions, passed.answer_id, "pass")
    await rail_event(sessions, blocked.question_id, "block")  # an input rail stopped the prompt itself
    response = await client.post(
        "/api/review/flags",
        json={"message_id": str(flagged.answer_id), "note": "financial advice"},
        headers=olivia.headers,
    )
    assert response.status_code == 201, response.text

    page = (await client.get("/api/review/items", headers=olivia.headers)).json()
    expected = {downvoted.answer_id, blocked.answer_id, blocked.question_id, modified.answer_id, flagged.answer_id}
    assert ids(page) == {str(message_id) for message_id in expected}
    assert page["total"] == 5
    by_id = {item["message_id"]: item for item in page["items"]}
    assert by_id[str(downvoted.answer_id)]["sources"] == ["thumbs_down"]
    assert by_id[str(downvoted.answer_id)]["vote"]["reasons"] == ["wrong"]
    assert by_id[str(blocked.answer_id)]["sources"] == ["rail"]
    assert by_id[str(blocked.answer_id)]["rail_events"][0]["verdict"] == "block"
    assert by_id[str(blocked.question_id)]["role"] == "user"
    flag = by_id[str(flagged.answer_id)]
    assert flag["sources"] == ["manual"] and flag["flags"][0] == {
        "flagged_by": "olivia",
        "note": "financial advice",
        "created_at": flag["flags"][0]["created_at"],
    }
    assert by_id[str(downvoted.answer_id)]["prompt"] == downvoted.prompt
    assert by_id[str(downvoted.answer_id)]["author"] == "alice"

    missing = await client.post("/api/review/flags", json={"message_id": str(uuid.uuid4())}, headers=olivia.headers)
    assert missing.status_code == 404


async def test_queue_filters_by_reason_channel_model_version_date_source_and_status(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    olivia = await person(sessions, "olivia", Role.OPS)
    old = datetime.now(UTC) - timedelta(days=10)
    wrong_web = await exchange(sessions, alice, "Q1", "A1", channel="web")
    long_slack = await exchange(sessions, alice, "Q2", "A2", channel="slack", model_version="lora-v2")
    old_api = await exchange(sessions, alice, "Q3", "A3", channel="api", created_at=old)
    railed = await exchange(sessions, alice, "Q4", "A4", channel="web")
    await vote(client, alice, wrong_web, "down", "wrong")
    await vote(client, alice, long_slack, "down", "too_long")
    await vote(client, alice, old_api, "down", "wrong", "unsafe")
    await rail_event(sessions, railed.answer_id, "block")

    async def listed(**params: str) -> set[str]:
        response = await client.get("/api/review/items", params=params, headers=olivia.headers)
        assert response.status_code == 200, response.text
        return ids(response.json())

    assert await listed(reason="wrong") == {str(wrong_web.answer_id), str(old_api.answer_id)}
    assert await listed(reason="unsafe") == {str(old_api.answer_id)}
    assert await listed(channel="slack") == {str(long_slack.answer_id)}
    assert await listed(model_version="lora-v2") == {str(long_slack.answer_id)}
    assert await listed(source="rail") == {str(railed.answer_id)}
    recent = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert str(old_api.answer_id) not in await listed(since=recent)
    assert await listed(until=recent) == {str(old_api.answer_id)}
    assert len(await listed(limit="2")) == 2

    decided = await client.post(
        f"/api/review/items/{wrong_web.answer_id}/decisions", json={"decision": "approve"}, headers=olivia.headers
    )
    assert decided.status_code == 201
    assert str(wrong_web.answer_id) not in await listed()
    assert await listed(status="decided") == {str(wrong_web.answer_id)}
    assert len(await listed(status="all")) == 4

    for bad in ({"reason": "boring"}, {"channel": "fax"}, {"since": recent, "until": recent}, {"limit": "0"}):
        response = await client.get("/api/review/items", params=bad, headers=olivia.headers)
        assert response.status_code == 400, (bad, response.text)


async def test_decisions_are_attributed_kept_as_an_audit_trail_and_set_the_training_state(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    olivia = await person(sessions, "olivia", Role.OPS)
    root = await person(sessions, "root", Role.ADMIN)
    turn = await exchange(sessions, alice, "How many vacation days?", "You get 10.")
    await vote(client, alice, turn, "down", "wrong")
    url = f"/api/review/items/{turn.answer_id}/decisions"

    rejected = await client.post(url, json={"decision": "reject", "note": "outdated"}, headers=olivia.headers)
    assert rejected.status_code == 201, rejected.text
    assert rejected.json()["trainable"] is False
    assert rejected.json()["decision"]["reviewer"] == "olivia"

    correction = "You get 25 days; ask hr-team@example.com for details."
    corrected = await client.post(url, json={"decision": "correct", "correction": correction}, headers=root.headers)
    assert corrected.status_code == 201
    body = corrected.json()
    assert body["trainable"] is True
    assert body["decision"]["decision"] == "correct" and body["decision"]["reviewer"] == "root"
    assert body["decision"]["correction"] == "You get 25 days; ask [EMAIL] for details."

    item = (await client.get(f"/api/review/items/{turn.answer_id}", headers=olivia.headers)).json()
    trail = [(entry["decision"], entry["reviewer"], entry["note"]) for entry in item["decisions"]]
    assert trail == [("reject", "olivia", "outdated"), ("correct", "root", "")]
    async with sessions() as session:
        state = await session.scalar(select(ReviewState).where(ReviewState.message_id == turn.answer_id))
    assert state is not None and state.decision == "correct" and "example.com" not in (state.correction or "")


async def test_invalid_decisions_are_400_and_store_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    olivia = await person(sessions, "olivia", Role.OPS)
    turn = await exchange(sessions, alice, "Q", "A")
    url = f"/api/review/items/{turn.answer_id}/decisions"
    bad = [
        {"decision": "maybe"},
        {"decision": "correct"},
        {"decision": "correct", "correction": "   "},
        {"decision": "approve", "correction": "a better answer"},
        {"decision": "reject", "extra": 1},
    ]
    for body in bad:
        response = await client.post(url, json=body, headers=olivia.headers)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["detail"]
    question = await client.post(
        f"/api/review/items/{turn.question_id}/decisions",
        json={"decision": "correct", "correction": "x"},
        headers=olivia.headers,
    )
    assert question.status_code == 400
    missing = await client.post(
        f"/api/review/items/{uuid.uuid4()}/decisions", json={"decision": "reject"}, headers=olivia.headers
    )
    assert missing.status_code == 404
    assert await count(sessions, ReviewDecision) == 0
    assert await count(sessions, ReviewState) == 0


async def test_concurrent_decisions_all_reach_the_audit_trail_and_one_state_remains(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    olivia = await person(sessions, "olivia", Role.OPS)
    turn = await exchange(sessions, alice, "Q", "A")
    url = f"/api/review/items/{turn.answer_id}/decisions"
    decisions = ["approve", "reject"] * 8
    responses = await asyncio.gather(
        *(client.post(url, json={"decision": decision}, headers=olivia.headers) for decision in decisions)
    )
    assert all(response.status_code == 201 for response in responses)
    assert await count(sessions, ReviewDecision) == len(decisions)
    async with sessions() as session:
        [state] = (await session.scalars(select(ReviewState))).all()
        latest = await session.scalar(select(ReviewDecision).where(ReviewDecision.id == state.decision_id))
    assert latest is not None and state.decision == latest.decision
    assert state.trainable is (latest.decision == "approve")
