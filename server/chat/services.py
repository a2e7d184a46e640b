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
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.chat.schemas import ChatCompletionRequest, RatchetMetadata
from server.chat.speculation import Speculation, open_stream
from server.db.models import Conversation, Message, MessageStatus
from server.engine.client import EngineClient, EngineRejectedError, EngineUnavailableError
from server.engine.router import ModelRouter, Route
from server.privacy.redaction import redact
from server.rails.base import Rails, RailVerdict
from server.rails.records import count_verdicts, store_verdicts
from server.rails.registry import RailsRegistry
from server.rails.streaming import StreamGuard
from server.settings import Settings
from server.system import metrics

ROUTE = "/v1/chat/completions"


class ConversationNotFoundError(LookupError):
    pass


class InvalidChatError(ValueError):
    pass


class _Delta(msgspec.Struct):
    content: str | None = None
    role: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    id: str = ""
    created: int = 0
    model: str = ""
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
    # The rails this turn runs under (kept across a reload mid-answer), their input verdicts, and the refusal
    # to answer with instead of calling the model when an input rail blocked.
    rails: Rails | None = None
    input_verdicts: tuple[RailVerdict, ...] = ()
    refusal: str | None = None
    # The generation started while the input rails ran (server/chat/speculation), when they let it stand.
    speculation: Speculation[Any] | None = None

    @property
    def metadata(self) -> RatchetMetadata:
        return RatchetMetadata(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            model_alias=self.route.alias,
            model_version=self.route.version,
            adapter=self.route.adapter,
            system_prompt_version=self.system_prompt_version,
            rails=[verdict.to_dict() for verdict in self.input_verdicts],
            rails_version=self.rails.version if self.rails is not None else None,
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
    rail_verdicts: tuple[RailVerdict, ...] = ()


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: EngineClient,
        router: ModelRouter,
        settings: Settings,
        engine_down_reason: Callable[[], str | None],
        rails: RailsRegistry | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._router = router
        self._settings = settings
        self._engine_down_reason = engine_down_reason
        self._rails = rails

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
        messages, system_prompt_version = self._prompt(request)
        sampling = request.sampling(self._settings.default_max_tokens)
        payload = _payload(route, messages, sampling, uuid7(), request.stream)
        rails = self._rails.current if self._rails is not None else None
        speculation = self._speculate(payload, request.stream) if rails is not None else None
        try:
            turn = await self._checked_turn(
                principal, request, channel, route, messages, system_prompt_version, sampling, payload, rails
            )
            # Only a request the rails let through unchanged may keep what was generated for it.
            if speculation is not None and turn.refusal is None and turn.payload is payload:
                turn.speculation, speculation = speculation, None
        finally:
            if speculation is not None:
                # Shielded: a client gone mid-check must still close a stream the speculation already opened.
                with anyio.CancelScope(shield=True):
                    await speculation.abandon()
        return turn

    def _speculate(self, payload: dict[str, Any], stream: bool) -> Speculation[Any] | None:
        """Start generating before the input rails decide, unless that is known to be wasted: speculation off, vLLM
        down (the rails may still refuse without it), or personal data in the question (the rails will redact it,
        so the model must not see it; this is the same redaction the rails use)."""
        if not self._settings.rails_speculative_generation or self._engine_down_reason():
            return None
        question = payload["messages"][-1]["content"]
        if redact(question).changed:
            return None
        if stream:
            return Speculation(open_stream(self._engine, payload))
        return Speculation(self._engine.chat(payload))

    async def _checked_turn(
        self,
        principal: Principal,
        request: ChatCompletionRequest,
        channel: str,
        route: Route,
        messages: list[dict[str, str]],
        system_prompt_version: str | None,
        sampling: dict[str, Any],
        payload: dict[str, Any],
        rails: Rails | None,
    ) -> Turn:
        """Run the input rails, then persist the question and the pending answer the way they decided."""
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
        user_text = redact(messages[-1]["content"]).text if refusal is not None else messages[-1]["content"]
        # The answer's id is the id its vLLM request was sent under (possibly already, speculatively).
        message_id, user_message_id = UUID(payload["request_id"]), uuid7()
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
                    prompt_messages=messages if refusal is None else None,
                    **common,
                )
            )
            if checked is not None:
                # Input verdicts belong to the user's message; an ops reviewer finds blocks and redactions there.
                await session.flush()
                store_verdicts(session, user_message_id, checked.verdicts)
        if checked is not None:
            count_verdicts(checked.verdicts)
        return Turn(
            principal,
            conversation.id,
            user_message_id,
            message_id,
            new_conversation,
            route,
            payload,
            bool(request.stream_options and request.stream_options.include_usage),
            system_prompt_version,
            rails=rails,
            input_verdicts=checked.verdicts if checked is not None else (),
            refusal=refusal,
        )

    async def complete(self, turn: Turn) -> dict[str, Any]:
        if turn.refusal is not None:
            await self._finish(turn, _refused(turn.refusal))
            return _refusal_completion(turn)
        try:
            body = await (turn.speculation.result() if turn.speculation else self._engine.chat(turn.payload))
        except EngineRejectedError:
            await self._discard(turn)
            raise
        except EngineUnavailableError as error:
            await self._finish(turn, _Outcome("", MessageStatus.FAILED, error=str(error)))
            raise
        outcome = await self._checked_outcome(turn, body)
        choice = body["choices"][0]
        choice["message"]["content"] = outcome.content
        choice["finish_reason"] = outcome.finish_reason
        await self._finish(turn, outcome)
        body["model"] = turn.route.version
        body["ratchet"] = msgspec.to_builtins(turn.metadata)
        body["ratchet"]["rails"] += [verdict.to_dict() for verdict in outcome.rail_verdicts]
        return body

    async def _checked_outcome(self, turn: Turn, body: dict[str, Any]) -> _Outcome:
        """The outcome of a non-streamed answer from vLLM, after the output rails (redacted or blocked)."""
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        outcome = _Outcome(
            content=choice["message"].get("content") or "",
            status=MessageStatus.COMPLETE,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )
        if turn.rails is not None:
            checked = await turn.rails.check_output(turn.payload["messages"], outcome.content)
            outcome.content, outcome.rail_verdicts = checked.text, checked.verdicts
            if checked.blocked:
                outcome.status, outcome.finish_reason = MessageStatus.BLOCKED, "content_filter"
        return outcome

    async def open_stream(self, turn: Turn) -> AsyncIterator[bytes]:
        """Start generating; errors before the first byte surface as exceptions (so as 4xx/5xx responses)."""
        if turn.refusal is not None:
            return self._refusal_stream(turn)
        try:
            opening = turn.speculation.result() if turn.speculation else open_stream(self._engine, turn.payload)
            upstream, response = await opening
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
        # With rails on, text is released to the client only once the output rails passed it (server/rails/streaming).
        guard = StreamGuard(turn.rails, turn.payload["messages"]) if turn.rails is not None else None
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
                    if guard is not None and chunk.choices:
                        for piece in await self._guarded_events(turn, guard, chunk, outcome):
                            yield piece
                        if guard.blocked:
                            return
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
            outcome.content = "".join(parts) if guard is None else _shown_text(guard)
            if guard is not None:
                outcome.rail_verdicts = guard.verdicts
            if outcome.status == MessageStatus.COMPLETE and outcome.finish_reason is None:
                outcome.status, outcome.error = MessageStatus.FAILED, "vLLM sent no finish reason"
            with anyio.CancelScope(shield=True):
                await self._finish(turn, outcome)

    async def _guarded_events(self, turn: Turn, guard: StreamGuard, chunk: _Chunk, outcome: _Outcome) -> list[bytes]:
        """The SSE events a vLLM chunk turns into once its text went through the output-rail windows."""
        events: list[bytes] = []
        for choice in chunk.choices:
            released = await guard.feed(choice.delta.content) if choice.delta.content else ""
            if choice.finish_reason and not guard.blocked:
                released += await guard.finish()
            if released:
                if outcome.ttft_s is None:
                    outcome.ttft_s = time.perf_counter() - turn.started
                events.append(_chunk_event(chunk, released))
            if guard.blocked:
                # Nothing of the offending text was sent; closing the upstream (our caller returns) aborts vLLM.
                outcome.status, outcome.finish_reason, outcome.error = MessageStatus.BLOCKED, "content_filter", None
                notice = ("\n\n" if guard.released else "") + (guard.refusal or "")
                events.append(_chunk_event(chunk, notice))
                events.append(_chunk_event(chunk, None, "content_filter", _stream_metadata(turn, guard)))
                events.append(b"data: [DONE]\n\n")
                return events
            if choice.finish_reason:
                outcome.finish_reason = choice.finish_reason
                events.append(_chunk_event(chunk, None, choice.finish_reason, _stream_metadata(turn, guard)))
            elif not choice.delta.content and not released:
                # The opening chunk (role only): nothing to check.
                events.append(_chunk_event(chunk, None, role=choice.delta.role))
        return events

    async def _refusal_stream(self, turn: Turn) -> AsyncIterator[bytes]:
        """An input rail refused: the refusal is the whole answer, streamed as one chunk."""
        refusal = turn.refusal or ""
        await self._finish(turn, _refused(refusal))
        template = _Chunk(id=f"chatcmpl-{turn.message_id}", created=int(time.time()), model=turn.route.version)
        yield _chunk_event(template, None, role="assistant")
        yield _chunk_event(template, refusal)
        yield _chunk_event(template, None, "content_filter", msgspec.to_builtins(turn.metadata))
        yield b"data: [DONE]\n\n"

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
            store_verdicts(session, turn.message_id, outcome.rail_verdicts)
        count_verdicts(outcome.rail_verdicts)
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
            or original.reply_to_id is None
        ):
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        if not original.prompt_messages:
            # Only guardrail refusals have no stored context: the question itself was refused.
            raise InvalidChatError("This answer is a guardrail refusal; its question cannot be asked again.")
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
            rails=self._rails.current if self._rails is not None else None,
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
        # A regenerated answer passes the same output rails as the first one did.
        await self._finish(turn, await self._checked_outcome(turn, body))
        async with self._sessions() as session:
            sibling = await session.get(Message, sibling_id)
        if sibling is None:  # the user deleted their data while it was generating
            raise ConversationNotFoundError(f"No answer {message_id} to regenerate.")
        return sibling


def _payload(
    route: Route, messages: list[dict[str, str]], sampling: dict[str, Any], message_id: UUID, stream: bool | None
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


def _refused(refusal: str) -> _Outcome:
    return _Outcome(refusal, MessageStatus.BLOCKED, finish_reason="content_filter")


def _refusal_completion(turn: Turn) -> dict[str, Any]:
    """The OpenAI-shaped answer to a question an input rail refused (the model was not called)."""
    return {
        "id": f"chatcmpl-{turn.message_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": turn.route.version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": turn.refusal},
                "finish_reason": "content_filter",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "ratchet": msgspec.to_builtins(turn.metadata),
    }


def _chunk_event(
    template: _Chunk,
    content: str | None,
    finish_reason: str | None = None,
    ratchet: dict[str, Any] | None = None,
    role: str | None = None,
) -> bytes:
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": template.id,
        "object": "chat.completion.chunk",
        "created": template.created,
        "model": template.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if ratchet is not None:
        body["ratchet"] = ratchet
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def _stream_metadata(turn: Turn, guard: StreamGuard) -> dict[str, Any]:
    """Sent with the last chunk of a guarded stream: every rail verdict on the turn (also stored)."""
    metadata = msgspec.to_builtins(turn.metadata)
    metadata["rails"] += [verdict.to_dict() for verdict in guard.verdicts]
    return metadata


def _shown_text(guard: StreamGuard) -> str:
    """What the client received: the released text, then the refusal if the output rails stopped the answer."""
    if guard.refusal is None:
        return guard.released
    return guard.released + ("\n\n" if guard.released else "") + guard.refusal


def _error_event(message: str) -> bytes:
    body = {"error": {"message": message, "type": "engine_unavailable", "code": "503"}}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


class ConversationService:
    """A user's own stored conversations; other users' are indistinguishable from missing ones."""

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
