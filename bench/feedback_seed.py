"""Puts conversations, votes and ops corrections in the store the way the chat, feedback and review paths
store them, for the tuning test and benchmarks (which need a store full of feedback, fast)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.db.models import (
    Conversation,
    Message,
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
            common = {"user_id": asker.id, "channel": "web", "created_at": created_at, "updated_at": created_at}
            conversation = Conversation(id=uuid7(), title=item.question[:80], **common)
            question = Message(
                id=uuid7(), conversation_id=conversation.id, role="user", content=item.question, **common
            )
            # The answer points at the question in the same table: flush the question first.
            session.add_all([conversation, question])
            await session.flush()
            prompt = [{"role": "system", "content": system_prompt}, {"role": "user", "content": item.question}]
            answer = Message(
                id=uuid7(),
                conversation_id=conversation.id,
                role="assistant",
                content=item.answer,
                reply_to_id=question.id,
                model_alias="ratchet",
                model_version=model_version,
                prompt_messages=prompt,
                finish_reason="stop",
                **common,
            )
            session.add(answer)
            await session.flush()
            if item.vote is not None:
                session.add(MessageVote(message_id=answer.id, user_id=asker.id, value=item.vote))
            if item.correction is not None:
                decision = ReviewDecision(
                    id=uuid7(),
                    message_id=answer.id,
                    reviewer_id=reviewer.id,
                    decision=ReviewDecisionKind.CORRECT,
                    correction=item.correction,
                )
                session.add(decision)
                session.add(
                    ReviewState(
                        message_id=answer.id,
                        decision_id=decision.id,
                        decision=ReviewDecisionKind.CORRECT,
                        trainable=True,
                        correction=item.correction,
                    )
                )
            await session.flush()
