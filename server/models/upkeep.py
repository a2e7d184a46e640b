"""The app's background upkeep of serving: every `model_sync_interval_s` the router re-reads the registry (changes
made by an admin, the CLI, another replica or the nightly job) and the reconciler brings vLLM in line with it;
every `canary_check_interval_s` the live canary judges running canaries. A failure is logged and retried on the
next pass; nothing here can stop the app."""

from __future__ import annotations

import asyncio
import logging
import time

from server.models.live_canary import LiveCanary
from server.models.reconciler import EngineReconciler
from server.models.services import ModelRouter
from server.settings import Settings

log = logging.getLogger("ratchet.models")


class ServingUpkeep:
    def __init__(
        self, settings: Settings, router: ModelRouter, reconciler: EngineReconciler, canary: LiveCanary
    ) -> None:
        self._settings = settings
        self.router = router
        self.reconciler = reconciler
        self.canary = canary
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-upkeep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def sync(self) -> None:
        """One pass: the routing table, then vLLM's adapters."""
        await self.router.refresh()
        await self.reconciler.reconcile()

    async def _run(self) -> None:
        next_verdict = time.monotonic() + self._settings.canary_check_interval_s
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("model upkeep pass failed; retrying")
            if time.monotonic() >= next_verdict:
                next_verdict = time.monotonic() + self._settings.canary_check_interval_s
                try:
                    await self.canary.check()
                except Exception:
                    log.exception("live canary check failed; retrying")
            await asyncio.sleep(self._settings.model_sync_interval_s)
