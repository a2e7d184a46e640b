"""Guardrail decisions: one row per rail run on a message (input rails on the user's, output on the answer)."""

from __future__ import annotations

from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column


class RailEvent(UUIDv7AuditBase):
    __tablename__ = "rail_events"

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # input | output
    rail: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(16), index=True)  # pass | block | modify
    reason: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
