"""The registry and the lifecycle the app built at start-up, as route dependencies (the API's and the UI's)."""

from __future__ import annotations

from litestar.datastructures import State

from server.models.lifecycle import ModelLifecycle
from server.models.registry import ModelRegistry


def provide_registry(state: State) -> ModelRegistry:
    return state.registry


def provide_lifecycle(state: State) -> ModelLifecycle:
    return state.lifecycle
