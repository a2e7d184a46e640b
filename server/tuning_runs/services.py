"""Reads the run records and report files the nightly job wrote; the app never starts or changes a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import TuningRun
from server.exceptions import NotFoundError

REPORT_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


class TuningRunNotFoundError(NotFoundError):
    code = "tuning_run_not_found"


class ReportFileNotFoundError(NotFoundError):
    code = "report_file_not_found"


def report_url(run: TuningRun) -> str | None:
    if not (Path(run.run_dir) / "report.html").exists():
        return None
    return f"/api/tuning/runs/{run.run_id}/report/report.html"


class TuningRunService:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def newest(self, limit: int) -> Sequence[TuningRun]:
        rows = await self._session.scalars(
            select(TuningRun).order_by(TuningRun.created_at.desc(), TuningRun.id.desc()).limit(limit)
        )
        return rows.all()

    async def get(self, run_id: str) -> TuningRun:
        run = await self._session.scalar(select(TuningRun).where(TuningRun.run_id == run_id))
        if run is None:
            raise TuningRunNotFoundError(f"No tuning run {run_id!r}.")
        return run

    async def report_file(self, run_id: str, name: str) -> Path:
        """A file of the run's static report; never another path of the run directory or above it."""
        run = await self.get(run_id)
        path = Path(run.run_dir) / name
        if Path(name).name != name or path.suffix not in REPORT_MEDIA_TYPES or not path.is_file():
            raise ReportFileNotFoundError(f"Run {run_id} has no report file {name!r}.")
        return path
