"""Reads the nightly tuning runs the tuning job recorded, and the files of each run's report. The app never starts
or changes a run."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import TuningRun
from server.exceptions import NotFoundError

REPORT_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


class TuningRunNotFoundError(NotFoundError):
    code = "tuning_run_not_found"


class TuningRunService:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def list_runs(self, limit: int) -> list[TuningRun]:
        """Newest first."""
        rows = await self._session.scalars(
            select(TuningRun).order_by(TuningRun.created_at.desc(), TuningRun.id.desc()).limit(min(limit, 500))
        )
        return list(rows)

    async def get_run(self, run_id: str) -> TuningRun:
        run = await self._session.scalar(select(TuningRun).where(TuningRun.run_id == run_id))
        if run is None:
            raise TuningRunNotFoundError(f"No tuning run {run_id!r}.")
        return run

    async def report_file(self, run_id: str, name: str) -> tuple[Path, str]:
        """One file of the run's report and its media type: only the report's own files, never another path of
        the run directory or above it."""
        run = await self.get_run(run_id)
        path = Path(run.run_dir) / name
        if Path(name).name != name or path.suffix not in REPORT_MEDIA_TYPES or not path.is_file():
            raise TuningRunNotFoundError(f"Run {run_id} has no report file {name!r}.")
        return path, REPORT_MEDIA_TYPES[path.suffix]


def has_report(run: TuningRun) -> bool:
    return (Path(run.run_dir) / "report.html").exists()


def charts(run: TuningRun) -> list[str]:
    """The report's chart files, one per training stage, in stage order."""
    return sorted(path.name for path in Path(run.run_dir).glob("chart-*.png"))
