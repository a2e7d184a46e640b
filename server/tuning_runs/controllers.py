"""Admins list the nightly tuning runs and open each run's report (HTML and its PNG charts) from the run directory.
The app only reads what the tuning job wrote; it never starts or changes a run."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import File
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Role, TuningRun
from server.inputs import TextParam
from server.tuning_runs.schemas import TuningRunDetail, TuningRunSummary
from server.tuning_runs.services import REPORT_MEDIA_TYPES, TuningRunService, report_url


def provide_tuning_run_service(db_session: AsyncSession) -> TuningRunService:
    return TuningRunService(db_session)


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
        "report_url": report_url(run),
    }


class TuningRunController(Controller):
    path = "/api/tuning/runs"
    tags = ["tuning"]
    guards = [requires_role(Role.ADMIN)]
    dependencies = {"tuning_run_service": Provide(provide_tuning_run_service, sync_to_thread=False)}

    @get("", summary="Nightly tuning runs, newest first")
    async def list_runs(
        self, tuning_run_service: TuningRunService, limit: Annotated[int, Parameter(ge=1, le=500)] = 50
    ) -> list[TuningRunSummary]:
        return [TuningRunSummary(**_summary(run)) for run in await tuning_run_service.newest(limit)]

    @get("/{run_id:str}", summary="One run: data counts, held-out figures, outputs, durations, library versions")
    async def get_run(self, tuning_run_service: TuningRunService, run_id: TextParam) -> TuningRunDetail:
        run = await tuning_run_service.get(run_id)
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
    async def report_file(self, tuning_run_service: TuningRunService, run_id: TextParam, name: TextParam) -> File:
        path = await tuning_run_service.report_file(run_id, name)
        return File(path, media_type=REPORT_MEDIA_TYPES[path.suffix], content_disposition_type="inline")
