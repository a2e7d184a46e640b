"""Request and response shapes of the ops review queue."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta, Struct

from server.db.models import ReviewDecisionKind, VoteReason
from server.inputs import Text

MAX_TEXT_CHARS = 20_000


class ReviewSource(enum.StrEnum):
    """Why a message is in the queue."""

    THUMBS_DOWN = "thumbs_down"
    RAIL = "rail"
    MANUAL = "manual"


class ReviewStatus(enum.StrEnum):
    OPEN = "open"
    DECIDED = "decided"
    ALL = "all"


class FlagInput(Struct, forbid_unknown_fields=True):
    message_id: UUID
    note: Annotated[Text, Meta(max_length=2000)] = ""


class DecisionInput(Struct, forbid_unknown_fields=True):
    """`approve` keeps the message as training data, `reject` excludes it, `correct` supplies the answer it
    should have given (required for `correct`, refused otherwise)."""

    decision: ReviewDecisionKind
    correction: Annotated[Text, Meta(max_length=MAX_TEXT_CHARS)] | None = None
    note: Annotated[Text, Meta(max_length=2000)] = ""


class VoteView(Struct):
    value: str
    reasons: list[VoteReason]
    comment: str
    updated_at: datetime


class RailEventView(Struct):
    direction: str
    rail: str
    verdict: str
    reason: str
    created_at: datetime


class FlagView(Struct):
    flagged_by: str
    note: str
    created_at: datetime


class DecisionView(Struct):
    id: UUID
    decision: ReviewDecisionKind
    reviewer: str
    correction: str | None
    note: str
    created_at: datetime


class ReviewItem(Struct):
    message_id: UUID
    conversation_id: UUID
    role: str
    channel: str
    author: str
    created_at: datetime
    model_version: str | None
    content: str
    # The full context the answer was generated from (chat format), null for a user's message.
    prompt: list[dict[str, Any]] | None
    sources: list[ReviewSource]
    vote: VoteView | None
    rail_events: list[RailEventView]
    flags: list[FlagView]
    decision: DecisionView | None
    trainable: bool
    # The audit trail, oldest first; only filled on the single-item endpoint.
    decisions: list[DecisionView] = []


class ReviewPage(Struct):
    items: list[ReviewItem]
    total: int
    limit: int
    offset: int
