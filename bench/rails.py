"""Rails benchmark: the same chat workload through Ratchet with the guardrails on and off, in one run.

Starts three real `ratchet serve` apps on scratch data dirs, all on the same vLLM (an external one with
--vllm-url, otherwise the rails-off app supervises its own and the others use it): rails off, rails on (the
defaults: vLLM starts on the question while the input rails check it), and rails on checking first
(RATCHET_RAILS_SPECULATIVE_GENERATION=false). Then measures
  * per-request overhead: the same benign question (temperature 0, so the same answer) sent to each app in
    turn, alone on vLLM, the order rotating between questions; overhead = latency with rails - latency without;
  * the streaming window cost: time to first token of the same streamed questions, sent the same way;
  * throughput: `--concurrency` concurrent streamed chats, in rounds alternating between the apps (so drift in
    what else the machine does is shared), requests per second over all rounds;
  * whether the rails stall the event loop: /healthz latency polled while each app is under that load.
Prints one line per figure, e.g. `ratio throughput_rails_vs_none 0.97`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import p95
from server.db.models import Message, RailEvent
from server.settings import get_settings
from tests.live_server import LiveServer, free_port, start_server, stop_server, wait_ready

SYSTEM = {"role": "system", "content": "You are a helpful assistant for the company's employees."}


def questions() -> list[str]:
    """Ordinary employee questions: the benign eval set (what the rails see most in real use)."""
    path = Path(__file__).resolve().parents[1] / "guardrails" / "eval" / "benign.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().split("\n") if line.strip()]


def body(question: str, max_tokens: int, stream: bool) -> dict[str, object]:
    return {
        "messages": [SYSTEM, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def timed_chat(client: httpx.AsyncClient, server: LiveServer, question: str, max_tokens: int) -> float:
    started = time.perf_counter()
    response = await client.post(
        f"{server.base_url}/v1/chat/completions", json=body(question, max_tokens, False), headers=server.headers()
    )
    response.raise_for_status()
    return time.perf_counter() - started


async def timed_stream(
    client: httpx.AsyncClient, server: LiveServer, question: str, max_tokens: int
) -> tuple[float, float]:
    """(time to first content, total) of one streamed chat."""
    started = time.perf_counter()
    first: float | None = None
    url = f"{server.base_url}/v1/chat/completions"
    async with client.stream("POST", url, json=body(question, max_tokens, True), headers=server.headers()) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line:
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


async def paired(
    client: httpx.AsyncClient, servers: dict[str, LiveServer], prompts: list[str], max_tokens: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Overheads in ms (each rails app - rails off) for whole non-streamed requests and for streamed time to
    first token, per rails app.

    The requests for one question run one after the other, each alone on vLLM, in rotating order, after its prompt
    is in vLLM's prefix cache. Sent together,
    a rails-on request reached vLLM a check later, after the other had started a step, and waited for that step
    to end: the figure measured vLLM's scheduling more than the rails."""
    names = list(servers)
    request_overheads: dict[str, list[float]] = {name: [] for name in names if name != "off"}
    ttft_overheads: dict[str, list[float]] = {name: [] for name in names if name != "off"}
    for index, question in enumerate(prompts):
        latency: dict[str, float] = {}
        ttft: dict[str, float] = {}
        # vLLM caches prompt prefixes: untimed, the question is prefilled once first, or whichever app asked
        # first would pay the prefill (tens of ms on this CPU) and the order, not the rails, would set the figure.
        await timed_chat(client, servers["off"], question, 1)
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            latency[name] = await timed_chat(client, servers[name], question, max_tokens)
            ttft[name], _ = await timed_stream(client, servers[name], question, max_tokens)
        for name in request_overheads:
            request_overheads[name].append((latency[name] - latency["off"]) * 1000)
            ttft_overheads[name].append((ttft[name] - ttft["off"]) * 1000)
    return request_overheads, ttft_overheads


async def loaded(
    client: httpx.AsyncClient, server: LiveServer, prompts: list[str], concurrency: int, max_tokens: int
) -> tuple[float, list[float]]:
    """Seconds to serve `prompts` at `concurrency` streamed chats, and /healthz latencies (ms) polled meanwhile."""
    queue = list(prompts)
    health: list[float] = []
    done = asyncio.Event()

    async def worker() -> None:
        while queue:
            await timed_stream(client, server, queue.pop(), max_tokens)

    async def poll_health() -> None:
        while not done.is_set():
            started = time.perf_counter()
            (await client.get(f"{server.base_url}/healthz")).raise_for_status()
            health.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll_health())
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    done.set()
    await poller
    return elapsed, health


async def run(servers: dict[str, LiveServer], args: argparse.Namespace) -> None:
    prompts = questions()
    on, off = servers["on"], servers["off"]
    async with httpx.AsyncClient(timeout=600) as client:
        # Warm-up: first requests pay one-off costs (connections, vLLM prefix cache) on every app.
        for server in servers.values():
            await timed_chat(client, server, prompts[0], 8)
        request_overheads, ttft_overheads = await paired(client, servers, prompts[: args.samples], args.max_tokens)
        seconds = {"on": 0.0, "off": 0.0}
        health: dict[str, list[float]] = {"on": [], "off": []}
        for round_index in range(args.rounds):
            batch = prompts[round_index * args.concurrency :][: args.concurrency * 2]
            order = [("off", off), ("on", on)] if round_index % 2 == 0 else [("on", on), ("off", off)]
            for name, server in order:
                elapsed, polled = await loaded(client, server, batch, args.concurrency, args.max_tokens)
                seconds[name] += elapsed
                health[name] += polled
        requests = args.rounds * args.concurrency * 2
        rps_on, rps_off = requests / seconds["on"], requests / seconds["off"]
        health_on, health_off = health["on"], health["off"]
    for name, suffix in (("on", ""), ("check_first", "_check_first")):
        print(f"rails_overhead_ms_p50{suffix} {statistics.median(request_overheads[name]):.1f}")
        print(f"rails_overhead_ms_p95{suffix} {p95(request_overheads[name]):.1f}")
        print(f"rails_stream_ttft_overhead_ms_p50{suffix} {statistics.median(ttft_overheads[name]):.1f}")
        print(f"rails_stream_ttft_overhead_ms_p95{suffix} {p95(ttft_overheads[name]):.1f}")
    print(f"throughput_rps_rails {rps_on:.3f}")
    print(f"throughput_rps_none {rps_off:.3f}")
    print(f"ratio throughput_rails_vs_none {rps_on / rps_off:.3f}")
    print(f"healthz_ms_p95_under_load_rails {p95(health_on):.1f}")
    print(f"healthz_ms_p95_under_load_none {p95(health_off):.1f}")
    per_turn = await rail_time_per_turn(on)
    print(f"rails_time_per_turn_ms_p50 {statistics.median(per_turn):.1f}")
    print(f"rails_time_per_turn_ms_p95 {p95(per_turn):.1f}")


async def rail_time_per_turn(server: LiveServer) -> list[float]:
    """The rails' own time per question + answer, from the verdicts the rails-on app stored (all windows of a
    stream summed): what the rails cost without vLLM's jitter."""
    engine = create_async_engine(server.database_url)
    try:
        async with engine.connect() as connection:
            answers = await connection.execute(
                select(Message.id, Message.reply_to_id).where(
                    Message.role == "assistant", Message.reply_to_id.isnot(None)
                )
            )
            durations = dict(
                (
                    await connection.execute(
                        select(RailEvent.message_id, func.sum(RailEvent.duration_ms)).group_by(RailEvent.message_id)
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    return [durations.get(answer, 0.0) + durations.get(question, 0.0) for answer, question in answers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", default="", help="Use this running vLLM instead of starting one.")
    parser.add_argument("--samples", type=int, default=48, help="Paired questions for the overhead figures.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="Load rounds per app, 2 x concurrency chats each.")
    args = parser.parse_args()
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-rails-") as scratch:
        root = Path(scratch)
        servers: list[LiveServer] = []
        try:
            vllm = {"RATCHET_VLLM_URL": args.vllm_url}
            if not args.vllm_url:
                vllm["RATCHET_VLLM_PORT"] = str(free_port())
            off = start_server(
                root / "off",
                f"sqlite+aiosqlite:///{root / 'off' / 'ratchet.db'}",
                settings.base_model_dir.resolve(),
                {**vllm, "RATCHET_RAILS_ENABLED": "false"},
            )
            servers.append(off)
            wait_ready(off, 900)
            # The jailbreak classifier fitted in this checkout's data dir, else by the first rails app (once).
            fitted = settings.data_dir
            for name, speculative in (("on", "true"), ("check_first", "false")):
                server = start_server(
                    root / name,
                    f"sqlite+aiosqlite:///{root / name / 'ratchet.db'}",
                    settings.base_model_dir.resolve(),
                    {
                        "RATCHET_VLLM_URL": off.vllm_url,
                        "RATCHET_RAILS_ENABLED": "true",
                        "RATCHET_RAILS_SPECULATIVE_GENERATION": speculative,
                    },
                    classifier_from=fitted,
                )
                servers.append(server)
                wait_ready(server, 600)
                fitted = root / name
            asyncio.run(run({"off": off, "on": servers[1], "check_first": servers[2]}, args))
        finally:
            for server in reversed(servers):
                stop_server(server)


if __name__ == "__main__":
    main()
