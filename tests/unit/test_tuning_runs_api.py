"""Admins read the nightly runs' records and open their reports through the app; nobody else does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import Role, TuningRun
from tests.unit.feedback_store import person


def report_files(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "report.html").write_text("<html><img src='chart-kto.png'></html>")
    (run_dir / "chart-kto.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run_dir / "run.json").write_text("{}")


async def a_finished_run(sessions: async_sessionmaker[AsyncSession], run_dir: Path) -> None:
    report_files(run_dir)
    async with sessions.begin() as session:
        session.add(
            TuningRun(
                run_id="20261128-010000-abcd",
                status="succeeded",
                stage="report",
                methods=["kto"],
                data_until=datetime(2026, 11, 28, 1, tzinfo=UTC),
                dataset_hash="f" * 64,
                run_dir=str(run_dir),
                reward_model_path=str(run_dir / "reward_model" / "model"),
                adapters={"kto": str(run_dir / "kto" / "adapter")},
                counts={"reward_rows": 24},
                held_out={"candidate": {"pairwise_accuracy": 0.8}},
                durations_s={"kto": 12.5},
                versions={"trl": "1.16.0"},
                message="trained",
            )
        )


async def test_admin_lists_runs_and_opens_the_report_and_its_charts(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    admin = await person(sessions, "tuning-admin", Role.ADMIN)
    await a_finished_run(sessions, tmp_path / "runs" / "20261128-010000-abcd")

    listed = await client.get("/api/tuning/runs", headers=admin.headers)
    assert listed.status_code == 200
    (run,) = listed.json()
    assert run["status"] == "succeeded"
    assert run["report_url"] == "/api/tuning/runs/20261128-010000-abcd/report/report.html"

    detail = await client.get("/api/tuning/runs/20261128-010000-abcd", headers=admin.headers)
    assert detail.json()["held_out"] == {"candidate": {"pairwise_accuracy": 0.8}}
    assert detail.json()["adapters"]["kto"].endswith("kto/adapter")

    report = await client.get(run["report_url"], headers=admin.headers)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    chart = await client.get("/api/tuning/runs/20261128-010000-abcd/report/chart-kto.png", headers=admin.headers)
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"


async def test_report_route_serves_only_report_files(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    admin = await person(sessions, "tuning-admin-2", Role.ADMIN)
    await a_finished_run(sessions, tmp_path / "runs" / "20261128-010000-abcd")
    base = "/api/tuning/runs/20261128-010000-abcd/report/"
    for name in ("run.json", "..%2F..%2Fratchet.db", "missing.png"):
        assert (await client.get(base + name, headers=admin.headers)).status_code == 404, name
    assert (await client.get("/api/tuning/runs/no-such-run", headers=admin.headers)).status_code == 404


async def test_tuning_runs_are_hidden_from_non_admins(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    ops = await person(sessions, "tuning-ops", Role.OPS)
    await a_finished_run(sessions, tmp_path / "runs" / "20261128-010000-abcd")
    assert (await client.get("/api/tuning/runs", headers=ops.headers)).status_code == 403
    report = await client.get("/api/tuning/runs/20261128-010000-abcd/report/report.html", headers=ops.headers)
    assert report.status_code == 403
