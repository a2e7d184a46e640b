"""How the app's write transactions share the database: on SQLite (one writer) they queue in the process, in
arrival order, instead of polling in SQLite's busy handler."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.engine import SerialisedWrites
from server.db.models import User


async def test_sqlite_write_transactions_run_one_at_a_time_in_arrival_order(
    sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    spans: list[tuple[int, float, float]] = []

    async def write(index: int) -> None:
        async with sessions.begin() as session:
            started = time.perf_counter()
            session.add(User(name=f"writer-{index}", role="user"))
            await session.flush()
            # A transaction that awaits while it holds the writer: the others must wait for its commit.
            await asyncio.sleep(0.02)
            spans.append((index, started, time.perf_counter()))

    await asyncio.gather(*(write(index) for index in range(8)))

    async with sessions() as session:
        names = set(await session.scalars(select(User.name).where(User.name.startswith("writer-"))))
    assert names == {f"writer-{index}" for index in range(8)}
    if not database_url.startswith("sqlite"):
        assert not isinstance(sessions, SerialisedWrites)  # PostgreSQL locks rows, not the database
        return
    assert isinstance(sessions, SerialisedWrites)
    assert [index for index, _, _ in spans] == list(range(8))
    for (_, _, ended), (_, started, _) in pairwise(spans):
        assert started >= ended


async def test_sqlite_read_then_write_transactions_each_see_the_last_ones_commit(
    sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    """Without the queue, SQLite refuses at once ('database is locked', no busy wait) a transaction whose snapshot
    another writer changed before it wrote; queued, each reads what the one before committed."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL runs these concurrently by design (read committed)")

    async def next_numbered_user() -> None:
        async with sessions.begin() as session:
            taken = len(list(await session.scalars(select(User.id).where(User.name.startswith("numbered-")))))
            await asyncio.sleep(0.05)  # long enough for every reader to read before any writes
            session.add(User(name=f"numbered-{taken}", role="user"))

    await asyncio.gather(*(next_numbered_user() for _ in range(12)))
    async with sessions() as session:
        names = set(await session.scalars(select(User.name).where(User.name.startswith("numbered-"))))
    assert names == {f"numbered-{index}" for index in range(12)}
