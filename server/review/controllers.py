"""The ops review queue (ops and admin roles only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Channel, Role, VoteReason
from server.inputs import Offset, OptionalTextParam, time_window
from server.review.schemas import DecisionInput, FlagInput, ReviewItem, ReviewPage, ReviewSource, ReviewStatus
from server.review.services import QueueFilters, ReviewService


def provide_review_service(db_session: AsyncSession) -> ReviewService:
    return ReviewService(db_session)


class ReviewController(Controller):
    path = "/api/review"
    tags = ["review"]
    guards = [requires_role(Role.OPS)]
    dependencies = {"review_service": Provide(provide_review_service, sync_to_thread=False)}

    @get("/items", summary="The review queue: thumbs-down, guardrail blocks/modifications and hand flags")
    async def list_items(
        self,
        review_service: ReviewService,
        status: ReviewStatus = ReviewStatus.OPEN,
        source: ReviewSource | None = None,
        reason: VoteReason | None = None,
        channel: Channel | None = None,
        model_version: OptionalTextParam = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> ReviewPage:
        """Newest first. `reason` keeps thumbs-down items with that reason; `since` is inclusive, `until` not."""
        since, until = time_window(since, until)
        filters = QueueFilters(status, source, reason, channel, model_version, since, until)
        return await review_service.queue(filters, limit, offset)

    @get("/items/{message_id:uuid}", summary="One message with its signals and the full decision audit trail")
    async def get_item(self, message_id: UUID, review_service: ReviewService) -> ReviewItem:
        return await review_service.item(message_id)

    @post("/items/{message_id:uuid}/decisions", summary="Approve, reject (exclude from training) or correct")
    async def decide(
        self, request: Request[Any, Any, Any], message_id: UUID, data: DecisionInput, review_service: ReviewService
    ) -> ReviewItem:
        """Appends an attributed decision to the audit trail and sets the message's training state."""
        return await review_service.decide(request.user, message_id, data.decision, data.correction, data.note)

    @post("/flags", summary="Put a message in the queue by hand")
    async def flag(self, request: Request[Any, Any, Any], data: FlagInput, review_service: ReviewService) -> ReviewItem:
        return await review_service.flag(request.user, data.message_id, data.note)
