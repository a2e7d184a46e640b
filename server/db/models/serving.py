"""Model versions vLLM serves, the aliases clients ask for, every status change of a version, and per-user pins."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import Boolean, Float, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column


class ModelKind(enum.StrEnum):
    BASE = "base"
    LORA = "lora"
    PROMPT_TUNING = "prompt_tuning"


class ModelStatus(enum.StrEnum):
    """candidate → gated → canary → active → retired; or rejected (gates), rolled_back (canary or admin), failed
    (could not be loaded)."""

    CANDIDATE = "candidate"
    GATED = "gated"
    CANARY = "canary"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class ModelVersion(UUIDv7AuditBase):
    """A concrete, immutable thing vLLM serves: the base checkpoint or one adapter version. Only `status`,
    the gate results (recorded once) and the canary's closing figures change after registration."""

    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # ModelKind
    base_model: Mapped[str] = mapped_column(String(500))  # the checkpoint the adapter applies to
    adapter_path: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(32), default=ModelStatus.CANDIDATE, index=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    # Lineage: what it was trained from, by which run, on which data snapshot, how.
    parent_name: Mapped[str | None] = mapped_column(ForeignKey("model_versions.name"))
    run_id: Mapped[str | None] = mapped_column(String(64))
    data_hash: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(32), default="")
    method_settings: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    # sha256 of every file of the artefact, by path relative to adapter_path: checked again before each load.
    artefact_hashes: Mapped[dict[str, str]] = mapped_column(JsonB, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    gate_results: Mapped[list[dict[str, Any]]] = mapped_column(JsonB, default=list)
    gates_passed: Mapped[bool | None] = mapped_column(Boolean)
    # The live canary's figures and verdict when its canary ended (promoted or rolled back).
    canary_summary: Mapped[dict[str, Any] | None] = mapped_column(JsonB)

    @property
    def artefact_path(self) -> str:
        """What vLLM loads for this version: the adapter directory, or the checkpoint for the base."""
        return self.adapter_path or self.base_model


class ModelAlias(UUIDv7AuditBase):
    """What clients ask for (e.g. ``ratchet``) and which version answers, with an optional canary split."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(200), unique=True)
    version_name: Mapped[str] = mapped_column(ForeignKey("model_versions.name"))
    canary_version_name: Mapped[str | None] = mapped_column(ForeignKey("model_versions.name"))
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    canary_started_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))
    # The version the current one replaced: what a rollback of the active version returns to.
    previous_version_name: Mapped[str | None] = mapped_column(ForeignKey("model_versions.name"))


class ModelTransition(UUIDv7AuditBase):
    """One status change of a version (append-only). `actor` is `nightly`, `canary`, `admin:<name>` or `system`
    (the app registering the base checkpoint)."""

    __tablename__ = "model_transitions"

    version_name: Mapped[str] = mapped_column(ForeignKey("model_versions.name"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(32))  # None for the registration itself
    to_status: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")


class ModelPin(UUIDv7AuditBase):
    """A user who gets this version whenever they ask for the alias (an admin's pin for a group of users)."""

    __tablename__ = "model_pins"
    __table_args__ = (UniqueConstraint("alias", "user_id"),)

    alias: Mapped[str] = mapped_column(ForeignKey("model_aliases.alias", ondelete="CASCADE"))
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    version_name: Mapped[str] = mapped_column(ForeignKey("model_versions.name"), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
