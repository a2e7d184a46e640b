"""Enumerations stored as strings in the database."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    USER = "user"
    OPS = "ops"
    ADMIN = "admin"


class Channel(enum.StrEnum):
    API = "api"
    WEB = "web"
    SLACK = "slack"


class MessageStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"
    ABORTED = "aborted"
    # A guardrail refused the question or the answer: the stored content is the refusal the user saw.
    BLOCKED = "blocked"
