"""OpenAI-compatible chat completion request shapes, Ratchet's metadata on answers, and the conversation views.
The answers' wire shapes are the API edge's (server/chat/openai_wire.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from msgspec import Meta, Struct


class TextPart(Struct):
    type: Literal["text"]
    text: str


class ChatMessage(Struct):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Struct):
    include_usage: bool = False


class ChatCompletionRequest(Struct):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=8)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Ratchet extension: continue a stored conversation instead of starting a new one.
    conversation_id: UUID | None = None

    def sampling(self, default_max_tokens: int) -> dict[str, object]:
        """The sampling parameters sent to vLLM; also stored with the answer as provenance."""
        params: dict[str, object] = {"max_tokens": self.max_completion_tokens or self.max_tokens or default_max_tokens}
        for name in ("temperature", "top_p", "stop", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params


class RatchetMetadata(Struct):
    """Added to every answer: what feedback references, and what produced the answer."""

    message_id: UUID
    conversation_id: UUID
    model_alias: str | None
    model_version: str
    adapter: str | None
    system_prompt_version: str | None
    # Guardrail verdicts on this turn (direction, rail, verdict, reason, duration_ms) and the policy that gave them.
    rails: list[dict[str, Any]] = []
    rails_version: str | None = None


class StoredMessage(Struct):
    id: UUID
    role: str
    content: str
    status: str
    created_at: datetime
    model_version: str | None = None
    finish_reason: str | None = None


class ConversationSummary(Struct):
    id: UUID
    title: str
    channel: str
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationSummary):
    messages: list[StoredMessage] = []


class ModelCard(Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "ratchet"
    root: str | None = None
    parent: str | None = None


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"
