"""The ops review desk: the queue with filters and counts per reason, one item with everything known about it, and
the decision (approve, reject, correct) that takes the reviewer on to the next open item."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ClientException, NotFoundException
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Channel, ReviewDecisionKind, Role, VoteReason
from server.review.schemas import MAX_TEXT_CHARS, ReviewSource, ReviewStatus
from server.review.services import InvalidDecisionError, QueueFilters, ReviewNotFoundError, ReviewService
from server.ui.controllers.forms import choice, form_of, text

PAGE_SIZE = 50


def provide_review_service(db_session: AsyncSession) -> ReviewService:
    return ReviewService(db_session)


@dataclass(frozen=True, slots=True)
class QueueQuery:
    """The queue's filters as the page's query string has them (dates as days, `until` inclusive)."""

    status: str = ReviewStatus.OPEN.value
    source: str = ""
    reason: str = ""
    channel: str = ""
    model_version: str = ""
    since: str = ""
    until: str = ""

    def filters(self) -> QueueFilters:
        since, until = _day(self.since, "since"), _day(self.until, "until")
        if since and until and since > until:
            raise ClientException("`since` must not be after `until`.")
        return QueueFilters(
            status=choice(ReviewStatus, self.status, "status"),
            source=choice(ReviewSource, self.source, "source") if self.source else None,
            reason=choice(VoteReason, self.reason, "reason") if self.reason else None,
            channel=choice(Channel, self.channel, "channel").value if self.channel else None,
            model_version=self.model_version or None,
            since=datetime.combine(since, datetime.min.time(), tzinfo=UTC) if since else None,
            until=datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=UTC) if until else None,
        )

    def query_string(self, **changes: str) -> str:
        values = {name: getattr(self, name) for name in QUERY_FIELDS} | changes
        return urlencode({name: value for name, value in values.items() if value})


QUERY_FIELDS = tuple(field.name for field in fields(QueueQuery))


def _day(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise ClientException(f"`{name}` must be a date (YYYY-MM-DD).") from error


def _query(
    status: str, source: str, reason: str, channel: str, model_version: str, since: str, until: str
) -> QueueQuery:
    return QueueQuery(status, source, reason, channel, model_version[:200], since[:10], until[:10])


class ReviewDeskController(Controller):
    path = "/review"
    guards = [requires_role(Role.OPS)]
    dependencies = {"review": Provide(provide_review_service, sync_to_thread=False)}

    @get("/")
    async def queue(
        self,
        request: Request[Any, Any, Any],
        state: State,
        review: ReviewService,
        status: str = "open",
        source: str = "",
        reason: str = "",
        channel: str = "",
        model_version: str = "",
        since: str = "",
        until: str = "",
        page: int = 1,
        done: str = "",
    ) -> Template:
        query = _query(status, source, reason, channel, model_version, since, until)
        filters = query.filters()
        page = max(1, min(page, 10_000))
        results = await review.queue(filters, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        return Template(
            "review_queue.html.j2",
            context={
                "user": request.user,
                "query": query,
                "results": results,
                "page": page,
                "pages": max(1, -(-results.total // PAGE_SIZE)),
                "counts": await review.reason_counts(filters),
                "statuses": list(ReviewStatus),
                "sources": list(ReviewSource),
                "reasons": list(VoteReason),
                "channels": list(Channel),
                "versions": sorted(version.name for version in state.router.versions),
                "done": bool(done),
            },
        )

    @get("/{message_id:uuid}")
    async def item(
        self,
        request: Request[Any, Any, Any],
        message_id: UUID,
        review: ReviewService,
        status: str = "open",
        source: str = "",
        reason: str = "",
        channel: str = "",
        model_version: str = "",
        since: str = "",
        until: str = "",
        done: str = "",
    ) -> Template:
        query = _query(status, source, reason, channel, model_version, since, until)
        try:
            item = await review.item(message_id)
        except ReviewNotFoundError as error:
            raise NotFoundException(str(error)) from error
        return Template(
            "review_item.html.j2",
            context={
                "user": request.user,
                "item": item,
                "query": query,
                "decisions": list(ReviewDecisionKind),
                "done": bool(done),
            },
        )

    @post("/{message_id:uuid}/decide", status_code=303)
    async def decide(self, request: Request[Any, Any, Any], message_id: UUID, review: ReviewService) -> Redirect:
        """Records the decision, then opens the next open item under the same filters (or the queue when none)."""
        form = await form_of(request)
        decision = choice(ReviewDecisionKind, text(form, "decision", 20), "decision")
        correction = text(form, "correction", MAX_TEXT_CHARS) if decision == ReviewDecisionKind.CORRECT else None
        note = text(form, "note", 2000)
        query = _query(*(text(form, name, 200) for name in QUERY_FIELDS))
        try:
            await review.decide(request.user, message_id, decision, correction, note)
        except ReviewNotFoundError as error:
            raise NotFoundException(str(error)) from error
        except InvalidDecisionError as error:
            raise ClientException(str(error)) from error
        following = await review.queue(replace(query.filters(), status=ReviewStatus.OPEN), 1, 0)
        suffix = f"?{query.query_string(done=str(message_id))}"
        if following.items:
            return Redirect(f"/ui/review/{following.items[0].message_id}{suffix}", status_code=303)
        return Redirect(f"/ui/review/{suffix}", status_code=303)
