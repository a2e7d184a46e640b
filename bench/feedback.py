"""Feedback benchmark: votes per second through the API on PostgreSQL vs the same writes straight through
SQLAlchemy, in one run.

Creates a scratch PostgreSQL database, migrates it, seeds one user and a set of answers per client, starts a real
`ratchet serve` on it (vLLM is not needed for votes, so it points at an address where none listens), then
  * API: N concurrent clients, each flipping votes on its own answers with `PUT /api/messages/{id}/feedback`;
  * direct: N concurrent tasks doing the same writes with `FeedbackService` on the same SQLAlchemy engine;
and checks that no acknowledged vote was lost (history rows = acknowledgements, every current vote = the last
one its client was told was stored). Prints one line per figure, e.g. `ratio votes_api_vs_direct 0.41`.
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
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import psutil
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.auth.services import Principal, UserService
from server.db.engine import build_db_config
from server.db.migrate import upgrade
from server.db.models import Conversation, Message, MessageVote, Role, VoteHistory, VoteValue
from server.feedback.services import FeedbackService
from server.settings import Settings
from tests.live_server import free_port

POSTGRES_DSN = os.environ.get("RATCHET_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
UNREACHABLE_VLLM = "http://127.0.0.1:9"

# What each client was told: (answer id, value) in the order the acknowledgements arrived.
Acks = list[tuple[uuid.UUID, str]]


async def admin_sql(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def seed(
    sessions: async_sessionmaker[AsyncSession], clients: int, answers: int, tag: str
) -> list[tuple[Principal, str, list[uuid.UUID]]]:
    """One user per client with `answers` answered questions each, inserted in bulk."""
    users = UserService(sessions)
    seeded = []
    now = datetime.now(UTC)
    for index in range(clients):
        principal, token = await users.create_user(f"bench-{tag}-{index}", Role.USER, "bench")
        conversation_id = uuid7()
        rows: list[Message] = []
        answer_ids = []
        for turn in range(answers):
            question_id, answer_id = uuid7(), uuid7()
            common = {"conversation_id": conversation_id, "user_id": principal.user_id, "channel": "api"}
            question = {"role": "user", "content": f"Question {turn} from client {index}?"}
            rows.append(Message(id=question_id, role="user", content=question["content"], created_at=now, **common))
            rows.append(
                Message(
                    id=answer_id,
                    role="assistant",
                    content=f"Answer {turn}.",
                    reply_to_id=question_id,
                    model_version="smollm2-135m-instruct",
                    prompt_messages=[question],
                    created_at=now,
                    **common,
                )
            )
            answer_ids.append(answer_id)
        async with sessions.begin() as session:
            session.add(Conversation(id=conversation_id, user_id=principal.user_id, channel="api", title="bench"))
            await session.flush()
            # Questions first: answers reference them.
            session.add_all(rows[0::2])
            await session.flush()
            session.add_all(rows[1::2])
        seeded.append((principal, token, answer_ids))
    return seeded


def vote_value(step: int) -> str:
    return VoteValue.UP if step % 2 == 0 else VoteValue.DOWN


async def run_clients(clients: int, one_client: Callable[[int], Awaitable[Acks]]) -> tuple[float, list[Acks]]:
    started = time.perf_counter()
    acks = await asyncio.gather(*(one_client(index) for index in range(clients)))
    return time.perf_counter() - started, list(acks)


async def api_votes(
    base_url: str, seeded: list[tuple[Principal, str, list[uuid.UUID]]], votes_each: int
) -> tuple[float, list[Acks]]:
    connector = aiohttp.TCPConnector(limit=len(seeded) * 2)
    async with aiohttp.ClientSession(base_url, connector=connector) as http:

        async def one_client(index: int) -> Acks:
            _, token, answer_ids = seeded[index]
            headers = {"authorization": f"Bearer {token}"}
            acks: Acks = []
            for step in range(votes_each):
                answer_id = answer_ids[step % len(answer_ids)]
                value = vote_value(step // len(answer_ids))
                async with http.put(f"/api/messages/{answer_id}/feedback", json={"value": value}, headers=headers) as r:
                    if r.status == 200:
                        await r.read()
                        acks.append((answer_id, value))
            return acks

        # One request per client first, so connection set-up and token lookups are not timed.
        for _, token, answer_ids in seeded:
            headers = {"authorization": f"Bearer {token}"}
            async with http.get(f"/api/messages/{answer_ids[0]}/feedback", headers=headers) as response:
                assert response.status == 200, await response.text()
        return await run_clients(len(seeded), one_client)


async def direct_votes(
    sessions: async_sessionmaker[AsyncSession],
    seeded: list[tuple[Principal, str, list[uuid.UUID]]],
    votes_each: int,
) -> tuple[float, list[Acks]]:
    async def one_client(index: int) -> Acks:
        principal, _, answer_ids = seeded[index]
        acks: Acks = []
        for step in range(votes_each):
            answer_id = answer_ids[step % len(answer_ids)]
            value = vote_value(step // len(answer_ids))
            await FeedbackService(sessions).set_vote(principal, answer_id, VoteValue(value), [], "")
            acks.append((answer_id, value))
        return acks

    return await run_clients(len(seeded), one_client)


async def lost_votes(sessions: async_sessionmaker[AsyncSession], acks: list[Acks]) -> int:
    """Acknowledged votes missing from the store: from the history, and from the current votes."""
    expected_last: dict[uuid.UUID, str] = {}
    expected_count: dict[uuid.UUID, int] = {}
    for client_acks in acks:
        for answer_id, value in client_acks:
            expected_last[answer_id] = value
            expected_count[answer_id] = expected_count.get(answer_id, 0) + 1
    async with sessions() as session:
        ids = list(expected_last)
        history = dict(
            (
                await session.execute(
                    select(VoteHistory.message_id, func.count())
                    .where(VoteHistory.message_id.in_(ids))
                    .group_by(VoteHistory.message_id)
                )
            ).all()
        )
        current = (await session.execute(select(MessageVote).where(MessageVote.message_id.in_(ids)))).scalars().all()
    lost = sum(max(0, expected_count[answer_id] - history.get(answer_id, 0)) for answer_id in ids)
    stored = {vote.message_id: vote for vote in current}
    lost += sum(
        1
        for answer_id in ids
        if answer_id not in stored
        or stored[answer_id].value != expected_last[answer_id]
        or stored[answer_id].revision != expected_count[answer_id]
    )
    return lost


def cpu_seconds(pids: list[int] | None = None) -> float:
    """User + system CPU of the given processes (default: this one)."""
    processes = [psutil.Process(pid) for pid in pids] if pids else [psutil.Process()]
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL process on the machine (backends come and go; the ones alive are counted)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] in ("postgres", "postmaster") and process.info["cpu_times"] is not None:
            total += sum(process.info["cpu_times"][:2])
    return total


def start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ratchet serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ratchet serve did not start; see {log}")


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def bench(args: argparse.Namespace, url: str, data_dir: Path) -> int:
    settings = Settings(data_dir=data_dir, database_url=url, vllm_url=UNREACHABLE_VLLM)
    config = build_db_config(settings)
    sessions = config.create_session_maker()
    api_seed = await seed(sessions, args.clients, args.answers, "api")
    direct_seed = await seed(sessions, args.clients, args.answers, "direct")
    port = free_port()
    env = {
        **os.environ,
        "RATCHET_DATA_DIR": str(data_dir),
        "RATCHET_DATABASE_URL": url,
        "RATCHET_VLLM_URL": UNREACHABLE_VLLM,
        "RATCHET_LOG_LEVEL": "warning",
        # Each simulated client votes far faster than a person does.
        "RATCHET_RATE_LIMIT_FEEDBACK_PER_MINUTE": "0",
    }
    server = start_serve(env, port, data_dir / "serve.log")
    try:
        server_cpu, client_cpu, database_cpu = cpu_seconds([server.pid]), cpu_seconds(), postgres_cpu_seconds()
        api_s, api_acks = await api_votes(f"http://127.0.0.1:{port}", api_seed, args.votes)
        server_cpu_s = cpu_seconds([server.pid]) - server_cpu
        client_cpu_s = cpu_seconds() - client_cpu
        database_cpu_s = postgres_cpu_seconds() - database_cpu
    finally:
        stop_serve(server)
    direct_cpu = cpu_seconds()
    direct_s, direct_acks = await direct_votes(sessions, direct_seed, args.votes)
    direct_cpu_s = cpu_seconds() - direct_cpu
    api_count = sum(map(len, api_acks))
    direct_count = sum(map(len, direct_acks))
    lost = await lost_votes(sessions, api_acks) + await lost_votes(sessions, direct_acks)
    await config.get_engine().dispose()

    api_rate, direct_rate = api_count / api_s, direct_count / direct_s
    print(f"votes_per_s {api_rate:.0f}")
    print(f"votes_per_s_direct {direct_rate:.0f}")
    print(f"ratio votes_api_vs_direct {api_rate / direct_rate:.2f}")
    # CPU per vote shows what the code costs when other work shares the cores and throughput cannot.
    print(f"server_cpu_ms_per_vote {server_cpu_s / max(api_count, 1) * 1000:.2f}")
    print(f"direct_cpu_ms_per_vote {direct_cpu_s / max(direct_count, 1) * 1000:.2f}")
    # Where the rest of the two cores went during the API run: the load generator and PostgreSQL.
    print(f"client_cpu_ms_per_vote {client_cpu_s / max(api_count, 1) * 1000:.2f}")
    print(f"postgres_cpu_ms_per_vote {database_cpu_s / max(api_count, 1) * 1000:.2f}")
    print(f"load_average_1m {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"votes_acknowledged {api_count} of {args.clients * args.votes} sent")
    print(f"votes_lost {lost}")
    print(f"check no_vote_lost {'ok' if lost == 0 and api_count == args.clients * args.votes else 'FAILED'}")
    return 0 if lost == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients (default 32).")
    parser.add_argument("--votes", type=int, default=250, help="Votes each client sends (default 250).")
    parser.add_argument("--answers", type=int, default=5, help="Answers each client flips votes on (default 5).")
    args = parser.parse_args()
    name = f"ratchet_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    url = f"{POSTGRES_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as data_dir:
            return asyncio.run(bench(args, url, Path(data_dir)))
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    sys.exit(main())
