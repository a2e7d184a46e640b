"""Helpers that put conversations in the store through the chat path's own row writer, for the feedback tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import Principal, UserService
from server.chat.turns import Provenance, record_answer, record_turn
from server.db.models import (
    Message,
    MessageStatus,
    MessageVote,
    ReviewDecisionKind,
    Role,
    VoteReason,
    VoteValue,
)
from server.feedback.services import FeedbackService
from server.review.services import ReviewService
from server.settings import DEFAULT_SYSTEM_PROMPT

SYSTEM = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
BASE_VERSION = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Person:
    principal: Principal
    token: str

    @property
    def id(self) -> UUID:
        return self.principal.user_id

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Exchange:
    conversation_id: UUID
    question_id: UUID
    answer_id: UUID
    prompt: list[dict[str, str]]


async def person(sessions: async_sessionmaker[AsyncSession], name: str, role: Role = Role.USER) -> Person:
    principal, token = await UserService(sessions).create_user(name, role)
    return Person(principal, token)


async def exchange(
    sessions: async_sessionmaker[AsyncSession],
    user: Person,
    question: str,
    answer: str,
    *,
    after: Exchange | None = None,
    channel: str = "web",
    model_version: str = BASE_VERSION,
    status: str = "complete",
    created_at: datetime | None = None,
) -> Exchange:
    """One user question and its answer, continuing `after`'s conversation (its answer becomes context)."""
    async with sessions.begin() as session:
        if after is None:
            history: list[dict[str, str]] = [SYSTEM]
        else:
            previous = await session.get(Message, after.answer_id)
            assert previous is not None
            history = [*after.prompt, {"role": "assistant", "content": previous.content}]
        prompt = [*history, {"role": "user", "content": question}]
        recorded = record_turn(
            session,
            user_id=user.id,
            channel=channel,
            question=question,
            provenance=Provenance("ratchet", model_version, None, "sp-test", {"max_tokens": 128}, prompt),
            conversation_id=after.conversation_id if after is not None else None,
            answer=answer,
            status=MessageStatus(status),
            finish_reason="stop" if status == "complete" else None,
            created_at=created_at or datetime.now(UTC),
        )
    return Exchange(recorded.conversation_id, recorded.question_id, recorded.answer_id, prompt)


async def sibling(
    sessions: async_sessionmaker[AsyncSession], first: Exchange, answer: str, created_at: datetime | None = None
) -> UUID:
    """A regenerated answer to `first`'s question, stored as regeneration stores it."""
    async with sessions.begin() as session:
        original = await session.get(Message, first.answer_id)
        assert original is not None and original.reply_to_id is not None and original.model_version is not None
        provenance = Provenance(
            original.model_alias,
            original.model_version,
            original.adapter,
            original.system_prompt_version,
            original.sampling,
            original.prompt_messages,
        )
        return record_answer(
            session,
            conversation_id=original.conversation_id,
            user_id=original.user_id,
            channel=original.channel,
            reply_to_id=original.reply_to_id,
            provenance=provenance,
            content=answer,
            status=MessageStatus.COMPLETE,
            finish_reason="stop",
            regenerated_from_id=original.id,
            created_at=created_at or datetime.now(UTC),
        )


async def backdate_vote(sessions: async_sessionmaker[AsyncSession], answer_id: UUID, when: datetime) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(MessageVote).where(MessageVote.message_id == answer_id).values(created_at=when, updated_at=when)
        )


async def count(sessions: async_sessionmaker[AsyncSession], model: Any, *where: Any) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where)) or 0


@dataclass(frozen=True)
class SeededStore:
    """What `seed_realistic_store` put where, for assertions."""

    people: dict[str, Person]
    turns: dict[str, Exchange]
    regenerated_wifi: UUID
    since: datetime
    until: datetime


async def seed_realistic_store(sessions: async_sessionmaker[AsyncSession]) -> SeededStore:
    """Employees' conversations with votes, a regeneration, a repeated question, personal data, ops decisions,
    a failed answer, an old answer and one from another model version."""
    people = {
        "alice": await person(sessions, "alice"),
        "bob": await person(sessions, "bob"),
        "carol": await person(sessions, "carol"),
        "dave": await person(sessions, "dave"),
        "olivia": await person(sessions, "olivia", Role.OPS),
    }
    alice, bob, carol, dave = (people[name] for name in ("alice", "bob", "carol", "dave"))
    now = datetime.now(UTC)
    turns: dict[str, Exchange] = {}
    turns["vpn"] = await exchange(
        sessions,
        alice,
        "How do I connect to the VPN from home?",
        "Open the Company VPN client, choose the 'Office' profile and sign in with your usual account.",
    )
    turns["vpn_phone"] = await exchange(
        sessions,
        alice,
        "And on my phone?",
        "Phones cannot use the VPN.",
        after=turns["vpn"],
    )
    turns["wifi"] = await exchange(
        sessions, alice, "What is the guest Wi-Fi password?", "It is printed on a sticker under the router."
    )
    regenerated_wifi = await sibling(
        sessions, turns["wifi"], "Guests get a daily Wi-Fi code from reception; ask there when you arrive."
    )
    turns["wifi_bob"] = await exchange(
        sessions, bob, "What is the guest Wi-Fi password?", "I cannot share passwords.", channel="slack"
    )
    turns["profile"] = await exchange(
        sessions,
        carol,
        "Please update my profile: my e-mail is carol.smith@example.com and my phone is +1 415 555 0100.",
        "I can't edit profiles, but HR can: send carol.smith@example.com's change to hr@example.com.",
    )
    turns["parking"] = await exchange(sessions, dave, "Where can I park?", "Anywhere on the street is fine.")
    turns["failed"] = await exchange(sessions, dave, "Summarise the Q3 report", "", status="failed")
    turns["old"] = await exchange(
        sessions, dave, "When is payday?", "On the 25th of each month.", created_at=now - timedelta(days=30)
    )
    turns["canary"] = await exchange(
        sessions, bob, "How do I book a room?", "Use the Rooms tab in the calendar.", model_version="lora-v2"
    )

    votes = [
        (alice, turns["vpn"].answer_id, VoteValue.UP, []),
        (alice, turns["vpn_phone"].answer_id, VoteValue.DOWN, [VoteReason.WRONG]),
        (alice, turns["wifi"].answer_id, VoteValue.DOWN, [VoteReason.UNHELPFUL]),
        (alice, regenerated_wifi, VoteValue.UP, []),
        (bob, turns["wifi_bob"].answer_id, VoteValue.DOWN, [VoteReason.UNHELPFUL]),
        (carol, turns["profile"].answer_id, VoteValue.UP, []),
        (dave, turns["parking"].answer_id, VoteValue.DOWN, [VoteReason.WRONG]),
        (dave, turns["failed"].answer_id, VoteValue.DOWN, [VoteReason.UNHELPFUL]),
        (dave, turns["old"].answer_id, VoteValue.UP, []),
        (bob, turns["canary"].answer_id, VoteValue.UP, []),
    ]
    for voter, message_id, value, reasons in votes:
        await FeedbackService(sessions).set_vote(voter.principal, message_id, value, reasons, "")
    # Payday was asked and voted on a month ago: its feedback lies before any recent export window.
    await backdate_vote(sessions, turns["old"].answer_id, now - timedelta(days=30))
    olivia = people["olivia"].principal
    decisions = [
        (turns["vpn"].answer_id, ReviewDecisionKind.APPROVE, None),
        (
            turns["vpn_phone"].answer_id,
            ReviewDecisionKind.CORRECT,
            "Yes: install the Company VPN app from the Intune portal and sign in; mail it-help@example.com if stuck.",
        ),
        (turns["parking"].answer_id, ReviewDecisionKind.REJECT, None),
    ]
    for message_id, decision, correction in decisions:
        async with sessions() as session:
            await ReviewService(session).decide(olivia, message_id, decision, correction, "")
    return SeededStore(people, turns, regenerated_wifi, now - timedelta(days=7), now + timedelta(days=1))
