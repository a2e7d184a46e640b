"""The ops review queue: hand flags, the audit trail of decisions, and each message's resulting training state."""

from __future__ import annotations

import enum
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from sqlalchemy import Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column


class ReviewDecisionKind(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    CORRECT = "correct"


class ReviewFlag(UUIDv7AuditBase):
    """A message put in the queue by hand."""

    __tablename__ = "review_flags"

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    flagged_by_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    note: Mapped[str] = mapped_column(Text, default="")


class ReviewDecision(UUIDv7AuditBase):
    """Append-only audit trail: who decided what about which message, and when."""

    __tablename__ = "review_decisions"

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    # Stored redacted: corrections are training data from the moment they are written.
    correction: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, default="")


class ReviewState(UUIDv7AuditBase):
    """The latest decision per message, which exports read: whether it may train, and its correction if any."""

    __tablename__ = "review_states"

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    decision_id: Mapped[UUID] = mapped_column(ForeignKey("review_decisions.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))
    trainable: Mapped[bool] = mapped_column(Boolean)
    correction: Mapped[str | None] = mapped_column(Text)
