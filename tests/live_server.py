"""Run a real Ratchet server (`ratchet serve` as a subprocess) for integration tests and benchmarks.

Not part of the shipped package: benches import it as `tests.live_server`, run from a checkout (they put its root on
sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import httpx
import psutil
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from server.db.models import Message
from server.settings import Settings
from tests.unit.rails_fixtures import seed_classifier


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    database_url: str
    data_dir: Path
    admin_token: str
    user_token: str
    ops_token: str
    vllm_url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(repr=False)

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.user_token}"}

    def vllm_process(self, served_name: str | None = None) -> psutil.Process | None:
        """The vLLM API server process the app supervises that serves `served_name` (by default the main one, which
        serves the base model), None while it is down."""
        default_name = Settings.model_fields["base_model_name"].default
        wanted = served_name or self.env.get("RATCHET_BASE_MODEL_NAME") or default_name
        return self.vllm_processes().get(wanted)

    def vllm_processes(self) -> dict[str, psutil.Process]:
        """Every vLLM API server the app supervises, by the name it serves (the main one, and one per LoRA version
        served merged)."""
        found: dict[str, psutil.Process] = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if "vllm.entrypoints.openai.api_server" in command and "--served-model-name" in command:
                found[command[command.index("--served-model-name") + 1]] = child
        return found

    def vllm_urls(self) -> list[str]:
        urls = []
        for process in self.vllm_processes().values():
            command = process.cmdline()
            urls.append(f"http://127.0.0.1:{command[command.index('--port') + 1]}")
        return urls

    def create_user(self, name: str, role: str = "user") -> str:
        return ratchet(self.env, "users", "create", name, "--role", role)

    def log_tail(self, lines: int = 60) -> str:
        logs = [self.data_dir / "serve.log", self.data_dir / "logs" / "vllm.log"]
        return "\n".join(
            f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in logs
            if path.exists()
        )


def ratchet(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"ratchet {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, timeout_s: float, name: str, log: Callable[[], str]
) -> None:
    """Until `url` answers 200; raises, with `log()`, when `process` exits first or `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}\n{log()}")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout_s} s\n{log()}")


def wait_ready(server: LiveServer, timeout_s: float) -> None:
    wait_until_healthy(server.process, f"{server.base_url}/readyz", timeout_s, "ratchet serve", server.log_tail)


def start_server(
    data_dir: Path,
    database_url: str,
    model_dir: Path,
    extra_env: dict[str, str],
    classifier_from: Path | None = None,
) -> LiveServer:
    """`ratchet serve` on a fresh data dir; `classifier_from` is a data dir whose fitted jailbreak classifier is
    copied in, so the rails start without fitting it (a minute or two) when the training texts are the same."""
    if classifier_from is not None:
        seed_classifier(classifier_from, data_dir)
    port = free_port()
    env = {
        **os.environ,
        "RATCHET_DATA_DIR": str(data_dir),
        "RATCHET_DATABASE_URL": database_url,
        "RATCHET_BASE_MODEL": str(model_dir),
        "RATCHET_PORT": str(port),
        "RATCHET_LOG_LEVEL": "info",
        "RATCHET_TOKEN_CACHE_TTL_S": "0",
        # Tests and benchmarks send one user's requests far faster than a person does.
        "RATCHET_RATE_LIMIT_CHAT_PER_MINUTE": "0",
        "RATCHET_RATE_LIMIT_FEEDBACK_PER_MINUTE": "0",
        **extra_env,
    }
    ratchet(env, "db", "upgrade")
    admin = ratchet(env, "users", "create", "admin", "--role", "admin")
    ops = ratchet(env, "users", "create", "olivia-ops", "--role", "ops")
    user = ratchet(env, "users", "create", "alice")
    log = (data_dir / "serve.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    vllm_url = extra_env.get("RATCHET_VLLM_URL") or f"http://127.0.0.1:{env['RATCHET_VLLM_PORT']}"
    return LiveServer(f"http://127.0.0.1:{port}", database_url, data_dir, admin, user, ops, vllm_url, process, env)


def stop_server(server: LiveServer) -> None:
    # SIGTERM lets uvicorn run the lifespan shutdown, which stops the supervised vLLM.
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


async def stored_message(server: LiveServer, message_id: str) -> Message:
    """Read one message straight from the server's database."""
    engine = create_async_engine(server.database_url)
    try:
        async with engine.connect() as connection:
            row = (await connection.execute(select(Message.__table__).where(Message.id == UUID(message_id)))).one()
    finally:
        await engine.dispose()
    return Message(**row._mapping)


def make_lora_adapters(base: Path, out: Path, names: list[str], seed: int = 0) -> dict[str, Path]:
    """LoRA adapters (r=8 on q_proj/v_proj) for the checkpoint at `base`, saved as PEFT saves a trained one, each
    with its own small random B so that it changes the model a little. Seconds on a CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    paths = {}
    for name in names:
        with torch.no_grad():
            for parameter_name, parameter in peft_model.named_parameters():
                if "lora_B" in parameter_name:
                    parameter.normal_(0, 0.005)
        peft_model.save_pretrained(out / name)
        paths[name] = out / name
    return paths
