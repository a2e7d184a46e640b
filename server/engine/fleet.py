"""The vLLM servers the app starts next to the main one, one per served name (a LoRA version merged into a
checkpoint of its own), each supervised like the main one. Transport only: which versions get an engine, and when
one may stop, is the model registry's business (server/models/merged_serving.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from server.engine.client import EngineClient
from server.engine.launcher import EngineSpec, EngineState, VllmLauncher
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


class EngineFleet:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engines: dict[str, _Engine] = {}

    def names(self) -> set[str]:
        return set(self._engines)

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
        )
        launcher = VllmLauncher(self._settings, spec)
        await launcher.start()
        self._engines[name] = _Engine(launcher, EngineClient(spec.url, self._settings.vllm_request_timeout_s))
        log.info("starting a vLLM of its own for %s at %s", name, spec.url)

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
        engine = self._engines.pop(name, None)
        if engine is None:
            return
        await engine.launcher.stop()
        await engine.client.close()
        log.info("stopped the vLLM of %s", name)

    async def close(self) -> None:
        for name in list(self._engines):
            await self.stop(name)
