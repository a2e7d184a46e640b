"""Start Ratchet's processes exactly as deploy/systemd's units do (same command lines, same settings files), on
this machine: vLLM replicas (CPU build), vllm-router in front of them, and the app. Used by the live deploy tests
and bench/replicas.py. Only what a CPU box must differ in is overridden, and each override is named here."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.deploy.layout import (
    ENV_DIR,
    REPO,
    expand_exec,
    local_command,
    read_env_file,
    unit_values,
)
from tests.live_server import free_port
from tests.unit.rails_fixtures import seed_classifier

# What a 2-core CPU box changes in the vLLM replica's settings: eager mode (compilation costs minutes), bf16 (the
# fastest dtype measured here), one core and a 1 GiB KV cache per replica so that two fit side by side.
CPU_ENGINE_ARGS = "--max-model-len=2048 --enforce-eager --dtype=bfloat16"


@dataclass
class Process:
    name: str
    url: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log})\n" + "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to the whole process group: a replica dying as in a crash or an OOM kill."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace_s: float = 60) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()


def unit_environment(unit: str, files: dict[str, Path], overrides: dict[str, str]) -> dict[str, str]:
    """The environment systemd gives a unit: PATH, its Environment= lines, its EnvironmentFile= files (the repo's
    copies, by their installed name) and then the overrides this machine needs."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    for line in unit_values(unit, "Service", "Environment"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(line)))
    for installed in unit_values(unit, "Service", "EnvironmentFile"):
        name = installed.removeprefix("-").rsplit("/", 1)[1]
        source = files.get(name, ENV_DIR / name)
        if source.exists():
            env.update(read_env_file(source))
    # The checkout's code first, as an install of this commit would have it.
    env["PYTHONPATH"] = str(REPO)
    env.update(overrides)
    return env


def _spawn(name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            local_command(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_vllm_replica(index: int, model_dir: Path, work: Path, core: int, port: int | None = None) -> Process:
    """ratchet-vllm@<index>.service, on CPU core `core` (and on `port`: a restarted replica keeps its address)."""
    port = port or free_port()
    unit = "ratchet-vllm@.service"
    env = unit_environment(
        unit,
        {"vllm-%i.env": ENV_DIR / "vllm-0.env"},
        {
            "ENGINE_MODEL": str(model_dir),
            "ENGINE_PORT": str(port),
            "ENGINE_ARGS": CPU_ENGINE_ARGS,
            "HOME": str(work),
            "VLLM_CACHE_ROOT": str(work / f"vllm-cache-{index}"),
            "XDG_CACHE_HOME": str(work / f"vllm-cache-{index}"),
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(core),
            "OMP_NUM_THREADS": "1",
        },
    )
    argv = expand_exec(unit_values(unit, "Service", "ExecStart")[0], env)
    log = work / f"vllm-{index}.log"
    return Process(f"vllm-{index}", f"http://127.0.0.1:{port}", _spawn(f"vllm-{index}", argv, env, log), log, env)


def start_router(workers: list[Process], work: Path, name: str = "router", policy: str | None = None) -> Process:
    """ratchet-vllm-router.service over `workers`; `policy` replaces the unit's (vllm-router refuses to start
    power_of_two over a single worker, where any policy routes the same)."""
    port = free_port()
    unit = "ratchet-vllm-router.service"
    env = unit_environment(
        unit,
        {},
        {
            "ROUTER_PORT": str(port),
            "ROUTER_METRICS_PORT": str(free_port()),
            "ROUTER_WORKER_URLS": " ".join(worker.url for worker in workers),
        },
    )
    argv = expand_exec(unit_values(unit, "Service", "ExecStart")[0], env)
    if policy is not None:
        argv = [f"--policy={policy}" if arg.startswith("--policy=") else arg for arg in argv]
    log = work / f"{name}.log"
    return Process(name, f"http://127.0.0.1:{port}", _spawn(name, argv, env, log), log, env)


def start_app(
    vllm_url: str,
    database_url: str,
    model_dir: Path,
    data_dir: Path,
    name: str = "app",
    classifier_from: Path | None = None,
    settings: dict[str, str] | None = None,
) -> Process:
    """ratchet.service: ExecStartPre (`ratchet db upgrade`), then ExecStart (`ratchet serve`). The site-specific
    settings are overridden, and `settings` on top; everything else comes from deploy/env/ratchet.env as installed.
    `classifier_from` is a data dir whose fitted jailbreak classifier is copied in, as `ratchet rails check` ahead of
    a first start would have fitted it (deploy/README.md)."""
    if classifier_from is not None:
        seed_classifier(classifier_from, data_dir)
    port = free_port()
    unit = "ratchet.service"
    env = unit_environment(
        unit,
        {"secrets.env": ENV_DIR / "secrets.env.example"},
        {
            "RATCHET_DATA_DIR": str(data_dir),
            "HOME": str(data_dir),
            "RATCHET_PORT": str(port),
            "RATCHET_VLLM_URL": vllm_url,
            "RATCHET_DATABASE_URL": database_url,
            "RATCHET_BASE_MODEL": str(model_dir),
            **(settings or {}),
        },
    )
    log = data_dir / f"{name}.log"
    for line in unit_values(unit, "Service", "ExecStartPre"):
        result = subprocess.run(local_command(expand_exec(line, env)), env=env, cwd=REPO, capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"{line} failed:\n{result.stderr.decode(errors='replace')[-3000:]}")
    argv = expand_exec(unit_values(unit, "Service", "ExecStart")[0], env)
    return Process(name, f"http://127.0.0.1:{port}", _spawn(name, argv, env, log), log, env)


def ratchet_cli(app: Process, *args: str) -> str:
    """`ratchet …` with the app's environment, as an operator on that host would run it."""
    argv = local_command(["/opt/ratchet/.venv/bin/ratchet", *args])
    result = subprocess.run(argv, env=app.env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ratchet {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def wait_until_ready(process: Process, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}\n{process.log_tail()}")
        try:
            if httpx.get(process.url + path, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"{process.name} not ready after {timeout_s} s\n{process.log_tail()}")


def stop_all(*processes: Process | None) -> None:
    for process in processes:
        if process is not None:
            process.stop()


async def vllm_counter(client: httpx.AsyncClient, replica: Process, metric: str) -> float:
    """A vLLM metric summed over its labels (e.g. `vllm:request_success_total`); 0 when absent."""
    text = (await client.get(replica.url + "/metrics", timeout=10)).text
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


@dataclass
class ChatResult:
    started: float
    first_token: float | None
    finished: float
    ok: bool
    detail: str
    tokens: int


async def stream_chat(
    client: httpx.AsyncClient,
    app: Process,
    token: str,
    question: str,
    max_tokens: int,
    on_first_token: Callable[[], None] | None = None,
) -> ChatResult:
    """One streamed chat through the app; ok only for a 200 that ends with [DONE] and no error event."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    first_token, tokens, detail, done = None, 0, "", False
    try:
        async with client.stream(
            "POST", app.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
        ) as response:
            if response.status_code != 200:
                detail = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
            else:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line:
                        detail = line[:300]
                    elif line.startswith("data: ") and first_token is None and '"content"' in line:
                        first_token = time.monotonic()
                        if on_first_token is not None:
                            on_first_token()
                    if '"completion_tokens"' in line:
                        tokens = int(re.search(r'"completion_tokens":\s*(\d+)', line).group(1))  # type: ignore[union-attr]
    except httpx.HTTPError as error:
        detail = f"{type(error).__name__}: {error}"
    return ChatResult(started, first_token, time.monotonic(), done and not detail, detail, tokens)


QUESTIONS = [
    "What is a good way to start a weekly team meeting?",
    "Explain what a VPN is in two sentences.",
    "How do I write a polite reminder email about an overdue invoice?",
    "Give three tips for a clear slide presentation.",
    "What does a load balancer do?",
    "Summarise the benefits of code review.",
    "How should I prepare for a performance review?",
    "What is the difference between a process and a thread?",
]


@dataclass
class Load:
    """Chats from `concurrency` workers until `requests` have started; clearing `gate` holds back new ones."""

    client: httpx.AsyncClient
    app: Process
    token: str
    concurrency: int
    requests: int
    max_tokens: int
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    results: list[ChatResult] = field(default_factory=list)
    in_flight: dict[int, float | None] = field(default_factory=dict)

    async def run(self) -> list[ChatResult]:
        self.gate.set()
        indices = iter(range(self.requests))
        await asyncio.gather(*(self._worker(indices) for _ in range(self.concurrency)))
        return self.results

    async def _worker(self, indices: Iterator[int]) -> None:
        for index in indices:
            await self.gate.wait()
            self.in_flight[index] = None
            result = await stream_chat(
                self.client, self.app, self.token, QUESTIONS[index % len(QUESTIONS)], self.max_tokens,
                on_first_token=lambda index=index: self.in_flight.__setitem__(index, time.monotonic()),
            )  # fmt: skip
            del self.in_flight[index]
            self.results.append(result)


@dataclass
class KillReport:
    failed: list[ChatResult]
    in_flight_at_kill: int
    in_flight_on_victim: int
    started_after_kill: list[ChatResult]
    survivor_served_after_kill: float
    results: list[ChatResult]


async def kill_replica_under_load(load: Load, victim: Process, survivor: Process, after: int) -> KillReport:
    """Run `load`; once `after` chats have finished, hold new ones until every chat in flight is streaming (so it
    sits on a replica), note how many run on `victim`, SIGKILL it, and let the load go on to its end."""
    task = asyncio.create_task(load.run())
    while len(load.results) < after:
        await asyncio.sleep(0.2)
    load.gate.clear()
    while any(first is None for first in load.in_flight.values()):
        await asyncio.sleep(0.05)
    on_victim = await vllm_counter(load.client, victim, "vllm:num_requests_running") + await vllm_counter(
        load.client, victim, "vllm:num_requests_waiting"
    )
    survivor_before = await vllm_counter(load.client, survivor, "vllm:request_success_total")
    killed_at = time.monotonic()
    victim.kill()
    load.gate.set()
    results = await task
    survivor_after = await vllm_counter(load.client, survivor, "vllm:request_success_total")
    return KillReport(
        failed=[result for result in results if not result.ok],
        in_flight_at_kill=sum(1 for result in results if result.started < killed_at < result.finished),
        in_flight_on_victim=int(on_victim),
        started_after_kill=[result for result in results if result.started > killed_at],
        survivor_served_after_kill=survivor_after - survivor_before,
        results=results,
    )
