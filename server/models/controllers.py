"""The model registry over HTTP: ops and admins read versions, their gates, transitions and live canary figures;
admins promote, roll back, retire and pin, each with a reason that is kept with the transition."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import Provide

from server.auth.guards import requires_role
from server.db.models import Role
from server.models.dependencies import provide_lifecycle, provide_registry
from server.models.lifecycle import ModelLifecycle
from server.models.registry import ModelRegistry
from server.models.schemas import ActionInput, ModelDetail, ModelList, PinInput


def _admin(request: Request[Any, Any, Any]) -> str:
    return f"admin:{request.user.name}"


class ModelController(Controller):
    path = "/api/models"
    tags = ["models"]
    guards = [requires_role(Role.OPS)]
    dependencies = {
        "registry": Provide(provide_registry, sync_to_thread=False),
        "lifecycle": Provide(provide_lifecycle, sync_to_thread=False),
    }

    @get("", summary="Aliases and every model version, newest first")
    async def list_models(self, registry: ModelRegistry) -> ModelList:
        return await registry.overview()

    @get("/{name:str}", summary="One version: lineage, hashes, metrics, gate results, transitions, pins, canary")
    async def get_model(self, registry: ModelRegistry, name: str) -> ModelDetail:
        return await registry.describe(name)

    @post(
        "/{name:str}/promote",
        status_code=200,
        guards=[requires_role(Role.ADMIN)],
        summary="Gated → canary (loaded into vLLM first), or canary → active",
    )
    async def promote(
        self,
        request: Request[Any, Any, Any],
        name: str,
        data: ActionInput,
        registry: ModelRegistry,
        lifecycle: ModelLifecycle,
    ) -> ModelDetail:
        await lifecycle.promote(name, _admin(request), data.reason, alias=data.alias)
        return await registry.describe(name)

    @post(
        "/{name:str}/rollback",
        status_code=200,
        guards=[requires_role(Role.ADMIN)],
        summary="Stop a canary, or hand an active version's alias back to the version it replaced",
    )
    async def rollback(
        self,
        request: Request[Any, Any, Any],
        name: str,
        data: ActionInput,
        registry: ModelRegistry,
        lifecycle: ModelLifecycle,
    ) -> ModelDetail:
        await lifecycle.rollback(name, _admin(request), data.reason)
        return await registry.describe(name)

    @post(
        "/{name:str}/retire",
        status_code=200,
        guards=[requires_role(Role.ADMIN)],
        summary="Set a gated version or a canary aside",
    )
    async def retire(
        self,
        request: Request[Any, Any, Any],
        name: str,
        data: ActionInput,
        registry: ModelRegistry,
        lifecycle: ModelLifecycle,
    ) -> ModelDetail:
        await lifecycle.retire(name, _admin(request), data.reason)
        return await registry.describe(name)

    @post(
        "/{name:str}/pin",
        status_code=200,
        guards=[requires_role(Role.ADMIN)],
        summary="These users get this version whenever they ask for the alias",
    )
    async def pin(
        self,
        request: Request[Any, Any, Any],
        name: str,
        data: PinInput,
        registry: ModelRegistry,
        lifecycle: ModelLifecycle,
    ) -> ModelDetail:
        await lifecycle.pin(name, data.users, _admin(request), data.reason, alias=data.alias)
        return await registry.describe(name)

    @post("/{name:str}/unpin", status_code=200, guards=[requires_role(Role.ADMIN)], summary="Remove these users' pin")
    async def unpin(
        self,
        request: Request[Any, Any, Any],
        name: str,
        data: PinInput,
        registry: ModelRegistry,
        lifecycle: ModelLifecycle,
    ) -> ModelDetail:
        await lifecycle.unpin(name, data.users, _admin(request), data.reason, alias=data.alias)
        return await registry.describe(name)
