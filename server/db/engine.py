"""Database engine and session factories, with SQLite tuned for concurrent writers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.settings import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout queues writers instead of failing them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SerialisedWrites(async_sessionmaker[AsyncSession]):
    """SQLite sessions whose write transactions (`begin()`) queue on an asyncio lock, one at a time per process.

    SQLite has one writer; a second one waits in its busy handler, which sleeps and polls (up to 100 ms a try),
    so a burst of short writes from one app made a Slack event wait almost a second for its inbox row (bench/slack.py:
    p95 904 ms). Queued here, each writer starts the moment the last commits, in arrival order. A transaction that
    reads before it writes also cannot find the database changed under it by another of this process's writers.
    Writes from other processes (the nightly job, the CLI) still meet the busy handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One lock per event loop: tests and the CLI run several loops in one process.
        self._write_locks: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = WeakKeyDictionary()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:  # type: ignore[override]
        lock = self._write_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock, super().begin() as session:
            yield session


def build_db_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    url = settings.resolved_database_url
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Overflow connections are closed when returned, so a pool smaller than the usual concurrency reconnects on
    # almost every request under load (measured: a fifth of the server's CPU in bench/feedback.py).
    engine_config = (
        EngineConfig()
        if is_sqlite
        else EngineConfig(pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    )
    config = SQLAlchemyAsyncConfig(
        connection_string=url,
        engine_config=engine_config,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        session_maker_class=SerialisedWrites if is_sqlite else async_sessionmaker,
        before_send_handler="autocommit",
        create_all=False,
    )
    if is_sqlite:
        event.listen(config.get_engine().sync_engine, "connect", _sqlite_pragmas)
    return config


@asynccontextmanager
async def open_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on an engine of their own, for work outside the app (CLI commands, the nightly job); the engine
    and its connections are closed on exit."""
    config = build_db_config(settings)
    try:
        yield config.create_session_maker()
    finally:
        await config.get_engine().dispose()


def dialect_insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (both SQLite and PostgreSQL support upserts)."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
