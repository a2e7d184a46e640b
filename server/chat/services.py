"""The chat path every channel (the OpenAI-compatible API, the web UI, Slack) serves a turn through.

For channel authors. A channel turns its input into a `ChatCompletionRequest` (the messages so far, ending with
the user's; `conversation_id` to continue a stored conversation; `stream=True` for text in pieces as it is
produced, `False` for the whole answer in one piece) and then:

    turn = await chat_service.start_turn(principal, request, channel)
    async for event in chat_service.stream_turn(turn):
        match event:
            case TextDelta(text): ...          # show it: the output rails already passed it
            case Finished(): ...               # done; event.metadata.message_id is what feedback refers to
            case Failed(message): ...          # vLLM failed mid-answer; what was shown is stored as failed

`start_turn` validates the request, runs the input rails (a refused question becomes a turn whose answer is the
refusal, without calling the model), stores the question and a pending answer, and has vLLM take the request on.
Before anything can be shown it raises the chat and engine errors, each a subclass of the bases in
`server/exceptions.py` that says how to report it: InvalidChatError / EngineRejectedError (400, nothing stored),
ConversationNotFoundError / UnknownModelError (404, nothing stored), EngineUnavailableError (503; nothing stored
when vLLM was known down, otherwise the answer is kept as failed). `turn.message_id` is the answer's id from then.

`stream_turn` never raises those: it yields `TextDelta`* then exactly one `Finished` or `Failed` (see
server/chat/events.py), and the answer is stored before that last event. A channel that stops early must close
the iterator (`contextlib.aclosing`, or being cancelled does it): that aborts the generation in vLLM and stores
what was shown as an aborted answer. Encoding events into a wire format is the channel's job, at its edge
(the API's is server/chat/openai_wire.py)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any
from uuid import UUID

import anyio
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.chat.answers import answer_events
from server.chat.events import ChatEvent
from server.chat.exceptions import InvalidChatError
from server.chat.generation import Generator
from server.chat.schemas import ChatCompletionRequest
from server.chat.speculation import Speculation
from server.chat.turns import Generation, Provenance, Turn, TurnStore
from server.engine.client import EngineClient, EngineUnavailableError
from server.models.generation_defaults import served_defaults
from server.models.services import ModelRouter, Route
from server.models.soft_prompts import SoftPrompts
from server.privacy.redaction import redact
from server.rails.base import Rails
from server.rails.registry import RailsRegistry
from server.settings import Settings


class ChatService:
    def __init__(
        self,
        turns: TurnStore,
        engine: EngineClient,
        router: ModelRouter,
        settings: Settings,
        engine_down_reason: Callable[[], str | None],
        rails: RailsRegistry | None = None,
        soft_prompts: SoftPrompts | None = None,
        own_engine: Callable[[str], EngineClient | None] | None = None,
    ) -> None:
        self._turns = turns
        self._engine = engine
        self._router = router
        self._generator = Generator(engine, router, soft_prompts or SoftPrompts.for_settings(settings), own_engine)
        self._settings = settings
        self._engine_down_reason = engine_down_reason
        self._rails = rails

    async def start_turn(self, principal: Principal, request: ChatCompletionRequest, channel: str) -> Turn:
        """Validate, check and store the question and a pending answer, and start generating the answer."""
        if request.messages[-1].role != "user":
            raise InvalidChatError("The last message must have role `user`.")
        if not request.messages[-1].text().strip():
            raise InvalidChatError("The last user message is empty.")
        route = self._router.resolve(request.model, principal.user_id)
        messages, system_prompt_version = self._prompt(request)
        sampling = request.sampling(served_defaults(self._settings).sampling())
        payload = _payload(route, messages, sampling, uuid7(), request.stream)
        rails = self._rails.current if self._rails is not None else None
        speculation = self._speculate(route, payload, request.stream) if rails is not None else None
        kept: Speculation[Generation] | None = None
        try:
            turn = await self._checked_turn(
                principal, request.conversation_id, channel, route, system_prompt_version, sampling, payload, rails
            )
            # Only a request the rails let through unchanged may keep what was generated for it.
            if speculation is not None and turn.refusal is None and turn.payload is payload:
                kept, speculation = speculation, None
        finally:
            if speculation is not None:
                # Shielded: a client gone mid-check must still close a stream the speculation already opened.
                with anyio.CancelScope(shield=True):
                    await speculation.abandon()
        if turn.refusal is None:
            generating = kept.result() if kept is not None else self._generate(route, turn.payload, request.stream)
            turn.generation = await self._turns.accept(turn, generating)
        return turn

    def stream_turn(self, turn: Turn) -> AsyncGenerator[ChatEvent, None]:
        """The answer's events: TextDelta* then Finished or Failed (see the module docstring)."""
        return answer_events(turn, self._turns)

    def _prompt(self, request: ChatCompletionRequest) -> tuple[list[dict[str, str]], str | None]:
        messages = [{"role": message.role, "content": message.text()} for message in request.messages]
        if messages[0]["role"] == "system":
            version = "client-" + hashlib.sha256(messages[0]["content"].encode()).hexdigest()[:12]
            return messages, version
        system = {"role": "system", "content": self._settings.system_prompt}
        return [system, *messages], self._settings.system_prompt_version

    def _generate(self, route: Route, payload: dict[str, Any], stream: bool) -> Coroutine[Any, Any, Generation]:
        return self._generator.generate(route, payload, stream)

    def _speculate(self, route: Route, payload: dict[str, Any], stream: bool) -> Speculation[Generation] | None:
        """Start generating before the input rails decide, unless that is known to be wasted: speculation off, vLLM
        down (the rails may still refuse without it), or personal data in the question (the rails will redact it,
        so the model must not see it; this is the same redaction the rails use)."""
        if not self._settings.rails_speculative_generation or self._engine_down_reason():
            return None
        question = payload["messages"][-1]["content"]
        if redact(question).changed:
            return None
        return Speculation(self._generate(route, payload, stream))

    async def _checked_turn(
        self,
        principal: Principal,
        conversation_id: UUID | None,
        channel: str,
        route: Route,
        system_prompt_version: str | None,
        sampling: dict[str, Any],
        payload: dict[str, Any],
        rails: Rails | None,
    ) -> Turn:
        """Run the input rails, then store the question and the pending answer the way they decided."""
        messages: list[dict[str, str]] = payload["messages"]
        checked = await rails.check_input(messages) if rails is not None else None
        refusal = checked.text if checked is not None and checked.blocked else None
        # A refusal needs no model, so vLLM being down only matters for questions that pass the rails.
        if refusal is None and (reason := self._engine_down_reason()):
            raise EngineUnavailableError(reason)
        if checked is not None and checked.modified and refusal is None:
            # The model (and the store) only ever see the redacted question.
            messages = [*messages[:-1], {"role": "user", "content": checked.text}]
            payload = {**payload, "messages": messages}
        # A refused question is kept for review, but never with the personal data it may carry.
        question = redact(messages[-1]["content"]).text if refusal is not None else messages[-1]["content"]
        provenance = Provenance(
            model_alias=route.alias,
            model_version=route.version,
            adapter=route.adapter,
            system_prompt_version=system_prompt_version,
            sampling=sampling,
            prompt_messages=messages if refusal is None else None,
        )
        input_verdicts = checked.verdicts if checked is not None else ()
        # The answer's id is the id its vLLM request was sent under (possibly already, speculatively).
        recorded = await self._turns.begin(
            principal,
            conversation_id,
            channel,
            question,
            provenance,
            UUID(payload["request_id"]),
            input_verdicts,
        )
        return Turn(
            conversation_id=recorded.conversation_id,
            user_message_id=recorded.question_id,
            message_id=recorded.answer_id,
            route=route,
            payload=payload,
            system_prompt_version=system_prompt_version,
            new_conversation=recorded.new_conversation,
            rails=rails,
            input_verdicts=input_verdicts,
            refusal=refusal,
        )


def _payload(
    route: Route, messages: list[dict[str, str]], sampling: dict[str, Any], message_id: UUID, stream: bool
) -> dict[str, Any]:
    """The request to vLLM for one turn."""
    payload: dict[str, Any] = {
        "model": route.version,
        "messages": messages,
        **sampling,
        # vLLM then names the completion chatcmpl-<message id>, the id feedback refers to.
        "request_id": str(message_id),
    }
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload
