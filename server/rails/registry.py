"""The rails currently serving, and their reload. A reload builds the new rails completely (parsing, embedding
the examples, a smoke check) before swapping one reference, so requests already running finish on the rails
they started with and none is dropped; a config that does not load leaves the old one serving."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from server.rails.base import Rails, RailsConfigError, RailsReloadRefusedError
from server.system import metrics

log = logging.getLogger("ratchet.rails")


def load_rails(config_dir: Path, data_dir: Path) -> Rails:
    """Blocking (seconds on first use: torch and the embedding model load; a minute or two when the jailbreak
    classifier must be fitted into `data_dir`): call it from a worker thread."""
    from server.rails.embeddings import shared_embedder
    from server.rails.nemo import NemoRails

    return NemoRails.load(config_dir, shared_embedder(), data_dir)


class RailsRegistry:
    def __init__(self, config_dir: Path, data_dir: Path, enabled: bool, retire_after_s: float) -> None:
        self.config_dir = config_dir
        self.data_dir = data_dir
        self.enabled = enabled
        self.current: Rails | None = None
        self._retire_after_s = retire_after_s
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.enabled:
            self.current = await asyncio.to_thread(load_rails, self.config_dir, self.data_dir)
            log.info("rails %s loaded from %s", self.current.version, self.config_dir)

    async def reload(self) -> str:
        """Load the config folder again; raises `RailsReloadRefusedError` (old rails kept) if it does not load."""
        if not self.enabled:
            raise RailsReloadRefusedError(self.version, "the rails are turned off (RATCHET_RAILS_ENABLED=false)")
        async with self._lock:
            try:
                fresh = await asyncio.to_thread(load_rails, self.config_dir, self.data_dir)
            except RailsConfigError as error:
                metrics.RAIL_RELOADS.labels("refused").inc()
                log.error("rails reload refused, still serving %s: %s", self.version, error)
                raise RailsReloadRefusedError(self.version, error) from error
            old, self.current = self.current, fresh
            metrics.RAIL_RELOADS.labels("loaded").inc()
            log.info("rails %s loaded from %s (was %s)", fresh.version, self.config_dir, old and old.version)
            if old is not None:
                task = asyncio.create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return fresh.version

    async def _retire(self, rails: Rails) -> None:
        # Streams that started on the old rails still call them for their windows: close only once the
        # longest possible generation is over.
        await asyncio.sleep(self._retire_after_s)
        await rails.aclose()

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    async def aclose(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        if self.current is not None:
            await self.current.aclose()
            self.current = None


def install_sighup_reload(registry: RailsRegistry) -> Callable[[], None]:
    """`kill -HUP <ratchet serve>` reloads the rails like `ratchet rails reload`; returns the uninstaller.
    Outside the main thread (e.g. an app run by a test client) signals cannot be caught: nothing is installed."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await registry.reload()
        except RailsConfigError:
            pass  # logged and counted by reload(); the old rails keep serving

    def on_hup() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (RuntimeError, ValueError, NotImplementedError):
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)
