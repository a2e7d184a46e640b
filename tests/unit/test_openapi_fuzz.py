"""Schemathesis fuzzes every operation of the OpenAPI document against the real app (served over HTTP by uvicorn,
on the test database, with an admin token, vLLM unreachable): no request may get a server error. Only the routes
that need vLLM to answer (and /readyz, which reports it) may say 503; nothing may say 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from server.app import create_app
from server.auth.services import UserService
from server.db.engine import build_db_config
from server.db.models import Role, metadata
from server.settings import Settings
from tests.conftest import PREPARED_MODEL, UNREACHABLE_VLLM
from tests.unit.rails_fixtures import seed_classifier
from tests.unit.served import served

# Examples per operation in the fuzzing phase; the coverage phase adds its boundary and negative cases on top.
MAX_EXAMPLES = 25
SEED = 20261201
CLIENT_ERRORS = ["1xx", "2xx", "3xx", "4xx"]
NEEDS_VLLM = ["/v1/chat/completions", "/api/messages/{message_id}/regenerate", "/readyz"]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {
            "coverage": {"unexpected-methods": ["OPTIONS", "PATCH", "TRACE", "DELETE", "PUT", "POST", "GET"]},
            "stateful": {"enabled": False},
        },
        "checks": {"not_a_server_error": {"expected-statuses": CLIENT_ERRORS}},
        "operations": [
            {"include-path": path, "checks": {"not_a_server_error": {"expected-statuses": [*CLIENT_ERRORS, 503]}}}
            for path in NEEDS_VLLM
        ],
    }
)
# The document does not depend on the database, so it is read from an app built here, once, at collection.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(vllm_url=UNREACHABLE_VLLM)).openapi_schema.to_schema(), config=CONFIG
)


def _settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        vllm_url=UNREACHABLE_VLLM,
        base_model=PREPARED_MODEL,
        token_cache_ttl_s=0,
        # One admin sends every case: limits would answer most of them 429 before they reach anything.
        rate_limit_chat_per_minute=0,
        rate_limit_feedback_per_minute=0,
    )


async def _admin_token(settings: Settings) -> str:
    config = build_db_config(settings)
    try:
        _, token = await UserService(config.create_session_maker()).create_user("fuzz-admin", Role.ADMIN)
    finally:
        await config.get_engine().dispose()
    return token


async def _delete_all_rows(settings: Settings) -> None:
    engine = build_db_config(settings).get_engine()
    async with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            await connection.execute(table.delete())
    await engine.dispose()


@pytest.fixture(scope="module")
def served_app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, rails_data_dir: Path
) -> Iterator[tuple[str, str]]:
    """The app served over HTTP once per backend for every operation: its base URL and an admin token. Every row
    it wrote is removed afterwards."""
    settings = _settings(database_url, tmp_path_factory.mktemp("fuzz"))
    # The rails start with the session's fitted classifier instead of fitting it again for each backend.
    seed_classifier(rails_data_dir, settings.data_dir)
    token = asyncio.run(_admin_token(settings))
    try:
        with served(create_app(settings)) as base_url:
            yield base_url, token
    finally:
        asyncio.run(_delete_all_rows(settings))


@schema.parametrize()
def test_no_request_gets_a_server_error(case: schemathesis.Case, served_app: tuple[str, str]) -> None:
    base_url, token = served_app
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error])
