"""A user's own stored conversations; other users' are indistinguishable from missing ones."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import Principal
from server.chat.exceptions import ConversationNotFoundError
from server.db.models import Conversation, Message


class ConversationService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def list_conversations(self, principal: Principal, limit: int, offset: int) -> list[Conversation]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Conversation)
                .where(Conversation.user_id == principal.user_id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return list(rows)

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
