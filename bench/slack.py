"""Slack bench: how fast Slack hears back, and whether any event is lost, under a burst of mentions.

Starts a real `ratchet serve` (its own vLLM, the Slack bot on, Slack's Web API replaced by a local recording
server), sends one signed `app_mention` (the first since the app started), then fires N concurrent ones (each its
own thread) plus one Slack retry of each, and measures
  * the acknowledgement latency of each event (Slack's limit is 3 s; target p95 < 300 ms), against the same
    app's /healthz latency under the same concurrency in the same run (the baseline: an app doing nothing),
  * events lost: mentions with no answer streamed into their thread once everything settled (target 0), and
    answers posted twice (a retry answered again; target 0).
The events are fired and timed from a separate process, so the recording Slack server (a thread of this one,
busy with the answers the first events start) cannot delay the clock. `--store postgresql` runs the app on a
scratch PostgreSQL database instead of SQLite.
Prints one line per figure, e.g. `slack_ack_ms_p95 41.0`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.feedback import POSTGRES_DSN, admin_sql
from server.settings import get_settings
from tests.live_server import LiveServer, free_port, start_server, stop_server, wait_ready
from tests.slack_fake import FakeSlack, event_body, fake_slack, mention, signed_headers

SECRET = "bench-signing-secret"
QUESTIONS = [
    "What is a mutex?",
    "How do I write a good commit message?",
    "What is the capital of Japan?",
    "Name three primary colours.",
    "What does HTTP stand for?",
]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


async def timed_post(client: httpx.AsyncClient, path: str, body: bytes, retry: int | None = None) -> float:
    headers = {"content-type": "application/json", **signed_headers(SECRET, body, retry=retry)}
    started = time.perf_counter()
    response = await client.post(path, content=body, headers=headers)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000


async def timed_get(client: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    (await client.get(path)).raise_for_status()
    return (time.perf_counter() - started) * 1000


async def _fire(
    base_url: str, first: bytes, bodies: list[bytes]
) -> tuple[float, list[float], list[float], list[float]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await timed_get(client, "/healthz")
        baseline = await asyncio.gather(*(timed_get(client, "/healthz") for _ in bodies))
        first_ack = await timed_post(client, "/slack/events", first)
        acks = await asyncio.gather(*(timed_post(client, "/slack/events", body) for body in bodies))
        retried = await asyncio.gather(*(timed_post(client, "/slack/events", body, retry=1) for body in bodies))
    return first_ack, list(baseline), list(acks), list(retried)


def fire(base_url: str, first: bytes, bodies: list[bytes]) -> tuple[float, list[float], list[float], list[float]]:
    """In the timing process: /healthz at the burst's concurrency; the first event since the app started (slack_bolt
    checks the bot token with Slack's auth.test then, once); the burst; Slack's retry of each."""
    return asyncio.run(_fire(base_url, first, bodies))


def run(server: LiveServer, slack: FakeSlack, events: int, settle_s: float) -> None:
    first = event_body(mention(QUESTIONS[0], "U9999", "4999.000001"), "Ev-bench-first")
    bodies = [
        event_body(mention(QUESTIONS[i % len(QUESTIONS)], f"U{i:04d}", f"5000.{i:06d}"), f"Ev-bench-{i}")
        for i in range(events)
    ]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as timer:
        first_ack, baseline, acks, retried = timer.submit(fire, server.base_url, first, bodies).result()
    threads = ["4999.000001", *(f"5000.{i:06d}" for i in range(events))]
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        finished = [t for t in threads if any(slack.streamed_text(ts) is not None for ts in slack.streams_in(t))]
        if len(finished) == len(threads):
            break
        time.sleep(1)
    lost = sum(1 for thread in threads if not slack.streams_in(thread))
    unfinished = sum(
        1 for thread in threads if not any(slack.streamed_text(ts) is not None for ts in slack.streams_in(thread))
    )
    doubled = sum(1 for thread in threads if len(slack.streams_in(thread)) > 1)
    print(f"slack_ack_ms_first_event_after_start {first_ack:.1f}")
    print(f"slack_ack_ms_p50 {statistics.median(acks):.1f}")
    print(f"slack_ack_ms_p95 {p95(acks):.1f}")
    print(f"slack_retry_ack_ms_p95 {p95(retried):.1f}")
    print(f"healthz_ms_p95_same_concurrency {p95(baseline):.1f}")
    print(f"ratio slack_ack_p95_vs_healthz_p95 {p95(acks) / p95(baseline):.2f}")
    print(f"slack_events_lost {lost}")
    print(f"slack_answers_unfinished_after_{settle_s:.0f}s {unfinished}")
    print(f"slack_answers_doubled {doubled}")


@contextmanager
def database(store: str, data_dir: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}"
        return
    name = f"ratchet_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--settle-s", type=float, default=600)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    settings = get_settings()
    with (
        fake_slack() as slack,
        tempfile.TemporaryDirectory(prefix="ratchet-bench-") as scratch,
        database(args.store, Path(scratch)) as database_url,
    ):
        data_dir = Path(scratch)
        server = start_server(
            data_dir,
            database_url,
            settings.base_model_dir.resolve(),
            {
                "RATCHET_VLLM_PORT": str(free_port()),
                "RATCHET_VLLM_URL": "",
                "RATCHET_LOG_LEVEL": "warning",
                "RATCHET_SLACK_SIGNING_SECRET": SECRET,
                "RATCHET_SLACK_BOT_TOKEN": "xoxb-bench",
                "RATCHET_SLACK_API_URL": slack.url,
            },
            # The jailbreak classifier `make setup` fitted in this checkout's data dir, not fitted again.
            classifier_from=settings.data_dir,
        )
        try:
            print(f"starting ratchet serve ({args.store}) and its vLLM…", file=sys.stderr)
            wait_ready(server, 900)
            run(server, slack, args.events, args.settle_s)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
