"""The review queue is a query, not a copy: every current thumbs-down, every message a rail blocked or modified,
and every hand flag, joined with the latest decision. Decisions are appended to an audit trail and the message's
training state is upserted in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import String, cast, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from server.auth.services import Principal
from server.db.engine import dialect_insert
from server.db.models import (
    Message,
    MessageVote,
    RailEvent,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewFlag,
    ReviewState,
    User,
    VoteReason,
    VoteValue,
)
from server.exceptions import InvalidInputError, NotFoundError
from server.privacy.redaction import redact
from server.review.schemas import (
    DecisionView,
    FlagView,
    RailEventView,
    ReviewItem,
    ReviewPage,
    ReviewSource,
    ReviewStatus,
    VoteView,
)

FLAGGING_VERDICTS = ("block", "modify")


class ReviewNotFoundError(NotFoundError):
    code = "message_not_found"


class InvalidDecisionError(InvalidInputError):
    code = "invalid_decision"


@dataclass(frozen=True, slots=True)
class QueueFilters:
    status: ReviewStatus = ReviewStatus.OPEN
    source: ReviewSource | None = None
    reason: VoteReason | None = None
    channel: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReviewService:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _sources(self, filters: QueueFilters) -> Any:
        down = select(MessageVote.message_id, literal(ReviewSource.THUMBS_DOWN.value).label("source")).where(
            MessageVote.value == VoteValue.DOWN
        )
        if filters.reason is not None:
            # Reasons are a JSON list of fixed words; matching the quoted word in its text form works alike on
            # SQLite and PostgreSQL, and the word comes from the enum, so it cannot carry a wildcard.
            down = down.where(cast(MessageVote.reasons, String).like(f'%"{filters.reason.value}"%'))
            return down.subquery()
        parts = {
            ReviewSource.THUMBS_DOWN: down,
            ReviewSource.RAIL: select(RailEvent.message_id, literal(ReviewSource.RAIL.value).label("source")).where(
                RailEvent.verdict.in_(FLAGGING_VERDICTS)
            ),
            ReviewSource.MANUAL: select(ReviewFlag.message_id, literal(ReviewSource.MANUAL.value).label("source")),
        }
        chosen = [part for source, part in parts.items() if filters.source in (None, source)]
        return union_all(*chosen).subquery()

    async def queue(self, filters: QueueFilters, limit: int, offset: int) -> ReviewPage:
        query = self._query(filters)
        total = await self._count(query)
        page = (
            await self._session.scalars(
                query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit).offset(offset)
            )
        ).all()
        return ReviewPage(await self._items(list(page)), total, limit, offset)

    async def reason_counts(self, filters: QueueFilters) -> dict[VoteReason, int]:
        """How many queue items (under the other filters) carry each thumbs-down reason; an item with two reasons
        counts under both."""
        return {
            reason: await self._count(self._query(replace(filters, reason=reason, source=None)))
            for reason in VoteReason
        }

    async def _count(self, query: Any) -> int:
        return await self._session.scalar(select(func.count()).select_from(query.subquery())) or 0

    def _query(self, filters: QueueFilters) -> Any:
        sources = self._sources(filters)
        query = (
            select(Message)
            .outerjoin(ReviewState, ReviewState.message_id == Message.id)
            .where(Message.id.in_(select(sources.c.message_id)))
        )
        if filters.status == ReviewStatus.OPEN:
            query = query.where(ReviewState.id.is_(None))
        elif filters.status == ReviewStatus.DECIDED:
            query = query.where(ReviewState.id.is_not(None))
        if filters.channel:
            query = query.where(Message.channel == filters.channel)
        if filters.model_version:
            query = query.where(Message.model_version == filters.model_version)
        if filters.since:
            query = query.where(Message.created_at >= filters.since)
        if filters.until:
            query = query.where(Message.created_at < filters.until)
        return query

    async def item(self, message_id: UUID) -> ReviewItem:
        message = await self._session.get(Message, message_id)
        if message is None:
            raise ReviewNotFoundError(f"No message {message_id}.")
        [item] = await self._items([message])
        rows = (
            await self._session.execute(
                select(ReviewDecision, User.name)
                .join(User, User.id == ReviewDecision.reviewer_id)
                .where(ReviewDecision.message_id == message_id)
                .order_by(ReviewDecision.created_at, ReviewDecision.id)
            )
        ).all()
        item.decisions = [_decision_view(decision, name) for decision, name in rows]
        return item

    async def flag(self, principal: Principal, message_id: UUID, note: str) -> ReviewItem:
        if await self._session.get(Message, message_id) is None:
            raise ReviewNotFoundError(f"No message {message_id}.")
        self._session.add(ReviewFlag(message_id=message_id, flagged_by_id=principal.user_id, note=redact(note).text))
        await self._session.commit()
        return await self.item(message_id)

    async def decide(
        self,
        principal: Principal,
        message_id: UUID,
        decision: ReviewDecisionKind,
        correction: str | None,
        note: str,
    ) -> ReviewItem:
        message = await self._session.get(Message, message_id)
        if message is None:
            raise ReviewNotFoundError(f"No message {message_id}.")
        if decision == ReviewDecisionKind.CORRECT:
            if message.role != "assistant":
                raise InvalidDecisionError("Only an answer can be corrected; approve or reject a user's message.")
            if not correction or not correction.strip():
                raise InvalidDecisionError("A `correct` decision needs the `correction` text.")
            # A correction is training data from the moment it is written: it is stored redacted.
            correction = redact(correction.strip()).text
        elif correction is not None:
            raise InvalidDecisionError(f"`correction` is only taken with the `correct` decision, not `{decision}`.")
        now = datetime.now(UTC)
        decision_id = uuid7()
        self._session.add(
            ReviewDecision(
                id=decision_id,
                message_id=message_id,
                reviewer_id=principal.user_id,
                decision=decision,
                correction=correction,
                note=redact(note).text,
                created_at=now,
                updated_at=now,
            )
        )
        await self._session.flush()
        states = ReviewState.__table__
        insert = dialect_insert(self._session)(states).values(
            id=uuid7(),
            message_id=message_id,
            decision_id=decision_id,
            decision=decision.value,
            trainable=decision != ReviewDecisionKind.REJECT,
            correction=correction,
            created_at=now,
            updated_at=now,
        )
        # Two reviewers deciding at once: both decisions stay in the audit trail, the state is the later one.
        await self._session.execute(
            insert.on_conflict_do_update(
                index_elements=[states.c.message_id],
                set_={
                    "decision_id": insert.excluded.decision_id,
                    "decision": insert.excluded.decision,
                    "trainable": insert.excluded.trainable,
                    "correction": insert.excluded.correction,
                    "updated_at": insert.excluded.updated_at,
                },
            )
        )
        await self._session.commit()
        return await self.item(message_id)

    async def _items(self, messages: list[Message]) -> list[ReviewItem]:
        if not messages:
            return []
        ids = [message.id for message in messages]
        session = self._session
        votes = {
            vote.message_id: vote
            for vote in await session.scalars(
                select(MessageVote).where(MessageVote.message_id.in_(ids), MessageVote.value.is_not(None))
            )
        }
        rails: dict[UUID, list[RailEventView]] = defaultdict(list)
        for event in await session.scalars(
            select(RailEvent).where(RailEvent.message_id.in_(ids)).order_by(RailEvent.created_at, RailEvent.id)
        ):
            rails[event.message_id].append(
                RailEventView(event.direction, event.rail, event.verdict, event.reason, event.created_at)
            )
        flags: dict[UUID, list[FlagView]] = defaultdict(list)
        for flag, name in await session.execute(
            select(ReviewFlag, User.name)
            .join(User, User.id == ReviewFlag.flagged_by_id)
            .where(ReviewFlag.message_id.in_(ids))
            .order_by(ReviewFlag.created_at, ReviewFlag.id)
        ):
            flags[flag.message_id].append(FlagView(name, flag.note, flag.created_at))
        states: dict[UUID, tuple[ReviewState, DecisionView]] = {}
        for state, decision, name in await session.execute(
            select(ReviewState, ReviewDecision, User.name)
            .join(ReviewDecision, ReviewDecision.id == ReviewState.decision_id)
            .join(User, User.id == ReviewDecision.reviewer_id)
            .where(ReviewState.message_id.in_(ids))
        ):
            states[state.message_id] = (state, _decision_view(decision, name))
        authors = dict(
            (await session.execute(select(User.id, User.name).where(User.id.in_({m.user_id for m in messages})))).all()
        )
        items = []
        for message in messages:
            vote = votes.get(message.id)
            sources = []
            if vote is not None and vote.value == VoteValue.DOWN:
                sources.append(ReviewSource.THUMBS_DOWN)
            if any(event.verdict in FLAGGING_VERDICTS for event in rails[message.id]):
                sources.append(ReviewSource.RAIL)
            if flags[message.id]:
                sources.append(ReviewSource.MANUAL)
            state = states.get(message.id)
            items.append(
                ReviewItem(
                    message_id=message.id,
                    conversation_id=message.conversation_id,
                    role=message.role,
                    channel=message.channel,
                    author=authors.get(message.user_id, ""),
                    created_at=message.created_at,
                    model_version=message.model_version,
                    content=message.content,
                    prompt=message.prompt_messages,
                    sources=sources,
                    vote=VoteView(vote.value, [VoteReason(r) for r in vote.reasons], vote.comment, vote.updated_at)
                    if vote is not None and vote.value is not None
                    else None,
                    rail_events=rails[message.id],
                    flags=flags[message.id],
                    decision=state[1] if state else None,
                    trainable=state[0].trainable if state else True,
                )
            )
        return items


def _decision_view(decision: ReviewDecision, reviewer: str) -> DecisionView:
    return DecisionView(
        id=decision.id,
        decision=ReviewDecisionKind(decision.decision),
        reviewer=reviewer,
        correction=decision.correction,
        note=decision.note,
        created_at=decision.created_at,
    )
