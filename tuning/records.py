"""The nightly job's database work, from its own process: its run records (`tuning_runs`), and its candidates and
their gate verdicts in the model registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.engine import open_sessions
from server.db.models import TuningRun
from server.models.registry import ModelRegistry
from server.models.services import ModelRouter
from server.models.transitions import VersionNotFoundError
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


# The settings each method's candidate records as its lineage, besides its own `<method>_` ones.
SHARED_SETTINGS = ("seed", "max_length", "batch_size", "gradient_accumulation_steps")
LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout")


def method_settings(method: str, config: dict[str, Any]) -> dict[str, Any]:
    shared = SHARED_SETTINGS + (() if method == "prompt_tuning" else LORA_SETTINGS)
    return {name: value for name, value in config.items() if name in shared or name.startswith(f"{method}_")}


def register_candidate(
    settings: Settings,
    run_id: str,
    method: str,
    adapter: Path,
    data_hash: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    parent: str | None = None,
) -> str:
    """Register a freshly trained adapter with the model registry as a candidate (the gates decide what follows) and
    return its version name. `parent` is the version it was trained further from (the base when None). A run
    resumed after its registration finds it registered already."""
    name = f"{settings.default_model_alias}-{method.replace('_', '-')}-{run_id}"

    async def register() -> None:
        async with open_sessions(settings) as sessions:
            # The base is registered here when the app has never started on this store.
            await ModelRouter(sessions, settings).ensure_base_registered()
            registry = ModelRegistry(sessions, settings)
            try:
                existing = await registry.get(name)
            except VersionNotFoundError:
                existing = None
            if existing is not None and existing.run_id == run_id:
                return
            await registry.register_candidate(
                name,
                "prompt_tuning" if method == "prompt_tuning" else "lora",
                adapter,
                parent=parent or settings.base_model_name,
                run_id=run_id,
                data_hash=data_hash,
                method=method,
                method_settings=method_settings(method, config),
                metrics=metrics,
            )

    asyncio.run(register())
    return name


@dataclass(frozen=True)
class ActiveVersion:
    """The version the default alias answers with now: what every candidate of the night must beat, and where the
    night's updates of its kind start from."""

    name: str
    kind: str
    # The adapter folder; None for the base checkpoint.
    adapter: Path | None


def active_version(settings: Settings) -> ActiveVersion:
    async def read() -> ActiveVersion:
        async with open_sessions(settings) as sessions:
            await ModelRouter(sessions, settings).ensure_base_registered()
            version = await ModelRegistry(sessions, settings).active_version()
            adapter = Path(version.adapter_path) if version.adapter_path else None
            return ActiveVersion(version.name, str(version.kind), adapter)

    return asyncio.run(read())


def recorded_gates(settings: Settings, name: str) -> tuple[list[dict[str, Any]], bool] | None:
    """The gate results and verdict already recorded for a version (a resumed run's), or None."""

    async def read() -> tuple[list[dict[str, Any]], bool] | None:
        async with open_sessions(settings) as sessions:
            version = await ModelRegistry(sessions, settings).get(name)
            return None if version.gates_passed is None else (version.gate_results, version.gates_passed)

    return asyncio.run(read())


def record_gates(settings: Settings, name: str, results: list[dict[str, Any]], passed: bool) -> None:
    """The gates' verdict: the candidate becomes gated, or rejected."""

    async def write() -> None:
        async with open_sessions(settings) as sessions:
            await ModelRegistry(sessions, settings).record_gate_results(name, results, passed)

    asyncio.run(write())
