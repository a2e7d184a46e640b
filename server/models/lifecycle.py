"""What moves a model version through its life after the gates, each with an actor and a reason: promotion (a
gated version starts a canary, a canary becomes active), rollback, retirement, and pins of an alias for a group of
users. The live canary (server/models/live_canary.py) calls the same actions as an admin does.

A version is put into vLLM before any user is routed to it (a canary's start, a pin, a rollback to the previous
version), so a refusal by vLLM changes nothing but marking a version on its way in failed. Taking versions out of
vLLM once they drained is the reconciler's job (server/models/reconciler.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelPin, ModelStatus, ModelVersion, User
from server.engine.client import EngineRejectedError
from server.exceptions import ConflictError, NotFoundError
from server.models.arms import read_canary
from server.models.artefacts import ArtefactChangedError
from server.models.canary import CanaryPolicy
from server.models.loading import AdapterLoader
from server.models.merging import MergeError
from server.models.transitions import (
    ALLOWED,
    PINNABLE,
    InvalidActionError,
    TransitionRefusedError,
    check_actor,
    check_headroom,
    check_reason,
    clear_canary,
    get_alias,
    get_version,
    move,
    record,
)
from server.settings import Settings

S = ModelStatus


class LoadRefusedError(ConflictError):
    """vLLM would not load the version (or its files changed since registration)."""

    code = "load_refused"


class UsersNotFoundError(NotFoundError):
    code = "users_not_found"


class ModelLifecycle:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        loader: AdapterLoader,
        policy: CanaryPolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self.loader = loader
        self.policy = policy or CanaryPolicy(
            margin=settings.canary_margin,
            min_votes_per_arm=settings.canary_min_votes_per_arm,
            min_users_per_arm=settings.canary_min_users_per_arm,
            max_votes_per_user=settings.canary_max_votes_per_user,
        )

    async def promote(
        self,
        name: str,
        actor: str,
        reason: str,
        *,
        alias: str | None = None,
        canary_summary: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """One step forward: a gated version starts a canary on the alias (loaded into vLLM first), a canary
        becomes the alias's active version (the one it replaces is retired and unloaded once drained)."""
        check_actor(actor)
        reason = check_reason(reason)
        version = await self._get(name)
        if version.status == S.GATED:
            return await self._start_canary(version, actor, reason, alias)
        if version.status == S.CANARY:
            return await self._finish_canary(version, actor, reason, canary_summary)
        raise TransitionRefusedError(
            f"{name} is {version.status}: only a gated version (to canary) or a canary (to active) is promoted"
        )

    async def _start_canary(self, version: ModelVersion, actor: str, reason: str, alias: str | None) -> ModelVersion:
        async with self._sessions() as session:
            target = await get_alias(session, alias or self._settings.default_model_alias)
            if target.canary_version_name:
                raise TransitionRefusedError(
                    f"alias {target.alias} already has the canary {target.canary_version_name}: promote or roll it "
                    "back first"
                )
            await check_headroom(session, version, self._settings.vllm_max_loras)
        # The canary's users get it once it is loaded (the router routes only to what is): no need to wait here.
        await self._load(version, actor, wait_ready=False)
        async with self._sessions.begin() as session:
            started = await session.execute(
                update(ModelAlias)
                .where(ModelAlias.alias == target.alias, ModelAlias.canary_version_name.is_(None))
                .values(
                    canary_version_name=version.name,
                    canary_fraction=self._settings.canary_fraction,
                    canary_started_at=datetime.now(UTC),
                )
            )
            if started.rowcount != 1:
                raise TransitionRefusedError(f"alias {target.alias} got another canary meanwhile")
            moved = await move(
                session,
                version,
                S.CANARY,
                actor,
                f"canary on {target.alias} for {self._settings.canary_fraction:.0%} of its users: {reason}",
            )
        moved.announce()
        return version

    async def _finish_canary(
        self, version: ModelVersion, actor: str, reason: str, summary: dict[str, Any] | None
    ) -> ModelVersion:
        # Everyone is about to get it: it must be serving first (served merged, its engine may still be starting).
        await self.loader.ensure_serving(version)
        async with self._sessions.begin() as session:
            target = await session.scalar(select(ModelAlias).where(ModelAlias.canary_version_name == version.name))
            if target is None:
                raise TransitionRefusedError(f"{version.name} is no alias's canary")
            replaced = await get_version(session, target.version_name)
            summary = summary or await self._summary(session, target)
            moves = [await move(session, version, S.ACTIVE, actor, reason, canary_summary=summary)]
            await session.execute(
                update(ModelAlias)
                .where(ModelAlias.alias == target.alias)
                .values(
                    version_name=version.name,
                    previous_version_name=replaced.name,
                    canary_version_name=None,
                    canary_fraction=0.0,
                    canary_started_at=None,
                )
            )
            still_used = await session.scalar(select(ModelAlias.alias).where(ModelAlias.version_name == replaced.name))
            if still_used is None:
                moves.append(
                    await move(session, replaced, S.RETIRED, actor, f"replaced on {target.alias} by {version.name}")
                )
        for moved in moves:
            moved.announce()
        return version

    async def rollback(
        self, name: str, actor: str, reason: str, *, canary_summary: dict[str, Any] | None = None
    ) -> ModelVersion:
        """A canary stops (rolled back; unloaded once drained). An active version hands its alias back to the
        version it replaced, which is loaded into vLLM first."""
        check_actor(actor)
        reason = check_reason(reason)
        version = await self._get(name)
        if version.status == S.CANARY:
            async with self._sessions.begin() as session:
                target = await session.scalar(select(ModelAlias).where(ModelAlias.canary_version_name == name))
                if canary_summary is None and target is not None:
                    canary_summary = await self._summary(session, target)
                moved = await move(session, version, S.ROLLED_BACK, actor, reason, canary_summary=canary_summary)
                await clear_canary(session, name)
            moved.announce()
            return version
        if version.status != S.ACTIVE:
            raise TransitionRefusedError(f"{name} is {version.status}: only a canary or an active version rolls back")
        async with self._sessions() as session:
            target = await session.scalar(select(ModelAlias).where(ModelAlias.version_name == name))
            if target is None:
                raise TransitionRefusedError(f"{name} answers no alias")
            if target.canary_version_name:
                raise TransitionRefusedError(
                    f"alias {target.alias} runs the canary {target.canary_version_name}, measured against {name}: "
                    "roll the canary back first"
                )
            if target.previous_version_name is None:
                raise TransitionRefusedError(f"alias {target.alias} has no earlier version to go back to")
            previous = await get_version(session, target.previous_version_name)
        if previous.status != S.RETIRED:
            raise TransitionRefusedError(f"the earlier version {previous.name} is {previous.status}, not retired")
        await self._load(previous, actor)
        async with self._sessions.begin() as session:
            switched = await session.execute(
                update(ModelAlias)
                .where(ModelAlias.alias == target.alias, ModelAlias.version_name == name)
                .values(version_name=previous.name, previous_version_name=None)
            )
            if switched.rowcount != 1:
                raise TransitionRefusedError(f"alias {target.alias} changed meanwhile")
            moves = [
                await move(session, version, S.ROLLED_BACK, actor, reason),
                await move(session, previous, S.ACTIVE, actor, f"back on {target.alias}: {name} rolled back"),
            ]
        for moved in moves:
            moved.announce()
        return version

    async def retire(self, name: str, actor: str, reason: str) -> ModelVersion:
        """A gated version or a canary is set aside (a canary stops); the active one is replaced, never retired."""
        check_actor(actor)
        reason = check_reason(reason)
        async with self._sessions.begin() as session:
            version = await get_version(session, name)
            if version.status == S.ACTIVE:
                raise TransitionRefusedError(
                    f"{name} is active: promote another version or roll it back, which retires it"
                )
            moved = await move(session, version, S.RETIRED, actor, reason)
            await clear_canary(session, name)
        moved.announce()
        return version

    async def pin(
        self, name: str, users: Sequence[str], actor: str, reason: str, *, alias: str | None = None
    ) -> ModelVersion:
        """These users get this version whenever they ask for the alias (replacing any pin they had on it)."""
        check_actor(actor)
        reason = check_reason(reason)
        version = await self._get(name)
        if version.status not in PINNABLE:
            raise TransitionRefusedError(
                f"{name} is {version.status}: only {', '.join(sorted(PINNABLE))} versions are pinned"
            )
        async with self._sessions() as session:
            target = await get_alias(session, alias or self._settings.default_model_alias)
            user_ids = await self._user_ids(session, users)
            await check_headroom(session, version, self._settings.vllm_max_loras)
        await self._load(version, actor)
        async with self._sessions.begin() as session:
            await session.execute(
                delete(ModelPin).where(ModelPin.alias == target.alias, ModelPin.user_id.in_(user_ids.values()))
            )
            for user_id in user_ids.values():
                session.add(
                    ModelPin(alias=target.alias, user_id=user_id, version_name=name, actor=actor, reason=reason)
                )
            status = S(version.status)
            moved = record(
                session,
                name,
                status,
                status,
                actor,
                f"pinned on {target.alias} for {', '.join(sorted(user_ids))}: {reason}",
            )
        moved.announce()
        return version

    async def unpin(
        self, name: str, users: Sequence[str], actor: str, reason: str, *, alias: str | None = None
    ) -> ModelVersion:
        check_actor(actor)
        reason = check_reason(reason)
        async with self._sessions.begin() as session:
            version = await get_version(session, name)
            target = await get_alias(session, alias or self._settings.default_model_alias)
            user_ids = await self._user_ids(session, users)
            removed = await session.execute(
                delete(ModelPin).where(
                    ModelPin.alias == target.alias,
                    ModelPin.version_name == name,
                    ModelPin.user_id.in_(user_ids.values()),
                )
            )
            if not removed.rowcount:
                raise NotFoundError(f"none of {', '.join(sorted(user_ids))} is pinned to {name} on {target.alias}")
            status = S(version.status)
            moved = record(
                session,
                name,
                status,
                status,
                actor,
                f"unpinned on {target.alias} for {', '.join(sorted(user_ids))}: {reason}",
            )
        moved.announce()
        return version

    # Helpers ---------------------------------------------------------------------------------------------------------

    async def _load(self, version: ModelVersion, actor: str, wait_ready: bool = True) -> None:
        """Into every engine before anyone is routed to it; vLLM refusing it (or its files having changed, or a
        merge failing) marks a version on its way in failed. vLLM being down changes nothing (EngineUnavailableError,
        a 503)."""
        try:
            await self.loader.load(version, wait_ready=wait_ready)
        except (EngineRejectedError, ArtefactChangedError, MergeError) as error:
            if S.FAILED not in ALLOWED[S(version.status)]:
                raise LoadRefusedError(f"{version.name} could not be loaded: {error}") from error
            await self._mark_failed(version, str(error), actor)
            raise LoadRefusedError(f"{version.name} could not be loaded and is marked failed: {error}") from error

    async def _summary(self, session: AsyncSession, alias: ModelAlias) -> dict[str, Any] | None:
        reading = await read_canary(session, alias, self.policy)
        return reading.summary() if reading is not None else None

    @staticmethod
    async def _user_ids(session: AsyncSession, names: Sequence[str]) -> dict[str, Any]:
        wanted = {name.strip() for name in names if name.strip()}
        if not wanted:
            raise InvalidActionError("name at least one user")
        rows = (await session.execute(select(User.name, User.id).where(User.name.in_(wanted)))).all()
        found = {name: user_id for name, user_id in rows}
        if missing := sorted(wanted - found.keys()):
            raise UsersNotFoundError(f"no such users: {', '.join(missing)}")
        return found

    async def _get(self, name: str) -> ModelVersion:
        async with self._sessions() as session:
            return await get_version(session, name)

    async def _mark_failed(self, version: ModelVersion, reason: str, actor: str) -> None:
        async with self._sessions.begin() as session:
            moved = await move(session, version, S.FAILED, actor, reason)
            await clear_canary(session, version.name)
        moved.announce()
