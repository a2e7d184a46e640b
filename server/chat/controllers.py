"""OpenAI-compatible endpoints: chat completions (plain and streamed) and the model list."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Response, Stream

from server.chat import openai_wire
from server.chat.conversations import ConversationService
from server.chat.schemas import (
    ChatCompletionRequest,
    ConversationDetail,
    ConversationSummary,
    ModelCard,
    ModelList,
    StoredMessage,
)
from server.chat.services import ChatService
from server.db.models import Channel
from server.engine.router import ModelRouter


def provide_chat_service(state: State) -> ChatService:
    return state.chat


def provide_conversation_service(state: State) -> ConversationService:
    return state.conversations


def provide_model_router(state: State) -> ModelRouter:
    return state.router


class ChatController(Controller):
    path = "/v1"
    tags = ["chat (OpenAI-compatible)"]
    dependencies = {
        "chat_service": Provide(provide_chat_service, sync_to_thread=False),
        "model_router": Provide(provide_model_router, sync_to_thread=False),
    }

    @post("/chat/completions", status_code=200, summary="Create a chat completion (OpenAI-compatible)")
    async def create_chat_completion(
        self, request: Request[Any, Any, Any], data: ChatCompletionRequest, chat_service: ChatService
    ) -> Response[Any]:
        """Answers like OpenAI's endpoint. The answer's message id (what feedback refers to) is in the
        `ratchet.message_id` field, the `X-Ratchet-Message-Id` header and the completion id `chatcmpl-<id>`."""
        turn = await chat_service.start_turn(request.user, data, Channel.API)
        events = chat_service.stream_turn(turn)
        if data.stream:
            include_usage = data.stream_options is not None and data.stream_options.include_usage
            return Stream(
                openai_wire.sse(turn, events, include_usage),
                media_type="text/event-stream",
                headers=openai_wire.headers(turn, stream=True),
            )
        return Response(await openai_wire.completion(turn, events), headers=openai_wire.headers(turn, stream=False))

    @get("/models", summary="List the model aliases and versions that can be asked for")
    async def list_models(self, model_router: ModelRouter) -> ModelList:
        cards = [
            ModelCard(id=alias, root=version, parent=None, owned_by="ratchet")
            for alias, version in sorted(model_router.aliases.items())
        ]
        cards += [
            ModelCard(
                id=version.name,
                created=int(version.created_at.timestamp()),
                root=version.adapter_path or version.base_model,
                parent=None if version.kind == "base" else version.base_model,
            )
            for version in model_router.versions
            if version.status != "retired"
        ]
        return ModelList(data=cards)


class ConversationController(Controller):
    path = "/api/conversations"
    tags = ["conversations"]
    dependencies = {"conversation_service": Provide(provide_conversation_service, sync_to_thread=False)}

    @get("/", summary="Your conversations, most recent first")
    async def list_conversations(
        self,
        request: Request[Any, Any, Any],
        conversation_service: ConversationService,
        limit: int = Parameter(default=50, ge=1, le=200),
        offset: int = Parameter(default=0, ge=0),
    ) -> list[ConversationSummary]:
        rows = await conversation_service.list_conversations(request.user, limit, offset)
        return [ConversationSummary(row.id, row.title, row.channel, row.created_at, row.updated_at) for row in rows]

    @get("/{conversation_id:uuid}", summary="One of your conversations with its messages")
    async def get_conversation(
        self, request: Request[Any, Any, Any], conversation_id: UUID, conversation_service: ConversationService
    ) -> ConversationDetail:
        conversation, messages = await conversation_service.get_conversation(request.user, conversation_id)
        return ConversationDetail(
            id=conversation.id,
            title=conversation.title,
            channel=conversation.channel,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
            messages=[
                StoredMessage(
                    id=message.id,
                    role=message.role,
                    content=message.content,
                    status=message.status,
                    created_at=message.created_at,
                    model_version=message.model_version,
                    finish_reason=message.finish_reason,
                )
                for message in messages
            ],
        )
