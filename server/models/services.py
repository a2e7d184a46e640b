"""The model registry: maps the model a client asks for (an alias such as ``ratchet``, or a concrete version) to
the version vLLM should run, splitting an alias's traffic to its canary when one is set. The engine only carries
the request; which version answers is decided here."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelAlias, ModelVersion
from server.exceptions import NotFoundError
from server.settings import Settings


class UnknownModelError(NotFoundError):
    code = "model_not_found"


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


class ModelRouter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._aliases: dict[str, _AliasTarget] = {}
        self._versions: dict[str, ModelVersion] = {}

    @property
    def aliases(self) -> dict[str, str]:
        return {alias: target.version for alias, target in self._aliases.items()}

    @property
    def versions(self) -> list[ModelVersion]:
        return list(self._versions.values())

    async def ensure_base_registered(self) -> None:
        """First start: register the base checkpoint and point the default alias at it."""
        settings = self._settings
        async with self._sessions.begin() as session:
            base = await session.scalar(select(ModelVersion).where(ModelVersion.name == settings.base_model_name))
            if base is None:
                session.add(
                    ModelVersion(
                        name=settings.base_model_name,
                        kind="base",
                        base_model=str(settings.base_model_dir),
                        status="serving",
                    )
                )
                await session.flush()
            alias = await session.scalar(select(ModelAlias).where(ModelAlias.alias == settings.default_model_alias))
            if alias is None:
                session.add(ModelAlias(alias=settings.default_model_alias, version_name=settings.base_model_name))
        await self.refresh()

    async def refresh(self) -> None:
        async with self._sessions() as session:
            versions = (await session.scalars(select(ModelVersion))).all()
            aliases = (await session.scalars(select(ModelAlias))).all()
        self._versions = {version.name: version for version in versions}
        self._aliases = {
            alias.alias: _AliasTarget(alias.version_name, alias.canary_version_name, alias.canary_fraction)
            for alias in aliases
        }

    def resolve(self, requested: str | None) -> Route:
        name = requested or self._settings.default_model_alias
        target = self._aliases.get(name)
        if target is not None:
            version = target.version
            if target.canary_version and random.random() < target.canary_fraction:
                version = target.canary_version
            return Route(requested=name, alias=name, version=version, adapter=self._adapter_of(version))
        if name in self._versions:
            return Route(requested=name, alias=None, version=name, adapter=self._adapter_of(name))
        raise UnknownModelError(f"The model `{name}` does not exist. Known: {', '.join(self.known_names())}")

    def known_names(self) -> list[str]:
        return sorted({*self._aliases, *self._versions})

    def _adapter_of(self, version: str) -> str | None:
        model = self._versions.get(version)
        return model.adapter_path if model else None
