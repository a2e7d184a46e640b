"""Regeneration (the feedback feature): a new answer to a stored answer's exact context, stored as its sibling.

It is a turn whose question is already stored: it adds no user message, so when vLLM refuses the request only
the new sibling is removed, never the question it answers. The answer goes through the same output rails and
is stored the same way as any other (server/chat/answers.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import Principal
from server.chat.answers import answer_events
from server.chat.exceptions import ConversationNotFoundError, InvalidChatError
from server.chat.generation import Generator
from server.chat.turns import Provenance, Turn, TurnStore, record_answer
from server.db.models import Message
from server.engine.client import EngineClient, EngineUnavailableError
from server.models.services import ModelRouter, Route
from server.models.soft_prompts import SoftPrompts
from server.rails.registry import RailsRegistry


class RegenerationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        turns: TurnStore,
        engine: EngineClient,
        router: ModelRouter,
        engine_down_reason: Callable[[], str | None],
        rails: RailsRegistry | None = None,
        served_sampling: Mapping[str, Any] | None = None,
        soft_prompts: SoftPrompts | None = None,
        own_engine: Callable[[str], EngineClient | None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._turns = turns
        self._engine = engine
        self._router = router
        self._engine_down_reason = engine_down_reason
        self._rails = rails
        self._served_sampling = dict(served_sampling or {})
        # Without the soft prompts' embeddings, every version is asked for as a chat completion.
        self._generator = Generator(engine, router, soft_prompts, own_engine) if soft_prompts is not None else None

    async def regenerate(self, principal: Principal, message_id: UUID) -> Message:
        """A new answer to a stored answer's exact context (system prompt included), stored as its sibling:
        same question (reply_to_id), linked back through regenerated_from_id. Nothing is stored when the request
        is refused before or by vLLM; vLLM going down mid-way leaves a failed sibling, as a chat turn does."""
        async with self._sessions() as session:
            original = await session.get(Message, message_id)
        if (
            original is None
            or original.user_id != principal.user_id
            or original.role != "assistant"
            or original.reply_to_id is None
        ):
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        if not original.prompt_messages:
            # Only guardrail refusals have no stored context: the question itself was refused.
            raise InvalidChatError("This answer is a guardrail refusal; its question cannot be asked again.")
        route = self._router.resolve(original.model_alias or original.model_version, principal.user_id)
        if reason := self._engine_down_reason():
            raise EngineUnavailableError(reason)
        # A fixed seed would reproduce the very answer being replaced; an answer stored before the served defaults
        # were recorded gets them for what it left out.
        kept = {name: value for name, value in (original.sampling or {}).items() if name != "seed"}
        sampling = {**self._served_sampling, **kept}
        provenance = Provenance(
            model_alias=route.alias,
            model_version=route.version,
            adapter=route.adapter,
            system_prompt_version=original.system_prompt_version,
            sampling=sampling,
            prompt_messages=original.prompt_messages,
        )
        async with self._sessions.begin() as session:
            sibling_id = record_answer(
                session,
                conversation_id=original.conversation_id,
                user_id=original.user_id,
                channel=original.channel,
                reply_to_id=original.reply_to_id,
                provenance=provenance,
                regenerated_from_id=original.id,
            )
        payload = {"model": route.version, "messages": original.prompt_messages, **sampling}
        payload["request_id"] = str(sibling_id)
        turn = Turn(
            conversation_id=original.conversation_id,
            user_message_id=original.reply_to_id,
            message_id=sibling_id,
            route=route,
            payload=payload,
            system_prompt_version=original.system_prompt_version,
            owns_question=False,
            rails=self._rails.current if self._rails is not None else None,
        )
        turn.generation = await self._turns.accept(turn, self._generate(route, payload))
        async for _ in answer_events(turn, self._turns):
            pass  # the answer is stored when its events end
        async with self._sessions() as session:
            sibling = await session.get(Message, sibling_id)
        if sibling is None:  # the user deleted their data while it was generating
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        return sibling

    async def _generate(self, route: Route, payload: dict[str, Any]) -> dict[str, Any]:
        if self._generator is None:
            return await self._engine.chat(payload)
        body = await self._generator.generate(route, payload, stream=False)
        assert isinstance(body, dict)  # not streamed
        return body
