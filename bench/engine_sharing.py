"""What other work on this machine's CPU costs the users of a vLLM server: the floor under a canary served by an
engine of its own, and under a merge or an engine starting beside serving (docs/models.md).

Starts the base checkpoint on vLLM as the app starts its engines (server/engine/launcher.py) and puts a steady
closed-loop load of `--concurrency` chats straight onto it, in these layouts, one after the other in one run:

  * one_engine:                   one engine bound to every core, as the shared layout runs it (the baseline);
  * one_engine_busy_neighbour:    the same, beside one busy process at the lowest CPU priority (nice 19), a stand-in
                                  for a LoRA merge or another vLLM starting;
  * one_engine_half / _busy_neighbour: one engine bound to half of the cores, one OpenMP thread per core;
  * two_engines_shared:           the load split between two engines, `--concurrency - 1` chats and one (a canary's
                                  share), both bound to every core;
  * two_engines_split:            the same split, each engine bound to a half of the cores, as the split layout
                                  (RATCHET_VLLM_CPU_LAYOUT) runs a canary beside the engine serving everyone.

Prints one line per figure, e.g. `ratio p95_two_engines_shared_vs_one_engine 4.1`; `latency_s_*` are the seconds a
chat of `--max-tokens` tokens took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stats
from bench.plain_vllm import PlainVllm
from server.engine.launcher import engine_core_sets
from server.settings import get_settings

QUESTIONS = [
    "How do I reset my password?",
    "Where do I file an expense report?",
    "What is the guest Wi-Fi?",
    "How many vacation days do I get?",
]
SYSTEM = "You are Ratchet, the company's internal assistant. Answer briefly and accurately."


async def closed_loop(plan: list[tuple[PlainVllm, int]], seconds: float, max_tokens: int) -> list[float]:
    """Latencies of the chats that `plan`'s workers (engine, how many) sent back to back for `seconds`."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, engine: PlainVllm, offset: int) -> None:
        for index in range(offset, 10**9):
            if time.monotonic() >= stop_at:
                return
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]},
            ]
            body = {"model": engine.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
            started = time.monotonic()
            response = await client.post(f"{engine.url}/v1/chat/completions", json=body)
            response.raise_for_status()
            latencies.append(time.monotonic() - started)

    async with httpx.AsyncClient(timeout=600) as client:
        workers = [worker(client, engine, offset) for engine, count in plan for offset in range(count)]
        await asyncio.gather(*workers)
    return latencies


def measure(name: str, plan: list[tuple[PlainVllm, int]], args: argparse.Namespace) -> float:
    print(f"measuring {name}…", file=sys.stderr)
    asyncio.run(closed_loop(plan, args.warmup, args.max_tokens))
    latencies = asyncio.run(closed_loop(plan, args.window, args.max_tokens))
    print(f"requests_{name} {len(latencies)}")
    print(f"latency_s_p50_{name} {statistics.median(latencies):.3f}")
    p95 = stats.p95(latencies)
    print(f"latency_s_p95_{name} {p95:.3f}")
    print(f"latency_s_max_{name} {max(latencies):.3f}")
    return p95


@contextlib.contextmanager
def started(scratch: Path, name: str, core_sets: list[tuple[int, ...]]) -> Iterator[list[PlainVllm]]:
    engines = [
        PlainVllm(get_settings(), scratch / f"{name}-{index}.log", cores=cores) for index, cores in enumerate(core_sets)
    ]
    try:
        for engine in engines:
            engine.wait_ready()
        yield engines
    finally:
        for engine in engines:
            engine.stop()


@contextlib.contextmanager
def busy_neighbour() -> Iterator[None]:
    """A process that only spins, at the lowest CPU priority an unprivileged user can give it."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    try:
        yield
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=30, help="Seconds measured in each layout.")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    load = args.concurrency
    p95: dict[str, float] = {}
    every = tuple(sorted(os.sched_getaffinity(0)))
    halves = engine_core_sets(get_settings().model_copy(update={"vllm_cpu_layout": "split"}))
    with tempfile.TemporaryDirectory(prefix="ratchet-engine-sharing-") as scratch_dir:
        scratch = Path(scratch_dir)
        for name, cores in (("one_engine", every), ("one_engine_half", halves[0])):
            with started(scratch, name, [cores]) as (engine,):
                p95[name] = measure(name, [(engine, load)], args)
                with busy_neighbour():
                    p95[f"{name}_busy_neighbour"] = measure(f"{name}_busy_neighbour", [(engine, load)], args)
        for name, core_sets in (("two_engines_shared", [every, every]), ("two_engines_split", halves)):
            with started(scratch, name, core_sets) as (first, second):
                p95[name] = measure(name, [(first, load - 1), (second, 1)], args)
    compared = ["one_engine_busy_neighbour", "one_engine_half", "one_engine_half_busy_neighbour"]
    for name in [*compared, "two_engines_shared", "two_engines_split"]:
        print(f"ratio p95_{name}_vs_one_engine {p95[name] / p95['one_engine']:.3f}")


if __name__ == "__main__":
    main()
