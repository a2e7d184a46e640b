"""Admin endpoints for the rails: which policy is serving, and reload it from its folder."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.datastructures import State

from server.auth.guards import requires_role
from server.db.models import Role
from server.rails.registry import RailsRegistry


class RailsController(Controller):
    path = "/admin/rails"
    tags = ["guardrails"]
    guards = [requires_role(Role.ADMIN)]

    @get("/", summary="The rails config that is serving")
    async def show(self, state: State) -> dict[str, object]:
        registry: RailsRegistry = state.rails
        return {"enabled": registry.enabled, "config": str(registry.config_dir), "version": registry.version}

    @post("/reload", status_code=200, summary="Reload the rails config; a config that does not load is refused")
    async def reload(self, state: State) -> dict[str, object]:
        """Builds the new rails beside the serving ones and swaps them in; requests in flight are not dropped.
        A malformed config answers 422 with the reason, and the previous config keeps serving."""
        registry: RailsRegistry = state.rails
        previous = registry.version
        version = await registry.reload()
        return {"config": str(registry.config_dir), "version": version, "previous": previous}
