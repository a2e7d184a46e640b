"""Admin pages: the dashboard (figures per day and model version), the export, and the nightly tuning runs with their
reports. The model versions have their own pages (models.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import File, Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Role, TuningRun
from server.exports.services import ExportFilters, ExportService
from server.tuning_runs.services import REPORT_MEDIA_TYPES, TuningRunService, report_url
from server.ui.charts import Series, line_chart
from server.ui.stats import UsageStats

# The tuning job's own report page keeps its inline stylesheet; it runs no script and may load only its charts.
REPORT_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox"
RUNS_LISTED = 200


def report_charts(run: TuningRun) -> list[str]:
    """The report's chart files (one per training stage) that the run page shows inline."""
    return sorted(path.name for path in Path(run.run_dir).glob("chart-*.png"))


def provide_tuning_runs(db_session: AsyncSession) -> TuningRunService:
    return TuningRunService(db_session)


def provide_usage_stats(db_session: AsyncSession) -> UsageStats:
    return UsageStats(db_session)


class AdminController(Controller):
    path = "/admin"
    guards = [requires_role(Role.ADMIN)]
    dependencies = {
        "tuning_runs": Provide(provide_tuning_runs, sync_to_thread=False),
        "stats": Provide(provide_usage_stats, sync_to_thread=False),
    }

    @get("/")
    async def dashboard(
        self, request: Request[Any, Any, Any], stats: UsageStats, days: int = Parameter(default=14, ge=2, le=180)
    ) -> Template:
        figures = await stats.daily(days)
        versions = figures.versions

        def chart(chart_id: str, title: str, metric: str) -> Any:
            series = [Series(name, [float(v) for v in figures.series(metric, name)]) for name in versions]
            return line_chart(chart_id, title, figures.days, series)

        up_rate = [Series(name, figures.up_rate(name)) for name in versions]
        return Template(
            "admin_dashboard.html.j2",
            context={
                "user": request.user,
                "days": days,
                "figures": figures,
                "charts": [
                    chart("conversations", "Conversations per day", "conversations"),
                    chart("answers", "Answers per day", "answers"),
                    chart("votes-up", "Thumbs up per day", "up"),
                    chart("votes-down", "Thumbs down per day", "down"),
                    line_chart("up-rate", "Up-rate per day (share of thumbs up)", figures.days, up_rate, percent=True),
                    chart("rail-trips", "Guardrail blocks and redactions per day", "rail_trips"),
                    chart("errors", "Failed answers per day", "errors"),
                ],
            },
        )

    @get("/export", media_type="application/zip")
    async def export(self, state: State, db_session: AsyncSession) -> Response[bytes]:
        """The whole training-data export, as the export API gives it (same files, same hash)."""
        export = await ExportService(db_session, state.settings.export_max_pairs_per_prompt).build(ExportFilters())
        return Response(
            export.zip(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="ratchet-export-{export.content_hash[:12]}.zip"'},
        )

    @get("/runs")
    async def runs(self, request: Request[Any, Any, Any], tuning_runs: TuningRunService) -> Template:
        runs = await tuning_runs.newest(RUNS_LISTED)
        return Template(
            "admin_runs.html.j2",
            context={
                "user": request.user,
                "runs": runs,
                "reports": {run.run_id: report_url(run) is not None for run in runs},
            },
        )

    @get("/runs/{run_id:str}")
    async def run(self, request: Request[Any, Any, Any], run_id: str, tuning_runs: TuningRunService) -> Template:
        run = await tuning_runs.get(run_id)
        return Template(
            "admin_run.html.j2",
            context={
                "user": request.user,
                "run": run,
                "charts": report_charts(run),
                "has_report": report_url(run) is not None,
            },
        )

    @get("/runs/{run_id:str}/files/{name:str}")
    async def run_file(self, run_id: str, name: str, tuning_runs: TuningRunService) -> File:
        path = await tuning_runs.report_file(run_id, name)
        return File(
            path,
            media_type=REPORT_MEDIA_TYPES[path.suffix],
            content_disposition_type="inline",
            headers={"Content-Security-Policy": REPORT_POLICY},
        )
