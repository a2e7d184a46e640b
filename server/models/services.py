"""The model router: maps the model a client asks for (an alias such as ``ratchet``, or a concrete version) to the
version vLLM should run for this user. The engine only carries the request; which version answers is decided here.

Per alias, in this order: a user pinned on the alias gets the pinned version; a user in the canary's share gets the
canary; everyone else gets the active version. The canary share is sticky: a user is in it when a hash of their id
and the canary's name falls below the configured fraction, so each user sees one version for the whole canary, and a
new canary draws a new, independent share. The router routes to a LoRA version only once every engine has it
loaded (the reconciler says which, server/models/reconciler.py): a canary not loaded yet gets no traffic, and an
active or pinned version that is not loaded (vLLM just restarted) answers 503 until it is again."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelKind, ModelPin, ModelStatus, ModelVersion
from server.exceptions import NotFoundError, UnavailableError
from server.models.transitions import record
from server.settings import Settings


class UnknownModelError(NotFoundError):
    code = "model_not_found"


class ModelLoadingError(UnavailableError):
    """The version this user is routed to is being (re-)loaded into vLLM."""

    code = "model_loading"


@dataclass(frozen=True, slots=True)
class Route:
    """Which concrete version answers, and under what name the client asked."""

    requested: str
    alias: str | None
    version: str
    adapter: str | None


@dataclass(frozen=True, slots=True)
class _AliasTarget:
    version: str
    canary_version: str | None
    canary_fraction: float


def canary_bucket(user_id: UUID, version: str) -> float:
    """Where a user falls in [0, 1) for this canary version: the same every time, independent across versions."""
    digest = hashlib.sha256(f"{user_id}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ModelRouter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._aliases: dict[str, _AliasTarget] = {}
        self._versions: dict[str, ModelVersion] = {}
        self._pins: dict[tuple[str, UUID], str] = {}
        self._loaded: frozenset[str] = frozenset()

    @property
    def aliases(self) -> dict[str, str]:
        return {alias: target.version for alias, target in self._aliases.items()}

    @property
    def versions(self) -> list[ModelVersion]:
        return list(self._versions.values())

    async def ensure_base_registered(self) -> None:
        """First start: register the base checkpoint as the active version and point the default alias at it."""
        settings = self._settings
        async with self._sessions.begin() as session:
            base = await session.scalar(select(ModelVersion).where(ModelVersion.name == settings.base_model_name))
            if base is None:
                session.add(
                    ModelVersion(
                        name=settings.base_model_name,
                        kind=ModelKind.BASE,
                        base_model=str(settings.base_model_dir),
                        status=ModelStatus.ACTIVE,
                    )
                )
                await session.flush()
                record(session, settings.base_model_name, None, ModelStatus.ACTIVE, "system", "the base checkpoint")
            alias = await session.scalar(select(ModelAlias).where(ModelAlias.alias == settings.default_model_alias))
            if alias is None:
                session.add(ModelAlias(alias=settings.default_model_alias, version_name=settings.base_model_name))
        await self.refresh()

    async def refresh(self) -> None:
        async with self._sessions() as session:
            versions = (await session.scalars(select(ModelVersion))).all()
            aliases = (await session.scalars(select(ModelAlias))).all()
            pins = (await session.scalars(select(ModelPin))).all()
        self._versions = {version.name: version for version in versions}
        self._aliases = {
            alias.alias: _AliasTarget(alias.version_name, alias.canary_version_name, alias.canary_fraction)
            for alias in aliases
        }
        self._pins = {(pin.alias, pin.user_id): pin.version_name for pin in pins}

    def set_loaded(self, names: Iterable[str]) -> None:
        """The adapter versions every engine has loaded now (from the reconciler)."""
        self._loaded = frozenset(names)

    def servable(self, name: str) -> bool:
        version = self._versions.get(name)
        if version is None:
            return False
        return version.kind == ModelKind.BASE or name in self._loaded

    def resolve(self, requested: str | None, user_id: UUID | None = None) -> Route:
        """The version that answers `user_id` asking for `requested` (the default alias when None)."""
        name = requested or self._settings.default_model_alias
        target = self._aliases.get(name)
        if target is not None:
            version = self._pins.get((name, user_id)) if user_id is not None else None
            if version is None:
                version = target.version
                canary = target.canary_version
                if (
                    canary
                    and user_id is not None
                    and self.servable(canary)
                    and canary_bucket(user_id, canary) < target.canary_fraction
                ):
                    version = canary
            if not self.servable(version):
                raise ModelLoadingError(
                    f"The model version `{version}` behind `{name}` is being loaded; retry shortly."
                )
            return Route(requested=name, alias=name, version=version, adapter=self._adapter_of(version))
        if self.servable(name) and self._directly_served(name):
            return Route(requested=name, alias=None, version=name, adapter=self._adapter_of(name))
        if name in self._versions:
            status = self._versions[name].status
            raise UnknownModelError(f"The model version `{name}` is not being served (it is {status}).")
        raise UnknownModelError(f"The model `{name}` does not exist. Known: {', '.join(self.known_names())}")

    def known_names(self) -> list[str]:
        served = (name for name in self._versions if self.servable(name) and self._directly_served(name))
        return sorted({*self._aliases, *served})

    def _directly_served(self, name: str) -> bool:
        """A version may be asked for by name while it answers some alias's users (or is the base checkpoint): a
        retired adapter still draining must not get new requests."""
        if self._versions[name].kind == ModelKind.BASE:
            return True
        return name in self._pins.values() or any(
            name in (target.version, target.canary_version) for target in self._aliases.values()
        )

    def soft_prompt(self, version: str) -> ModelVersion | None:
        """The version when it is a soft prompt (served as prompt embeddings, not by name), else None."""
        model = self._versions.get(version)
        return model if model is not None and model.kind == ModelKind.PROMPT_TUNING else None

    def _adapter_of(self, version: str) -> str | None:
        model = self._versions.get(version)
        return model.adapter_path if model else None
