"""The chat path: resolve the model, persist the turn, generate through vLLM (streamed or not), record
what produced the answer."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import httpx
import msgspec
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.chat.schemas import ChatCompletionRequest, RatchetMetadata
from server.db.models import Conversation, Message, MessageStatus
from server.engine.client import EngineClient, EngineRejectedError, EngineUnavailableError
from server.engine.router import ModelRouter, Route
from server.settings import Settings
from server.system import metrics

ROUTE = "chat.completions"


class ConversationNotFoundError(LookupError):
    pass


class InvalidChatError(ValueError):
    pass


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


@dataclass(slots=True)
class Turn:
    """One user message and the answer being produced for it."""

    principal: Principal
    conversation_id: UUID
    user_message_id: UUID
    message_id: UUID
    new_conversation: bool
    route: Route
    payload: dict[str, Any]
    include_usage: bool
    system_prompt_version: str | None
    started: float = field(default_factory=time.perf_counter)

    @property
    def metadata(self) -> RatchetMetadata:
        return RatchetMetadata(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            model_alias=self.route.alias,
            model_version=self.route.version,
            adapter=self.route.adapter,
            system_prompt_version=self.system_prompt_version,
        )


@dataclass(slots=True)
class _Outcome:
    content: str
    status: MessageStatus
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    error: str | None = None


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: EngineClient,
        router: ModelRouter,
        settings: Settings,
        engine_down_reason: Callable[[], str | None],
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._router = router
        self._settings = settings
        self._engine_down_reason = engine_down_reason

    def _prompt(self, request: ChatCompletionRequest) -> tuple[list[dict[str, str]], str | None]:
        messages = [{"role": message.role, "content": message.text()} for message in request.messages]
        if messages[0]["role"] == "system":
            version = "client-" + hashlib.sha256(messages[0]["content"].encode()).hexdigest()[:12]
            return messages, version
        system = {"role": "system", "content": self._settings.system_prompt}
        return [system, *messages], self._settings.system_prompt_version

    async def start_turn(self, principal: Principal, request: ChatCompletionRequest, channel: str) -> Turn:
        """Validate and persist the user's message and a pending answer; nothing is stored if this raises."""
        if request.messages[-1].role != "user":
            raise InvalidChatError("The last message must have role `user`.")
        if not request.messages[-1].text().strip():
            raise InvalidChatError("The last user message is empty.")
        route = self._router.resolve(request.model)
        if reason := self._engine_down_reason():
            raise EngineUnavailableError(reason)
        messages, system_prompt_version = self._prompt(request)
        sampling = request.sampling(self._settings.default_max_tokens)
        user_text = messages[-1]["content"]
        message_id, user_message_id = uuid7(), uuid7()
        async with self._sessions.begin() as session:
            if request.conversation_id is not None:
                conversation = await session.get(Conversation, request.conversation_id)
                if conversation is None or conversation.user_id != principal.user_id:
                    raise ConversationNotFoundError(f"No conversation {request.conversation_id}.")
                new_conversation = False
            else:
                conversation = Conversation(
                    id=uuid7(), user_id=principal.user_id, channel=channel, title=user_text[:80]
                )
                session.add(conversation)
                new_conversation = True
            common = {"conversation_id": conversation.id, "user_id": principal.user_id, "channel": channel}
            session.add(Message(id=user_message_id, role="user", content=user_text, **common))
            session.add(
                Message(
                    id=message_id,
                    role="assistant",
                    status=MessageStatus.PENDING,
                    reply_to_id=user_message_id,
                    model_alias=route.alias,
                    model_version=route.version,
                    adapter=route.adapter,
                    system_prompt_version=system_prompt_version,
                    sampling=sampling,
                    prompt_messages=messages,
                    **common,
                )
            )
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        payload: dict[str, Any] = {
            "model": route.version,
            "messages": messages,
            **sampling,
            # vLLM then names the completion chatcmpl-<message id>, the id feedback refers to.
            "request_id": str(message_id),
        }
        if request.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return Turn(
            principal,
            conversation.id,
            user_message_id,
            message_id,
            new_conversation,
            route,
            payload,
            include_usage,
            system_prompt_version,
        )

    async def complete(self, turn: Turn) -> dict[str, Any]:
        try:
            body = await self._engine.chat(turn.payload)
        except EngineRejectedError:
            await self._discard(turn)
            raise
        except EngineUnavailableError as error:
            await self._finish(turn, _Outcome("", MessageStatus.FAILED, error=str(error)))
            raise
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        await self._finish(
            turn,
            _Outcome(
                content=choice["message"].get("content") or "",
                status=MessageStatus.COMPLETE,
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            ),
        )
        body["model"] = turn.route.version
        body["ratchet"] = msgspec.to_builtins(turn.metadata)
        return body

    async def open_stream(self, turn: Turn) -> AsyncIterator[bytes]:
        """Start generating; errors before the first byte surface as exceptions (so as 4xx/5xx responses)."""
        upstream = self._engine.stream_chat(turn.payload)
        try:
            response = await upstream.__aenter__()
        except EngineRejectedError:
            await self._discard(turn)
            raise
        except EngineUnavailableError as error:
            await self._finish(turn, _Outcome("", MessageStatus.FAILED, error=str(error)))
            raise
        return self._relay(turn, upstream, response)

    async def _relay(
        self, turn: Turn, upstream: AbstractAsyncContextManager[httpx.Response], response: httpx.Response
    ) -> AsyncIterator[bytes]:
        parts: list[str] = []
        outcome = _Outcome("", MessageStatus.FAILED, error="the stream from vLLM ended before it finished")
        buffer = b""
        try:
            async for data in response.aiter_raw():
                buffer += data
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[:end], buffer[end + 2 :]
                    if not event.startswith(b"data: "):
                        continue
                    body = event[6:]
                    if body == b"[DONE]":
                        outcome.status, outcome.error = MessageStatus.COMPLETE, None
                        yield b"data: [DONE]\n\n"
                        continue
                    chunk = _chunk_decoder.decode(body)
                    if chunk.error is not None:
                        outcome.error = f"vLLM failed mid-answer: {chunk.error.get('message', chunk.error)}"
                        yield event + b"\n\n"
                        return
                    if chunk.usage is not None:
                        outcome.prompt_tokens = chunk.usage.prompt_tokens
                        outcome.completion_tokens = chunk.usage.completion_tokens
                        if not chunk.choices and not turn.include_usage:
                            continue
                    for choice in chunk.choices:
                        if choice.delta.content:
                            if outcome.ttft_s is None:
                                outcome.ttft_s = time.perf_counter() - turn.started
                            parts.append(choice.delta.content)
                        if choice.finish_reason:
                            outcome.finish_reason = choice.finish_reason
                    yield event + b"\n\n"
        except httpx.HTTPError as error:
            outcome.error = f"lost vLLM mid-answer: {type(error).__name__}"
            yield _error_event(outcome.error)
        except BaseException:
            # The client went away (cancellation): closing the upstream below aborts the generation in vLLM.
            outcome.status, outcome.error = MessageStatus.ABORTED, "the client disconnected"
            raise
        finally:
            await upstream.__aexit__(None, None, None)
            outcome.content = "".join(parts)
            if outcome.status == MessageStatus.COMPLETE and outcome.finish_reason is None:
                outcome.status, outcome.error = MessageStatus.FAILED, "vLLM sent no finish reason"
            with anyio.CancelScope(shield=True):
                await self._finish(turn, outcome)

    async def _finish(self, turn: Turn, outcome: _Outcome) -> None:
        elapsed = time.perf_counter() - turn.started
        version = turn.route.version
        async with self._sessions.begin() as session:
            await session.execute(
                update(Message)
                .where(Message.id == turn.message_id)
                .values(
                    content=outcome.content,
                    status=outcome.status,
                    finish_reason=outcome.finish_reason,
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                    latency_ms=round(elapsed * 1000, 2),
                    ttft_ms=round(outcome.ttft_s * 1000, 2) if outcome.ttft_s is not None else None,
                    error=outcome.error,
                )
            )
        metrics.REQUESTS.labels(ROUTE, version, outcome.status).inc()
        metrics.LATENCY.labels(ROUTE, version).observe(elapsed)
        if outcome.ttft_s is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(ROUTE, version).observe(outcome.ttft_s)
        if outcome.prompt_tokens:
            metrics.TOKENS.labels(version, "prompt").inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            metrics.TOKENS.labels(version, "completion").inc(outcome.completion_tokens)
        if outcome.status == MessageStatus.FAILED:
            metrics.ERRORS.labels(ROUTE, version, "engine").inc()

    async def _discard(self, turn: Turn) -> None:
        """vLLM refused the input as invalid: remove every row this turn wrote."""
        async with self._sessions.begin() as session:
            await session.execute(delete(Message).where(Message.id == turn.message_id))
            await session.execute(delete(Message).where(Message.id == turn.user_message_id))
            if turn.new_conversation:
                await session.execute(delete(Conversation).where(Conversation.id == turn.conversation_id))
        metrics.ERRORS.labels(ROUTE, turn.route.version, "rejected").inc()

    async def fail_stale_pending(self) -> int:
        """Answers left pending by a process that died mid-generation are failed, never left looking live."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self._settings.vllm_request_timeout_s)
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Message)
                .where(Message.status == MessageStatus.PENDING, Message.created_at < cutoff)
                .values(status=MessageStatus.FAILED, error="interrupted: the server stopped mid-answer")
            )
        return result.rowcount or 0

    # Regeneration (the feedback feature). Kept apart from the turn above: it adds no user message, so a
    # refusal by vLLM must remove only the new sibling, never the question it answers.

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
            or not original.prompt_messages
            or original.reply_to_id is None
        ):
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        route = self._router.resolve(original.model_alias or original.model_version)
        if reason := self._engine_down_reason():
            raise EngineUnavailableError(reason)
        # A fixed seed would reproduce the very answer being replaced.
        sampling = {name: value for name, value in (original.sampling or {}).items() if name != "seed"}
        sibling_id = uuid7()
        async with self._sessions.begin() as session:
            session.add(
                Message(
                    id=sibling_id,
                    conversation_id=original.conversation_id,
                    user_id=original.user_id,
                    role="assistant",
                    channel=original.channel,
                    status=MessageStatus.PENDING,
                    reply_to_id=original.reply_to_id,
                    regenerated_from_id=original.id,
                    model_alias=route.alias,
                    model_version=route.version,
                    adapter=route.adapter,
                    system_prompt_version=original.system_prompt_version,
                    sampling=sampling,
                    prompt_messages=original.prompt_messages,
                )
            )
        payload = {"model": route.version, "messages": original.prompt_messages, **sampling}
        payload["request_id"] = str(sibling_id)
        turn = Turn(
            principal,
            original.conversation_id,
            original.reply_to_id,
            sibling_id,
            False,
            route,
            payload,
            False,
            original.system_prompt_version,
        )
        try:
            body = await self._engine.chat(payload)
        except EngineRejectedError:
            async with self._sessions.begin() as session:
                await session.execute(delete(Message).where(Message.id == sibling_id))
            metrics.ERRORS.labels(ROUTE, route.version, "rejected").inc()
            raise
        except EngineUnavailableError as error:
            await self._finish(turn, _Outcome("", MessageStatus.FAILED, error=str(error)))
            raise
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        await self._finish(
            turn,
            _Outcome(
                content=choice["message"].get("content") or "",
                status=MessageStatus.COMPLETE,
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            ),
        )
        async with self._sessions() as session:
            sibling = await session.get(Message, sibling_id)
        if sibling is None:  # the user deleted their data while it was generating
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        return sibling


def _error_event(message: str) -> bytes:
    body = {"error": {"message": message, "type": "engine_unavailable", "code": "503"}}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"
