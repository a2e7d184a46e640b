"""Putting versions into vLLM and taking them out, on every engine the app uses. vLLM is told only immutable,
versioned names (re-loading a changed adapter under a name it knows can serve stale weights), and only after the
artefact's files still hash as they did at registration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anyio

from server.db.models import ModelKind, ModelVersion
from server.engine.client import EngineClient
from server.engine.replicas import Replicas
from server.exceptions import UnavailableError
from server.models.artefacts import verify_hashes
from server.models.merged_serving import MergedVersions
from server.system import metrics

log = logging.getLogger("ratchet.models")


class NoEngineError(UnavailableError):
    code = "no_engine"


class AdapterLoader:
    def __init__(
        self, engines: Sequence[EngineClient], replicas: Replicas | None = None, merged: MergedVersions | None = None
    ) -> None:
        """`merged`: LoRA versions are served merged, each by an engine of its own, instead of loaded into these."""
        self.engines = list(engines)
        self._replicas = replicas
        self.merged = merged

    async def refresh_engines(self) -> None:
        """Re-read the replica list (a replica set behind a router can grow, shrink or move)."""
        if self._replicas is not None:
            self.engines = await self._replicas.current()

    async def load(
        self, version: ModelVersion, engines: Sequence[EngineClient] | None = None, wait_ready: bool = True
    ) -> None:
        """Load a LoRA version into the given engines (all by default), or, served merged, start its own engine
        (waited for with `wait_ready`); the base needs nothing, and neither does a soft prompt in vLLM (the app
        sends it with each request as prompt embeddings: server/models/soft_prompts.py) beyond its files' hashes.
        Raises before anything is loaded when the artefact changed, MergeError when it cannot be merged, and
        EngineUnavailableError / EngineRejectedError from vLLM."""
        if version.kind == ModelKind.BASE:
            return
        if version.kind == ModelKind.LORA and self.merged is not None:
            await self.merged.load(version, wait_ready)
            return
        if version.kind == ModelKind.PROMPT_TUNING:
            assert version.adapter_path is not None
            await anyio.to_thread.run_sync(verify_hashes, Path(version.adapter_path), version.artefact_hashes)
            log.info("soft prompt %s checked: it is sent with each request, nothing to load into vLLM", version.name)
            return
        targets = self.engines if engines is None else list(engines)
        if not targets:
            raise NoEngineError("no vLLM engine is configured to load the version into")
        assert version.adapter_path is not None
        await anyio.to_thread.run_sync(verify_hashes, Path(version.adapter_path), version.artefact_hashes)
        for engine in targets:
            try:
                await engine.load_lora_adapter(version.name, version.adapter_path)
            except Exception:
                metrics.ADAPTER_OPERATIONS.labels("load", "failed").inc()
                raise
            metrics.ADAPTER_OPERATIONS.labels("load", "ok").inc()
            log.info("loaded %s into vLLM at %s", version.name, engine.base_url)

    async def ensure_serving(self, version: ModelVersion) -> None:
        """Before a version takes all of an alias's users: served merged, wait until its engine serves (a canary's
        may still be starting); an adapter was loaded when its canary began and the reconciler keeps it loaded."""
        if version.kind == ModelKind.LORA and self.merged is not None:
            await self.merged.load(version, wait_ready=True)

    async def unload(self, name: str, engine: EngineClient) -> None:
        await engine.unload_lora_adapter(name)
        metrics.ADAPTER_OPERATIONS.labels("unload", "ok").inc()
        log.info("unloaded %s from vLLM at %s", name, engine.base_url)
