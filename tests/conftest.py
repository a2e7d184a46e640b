"""Shared fixtures: every store test runs on SQLite and, where one is reachable, on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.auth.services import UserService
from server.db.engine import build_db_config
from server.db.migrate import upgrade
from server.db.models import Role, metadata
from server.settings import Settings
from tests.unit.rails_fixtures import REPO_RAILS, seed_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

POSTGRES_DSN = os.environ.get("RATCHET_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PREPARED_MODEL = Path(os.environ.get("RATCHET_TEST_MODEL", "var/models/smollm2-135m-instruct")).resolve()
# Nothing listens here: an app pointed at it meets "vLLM down".
UNREACHABLE_VLLM = "http://127.0.0.1:9"


def _postgres_reachable() -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database for the session, once per backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'ratchet.db'}"
        upgrade(url)
        yield url
        return
    with scratch_postgres_database("ratchet_test") as url:
        upgrade(url)
        yield url


@contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); skips, or fails in CI, when PostgreSQL is down."""
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_DSN}, and CI must test on it")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_DSN}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def rails_data_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the jailbreak classifier fitted on the shipped rails' library. It lives in pytest's cache,
    so only the first session after the training texts change pays the fit (a minute or two)."""
    from server.rails.embeddings import shared_embedder
    from server.rails.policy import load_policy

    cache = getattr(request.config, "cache", None)
    path = cache.mkdir("ratchet-rails-data") if cache is not None else tmp_path_factory.mktemp("rails-data")
    load_policy(REPO_RAILS).prepare(shared_embedder(), path)
    return path


@pytest.fixture
def settings(database_url: str, tmp_path: Path, rails_data_dir: Path) -> Settings:
    seed_classifier(rails_data_dir, tmp_path)
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        vllm_url=UNREACHABLE_VLLM,
        base_model=PREPARED_MODEL,
        token_cache_ttl_s=0,
    )


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on the test database; every row is removed after the test."""
    config = build_db_config(settings)
    yield config.create_session_maker()
    async with config.get_engine().begin() as connection:
        for table in reversed(metadata.sorted_tables):
            await connection.execute(table.delete())
    await config.get_engine().dispose()


@pytest.fixture
async def client(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncTestClient]:
    """The real app (real database, lifespan run) whose vLLM is unreachable."""
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
async def user_token(sessions: async_sessionmaker[AsyncSession]) -> str:
    _, token = await UserService(sessions).create_user(f"user-{uuid.uuid4().hex[:6]}", Role.USER)
    return token
