"""What the tuning-run endpoints answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class TuningRunSummary(msgspec.Struct):
    run_id: str
    status: str
    stage: str
    methods: list[str]
    data_since: datetime | None
    data_until: datetime
    dataset_hash: str
    started_at: datetime
    finished_at: datetime | None
    message: str
    report_url: str | None


class TuningRunDetail(TuningRunSummary):
    run_dir: str
    reward_model_path: str | None
    adapters: dict[str, str]
    counts: dict[str, Any]
    held_out: dict[str, Any]
    durations_s: dict[str, float]
    versions: dict[str, str]
