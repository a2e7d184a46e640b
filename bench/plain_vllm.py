"""A vLLM server for the base checkpoint outside the app, started with the command and environment the app gives its
own (server/engine/launcher.py): the benches' baseline engine."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from server.engine.launcher import EngineSpec, keep_on_cores, main_engine_spec, vllm_command, vllm_environment
from server.settings import Settings
from tests.live_server import free_port, wait_until_healthy


class PlainVllm:
    def __init__(
        self,
        settings: Settings,
        log: Path,
        prompt_embeds: bool = False,
        cores: tuple[int, ...] = (),
    ) -> None:
        """Starts it without LoRA, on `cores` (by default the main engine's)."""
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
            env=vllm_environment(settings, spec),
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        keep_on_cores(self.process.pid, spec.cores)

    def wait_ready(self, timeout_s: float = 900) -> None:
        wait_until_healthy(self.process, f"{self.url}/health", timeout_s, "vLLM", lambda: f"see {self.log}")

    def stop(self) -> None:
        # vLLM's engine runs in child processes of its own session: stop them all.
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(60)
