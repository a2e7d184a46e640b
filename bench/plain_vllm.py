"""A vLLM server for the base checkpoint outside the app, started with the command and environment the app gives its
own (server/engine/launcher.py): the benches' baseline engine."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from server.engine.launcher import EngineSpec, keep_on_cores, main_engine_spec, vllm_command, vllm_environment
from server.settings import Settings
from tests.live_server import free_port


class PlainVllm:
    def __init__(
        self,
        settings: Settings,
        log: Path,
        env: dict[str, str] | None = None,
        prompt_embeds: bool = False,
        cores: tuple[int, ...] = (),
    ) -> None:
        """Starts it without LoRA, on `cores` (by default the main engine's); `env` is added to the app's vLLM
        environment."""
        self.model = settings.base_model_name
        port = free_port()
        spec = EngineSpec(
            settings.base_model_dir.resolve(),
            self.model,
            port,
            log,
            lora=False,
            prompt_embeds=prompt_embeds,
            cores=cores or main_engine_spec(settings).cores,
        )
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            vllm_command(settings, spec),
            env={**vllm_environment(settings, spec), **(env or {})},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        keep_on_cores(self.process.pid, spec.cores)

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM not ready after {timeout_s} s; see {self.log}")

    def stop(self) -> None:
        # vLLM's engine runs in child processes of its own session: stop them all.
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(60)
