"""Which vLLM CPU settings are fastest on this machine? Starts vLLM once per candidate setting (threads
and their binding, dtype, KV cache size, LoRA on/off) and measures single-stream decode and 16-stream
throughput. The winner is what `server/engine/launcher.py` uses by default on CPU.

Prints one line per setting and figure, e.g. `decode_tok_s_single[bind=0-1,float32,kv=2] 17.3`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving import stream_chat
from server.engine.launcher import cpu_flags, vllm_dtype
from server.settings import Settings, get_settings
from tests.live_server import free_port, wait_until_healthy

CANDIDATES: list[dict[str, str]] = [
    {"name": "stock(auto-bind),float32,kv=2", "bind": "auto", "dtype": "float32", "kv": "2", "lora": "1"},
    {"name": "bind=0-1,float32,kv=2", "bind": "0-1", "dtype": "float32", "kv": "2", "lora": "1"},
    {"name": "bind=0-1,bfloat16,kv=2", "bind": "0-1", "dtype": "bfloat16", "kv": "2", "lora": "1"},
    {"name": "bind=0-1,float32,kv=1", "bind": "0-1", "dtype": "float32", "kv": "1", "lora": "1"},
    {"name": "bind=0-1,float32,kv=2,no-lora", "bind": "0-1", "dtype": "float32", "kv": "2", "lora": "0"},
    {"name": "bind=0-1,bfloat16,kv=2,no-lora", "bind": "0-1", "dtype": "bfloat16", "kv": "2", "lora": "0"},
]


def launch(settings: Settings, candidate: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(settings.base_model_dir.resolve()),
        "--served-model-name",
        "bench",
        "--port",
        str(port),
        "--dtype",
        candidate["dtype"],
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--disable-uvicorn-access-log",
    ]
    if candidate["lora"] == "1":
        command += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "4"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": candidate["kv"], "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    if candidate["bind"] != "auto":
        env |= {
            "VLLM_CPU_OMP_THREADS_BIND": candidate["bind"],
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))),
        }
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


async def measure(url: str, single_tokens: int, concurrency: int, max_tokens: int) -> tuple[float, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_chat(client, url, {}, "bench", 0, 16)
        single = await stream_chat(client, url, {}, "bench", 0, single_tokens)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_chat(client, url, {}, "bench", index, max_tokens) for index in range(concurrency))
        )
        rate = sum(result.tokens for result in results) / (time.perf_counter() - started)
    times = single.token_times
    return (single.tokens - 1) / (times[-1] - times[0]), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", default="", help="Run only candidates whose name contains this text.")
    args = parser.parse_args()
    settings = get_settings()
    flags = cpu_flags()
    # Which dtype is fastest depends on the CPU: vLLM-cpu's bfloat16 kernels need AVX-512.
    print(
        f"# cpu: avx512f {'avx512f' in flags}, avx512_bf16 {'avx512_bf16' in flags}; auto dtype {vllm_dtype(settings)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "vllm.log"
        for candidate in [candidate for candidate in CANDIDATES if args.only in candidate["name"]]:
            port = free_port()
            process = launch(settings, candidate, port, log)
            try:
                health = f"http://127.0.0.1:{port}/health"
                wait_until_healthy(process, health, 600, "vLLM", lambda: log.read_text()[-3000:])
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                single, rate = asyncio.run(measure(url, args.single_tokens, args.concurrency, args.max_tokens))
                print(f"decode_tok_s_single[{candidate['name']}] {single:.1f}", flush=True)
                print(f"throughput_tok_s_{args.concurrency}[{candidate['name']}] {rate:.1f}", flush=True)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()


if __name__ == "__main__":
    main()
