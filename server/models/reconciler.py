"""Keeps what every vLLM engine has loaded equal to what the registry says is live, so that a restarted vLLM (a
crash, an upgrade, a new replica) gets its adapters back before anyone is routed to them, and a version nobody can
be routed to any more leaves vLLM once it has drained.

Each pass compares each engine's `/v1/models` with the live versions (aliases' active and canary versions and
pinned ones): a live LoRA an engine lacks is loaded (after its files' hashes are checked again); the router is told
which versions every engine has, and routes only to those. A live soft prompt (prompt_tuning) is never loaded into
vLLM, since the app sends it as prompt embeddings with each request: it counts as loaded while every engine
answers. A loaded LoRA that is no longer live is unloaded once it has been out of routing for
`model_drain_grace_s` (every app replica's router refreshes well within that) and no answer it writes is pending in
the database (the chat path stores a pending answer, naming its version, before it calls vLLM and finishes it after
the last token; answers older than the request timeout cannot still be running).
The engine list is what several replicas need (issue 16): the same pass runs against each.

Served merged (server/models/merged_serving.py), a live LoRA version has an engine of its own instead: the pass
starts the engines live versions lack, routes to those that are ready, and stops an engine whose version has left
routing once it has drained, by the same rule."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import Message, MessageStatus, ModelKind, ModelStatus, ModelVersion
from server.engine.client import EngineClient
from server.exceptions import RatchetError
from server.models.loading import AdapterLoader
from server.models.merged_serving import MergedVersions
from server.models.services import ModelRouter
from server.models.transitions import live_versions
from server.settings import Settings

log = logging.getLogger("ratchet.models")
MERGE_RETRY_S = 60.0


class EngineReconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        loader: AdapterLoader,
        router: ModelRouter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._loader = loader
        self._router = router
        self._clock = clock
        self._unrouted_since: dict[str, float] = {}
        self._merge_failed_at: dict[str, float] = {}
        # Live versions some engine does not have, and why (None before the first pass): readiness reports them.
        self.missing: dict[str, str] | None = None

    async def reconcile(self) -> None:
        await self._loader.refresh_engines()
        async with self._sessions() as session:
            serving = await live_versions(session)
            live = {name: v for name, v in serving.items() if v.kind == ModelKind.LORA}
            # A soft prompt is no adapter vLLM loads: it is sent with each request, to any engine that answers.
            soft_prompts = {name for name, v in serving.items() if v.kind == ModelKind.PROMPT_TUNING}
            adapters = set(
                (await session.scalars(select(ModelVersion.name).where(ModelVersion.kind == ModelKind.LORA))).all()
            )
        merged = self._loader.merged
        in_engines = {} if merged is not None else live
        missing: dict[str, str] = {}
        loaded_everywhere = set(in_engines) if self._loader.engines else set()
        stale: list[tuple[EngineClient, set[str]]] = []
        for engine in self._loader.engines:
            try:
                served = set(await engine.served_models())
            except RatchetError as error:
                loaded_everywhere.clear()
                missing.update({name: f"{engine.base_url}: {error}" for name in (*in_engines, *soft_prompts)})
                continue
            for name in sorted(in_engines.keys() - served):
                try:
                    await self._loader.load(in_engines[name], [engine])
                    served.add(name)
                except RatchetError as error:
                    missing[name] = f"{engine.base_url}: {error}"
                    log.error("live version %s is not loaded in vLLM at %s: %s", name, engine.base_url, error)
            loaded_everywhere &= served
            stale.append((engine, served & (adapters - live.keys())))
        if self._loader.engines and len(stale) == len(self._loader.engines):
            loaded_everywhere |= soft_prompts
        merged_stale: set[str] = set()
        if merged is not None:
            loaded_everywhere |= await self._start_merged(merged, live, missing)
            merged_stale = merged.running() - live.keys()
        self._router.set_loaded(loaded_everywhere)
        self.missing = missing
        drained = await self._drained(set().union(merged_stale, *(names for _, names in stale)))
        for engine, names in stale:
            for name in sorted(names & drained):
                try:
                    await self._loader.unload(name, engine)
                except RatchetError as error:
                    log.warning("could not unload %s from vLLM at %s: %s", name, engine.base_url, error)
        if merged is not None:
            for name in sorted(merged_stale & drained):
                await merged.stop(name)

    async def _start_merged(
        self, merged: MergedVersions, live: dict[str, ModelVersion], missing: dict[str, str]
    ) -> set[str]:
        """Start the engine of each live LoRA version that has none (merging it first if its checkpoint is gone);
        the ready ones are returned. A canary still starting is not missing: its users get the active version."""
        now = self._clock()
        for name in sorted(live.keys() - merged.running()):
            if now - self._merge_failed_at.get(name, -MERGE_RETRY_S) < MERGE_RETRY_S:
                missing[name] = "its merge failed; retried every minute"
                continue
            try:
                await merged.load(live[name], wait_ready=False)
            except RatchetError as error:
                self._merge_failed_at[name] = now
                missing[name] = str(error)
                log.error("live version %s has no engine: %s", name, error)
        ready = merged.ready() & live.keys()
        for name in sorted(live.keys() - ready - missing.keys()):
            if live[name].status != ModelStatus.CANARY:
                missing[name] = merged.reason(name)
        return ready

    async def _drained(self, unrouted: set[str]) -> set[str]:
        """Of the loaded versions nobody is routed to, those out of routing long enough with nothing in flight."""
        now = self._clock()
        self._unrouted_since = {name: self._unrouted_since.get(name, now) for name in unrouted}
        waited = {
            name for name, since in self._unrouted_since.items() if now - since >= self._settings.model_drain_grace_s
        }
        if not waited:
            return set()
        cutoff = datetime.now(UTC) - timedelta(seconds=self._settings.vllm_request_timeout_s)
        async with self._sessions() as session:
            in_flight = await session.scalars(
                select(Message.model_version)
                .where(
                    Message.status == MessageStatus.PENDING,
                    Message.model_version.in_(waited),
                    Message.created_at >= cutoff,
                )
                .distinct()
            )
            return waited - set(in_flight.all())
