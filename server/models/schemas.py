"""What the model registry's endpoints take and answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from msgspec import Meta, Struct

Reason = Annotated[str, Meta(min_length=1, max_length=2000)]
UserName = Annotated[str, Meta(min_length=1, max_length=200)]


class AliasInfo(Struct):
    alias: str
    version: str
    canary_version: str | None
    canary_fraction: float
    canary_started_at: datetime | None
    previous_version: str | None  # what rolling back the active version returns to


class ModelSummary(Struct):
    name: str
    kind: str
    status: str
    parent: str | None
    run_id: str | None
    method: str
    gates_passed: bool | None
    active_for: list[str]  # aliases it answers
    canary_for: list[str]  # aliases whose canary it is
    created_at: datetime
    updated_at: datetime


class ModelList(Struct):
    aliases: list[AliasInfo]
    versions: list[ModelSummary]


class TransitionInfo(Struct):
    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    reason: str


class PinInfo(Struct):
    alias: str
    user: str


class ModelDetail(ModelSummary):
    base_model: str
    artefact_path: str
    data_hash: str
    method_settings: dict[str, Any]
    artefact_hashes: dict[str, str]
    metrics: dict[str, Any]
    gate_results: list[dict[str, Any]]
    transitions: list[TransitionInfo]
    pins: list[PinInfo]
    # The running canary's figures now (per arm: votes, up-rate, trips, errors; the verdict so far), or the figures
    # its canary ended with; None for a version that never ran one.
    canary: dict[str, Any] | None
    canary_running: bool


class ActionInput(Struct, forbid_unknown_fields=True):
    reason: Reason
    # Promotion of a gated version: the alias whose canary it becomes (the default alias when empty).
    alias: str | None = None


class PinInput(Struct, forbid_unknown_fields=True):
    users: Annotated[list[UserName], Meta(min_length=1, max_length=1000)]
    reason: Reason
    alias: str | None = None  # the default alias when empty
