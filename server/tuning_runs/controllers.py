"""Admins list the nightly tuning runs and open each run's report (HTML and its PNG charts) from the run directory.
The app only reads what the tuning job wrote; it never starts or changes a run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.response import File
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Role, TuningRun
from server.tuning_runs.services import TuningRunNotFoundError, TuningRunService, has_report


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


def provide_tuning_run_service(db_session: AsyncSession) -> TuningRunService:
    return TuningRunService(db_session)


def _report_url(run: TuningRun) -> str | None:
    if not has_report(run):
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


class TuningRunController(Controller):
    path = "/api/tuning/runs"
    tags = ["tuning"]
    guards = [requires_role(Role.ADMIN)]
    dependencies = {"tuning_runs": Provide(provide_tuning_run_service, sync_to_thread=False)}

    @get("", summary="Nightly tuning runs, newest first")
    async def list_runs(self, tuning_runs: TuningRunService, limit: int = 50) -> list[TuningRunSummary]:
        return [TuningRunSummary(**_summary(run)) for run in await tuning_runs.list_runs(limit)]

    @get("/{run_id:str}", summary="One run: data counts, held-out figures, outputs, durations, library versions")
    async def get_run(self, tuning_runs: TuningRunService, run_id: str) -> TuningRunDetail:
        try:
            run = await tuning_runs.get_run(run_id)
        except TuningRunNotFoundError as error:
            raise NotFoundException(str(error)) from error
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
    async def report_file(self, tuning_runs: TuningRunService, run_id: str, name: str) -> File:
        try:
            path, media_type = await tuning_runs.report_file(run_id, name)
        except TuningRunNotFoundError as error:
            raise NotFoundException(str(error)) from error
        return File(path, media_type=media_type, content_disposition_type="inline")
