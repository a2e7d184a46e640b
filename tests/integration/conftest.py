"""A real Ratchet server for the whole session: `ratchet serve` supervising a real vLLM (CPU build) that
serves the prepared SmolLM2, on SQLite; plus a second app on PostgreSQL using the same vLLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PREPARED_MODEL, scratch_postgres_database
from tests.live_server import LiveServer, free_port, start_server, stop_server, stored_message, wait_ready

READY_TIMEOUT_S = 900

__all__ = ["LiveServer", "stored_message"]


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, rails_data_dir: Path) -> Iterator[LiveServer]:
    """`ratchet serve` with its own supervised vLLM, on SQLite."""
    if not (PREPARED_MODEL / "config.json").exists():
        pytest.fail(f"no prepared model at {PREPARED_MODEL}: run `ratchet model prepare` (make test does)")
    data_dir = tmp_path_factory.mktemp("live")
    server = start_server(
        data_dir,
        f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
        PREPARED_MODEL,
        {"RATCHET_VLLM_PORT": str(free_port()), "RATCHET_VLLM_URL": ""},
        classifier_from=rails_data_dir,
    )
    try:
        wait_ready(server, READY_TIMEOUT_S)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def live_server_pg(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory, rails_data_dir: Path
) -> Iterator[LiveServer]:
    """A second app on PostgreSQL, pointed at the first one's vLLM as an external server."""
    with scratch_postgres_database("ratchet_live") as url:
        server = start_server(
            tmp_path_factory.mktemp("live-pg"),
            url,
            PREPARED_MODEL,
            {"RATCHET_VLLM_URL": live_server.vllm_url},
            classifier_from=rails_data_dir,
        )
        try:
            wait_ready(server, 120)
            yield server
        finally:
            stop_server(server)


@pytest.fixture(params=["sqlite", "postgresql"])
def chat_server(request: pytest.FixtureRequest) -> LiveServer:
    """Each chat storage test runs against the SQLite app and the PostgreSQL app."""
    name = "live_server" if request.param == "sqlite" else "live_server_pg"
    return request.getfixturevalue(name)
