"""Thumbs on answers: the one current vote per user and message, and every change to it."""

from __future__ import annotations

import enum
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import JsonB
from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column


class VoteValue(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class VoteReason(enum.StrEnum):
    WRONG = "wrong"
    UNHELPFUL = "unhelpful"
    UNSAFE = "unsafe"
    OFF_TOPIC = "off_topic"
    TOO_LONG = "too_long"
    TOO_SHORT = "too_short"
    REFUSED = "refused"
    OTHER = "other"


class VoteAction(enum.StrEnum):
    SET = "set"
    WITHDRAW = "withdraw"


class MessageVote(UUIDv7AuditBase):
    """The current vote. Withdrawing keeps the row with ``value`` NULL so the revision counter never restarts."""

    __tablename__ = "message_votes"
    # The constraint is what makes concurrent upserts converge on one row per user and message.
    __table_args__ = (UniqueConstraint("message_id", "user_id"),)

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    value: Mapped[str | None] = mapped_column(String(8), index=True)
    reasons: Mapped[list[str]] = mapped_column(JsonB, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    # Bumped by every write inside the upsert itself, so history revisions are gap-free and totally ordered.
    revision: Mapped[int] = mapped_column(Integer, default=1)


class VoteHistory(UUIDv7AuditBase):
    """Append-only: one row per acknowledged change, numbered by the vote's revision."""

    __tablename__ = "message_vote_history"
    __table_args__ = (UniqueConstraint("message_id", "user_id", "revision"),)

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    value: Mapped[str | None] = mapped_column(String(8))
    reasons: Mapped[list[str]] = mapped_column(JsonB, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
