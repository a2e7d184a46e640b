"""What the chat page shows of a stored conversation, and the context the next question is asked in. The thread is
what the user sees: each question with its latest answer (a regenerated answer replaces the one it came from)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from uuid import UUID

from server.chat.schemas import ChatCompletionRequest, ChatMessage
from server.db.models import Message, MessageStatus
from server.feedback.schemas import Vote

# Answers whose stored text is what the user read, and so part of the conversation's context.
SHOWN_STATUSES = {MessageStatus.COMPLETE, MessageStatus.BLOCKED, MessageStatus.ABORTED}


@dataclass(slots=True)
class AnswerView:
    id: UUID
    content: str
    status: str
    finish_reason: str | None
    model_version: str | None
    error: str | None = None
    vote: Vote | None = None
    # How many answers this question has had (regenerations included); this one is the latest.
    attempts: int = 1

    @property
    def refused(self) -> bool:
        return self.status == MessageStatus.BLOCKED or self.finish_reason == "content_filter"

    @property
    def failed(self) -> bool:
        return self.status == MessageStatus.FAILED

    @property
    def stopped(self) -> bool:
        return self.status == MessageStatus.ABORTED

    @property
    def pending(self) -> bool:
        return self.status == MessageStatus.PENDING


@dataclass(slots=True)
class Exchange:
    question_id: UUID
    question: str
    answer: AnswerView | None = None


@dataclass(slots=True)
class Thread:
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def answer_ids(self) -> list[UUID]:
        return [exchange.answer.id for exchange in self.exchanges if exchange.answer is not None]

    def attach_votes(self, votes: dict[UUID, Vote]) -> None:
        for exchange in self.exchanges:
            if exchange.answer is not None:
                exchange.answer.vote = votes.get(exchange.answer.id)


def answer_view(message: Message, attempts: int = 1) -> AnswerView:
    return AnswerView(
        id=message.id,
        content=message.content,
        status=message.status,
        finish_reason=message.finish_reason,
        model_version=message.model_version,
        error=message.error,
        attempts=attempts,
    )


def build_thread(messages: list[Message]) -> Thread:
    """Messages in stored order become question/answer pairs; of several answers to one question the newest shows."""
    answers: dict[UUID, list[Message]] = defaultdict(list)
    for message in messages:
        if message.role == "assistant" and message.reply_to_id is not None:
            answers[message.reply_to_id].append(message)
    thread = Thread()
    for message in messages:
        if message.role != "user":
            continue
        siblings = answers.get(message.id, [])
        latest = max(siblings, key=lambda answer: (answer.created_at, answer.id)) if siblings else None
        thread.exchanges.append(
            Exchange(message.id, message.content, answer_view(latest, len(siblings)) if latest else None)
        )
    return thread


def next_turn_request(thread: Thread, question: str, conversation_id: UUID | None) -> ChatCompletionRequest:
    """The chat request for a new question: the thread as the user saw it, then the question."""
    messages: list[ChatMessage] = []
    for exchange in thread.exchanges:
        answer = exchange.answer
        if answer is None or answer.status not in SHOWN_STATUSES or not answer.content:
            continue
        messages.append(ChatMessage(role="user", content=exchange.question))
        messages.append(ChatMessage(role="assistant", content=answer.content))
    messages.append(ChatMessage(role="user", content=question))
    return ChatCompletionRequest(messages=messages, conversation_id=conversation_id, stream=True)
