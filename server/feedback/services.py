"""Votes: one current vote per user and answer, the last write wins, every change numbered and kept.

Each write is one upsert whose ``revision = revision + 1`` runs under the row lock the conflict takes
(PostgreSQL) or the database write lock (SQLite), followed by the history row in the same transaction. So
concurrent writers serialise on the row, the unique constraint rules out a second current vote, the history
revisions are gap-free, and the stored vote is the one with the highest acknowledged revision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.db.models import (
    Conversation,
    Message,
    MessageVote,
    RailEvent,
    ReviewDecision,
    ReviewFlag,
    ReviewState,
    User,
    VoteAction,
    VoteHistory,
    VoteReason,
    VoteValue,
)
from server.feedback.schemas import DeletedData, Vote
from server.privacy.redaction import redact

_votes = MessageVote.__table__
_history = VoteHistory.__table__


class AnswerNotFoundError(LookupError):
    """No such answer, or not the caller's to see."""


class UserNotFoundError(LookupError):
    pass


def dialect_insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (both SQLite and PostgreSQL support upserts)."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


class FeedbackService:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _own_answer(self, principal: Principal, message_id: UUID) -> Any:
        return select(Message.id).where(
            Message.id == message_id, Message.user_id == principal.user_id, Message.role == "assistant"
        )

    async def _require_own_answer(self, principal: Principal, message_id: UUID) -> None:
        if await self._session.scalar(self._own_answer(principal, message_id)) is None:
            raise AnswerNotFoundError(f"No answer {message_id}.")

    async def set_vote(
        self, principal: Principal, message_id: UUID, value: VoteValue, reasons: list[VoteReason], comment: str
    ) -> Vote:
        """Store the vote and its history row atomically; raises (storing nothing) if the answer isn't visible."""
        now = datetime.now(UTC)
        reasons = sorted(set(reasons))
        # Comments are kept with training signals: they are redacted before they are stored.
        comment = redact(comment).text
        columns = _votes.c
        # INSERT … SELECT from the caller's own answer: the visibility check and the write are one statement.
        source = select(
            literal(uuid7(), columns.id.type),
            Message.id,
            literal(principal.user_id, columns.user_id.type),
            literal(value.value, columns.value.type),
            literal(reasons, columns.reasons.type),
            literal(comment, columns.comment.type),
            literal(1, columns.revision.type),
            literal(now, columns.created_at.type),
            literal(now, columns.updated_at.type),
        ).where(Message.id == message_id, Message.user_id == principal.user_id, Message.role == "assistant")
        insert = dialect_insert(self._session)(_votes).from_select(
            ["id", "message_id", "user_id", "value", "reasons", "comment", "revision", "created_at", "updated_at"],
            source,
        )
        statement = insert.on_conflict_do_update(
            index_elements=[columns.message_id, columns.user_id],
            set_={
                "value": insert.excluded.value,
                "reasons": insert.excluded.reasons,
                "comment": insert.excluded.comment,
                "revision": columns.revision + 1,
                "updated_at": insert.excluded.updated_at,
            },
        ).returning(columns.revision)
        revision = (await self._session.execute(statement)).scalar_one_or_none()
        if revision is None:
            await self._session.rollback()
            raise AnswerNotFoundError(f"No answer {message_id}.")
        await self._record(principal, message_id, revision, VoteAction.SET, value.value, reasons, comment, now)
        await self._session.commit()
        return Vote(message_id, value, [VoteReason(reason) for reason in reasons], comment, revision, now)

    async def withdraw_vote(self, principal: Principal, message_id: UUID) -> None:
        """Withdraw the current vote; withdrawing when there is none changes nothing."""
        now = datetime.now(UTC)
        columns = _votes.c
        statement = (
            update(_votes)
            .where(columns.message_id == message_id, columns.user_id == principal.user_id, columns.value.is_not(None))
            .values(value=None, reasons=[], comment="", revision=columns.revision + 1, updated_at=now)
            .returning(columns.revision)
        )
        revision = (await self._session.execute(statement)).scalar_one_or_none()
        if revision is None:
            await self._session.rollback()
            await self._require_own_answer(principal, message_id)
            return
        await self._record(principal, message_id, revision, VoteAction.WITHDRAW, None, [], "", now)
        await self._session.commit()

    async def _record(
        self,
        principal: Principal,
        message_id: UUID,
        revision: int,
        action: VoteAction,
        value: str | None,
        reasons: list[str],
        comment: str,
        now: datetime,
    ) -> None:
        await self._session.execute(
            _history.insert().values(
                id=uuid7(),
                message_id=message_id,
                user_id=principal.user_id,
                revision=revision,
                action=action.value,
                value=value,
                reasons=reasons,
                comment=comment,
                created_at=now,
                updated_at=now,
            )
        )

    async def get_vote(self, principal: Principal, message_id: UUID) -> Vote:
        await self._require_own_answer(principal, message_id)
        row = await self._session.scalar(
            select(MessageVote).where(MessageVote.message_id == message_id, MessageVote.user_id == principal.user_id)
        )
        if row is None:
            return Vote(message_id, None, [], "", 0, None)
        value = VoteValue(row.value) if row.value else None
        return Vote(message_id, value, [VoteReason(r) for r in row.reasons], row.comment, row.revision, row.updated_at)


class UserDataService:
    """Deletes everything a user said and everything derived from it, in one transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def delete_user_data(self, user_id: UUID) -> DeletedData:
        session = self._session
        if await session.get(User, user_id) is None:
            raise UserNotFoundError(f"No user {user_id}.")
        own_messages = select(Message.id).where(Message.user_id == user_id)

        async def count(model: Any, *where: Any) -> int:
            return await session.scalar(select(func.count()).select_from(model).where(*where)) or 0

        deleted = DeletedData(
            user_id=user_id,
            conversations=await count(Conversation, Conversation.user_id == user_id),
            messages=await count(Message, Message.user_id == user_id),
            votes=await count(MessageVote, MessageVote.user_id == user_id),
            vote_history=await count(VoteHistory, VoteHistory.user_id == user_id),
            review_flags=await count(ReviewFlag, ReviewFlag.message_id.in_(own_messages)),
            review_decisions=await count(ReviewDecision, ReviewDecision.message_id.in_(own_messages)),
        )
        # Explicit deletes rather than trusting ON DELETE CASCADE alone: a SQLite connection opened without
        # `PRAGMA foreign_keys=ON` would otherwise keep the derived rows.
        for model in (ReviewState, ReviewDecision, ReviewFlag, RailEvent, MessageVote, VoteHistory):
            await session.execute(delete(model).where(model.message_id.in_(own_messages)))
        await session.execute(delete(MessageVote).where(MessageVote.user_id == user_id))
        await session.execute(delete(VoteHistory).where(VoteHistory.user_id == user_id))
        await session.execute(delete(Conversation).where(Conversation.user_id == user_id))
        await session.execute(delete(Message).where(Message.user_id == user_id))
        await session.commit()
        return deleted
