"""Votes: one current vote per user and answer, the last write wins, every change numbered and kept.

Each write is one upsert whose ``revision = revision + 1`` runs under the row lock the conflict takes
(PostgreSQL) or the database write lock (SQLite), with the history row written in the same statement
(PostgreSQL) or the same transaction (SQLite). So
concurrent writers serialise on the row, the unique constraint rules out a second current vote, the history
revisions are gap-free, and the stored vote is the one with the highest acknowledged revision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
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
from server.exceptions import NotFoundError
from server.feedback.schemas import DeletedData, Vote
from server.privacy.redaction import redact

_votes = MessageVote.__table__
_history = VoteHistory.__table__


# INSERT … SELECT from the caller's own answer, so the visibility check and the write are one statement. Written
# as text because SQLAlchemy 2.0 never caches the compiled form of a dialect upsert (`inherit_cache = False`),
# and compiling it on every vote cost more than the database work; the syntax is the same on SQLite ≥ 3.35
# and PostgreSQL.
_UPSERT_SQL = """
    INSERT INTO message_votes (id, message_id, user_id, value, reasons, comment, revision, created_at, updated_at)
    SELECT :id, messages.id, :user_id, :value, :reasons, :comment, 1, :now, :now
    FROM messages
    WHERE messages.id = :message_id AND messages.role = 'assistant'
        AND (messages.user_id = :user_id OR messages.channel = :shared_channel)
    ON CONFLICT (message_id, user_id) DO UPDATE SET
        value = excluded.value,
        reasons = excluded.reasons,
        comment = excluded.comment,
        revision = message_votes.revision + 1,
        updated_at = excluded.updated_at
    RETURNING {returning}
"""
_VOTE_PARAMETERS = (
    bindparam("id", type_=_votes.c.id.type),
    bindparam("message_id", type_=_votes.c.message_id.type),
    bindparam("user_id", type_=_votes.c.user_id.type),
    bindparam("value", type_=_votes.c.value.type),
    bindparam("reasons", type_=_votes.c.reasons.type),
    bindparam("comment", type_=_votes.c.comment.type),
    bindparam("now", type_=_votes.c.updated_at.type),
    bindparam("shared_channel", type_=Message.__table__.c.channel.type),
)
_UPSERT_VOTE = text(_UPSERT_SQL.format(returning="revision")).bindparams(*_VOTE_PARAMETERS)
# PostgreSQL: the upsert and its history row as one statement, run outside an explicit transaction. A single
# statement is atomic on its own, so BEGIN and COMMIT, two of the four round trips a vote took, are not needed.
_UPSERT_VOTE_WITH_HISTORY = text(
    f"""
    WITH vote AS ({_UPSERT_SQL.format(returning="message_id, user_id, value, reasons, comment, revision")})
    INSERT INTO message_vote_history
        (id, message_id, user_id, revision, action, value, reasons, comment, created_at, updated_at)
    SELECT :history_id, message_id, user_id, revision, '{VoteAction.SET.value}', value, reasons, comment, :now, :now
    FROM vote
    RETURNING revision
    """
).bindparams(*_VOTE_PARAMETERS, bindparam("history_id", type_=_history.c.id.type))
# Built once: a statement object memoises its cache key, so per-vote work is binding the parameters.
_INSERT_HISTORY = _history.insert()


class AnswerNotFoundError(NotFoundError):
    """No such answer, or not the caller's to see."""

    code = "answer_not_found"


class UserNotFoundError(NotFoundError):
    code = "user_not_found"


class FeedbackService:
    """Works on short sessions of its own rather than the request's: a PostgreSQL vote needs no session at all,
    which keeps the hottest write in the app to one round trip."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine: AsyncEngine = sessions.kw["bind"]

    @staticmethod
    async def _require_own_answer(
        session: AsyncSession, principal: Principal, message_id: UUID, shared_channel: str | None = None
    ) -> None:
        visible = Message.user_id == principal.user_id
        if shared_channel is not None:
            visible = visible | (Message.channel == shared_channel)
        own = select(Message.id).where(Message.id == message_id, visible, Message.role == "assistant")
        if await session.scalar(own) is None:
            raise AnswerNotFoundError(f"No answer {message_id}.")

    async def set_vote(
        self,
        principal: Principal,
        message_id: UUID,
        value: VoteValue,
        reasons: list[VoteReason],
        comment: str,
        shared_channel: str | None = None,
    ) -> Vote:
        """Store the vote and its history row atomically; raises (storing nothing) if the answer isn't visible.
        An answer is visible to the user it answered, and to everyone in a `shared_channel` (a Slack thread is
        read, and voted on, by the whole channel)."""
        now = datetime.now(UTC)
        reasons = sorted(set(reasons))
        # Comments are kept with training signals: they are redacted before they are stored.
        comment = redact(comment).text
        parameters = {
            "id": uuid7(),
            "message_id": message_id,
            "user_id": principal.user_id,
            "value": value.value,
            "reasons": reasons,
            "comment": comment,
            "now": now,
            "shared_channel": shared_channel,
        }
        if self._engine.dialect.name == "postgresql":
            async with self._engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                result = await autocommit.execute(_UPSERT_VOTE_WITH_HISTORY, {**parameters, "history_id": uuid7()})
                revision = result.scalar_one_or_none()
        else:
            async with self._sessions.begin() as session:
                revision = (await session.execute(_UPSERT_VOTE, parameters)).scalar_one_or_none()
                if revision is not None:
                    change = (VoteAction.SET, value.value, reasons, comment)
                    await _record(session, principal, message_id, revision, *change, now)
        if revision is None:
            raise AnswerNotFoundError(f"No answer {message_id}.")
        return Vote(message_id, value, [VoteReason(reason) for reason in reasons], comment, revision, now)

    async def withdraw_vote(self, principal: Principal, message_id: UUID, shared_channel: str | None = None) -> None:
        """Withdraw the current vote; withdrawing when there is none changes nothing."""
        now = datetime.now(UTC)
        columns = _votes.c
        statement = (
            update(_votes)
            .where(columns.message_id == message_id, columns.user_id == principal.user_id, columns.value.is_not(None))
            .values(value=None, reasons=[], comment="", revision=columns.revision + 1, updated_at=now)
            .returning(columns.revision)
        )
        async with self._sessions.begin() as session:
            revision = (await session.execute(statement)).scalar_one_or_none()
            if revision is None:
                await self._require_own_answer(session, principal, message_id, shared_channel)
                return
            await _record(session, principal, message_id, revision, VoteAction.WITHDRAW, None, [], "", now)

    async def get_vote(self, principal: Principal, message_id: UUID, shared_channel: str | None = None) -> Vote:
        async with self._sessions() as session:
            await self._require_own_answer(session, principal, message_id, shared_channel)
            row = await session.scalar(
                select(MessageVote).where(
                    MessageVote.message_id == message_id, MessageVote.user_id == principal.user_id
                )
            )
        if row is None:
            return Vote(message_id, None, [], "", 0, None)
        value = VoteValue(row.value) if row.value else None
        return Vote(message_id, value, [VoteReason(r) for r in row.reasons], row.comment, row.revision, row.updated_at)

    async def votes_on(self, principal: Principal, message_ids: list[UUID]) -> dict[UUID, Vote]:
        """The caller's current votes on several answers at once (answers without one are left out)."""
        if not message_ids:
            return {}
        async with self._sessions() as session:
            rows = await session.scalars(
                select(MessageVote).where(
                    MessageVote.message_id.in_(message_ids),
                    MessageVote.user_id == principal.user_id,
                    MessageVote.value.is_not(None),
                )
            )
            return {
                row.message_id: Vote(
                    row.message_id,
                    VoteValue(row.value),
                    [VoteReason(r) for r in row.reasons],
                    row.comment,
                    row.revision,
                    row.updated_at,
                )
                for row in rows
            }


async def _record(
    session: AsyncSession,
    principal: Principal,
    message_id: UUID,
    revision: int,
    action: VoteAction,
    value: str | None,
    reasons: list[str],
    comment: str,
    now: datetime,
) -> None:
    await session.execute(
        _INSERT_HISTORY,
        {
            "id": uuid7(),
            "message_id": message_id,
            "user_id": principal.user_id,
            "revision": revision,
            "action": action.value,
            "value": value,
            "reasons": reasons,
            "comment": comment,
            "created_at": now,
            "updated_at": now,
        },
    )


class UserDataService:
    """Deletes everything a user said and everything derived from it, in one transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def delete_named_user_data(self, name: str) -> DeletedData:
        user_id = await self._session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise UserNotFoundError(f"no user named {name!r}")
        return await self.delete_user_data(user_id)

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
