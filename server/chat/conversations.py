"""A user's own stored conversations; other users' are indistinguishable from missing ones."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import Principal
from server.chat.exceptions import ConversationNotFoundError, InvalidChatError
from server.db.models import Conversation, Message


class ConversationService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def list_conversations(
        self, principal: Principal, limit: int, offset: int, title_contains: str = ""
    ) -> list[Conversation]:
        """Most recent first; `title_contains` keeps those whose title has that text, ignoring case."""
        query = select(Conversation).where(Conversation.user_id == principal.user_id)
        if title_contains:
            query = query.where(Conversation.title.icontains(title_contains, autoescape=True))
        async with self._sessions() as session:
            rows = await session.scalars(
                query.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit).offset(offset)
            )
            return list(rows)

    async def rename_conversation(self, principal: Principal, conversation_id: UUID, title: str) -> Conversation:
        title = title.strip()
        if not title:
            raise InvalidChatError("A conversation's title cannot be empty.")
        async with self._sessions.begin() as session:
            conversation = await self._own(session, principal, conversation_id)
            conversation.title = title[:200]
        return conversation

    async def delete_conversation(self, principal: Principal, conversation_id: UUID) -> None:
        """The conversation, its messages and what hangs off them (votes, verdicts, review rows): the foreign keys
        cascade (the engine turns them on for SQLite too)."""
        async with self._sessions.begin() as session:
            await self._own(session, principal, conversation_id)
            await session.execute(delete(Conversation).where(Conversation.id == conversation_id))

    @staticmethod
    async def _own(session: AsyncSession, principal: Principal, conversation_id: UUID) -> Conversation:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None or conversation.user_id != principal.user_id:
            raise ConversationNotFoundError(f"No conversation {conversation_id}.")
        return conversation

    async def get_conversation(self, principal: Principal, conversation_id: UUID) -> tuple[Conversation, list[Message]]:
        async with self._sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None or conversation.user_id != principal.user_id:
                raise ConversationNotFoundError(f"No conversation {conversation_id}.")
            messages = await session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.created_at, Message.id)
            )
            return conversation, list(messages)
