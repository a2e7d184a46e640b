"""A chat turn's rows and what is counted about it. The question and a pending answer are stored when a turn
starts; the answer is finished (complete, blocked, failed, aborted) when it ends, or every row the turn wrote is
removed when vLLM refuses the request. `record_turn` and `record_answer` are the one place the row shape is
written: the chat path, regeneration and the test and bench seeders all store turns through them."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.chat.exceptions import ConversationNotFoundError
from server.chat.schemas import RatchetMetadata
from server.db.models import Conversation, Message, MessageStatus
from server.engine.client import ChatStream, EngineRejectedError, EngineUnavailableError
from server.engine.router import Route
from server.rails.base import Rails, RailVerdict
from server.rails.records import count_verdicts, store_verdicts
from server.system import metrics

ROUTE = "/v1/chat/completions"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Provenance:
    """What produced an answer, stored with it."""

    model_alias: str | None
    model_version: str
    adapter: str | None
    system_prompt_version: str | None
    sampling: dict[str, Any] | None
    # The exact messages vLLM was given; None for a guardrail refusal (the question itself was refused).
    prompt_messages: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class RecordedTurn:
    conversation_id: UUID
    question_id: UUID
    answer_id: UUID
    new_conversation: bool


def _timestamps(created_at: datetime | None) -> dict[str, datetime]:
    return {} if created_at is None else {"created_at": created_at, "updated_at": created_at}


def record_answer(
    session: AsyncSession,
    *,
    conversation_id: UUID,
    user_id: UUID,
    channel: str,
    reply_to_id: UUID,
    provenance: Provenance,
    answer_id: UUID | None = None,
    content: str = "",
    status: MessageStatus = MessageStatus.PENDING,
    finish_reason: str | None = None,
    regenerated_from_id: UUID | None = None,
    created_at: datetime | None = None,
) -> UUID:
    """Adds an assistant answer to `reply_to_id` (pending unless told otherwise) to the session; returns its id."""
    answer_id = answer_id or uuid7()
    session.add(
        Message(
            id=answer_id,
            conversation_id=conversation_id,
            user_id=user_id,
            role="assistant",
            channel=channel,
            content=content,
            status=status,
            finish_reason=finish_reason,
            reply_to_id=reply_to_id,
            regenerated_from_id=regenerated_from_id,
            model_alias=provenance.model_alias,
            model_version=provenance.model_version,
            adapter=provenance.adapter,
            system_prompt_version=provenance.system_prompt_version,
            sampling=provenance.sampling,
            prompt_messages=provenance.prompt_messages,
            **_timestamps(created_at),
        )
    )
    return answer_id


def record_turn(
    session: AsyncSession,
    *,
    user_id: UUID,
    channel: str,
    question: str,
    provenance: Provenance,
    conversation_id: UUID | None = None,
    answer_id: UUID | None = None,
    answer: str = "",
    status: MessageStatus = MessageStatus.PENDING,
    finish_reason: str | None = None,
    created_at: datetime | None = None,
) -> RecordedTurn:
    """Adds a user's question and its answer to the session, in `conversation_id` or in a new conversation
    titled after the question. Rows are inserted in the order added, so the question precedes its answer."""
    new_conversation = conversation_id is None
    if conversation_id is None:
        conversation_id = uuid7()
        session.add(
            Conversation(
                id=conversation_id, user_id=user_id, channel=channel, title=question[:80], **_timestamps(created_at)
            )
        )
    question_id = uuid7()
    session.add(
        Message(
            id=question_id,
            conversation_id=conversation_id,
            user_id=user_id,
            role="user",
            channel=channel,
            content=question,
            **_timestamps(created_at),
        )
    )
    answer_id = record_answer(
        session,
        conversation_id=conversation_id,
        user_id=user_id,
        channel=channel,
        reply_to_id=question_id,
        provenance=provenance,
        answer_id=answer_id,
        content=answer,
        status=status,
        finish_reason=finish_reason,
        created_at=created_at,
    )
    return RecordedTurn(conversation_id, question_id, answer_id, new_conversation)


@dataclass(slots=True)
class Turn:
    """One answer being produced, and the rows it is stored in."""

    conversation_id: UUID
    user_message_id: UUID
    message_id: UUID
    route: Route
    payload: dict[str, Any]
    system_prompt_version: str | None
    new_conversation: bool = False
    # A regenerated answer replies to a question an earlier turn stored: removing the turn must leave it.
    owns_question: bool = True
    started: float = field(default_factory=time.perf_counter)
    # The rails this turn runs under (kept across a reload mid-answer), their input verdicts, and the refusal
    # to answer with instead of calling the model when an input rail blocked.
    rails: Rails | None = None
    input_verdicts: tuple[RailVerdict, ...] = ()
    refusal: str | None = None
    # What vLLM took the request on with: an open stream, or the whole (non-streamed) completion.
    generation: ChatStream | dict[str, Any] | None = None

    def metadata(self, output_verdicts: tuple[RailVerdict, ...] = ()) -> RatchetMetadata:
        return RatchetMetadata(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            model_alias=self.route.alias,
            model_version=self.route.version,
            adapter=self.route.adapter,
            system_prompt_version=self.system_prompt_version,
            rails=[verdict.to_dict() for verdict in (*self.input_verdicts, *output_verdicts)],
            rails_version=self.rails.version if self.rails is not None else None,
        )


@dataclass(slots=True)
class Outcome:
    """How an answer ended, as stored with it."""

    content: str = ""
    status: MessageStatus = MessageStatus.FAILED
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    error: str | None = None
    rail_verdicts: tuple[RailVerdict, ...] = ()


class TurnStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def begin(
        self,
        principal: Principal,
        conversation_id: UUID | None,
        channel: str,
        question: str,
        provenance: Provenance,
        answer_id: UUID,
        input_verdicts: tuple[RailVerdict, ...],
    ) -> RecordedTurn:
        """Stores the question, a pending answer and the input rails' verdicts on the question, in one
        transaction; continues `conversation_id` only if it is the principal's own."""
        async with self._sessions.begin() as session:
            if conversation_id is not None:
                conversation = await session.get(Conversation, conversation_id)
                if conversation is None or conversation.user_id != principal.user_id:
                    raise ConversationNotFoundError(f"No conversation {conversation_id}.")
            recorded = record_turn(
                session,
                user_id=principal.user_id,
                channel=channel,
                question=question,
                provenance=provenance,
                conversation_id=conversation_id,
                answer_id=answer_id,
            )
            if input_verdicts:
                # Input verdicts belong to the user's message; an ops reviewer finds blocks and redactions there.
                await session.flush()
                store_verdicts(session, recorded.question_id, input_verdicts)
        count_verdicts(input_verdicts)
        return recorded

    async def accept(self, turn: Turn, request: Awaitable[T]) -> T:
        """vLLM's answer to the turn's request (a stream, or a whole completion). If vLLM refuses the request as
        invalid, every row the turn wrote is removed; if it is down, the answer is stored as failed. Either
        way the error is raised on, for the channel to report."""
        try:
            return await request
        except EngineRejectedError:
            await self.discard(turn)
            raise
        except EngineUnavailableError as error:
            await self.finish(turn, Outcome(error=str(error)))
            raise

    async def finish(self, turn: Turn, outcome: Outcome) -> None:
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

    async def discard(self, turn: Turn) -> None:
        """vLLM refused the input as invalid: remove every row this turn wrote."""
        async with self._sessions.begin() as session:
            await session.execute(delete(Message).where(Message.id == turn.message_id))
            if turn.owns_question:
                await session.execute(delete(Message).where(Message.id == turn.user_message_id))
            if turn.new_conversation:
                await session.execute(delete(Conversation).where(Conversation.id == turn.conversation_id))
        metrics.ERRORS.labels(ROUTE, turn.route.version, "rejected").inc()

    async def fail_stale_pending(self, older_than_s: float) -> int:
        """Answers left pending by a process that died mid-generation are failed, never left looking live."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Message)
                .where(Message.status == MessageStatus.PENDING, Message.created_at < cutoff)
                .values(status=MessageStatus.FAILED, error="interrupted: the server stopped mid-answer")
            )
        return result.rowcount or 0
