"""Nightly tuning runs: what each run trained on, what it produced, and where its report is."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column


class TuningRun(UUIDv7AuditBase):
    """One `ratchet tune nightly`. The run directory holds the files; this row is what admins list and what the
    next run reads to know where the last one stopped (`data_until`)."""

    __tablename__ = "tuning_runs"

    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running | succeeded | skipped | failed | abandoned
    stage: Mapped[str] = mapped_column(String(32), default="")  # the last finished stage
    methods: Mapped[list[str]] = mapped_column(JsonB, default=list)
    data_since: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))
    data_until: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    dataset_hash: Mapped[str] = mapped_column(String(64), default="")
    run_dir: Mapped[str] = mapped_column(String(500))
    reward_model_path: Mapped[str | None] = mapped_column(String(500))
    # Per method: the adapter directory vLLM loads.
    adapters: Mapped[dict[str, str]] = mapped_column(JsonB, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    held_out: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    durations_s: Mapped[dict[str, float]] = mapped_column(JsonB, default=dict)
    versions: Mapped[dict[str, str]] = mapped_column(JsonB, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    finished_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))
