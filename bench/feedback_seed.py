"""Puts conversations, votes and ops corrections in the store the way the chat, feedback and review paths
store them, for the tuning test and benchmarks (which need a store full of feedback, fast)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.chat.turns import Provenance, record_turn
from server.db.models import (
    MessageStatus,
    MessageVote,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewState,
    Role,
    User,
)
from server.settings import DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True)
class Judged:
    """One answer to one question and what people made of it."""

    question: str
    answer: str
    vote: str | None  # "up", "down" or None
    correction: str | None = None  # an ops correction (the answer it should have been)


async def seed(
    sessions: async_sessionmaker[AsyncSession],
    items: list[Judged],
    *,
    model_version: str = "smollm2-135m-instruct",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    created_at: datetime | None = None,
) -> None:
    """One conversation per item, voted by its asker; corrections decided by one ops reviewer."""
    created_at = created_at or datetime.now(UTC)
    async with sessions.begin() as session:
        asker = User(id=uuid7(), name=f"asker-{uuid7().hex[-8:]}", role=Role.USER)
        reviewer = User(id=uuid7(), name=f"ops-{uuid7().hex[-8:]}", role=Role.OPS)
        session.add_all([asker, reviewer])
        await session.flush()
        for item in items:
            prompt = [{"role": "system", "content": system_prompt}, {"role": "user", "content": item.question}]
            recorded = record_turn(
                session,
                user_id=asker.id,
                channel="web",
                question=item.question,
                provenance=Provenance("ratchet", model_version, None, None, None, prompt),
                answer=item.answer,
                status=MessageStatus.COMPLETE,
                finish_reason="stop",
                created_at=created_at,
            )
            # Votes and review rows have no ORM relationship to order them after the answer: flush it first.
            await session.flush()
            if item.vote is not None:
                session.add(MessageVote(message_id=recorded.answer_id, user_id=asker.id, value=item.vote))
            if item.correction is not None:
                decision = ReviewDecision(
                    id=uuid7(),
                    message_id=recorded.answer_id,
                    reviewer_id=reviewer.id,
                    decision=ReviewDecisionKind.CORRECT,
                    correction=item.correction,
                )
                session.add(decision)
                session.add(
                    ReviewState(
                        message_id=recorded.answer_id,
                        decision_id=decision.id,
                        decision=ReviewDecisionKind.CORRECT,
                        trainable=True,
                        correction=item.correction,
                    )
                )
            await session.flush()
