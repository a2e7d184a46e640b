"""Admins list the nightly tuning runs and open each run's report (HTML and its PNG charts) from the run directory.
The app only reads what the tuning job wrote; it never starts or changes a run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException
from litestar.response import File
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Role, TuningRun

REPORT_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


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


def _report_url(run: TuningRun) -> str | None:
    if not (Path(run.run_dir) / "report.html").exists():
        return None
    return f"/api/tuning/runs/{run.run_id}/report/report.html"


def _summary(run: TuningRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "stage": run.stage,
        "methods": run.methods,
        "data_since": run.data_since,
        "data_until": run.data_until,
        "dataset_hash": run.dataset_hash,
        "started_at": run.created_at,
        "finished_at": run.finished_at,
        "message": run.message,
        "report_url": _report_url(run),
    }


async def _get(db_session: AsyncSession, run_id: str) -> TuningRun:
    run = await db_session.scalar(select(TuningRun).where(TuningRun.run_id == run_id))
    if run is None:
        raise NotFoundException(f"No tuning run {run_id!r}.")
    return run


class TuningRunController(Controller):
    path = "/api/tuning/runs"
    tags = ["tuning"]
    guards = [requires_role(Role.ADMIN)]

    @get("", summary="Nightly tuning runs, newest first")
    async def list_runs(self, db_session: AsyncSession, limit: int = 50) -> list[TuningRunSummary]:
        rows = await db_session.scalars(
            select(TuningRun).order_by(TuningRun.created_at.desc(), TuningRun.id.desc()).limit(min(limit, 500))
        )
        return [TuningRunSummary(**_summary(run)) for run in rows]

    @get("/{run_id:str}", summary="One run: data counts, held-out figures, outputs, durations, library versions")
    async def get_run(self, db_session: AsyncSession, run_id: str) -> TuningRunDetail:
        run = await _get(db_session, run_id)
        return TuningRunDetail(
            **_summary(run),
            run_dir=run.run_dir,
            reward_model_path=run.reward_model_path,
            adapters=run.adapters,
            counts=run.counts,
            held_out=run.held_out,
            durations_s=run.durations_s,
            versions=run.versions,
        )

    @get("/{run_id:str}/report/{name:str}", summary="The run's static report (report.html and its charts)")
    async def report_file(self, db_session: AsyncSession, run_id: str, name: str) -> File:
        run = await _get(db_session, run_id)
        path = Path(run.run_dir) / name
        # Only the report's own files, never another path of the run directory or above it.
        if Path(name).name != name or path.suffix not in REPORT_MEDIA_TYPES or not path.is_file():
            raise NotFoundException(f"Run {run_id} has no report file {name!r}.")
        return File(path, media_type=REPORT_MEDIA_TYPES[path.suffix], content_disposition_type="inline")
