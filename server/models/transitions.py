"""The rules of a model version's life and the one way its status changes: a compare-and-set on the status, in the
caller's transaction, with a row in the transitions log. Two writers (two app replicas' canary checks, an admin
and the canary) can never both move a version from the same status."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import ModelAlias, ModelKind, ModelPin, ModelStatus, ModelTransition, ModelVersion
from server.exceptions import ConflictError, InvalidInputError, NotFoundError
from server.system import metrics

log = logging.getLogger("ratchet.models")

S = ModelStatus
ALLOWED: dict[ModelStatus, frozenset[ModelStatus]] = {
    S.CANDIDATE: frozenset({S.GATED, S.REJECTED, S.FAILED}),
    S.GATED: frozenset({S.CANARY, S.RETIRED, S.FAILED}),
    S.CANARY: frozenset({S.ACTIVE, S.ROLLED_BACK, S.RETIRED, S.FAILED}),
    S.ACTIVE: frozenset({S.RETIRED, S.ROLLED_BACK}),
    # A retired version comes back only when the version that replaced it is rolled back.
    S.RETIRED: frozenset({S.ACTIVE}),
    S.REJECTED: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.FAILED: frozenset(),
}
# Versions that may answer users: through an alias (active, canary) or a pin (these, and retired ones).
PINNABLE = frozenset({S.GATED, S.CANARY, S.ACTIVE, S.RETIRED})
# Bad news ops should see in the log, not only in the counters.
ALARMING = frozenset({S.ROLLED_BACK, S.FAILED, S.REJECTED})
# `system` is the app itself (registering the base checkpoint at first start).
_ACTOR = re.compile(r"^(nightly|canary|system|admin:[^\s:][^\n]{0,190})$")


class TransitionRefusedError(ConflictError):
    code = "transition_refused"


class InvalidActionError(InvalidInputError):
    code = "invalid_model_action"


class VersionNotFoundError(NotFoundError):
    code = "model_version_not_found"


class AliasNotFoundError(NotFoundError):
    code = "model_alias_not_found"


def check_actor(actor: str) -> str:
    if not _ACTOR.match(actor):
        raise InvalidActionError(f"actor must be `nightly`, `canary`, `system` or `admin:<name>`, got {actor!r}")
    return actor


def check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidActionError("a reason is required")
    if len(reason) > 2000:
        raise InvalidActionError("the reason is longer than 2000 characters")
    return reason


@dataclass(frozen=True, slots=True)
class Moved:
    """A committed status change, to be counted and logged once its transaction commits."""

    version: str
    from_status: str | None
    to_status: str
    actor: str
    reason: str

    def announce(self) -> None:
        metrics.MODEL_TRANSITIONS.labels(self.to_status, self.actor.split(":", 1)[0]).inc()
        level = logging.WARNING if self.to_status in ALARMING else logging.INFO
        log.log(
            level,
            "model %s: %s -> %s by %s: %s",
            self.version,
            self.from_status or "(new)",
            self.to_status,
            self.actor,
            self.reason,
        )


async def move(
    session: AsyncSession, version: ModelVersion, to: ModelStatus, actor: str, reason: str, **changes: object
) -> Moved:
    """Move `version` to `to` if the rules allow it from the status it has in the database right now."""
    current = ModelStatus(version.status)
    if to not in ALLOWED[current]:
        raise TransitionRefusedError(f"{version.name} is {current}; it cannot become {to}")
    result = await session.execute(
        update(ModelVersion)
        .where(ModelVersion.name == version.name, ModelVersion.status == current)
        .values(status=to, **changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise TransitionRefusedError(f"{version.name} changed while this was decided; look again")
    version.status = to
    for name, value in changes.items():
        setattr(version, name, value)
    return record(session, version.name, current, to, actor, reason)


def record(
    session: AsyncSession, name: str, from_status: ModelStatus | None, to: ModelStatus, actor: str, reason: str
) -> Moved:
    """A row in the transitions log (also for events that keep the status, such as pins)."""
    session.add(ModelTransition(version_name=name, from_status=from_status, to_status=to, actor=actor, reason=reason))
    return Moved(name, from_status, to, actor, reason)


async def get_version(session: AsyncSession, name: str) -> ModelVersion:
    version = await session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        raise VersionNotFoundError(f"no model version {name!r}")
    return version


async def get_alias(session: AsyncSession, name: str) -> ModelAlias:
    row = await session.scalar(select(ModelAlias).where(ModelAlias.alias == name))
    if row is None:
        raise AliasNotFoundError(f"no model alias {name!r}")
    return row


async def clear_canary(session: AsyncSession, name: str) -> None:
    """The alias whose canary `name` is goes back to its active version alone."""
    await session.execute(
        update(ModelAlias)
        .where(ModelAlias.canary_version_name == name)
        .values(canary_version_name=None, canary_fraction=0.0, canary_started_at=None)
    )


async def live_versions(session: AsyncSession) -> dict[str, ModelVersion]:
    """Every version some user may be routed to now: aliases' active and canary versions and pinned ones."""
    aliases = (await session.scalars(select(ModelAlias))).all()
    names = {alias.version_name for alias in aliases}
    names |= {alias.canary_version_name for alias in aliases if alias.canary_version_name}
    names |= set((await session.scalars(select(ModelPin.version_name).distinct())).all())
    if not names:
        return {}
    versions = await session.scalars(select(ModelVersion).where(ModelVersion.name.in_(names)))
    return {version.name: version for version in versions}


async def check_headroom(session: AsyncSession, adding: ModelVersion, max_loras: int) -> None:
    """Keep one of vLLM's adapter slots free: an unloaded adapter keeps its slot until LRU eviction, so a swap
    (new version loaded while the old one drains) needs a spare one."""
    if adding.kind != ModelKind.LORA:
        return
    live = {name for name, version in (await live_versions(session)).items() if version.kind == ModelKind.LORA}
    if adding.name in live:
        return
    if len(live) + 1 > max_loras - 1:
        raise TransitionRefusedError(
            f"vLLM batches at most {max_loras} adapters (RATCHET_VLLM_MAX_LORAS) and one slot stays free for swaps; "
            f"{len(live)} are live ({', '.join(sorted(live))}): retire, roll back or unpin one first"
        )
