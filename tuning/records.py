"""The run records in the database (`tuning_runs`), read and written from the nightly job's own process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.engine import open_sessions
from server.db.models import TuningRun
from server.settings import Settings

T = TypeVar("T")
# What the job needs to know about an earlier run.
FIELDS = ("run_id", "status", "stage", "run_dir", "data_until", "reward_model_path")


class RunRecords:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _call(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def run() -> T:
            async with open_sessions(self._settings) as sessions, sessions.begin() as session:
                return await work(session)

        return asyncio.run(run())

    def save(self, run_id: str, **fields: Any) -> None:
        """Create the run's row or update the given fields of it."""

        async def work(session: AsyncSession) -> None:
            row = await session.scalar(select(TuningRun).where(TuningRun.run_id == run_id))
            if row is None:
                session.add(TuningRun(run_id=run_id, **fields))
                return
            for name, value in fields.items():
                setattr(row, name, value)

        self._call(work)

    def latest(self, *statuses: str) -> dict[str, Any] | None:
        """The newest run in one of these states, as a plain dict."""

        async def work(session: AsyncSession) -> dict[str, Any] | None:
            row = await session.scalar(
                select(TuningRun)
                .where(TuningRun.status.in_(statuses))
                .order_by(TuningRun.created_at.desc(), TuningRun.id.desc())
                .limit(1)
            )
            if row is None:
                return None
            return {name: getattr(row, name) for name in FIELDS}

        return self._call(work)
