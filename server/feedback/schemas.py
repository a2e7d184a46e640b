"""Request and response shapes of the feedback endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from msgspec import Meta, Struct

from server.db.models import VoteReason, VoteValue
from server.inputs import Text

MAX_COMMENT_CHARS = 2000


class VoteInput(Struct, forbid_unknown_fields=True):
    """A thumbs up or down, optionally with reasons from the fixed list and a free-text comment."""

    value: VoteValue
    reasons: Annotated[list[VoteReason], Meta(max_length=len(VoteReason))] = []
    comment: Annotated[Text, Meta(max_length=MAX_COMMENT_CHARS)] = ""


class Vote(Struct):
    """The caller's current vote on an answer; ``value`` is null when there is none (never cast or withdrawn).
    ``revision`` counts every change, so a client can tell which of its writes is the stored one."""

    message_id: UUID
    value: VoteValue | None
    reasons: list[VoteReason]
    comment: str
    revision: int
    updated_at: datetime | None


class RegeneratedAnswer(Struct):
    """The new sibling answer; ``regenerated_from_id`` links it to the answer it replaces."""

    message_id: UUID
    regenerated_from_id: UUID
    conversation_id: UUID
    reply_to_id: UUID | None
    status: str
    content: str
    finish_reason: str | None
    model_alias: str | None
    model_version: str | None
    error: str | None


class DeletedData(Struct):
    """How many rows of each kind were removed."""

    user_id: UUID
    conversations: int
    messages: int
    votes: int
    vote_history: int
    review_flags: int
    review_decisions: int
