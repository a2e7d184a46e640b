"""Slack's rows: the inbox that de-duplicates and keeps events, identities, threads and the answer outbox.
Every write that two replicas could race on is an insert guarded by a unique key, so they converge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.db.engine import dialect_insert
from server.db.models import (
    Conversation,
    Message,
    MessageStatus,
    Role,
    SlackAnswer,
    SlackIdentity,
    SlackInbox,
    SlackThread,
    User,
)
from server.exceptions import NotFoundError


class SlackUserNotFoundError(NotFoundError):
    code = "user_not_found"


@dataclass(frozen=True, slots=True)
class ThreadKey:
    team_id: str
    channel_id: str
    thread_ts: str


class SlackStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # The inbox

    async def receive(self, key: str, kind: str, payload: dict[str, Any], redelivered: bool = False) -> bool:
        """Keep an event before Slack is acknowledged; False when this key was already received (a retry)."""
        if redelivered:
            # Recognised by a read, a retry is not queued behind the writes of the answers in progress.
            async with self._sessions() as session:
                if await session.scalar(select(SlackInbox.id).where(SlackInbox.key == key)) is not None:
                    return False
        async with self._sessions.begin() as session:
            insert = dialect_insert(session)(SlackInbox).values(
                id=uuid7(), key=key, kind=kind, payload=payload, status="received", attempts=0
            )
            result = await session.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
        return bool(result.rowcount)

    async def finish_event(self, key: str, error: str | None = None) -> None:
        status = "failed" if error else "done"
        async with self._sessions.begin() as session:
            await session.execute(
                update(SlackInbox)
                .where(SlackInbox.key == key)
                .values(status=status, error=error, attempts=SlackInbox.attempts + 1, updated_at=datetime.now(UTC))
            )

    async def claim_stale_events(self, older_than_s: float, max_attempts: int) -> list[SlackInbox]:
        """Events acknowledged by a process that never finished them (it died). Each is claimed by one
        compare-and-set on its timestamp, so of several replicas only one re-runs it."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._sessions() as session:
            stale = list(
                await session.scalars(
                    select(SlackInbox)
                    .where(
                        SlackInbox.status == "received",
                        SlackInbox.updated_at < cutoff,
                        SlackInbox.attempts < max_attempts,
                    )
                    .order_by(SlackInbox.created_at)
                    .limit(100)
                )
            )
        claimed = []
        for event in stale:
            async with self._sessions.begin() as session:
                result = await session.execute(
                    update(SlackInbox)
                    .where(SlackInbox.id == event.id, SlackInbox.updated_at == event.updated_at)
                    .values(attempts=SlackInbox.attempts + 1, updated_at=datetime.now(UTC))
                )
            if result.rowcount:
                claimed.append(event)
        return claimed

    # Identities

    async def principal_for(self, team_id: str, slack_user_id: str) -> Principal:
        """The Ratchet user behind a Slack user, created with the user role on first use."""
        async with self._sessions.begin() as session:
            user = await self._linked_user(session, team_id, slack_user_id)
            if user is None:
                name = f"slack:{team_id}:{slack_user_id}"
                await session.execute(
                    dialect_insert(session)(User)
                    .values(id=uuid7(), name=name, role=Role.USER.value)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                user_id = await session.scalar(select(User.id).where(User.name == name))
                await session.execute(
                    dialect_insert(session)(SlackIdentity)
                    .values(id=uuid7(), team_id=team_id, slack_user_id=slack_user_id, user_id=user_id)
                    .on_conflict_do_nothing(index_elements=["team_id", "slack_user_id"])
                )
                user = await self._linked_user(session, team_id, slack_user_id)
            assert user is not None
            return Principal(user.id, user.name, Role(user.role))

    async def link(self, team_id: str, slack_user_id: str, user_name: str) -> Principal:
        """An admin ties a Slack user to an existing account; their later votes and chats count as that user's."""
        async with self._sessions.begin() as session:
            user = await session.scalar(select(User).where(User.name == user_name))
            if user is None:
                raise SlackUserNotFoundError(f"No user named {user_name!r}.")
            statement = dialect_insert(session)(SlackIdentity).values(
                id=uuid7(), team_id=team_id, slack_user_id=slack_user_id, user_id=user.id
            )
            await session.execute(
                statement.on_conflict_do_update(index_elements=["team_id", "slack_user_id"], set_={"user_id": user.id})
            )
            return Principal(user.id, user.name, Role(user.role))

    @staticmethod
    async def _linked_user(session: AsyncSession, team_id: str, slack_user_id: str) -> User | None:
        return await session.scalar(
            select(User)
            .join(SlackIdentity, SlackIdentity.user_id == User.id)
            .where(SlackIdentity.team_id == team_id, SlackIdentity.slack_user_id == slack_user_id)
        )

    # Threads

    async def thread_conversation(self, thread: ThreadKey) -> UUID | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(SlackThread.conversation_id).where(
                    SlackThread.team_id == thread.team_id,
                    SlackThread.channel_id == thread.channel_id,
                    SlackThread.thread_ts == thread.thread_ts,
                )
            )

    async def bind_thread(self, thread: ThreadKey, conversation_id: UUID) -> None:
        """The first answer in a thread names its conversation; a replica that raced it keeps the first."""
        async with self._sessions.begin() as session:
            await session.execute(
                dialect_insert(session)(SlackThread)
                .values(
                    id=uuid7(),
                    team_id=thread.team_id,
                    channel_id=thread.channel_id,
                    thread_ts=thread.thread_ts,
                    conversation_id=conversation_id,
                )
                .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "thread_ts"])
            )

    async def thread_history(self, conversation_id: UUID) -> list[dict[str, str]]:
        """The thread so far as chat messages: questions and the answers users saw (refusals left out)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id, Message.status == MessageStatus.COMPLETE)
                .order_by(Message.created_at, Message.id)
            )
            return [{"role": row.role, "content": row.content} for row in rows if row.content]

    async def conversation_owner(self, conversation_id: UUID) -> UUID | None:
        async with self._sessions() as session:
            return await session.scalar(select(Conversation.user_id).where(Conversation.id == conversation_id))

    # The answer outbox

    async def owe_answer(self, message_id: UUID, thread: ThreadKey) -> None:
        async with self._sessions.begin() as session:
            session.add(
                SlackAnswer(
                    message_id=message_id,
                    team_id=thread.team_id,
                    channel_id=thread.channel_id,
                    thread_ts=thread.thread_ts,
                )
            )

    async def answer_posted(self, message_id: UUID, slack_ts: str | None) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(SlackAnswer)
                .where(SlackAnswer.message_id == message_id)
                .values(slack_ts=slack_ts, updated_at=datetime.now(UTC))
            )

    async def answer_delivered(self, message_id: UUID, slack_ts: str | None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": "failed" if error else "delivered", "error": error}
        if slack_ts:
            values["slack_ts"] = slack_ts
        async with self._sessions.begin() as session:
            await session.execute(
                update(SlackAnswer)
                .where(SlackAnswer.message_id == message_id)
                .values(**values, attempts=SlackAnswer.attempts + 1, updated_at=datetime.now(UTC))
            )

    async def undelivered_answers(self, older_than_s: float, max_attempts: int) -> list[tuple[SlackAnswer, Message]]:
        """Answers stored but not (fully) posted: Slack was down, or the process died mid-delivery."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._sessions() as session:
            rows = await session.execute(
                select(SlackAnswer, Message)
                .join(Message, Message.id == SlackAnswer.message_id)
                .where(
                    SlackAnswer.status.in_(("pending", "failed")),
                    SlackAnswer.updated_at < cutoff,
                    SlackAnswer.attempts < max_attempts,
                    Message.status != MessageStatus.PENDING,
                )
                .order_by(SlackAnswer.created_at)
                .limit(100)
            )
            return [(answer, message) for answer, message in rows.tuples()]

    async def answer_for_slack_message(self, channel_id: str, slack_ts: str) -> UUID | None:
        """The answer a reaction was put on (only the bot's own answers have a row here)."""
        async with self._sessions() as session:
            return await session.scalar(
                select(SlackAnswer.message_id).where(
                    SlackAnswer.channel_id == channel_id, SlackAnswer.slack_ts == slack_ts
                )
            )
