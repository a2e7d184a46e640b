"""The model registry: every base checkpoint, LoRA adapter and soft prompt as an immutable version with its
lineage (parent version, training run, data snapshot hash, method and its settings), artefact hashes, offline
metrics, gate results and status history. Here the nightly job registers candidates and the offline gates record
their verdict; what moves a version on from there (canary, active, rolled back, retired, pins) is
server/models/lifecycle.py."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelKind, ModelPin, ModelStatus, ModelTransition, ModelVersion, User
from server.exceptions import ConflictError
from server.models.arms import CanaryReading, read_canary
from server.models.artefacts import BaseCheckpoint, check_artefact, store_artefact
from server.models.canary import CanaryPolicy
from server.models.schemas import AliasInfo, ModelDetail, ModelList, ModelSummary, PinInfo, TransitionInfo
from server.models.transitions import (
    InvalidActionError,
    check_actor,
    check_reason,
    clear_canary,
    get_alias,
    get_version,
    move,
    record,
)
from server.settings import Settings

S = ModelStatus
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class VersionExistsError(ConflictError):
    code = "model_version_exists"


@dataclass(frozen=True)
class VersionDetail:
    version: ModelVersion
    transitions: list[ModelTransition]
    pins: list[tuple[str, str]]  # (alias, user name)
    active_for: list[str]  # aliases it answers
    canary_for: list[str]  # aliases it is the canary of


def _summary_fields(version: ModelVersion, aliases: Sequence[ModelAlias]) -> dict[str, Any]:
    return {
        "name": version.name,
        "kind": version.kind,
        "status": version.status,
        "parent": version.parent_name,
        "run_id": version.run_id,
        "method": version.method,
        "gates_passed": version.gates_passed,
        "active_for": [alias.alias for alias in aliases if alias.version_name == version.name],
        "canary_for": [alias.alias for alias in aliases if alias.canary_version_name == version.name],
        "created_at": version.created_at,
        "updated_at": version.updated_at,
    }


def _json_object(what: str, value: Mapping[str, Any] | Sequence[Any]) -> Any:
    """A JSON round trip: refuses what a JSON column cannot hold (NaN, infinities, objects) with a clear reason."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise InvalidActionError(f"{what} must be JSON with finite numbers: {error}") from None


class ModelRegistry:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        policy: CanaryPolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self.policy = policy or CanaryPolicy()
        self._base: BaseCheckpoint | None = None

    # Reading -----------------------------------------------------------------------------------------------------

    async def versions(self) -> list[ModelVersion]:
        async with self._sessions() as session:
            rows = await session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc()))
            return list(rows)

    async def aliases(self) -> list[ModelAlias]:
        async with self._sessions() as session:
            return list(await session.scalars(select(ModelAlias).order_by(ModelAlias.alias)))

    async def get(self, name: str) -> ModelVersion:
        async with self._sessions() as session:
            return await get_version(session, name)

    async def detail(self, name: str) -> VersionDetail:
        async with self._sessions() as session:
            version = await get_version(session, name)
            transitions = await session.scalars(
                select(ModelTransition)
                .where(ModelTransition.version_name == name)
                .order_by(ModelTransition.created_at, ModelTransition.id)
            )
            pins = await session.execute(
                select(ModelPin.alias, User.name)
                .join(User, User.id == ModelPin.user_id)
                .where(ModelPin.version_name == name)
                .order_by(ModelPin.alias, User.name)
            )
            aliases = (await session.scalars(select(ModelAlias))).all()
            return VersionDetail(
                version,
                list(transitions),
                [(alias, user) for alias, user in pins.all()],
                [alias.alias for alias in aliases if alias.version_name == name],
                [alias.alias for alias in aliases if alias.canary_version_name == name],
            )

    async def active_version(self, alias: str | None = None) -> ModelVersion:
        """The version an alias (the default one unless given) answers with; its `artefact_path` is what vLLM
        loads (the adapter folder, or the checkpoint for the base)."""
        async with self._sessions() as session:
            row = await get_alias(session, alias or self._settings.default_model_alias)
            return await get_version(session, row.version_name)

    async def canary_reading(self, name: str) -> CanaryReading | None:
        """The figures and verdict of the canary `name` is running, or None when it runs none."""
        async with self._sessions() as session:
            target = await session.scalar(select(ModelAlias).where(ModelAlias.canary_version_name == name))
            return await read_canary(session, target, self.policy) if target is not None else None

    async def overview(self) -> ModelList:
        """The aliases and every version, newest first (what `GET /api/models` and `ratchet models list` show)."""
        aliases = await self.aliases()
        return ModelList(
            aliases=[
                AliasInfo(
                    alias.alias,
                    alias.version_name,
                    alias.canary_version_name,
                    alias.canary_fraction,
                    alias.canary_started_at,
                    alias.previous_version_name,
                )
                for alias in aliases
            ],
            versions=[ModelSummary(**_summary_fields(version, aliases)) for version in await self.versions()],
        )

    async def describe(self, name: str) -> ModelDetail:
        """Everything about one version, with its running canary's figures now (or those its canary ended with)."""
        detail = await self.detail(name)
        version = detail.version
        reading = await self.canary_reading(name)
        return ModelDetail(
            **_summary_fields(version, await self.aliases()),
            base_model=version.base_model,
            artefact_path=version.artefact_path,
            data_hash=version.data_hash,
            method_settings=version.method_settings,
            artefact_hashes=version.artefact_hashes,
            metrics=version.metrics,
            gate_results=version.gate_results,
            transitions=[
                TransitionInfo(t.created_at, t.from_status, t.to_status, t.actor, t.reason) for t in detail.transitions
            ],
            pins=[PinInfo(alias, user) for alias, user in detail.pins],
            canary=reading.summary() if reading is not None else version.canary_summary,
            canary_running=reading is not None,
        )

    # The nightly job and the gates --------------------------------------------------------------------------------

    async def register_candidate(
        self,
        name: str,
        kind: str,
        adapter_path: str | Path,
        *,
        parent: str | None,
        run_id: str | None,
        data_hash: str,
        method: str,
        method_settings: Mapping[str, Any],
        metrics: Mapping[str, Any],
        actor: str = "nightly",
    ) -> ModelVersion:
        """Check the artefact, copy it to its immutable place and register it as a candidate. Raises
        InvalidArtefactError (with every reason) for an artefact vLLM would refuse or serve wrongly, and changes
        nothing then; serving is never touched."""
        check_actor(actor)
        if not _NAME.match(name):
            raise InvalidActionError(
                f"version name {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit"
            )
        if kind not in (ModelKind.LORA, ModelKind.PROMPT_TUNING):
            raise InvalidActionError(f"a candidate's kind is lora or prompt_tuning, not {kind!r}")
        method_settings = _json_object("method_settings", method_settings)
        metrics = _json_object("metrics", metrics)
        async with self._sessions() as session:
            if await session.scalar(select(ModelVersion.name).where(ModelVersion.name == name)):
                raise VersionExistsError(f"a version named {name} exists; version names are never reused")
            if await session.scalar(select(ModelAlias.alias).where(ModelAlias.alias == name)):
                raise VersionExistsError(f"{name} is an alias; a version cannot take its name")
            if parent is not None:
                await get_version(session, parent)
        base = await self._base_checkpoint()
        source = Path(adapter_path)
        await anyio.to_thread.run_sync(check_artefact, ModelKind(kind), source, base, self._settings.vllm_max_lora_rank)
        destination = (self._settings.adapters_dir / name).resolve()
        try:
            hashes = await anyio.to_thread.run_sync(store_artefact, source, destination)
        except FileExistsError:
            raise VersionExistsError(f"{destination} exists; version names are never reused") from None
        version = ModelVersion(
            name=name,
            kind=kind,
            base_model=str(base.path),
            adapter_path=str(destination),
            status=S.CANDIDATE,
            parent_name=parent,
            run_id=run_id,
            data_hash=data_hash,
            method=method,
            method_settings=method_settings,
            artefact_hashes=hashes,
            metrics=metrics,
        )
        try:
            async with self._sessions.begin() as session:
                session.add(version)
                await session.flush()
                moved = record(session, name, None, S.CANDIDATE, actor, f"registered from {source}")
        except IntegrityError:
            await anyio.to_thread.run_sync(_remove_tree, destination)
            raise VersionExistsError(f"a version named {name} was registered meanwhile") from None
        moved.announce()
        return version

    async def record_gate_results(
        self, name: str, results: list[dict[str, Any]], passed: bool, actor: str = "nightly"
    ) -> ModelVersion:
        """The offline gates' verdict on a candidate: gated when `passed`, else rejected. Recorded once."""
        check_actor(actor)
        results = _json_object("results", results)
        failed = [
            str(result.get("name", "?"))
            for result in results
            if isinstance(result, dict) and not result.get("passed", True)
        ]
        reason = f"passed all {len(results)} gates" if passed else f"failed gates: {', '.join(failed) or 'see results'}"
        async with self._sessions.begin() as session:
            version = await get_version(session, name)
            to = S.GATED if passed else S.REJECTED
            moved = await move(session, version, to, actor, reason, gate_results=results, gates_passed=passed)
        moved.announce()
        return version

    async def mark_failed(self, name: str, reason: str, actor: str) -> ModelVersion:
        check_actor(actor)
        async with self._sessions.begin() as session:
            version = await get_version(session, name)
            moved = await move(session, version, S.FAILED, actor, check_reason(reason))
            await clear_canary(session, name)
        moved.announce()
        return version

    # Helpers ---------------------------------------------------------------------------------------------------------

    async def _base_checkpoint(self) -> BaseCheckpoint:
        if self._base is None:
            settings = self._settings
            self._base = await anyio.to_thread.run_sync(
                BaseCheckpoint.read, settings.base_model_dir.resolve(), settings.base_model_name
            )
        return self._base


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
