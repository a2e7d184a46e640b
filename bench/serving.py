"""Serving benchmark: the same chat workload against vLLM directly and through Ratchet's API, in one run.

Starts a real `ratchet serve` (which supervises its own vLLM) on a scratch data dir, then measures
  * throughput at 16 concurrent streamed chats with a fixed max_tokens (API vs vLLM directly),
  * time-to-first-token overhead of the API (sequential, alternating direct/API requests),
  * single-stream decode speed through the API.
Guardrails are off unless --rails is given: this measures the serving path itself; bench/rails.py measures
what the rails add on top. Both paths get the same sampling, sent explicitly: greedy, with the served defaults'
penalties (the API would fill them in, vLLM would not know the frequency penalty), so the ratio is the API's cost
alone. Prints one line per figure, e.g. `ratio throughput_api_vs_vllm 0.97`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import p95
from server.models.generation_defaults import served_defaults
from server.settings import get_settings
from tests.live_server import LiveServer, free_port, start_server, stop_server, wait_ready

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TOPICS = [
    "the ocean",
    "a city at night",
    "mountain hiking",
    "a bakery",
    "the history of trains",
    "autumn",
    "a chess match",
    "a space station",
]


@dataclass
class StreamResult:
    ttft_s: float
    total_s: float
    tokens: int
    token_times: list[float]


def messages_for(index: int) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": f"Write a long, detailed essay about {TOPICS[index % len(TOPICS)]}."}]


# What the served penalties cost vLLM, measured beside them: the same requests with both penalties off.
NO_PENALTIES = {"repetition_penalty": 1.0, "frequency_penalty": 0.0}


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    model: str,
    index: int,
    max_tokens: int,
    overrides: dict[str, float] | None = None,
) -> StreamResult:
    body = {
        "model": model,
        "messages": messages_for(index),
        **served_defaults(get_settings()).sampling(),
        **(overrides or {}),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = 0.0
    tokens = 0
    token_times: list[float] = []
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = msgspec.json.decode(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    now = time.perf_counter()
                    token_times.append(now)
                    if not ttft:
                        ttft = now - started
    return StreamResult(ttft, time.perf_counter() - started, tokens, token_times)


class Targets:
    def __init__(self, server: LiveServer, model_version: str) -> None:
        self.direct = (f"{server.vllm_url}/v1/chat/completions", {}, model_version)
        self.api = (f"{server.base_url}/v1/chat/completions", server.headers(), "ratchet")


async def throughput(
    client: httpx.AsyncClient,
    target: tuple,
    concurrency: int,
    max_tokens: int,
    overrides: dict[str, float] | None = None,
) -> float:
    url, headers, model = target
    started = time.perf_counter()
    results = await asyncio.gather(
        *(stream_chat(client, url, headers, model, index, max_tokens, overrides) for index in range(concurrency))
    )
    return sum(result.tokens for result in results) / (time.perf_counter() - started)


async def run(server: LiveServer, args: argparse.Namespace) -> None:
    targets = Targets(server, get_settings().base_model_name)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        for target in (targets.direct, targets.api):  # warm both paths
            await throughput(client, target, 4, 16)

        direct_rates, api_rates, plain_rates = [], [], []
        for _ in range(args.rounds):
            direct_rates.append(await throughput(client, targets.direct, args.concurrency, args.max_tokens))
            api_rates.append(await throughput(client, targets.api, args.concurrency, args.max_tokens))
            plain_rates.append(
                await throughput(client, targets.direct, args.concurrency, args.max_tokens, NO_PENALTIES)
            )
        direct_rate, api_rate = statistics.mean(direct_rates), statistics.mean(api_rates)
        plain_rate = statistics.mean(plain_rates)

        overheads, direct_ttfts = [], []
        for index in range(args.ttft_samples):
            direct = await stream_chat(client, *targets.direct[:2], targets.direct[2], index, 4)
            api = await stream_chat(client, *targets.api[:2], targets.api[2], index, 4)
            direct_ttfts.append(direct.ttft_s * 1000)
            overheads.append((api.ttft_s - direct.ttft_s) * 1000)

        single = await stream_chat(client, *targets.api[:2], targets.api[2], 0, args.single_tokens)
        single_direct = await stream_chat(client, *targets.direct[:2], targets.direct[2], 0, args.single_tokens)

    def decode_rate(result: StreamResult) -> float:
        # Tokens from usage, not chunks: with output rails on, one chunk carries a whole checked window.
        times = result.token_times
        return (result.tokens - 1) / (times[-1] - times[0])

    print(f"throughput_tok_s_vllm {direct_rate:.1f}")
    print(f"throughput_tok_s_api {api_rate:.1f}")
    print(f"ratio throughput_api_vs_vllm {api_rate / direct_rate:.3f}")
    print(f"throughput_tok_s_vllm_no_penalties {plain_rate:.1f}")
    print(f"ratio throughput_served_penalties_vs_none {direct_rate / plain_rate:.3f}")
    print(f"ttft_ms_p50_vllm {statistics.median(direct_ttfts):.1f}")
    print(f"ttft_overhead_ms_p50 {statistics.median(overheads):.1f}")
    print(f"ttft_overhead_ms_p95 {p95(overheads):.1f}")
    print(f"decode_tok_s_single {decode_rate(single):.1f}")
    print(f"decode_tok_s_single_vllm {decode_rate(single_direct):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttft-samples", type=int, default=40)
    parser.add_argument("--single-tokens", type=int, default=256)
    parser.add_argument(
        "--rails", action="store_true", help="Keep guardrails on (their own cost is what bench/rails.py measures)."
    )
    args = parser.parse_args()
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as scratch:
        data_dir = Path(scratch)
        server = start_server(
            data_dir,
            f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
            settings.base_model_dir.resolve(),
            {
                "RATCHET_VLLM_PORT": str(free_port()),
                "RATCHET_VLLM_URL": "",
                "RATCHET_LOG_LEVEL": "warning",
                "RATCHET_RAILS_ENABLED": str(args.rails).lower(),
            },
            classifier_from=settings.data_dir,
        )
        try:
            print("starting ratchet serve and its vLLM…", file=sys.stderr)
            wait_ready(server, 900)
            asyncio.run(run(server, args))
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
