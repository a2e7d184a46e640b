"""The vLLM servers the app starts next to the main one, one per served name (a LoRA version merged into a
checkpoint of its own), each supervised like the main one and placed on cores (server/engine/launcher.py's
`engine_core_sets`). Transport only: which versions get an engine, and when one may stop, is the model registry's
business (server/models/merged_serving.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from server.engine.client import EngineClient
from server.engine.launcher import EngineSpec, EngineState, VllmLauncher, engine_core_sets
from server.settings import Settings

log = logging.getLogger("ratchet.engine")


@dataclass
class _Engine:
    launcher: VllmLauncher
    client: EngineClient


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CorePlacement:
    """Which set of cores each engine binds: a new engine goes to the set with the fewest engines, and between equals
    to the one whose newest engine is older. The newest engine that still runs is the one serving everyone (a canary
    promoted, or the version a rollback returned to), so with two halves a canary starts beside the main engine or the
    version before, which serve nobody or few, not beside the busy one."""

    MAIN = ""

    def __init__(self, core_sets: list[tuple[int, ...]]) -> None:
        self.core_sets = core_sets
        self._placed: dict[str, tuple[int, int]] = {self.MAIN: (0, 0)}  # name → (set, when placed)
        self._turn = 0

    def place(self, name: str) -> tuple[int, ...]:
        """The cores of `name`'s engine, placing it now if it has none."""
        if name not in self._placed:

            def load(index: int) -> tuple[int, int]:
                turns = [turn for placed, turn in self._placed.values() if placed == index]
                return len(turns), max(turns, default=-1)

            self._turn += 1
            self._placed[name] = (min(range(len(self.core_sets)), key=load), self._turn)
        return self.core_sets[self._placed[name][0]]

    def release(self, name: str) -> None:
        if name != self.MAIN:
            self._placed.pop(name, None)


class EngineFleet:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engines: dict[str, _Engine] = {}
        self._placement = CorePlacement(engine_core_sets(settings))

    def names(self) -> set[str]:
        return set(self._engines)

    def cores_for(self, name: str) -> tuple[int, ...]:
        """The cores `name`'s engine will run on (and what prepares its checkpoint may use), placed until stopped."""
        return self._placement.place(name)

    async def start(self, name: str, model_dir: Path) -> None:
        """Start an engine serving `model_dir` as `name`, unless one already runs (or is starting)."""
        if name in self._engines:
            return
        spec = EngineSpec(
            model_dir=model_dir,
            served_name=name,
            port=free_local_port(),
            log_path=self._settings.data_dir / "logs" / f"vllm-{name}.log",
            lora=False,
            prompt_embeds=False,
            cores=self.cores_for(name),
        )
        launcher = VllmLauncher(self._settings, spec)
        try:
            await launcher.start()
        except Exception:
            self._placement.release(name)
            raise
        self._engines[name] = _Engine(launcher, EngineClient(spec.url, self._settings.vllm_request_timeout_s))
        log.info("starting a vLLM of its own for %s at %s on cores %s", name, spec.url, spec.cores)

    def ready(self, name: str) -> bool:
        engine = self._engines.get(name)
        return engine is not None and engine.launcher.state == EngineState.READY

    def reason(self, name: str) -> str:
        engine = self._engines.get(name)
        return engine.launcher.reason if engine is not None else "no engine started"

    def client(self, name: str) -> EngineClient | None:
        """The engine serving `name` once it is ready."""
        engine = self._engines.get(name)
        return engine.client if engine is not None and self.ready(name) else None

    async def wait_ready(self, name: str, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.ready(name):
            if name not in self._engines or loop.time() > deadline:
                return False
            await asyncio.sleep(0.5)
        return True

    async def stop(self, name: str) -> None:
        """Stop `name`'s engine, if it runs, and give up its cores."""
        self._placement.release(name)
        engine = self._engines.pop(name, None)
        if engine is None:
            return
        await engine.launcher.stop()
        await engine.client.close()
        log.info("stopped the vLLM of %s", name)

    async def close(self) -> None:
        for name in list(self._engines):
            await self.stop(name)
