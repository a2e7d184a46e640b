"""Slack's side of the store: who a Slack user is here, which conversation a thread is, every event received
(the de-duplication key and the durable inbox), and every answer owed to Slack (the delivery outbox)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import JsonB
from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column


class SlackIdentity(UUIDv7AuditBase):
    """A Slack user is a Ratchet user: created with the user role on first use, or linked by an admin."""

    __tablename__ = "slack_identities"
    __table_args__ = (UniqueConstraint("team_id", "slack_user_id"),)

    team_id: Mapped[str] = mapped_column(String(32))
    slack_user_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class SlackThread(UUIDv7AuditBase):
    """A Slack thread is one conversation; the unique key makes two replicas agree on which."""

    __tablename__ = "slack_threads"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "thread_ts"),)

    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))


class SlackInbox(UUIDv7AuditBase):
    """Every event and interaction, stored before Slack is acknowledged. The unique key is what turns Slack's
    retries (same event id) into no-ops, across restarts and replicas; `status` lets a restarted process finish
    what a dead one had acknowledged."""

    __tablename__ = "slack_inbox"

    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(16), default="received", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class SlackAnswer(UUIDv7AuditBase):
    """An answer owed to a Slack thread. Stored before it is posted, so a Slack outage delays it, never loses it;
    `slack_ts` (the posted message) is how reactions find the answer they vote on."""

    __tablename__ = "slack_answers"

    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    slack_ts: Mapped[str | None] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
