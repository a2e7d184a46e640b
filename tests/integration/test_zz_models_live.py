"""The model registry end to end on the real vLLM: a LoRA trained-shape adapter made with PEFT on the served base
is registered, gated and served as a canary (merged into a vLLM of its own where the app serves LoRA merged); about
100 users see the configured share, each exactly as the sticky split says; votes through the feedback API make the
live canary promote one candidate and roll back another (which then leaves vLLM); the vLLM serving the active
version is killed and the app serves it again before routing to it. Where the app splits the cores between
engines, the canary's vLLM runs on a half of its own.

Named to run last: it changes the alias's active version and restarts the session's vLLM."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import Principal, UserService
from server.db.engine import open_sessions
from server.db.models import Role
from server.engine.launcher import engine_core_sets
from server.models.registry import ModelRegistry
from server.models.services import canary_bucket
from server.settings import Settings
from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, make_lora_adapters, ratchet

pytestmark = pytest.mark.integration

USERS = 100
FRACTION = 0.2  # RATCHET_CANARY_FRACTION's default, which the live server runs with
CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
async def store(live_server: LiveServer) -> AsyncIterator[tuple[Settings, async_sessionmaker[AsyncSession]]]:
    settings = Settings(data_dir=live_server.data_dir, database_url=live_server.database_url, base_model=PREPARED_MODEL)
    async with open_sessions(settings) as sessions:
        yield settings, sessions


async def register_and_gate(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], name: str, path: Path
) -> None:
    registry = ModelRegistry(sessions, settings)
    await registry.register_candidate(
        name,
        "lora",
        path,
        parent=settings.base_model_name,
        run_id="live-test",
        data_hash="0" * 64,
        method="kto",
        method_settings={"lora_r": 8},
        metrics={"steps": 0},
    )
    await registry.record_gate_results(name, [{"name": "all", "passed": True}], passed=True)


async def chat(client: httpx.AsyncClient, token: str) -> dict:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


async def chats(client: httpx.AsyncClient, tokens: list[str]) -> list[dict]:
    limit = asyncio.Semaphore(8)

    async def one(token: str) -> dict:
        async with limit:
            return await chat(client, token)

    return await asyncio.gather(*(one(token) for token in tokens))


async def vote(client: httpx.AsyncClient, token: str, answer: dict, up: bool) -> None:
    response = await client.put(
        f"/api/messages/{answer['ratchet']['message_id']}/feedback",
        json={"value": "up" if up else "down"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text


def extra_rounds(people: list[tuple[Principal, str]], in_canary: list[bool]) -> list[str]:
    """More questions from the canary's users, enough for the verdict's minimum of 50 votes per arm."""
    tokens = [token for (_, token), canary in zip(people, in_canary, strict=True) if canary]
    return tokens * max(2, math.ceil(60 / len(tokens)))


async def votes(
    client: httpx.AsyncClient, tokens: list[str], answers: list[dict], up: Callable[[int, dict], bool]
) -> None:
    """Each asker votes on their answer, thumbs up where `up(index, answer)` says so."""
    limit = asyncio.Semaphore(8)

    async def one(index: int, token: str, answer: dict) -> None:
        async with limit:
            await vote(client, token, answer, up(index, answer))

    await asyncio.gather(*(one(index, *pair) for index, pair in enumerate(zip(tokens, answers, strict=True))))


async def wait_for(client: httpx.AsyncClient, admin: str, name: str, status: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        detail = (await client.get(f"/api/models/{name}", headers={"authorization": f"Bearer {admin}"})).json()
        if detail["status"] == status or time.monotonic() > deadline:
            return detail
        await asyncio.sleep(1)


async def served_by_vllm(server: LiveServer) -> set[str]:
    """What the app's vLLM servers serve: the main one, and each merged version's own (RATCHET_SERVE_LORA_AS)."""
    served: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as client:
        for url in server.vllm_urls():
            try:
                served |= {model["id"] for model in (await client.get(f"{url}/v1/models")).json()["data"]}
            except httpx.HTTPError:
                continue  # still starting
    return served


async def wait_served(server: LiveServer, name: str, timeout_s: float = 600) -> None:
    """Until `name` is served (loaded as an adapter at once; served merged, once its own vLLM has started), and the
    app's router has seen it."""
    deadline = time.monotonic() + timeout_s
    while name not in await served_by_vllm(server) and time.monotonic() < deadline:
        await asyncio.sleep(2)
    assert name in await served_by_vllm(server), server.log_tail()
    await asyncio.sleep(3)  # the app's router picks it up within RATCHET_MODEL_SYNC_INTERVAL_S


def engine_cores(server: LiveServer, name: str | None = None) -> set[frozenset[int]]:
    """The cores each process of the vLLM serving `name` (by default the main one) may run on."""
    process = server.vllm_process(name)
    assert process is not None
    return {frozenset(each.cpu_affinity()) for each in [process, *process.children(recursive=True)]}


async def promote(client: httpx.AsyncClient, admin: str, name: str, reason: str) -> dict:
    response = await client.post(
        f"/api/models/{name}/promote", json={"reason": reason}, headers={"authorization": f"Bearer {admin}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_register_gate_canary_promote_rollback_and_survive_a_vllm_restart(
    live_server: LiveServer, store: tuple[Settings, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    settings, sessions = store
    adapters = make_lora_adapters(PREPARED_MODEL, tmp_path, ["live-lora-a", "live-lora-b"])
    users = UserService(sessions)
    people = [await users.create_user(f"canary-user-{index}", Role.USER) for index in range(USERS)]
    admin = live_server.admin_token
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=300) as client:
        # Register → gate → promote to canary: served under its own name (loaded into vLLM, or merged and started
        # in a vLLM of its own) before anyone is routed to it.
        await register_and_gate(settings, sessions, "live-lora-a", adapters["live-lora-a"])
        detail = await promote(client, admin, "live-lora-a", "passed the gates")
        assert detail["status"] == "canary"
        await wait_served(live_server, "live-lora-a")
        core_sets = engine_core_sets(settings)
        if len(core_sets) > 1 and live_server.vllm_process("live-lora-a") is not None:
            # The canary's vLLM runs on the other half of the cores, and the main one stays on its own.
            assert engine_cores(live_server) == {frozenset(core_sets[0])}
            assert engine_cores(live_server, "live-lora-a") == {frozenset(core_sets[1])}

        # The share each user gets is the sticky split's, and about the configured fraction.
        answers = await chats(client, [token for _, token in people])
        in_canary = [canary_bucket(principal.user_id, "live-lora-a") < FRACTION for principal, _ in people]
        assert [answer["model"] == "live-lora-a" for answer in answers] == in_canary
        assert 8 <= sum(in_canary) <= 32  # 20 ± 3 standard deviations of 100 users

        # Canary users like their answers, the others mostly do not: the live canary promotes.
        tokens = [token for _, token in people] + extra_rounds(people, in_canary)
        answers += await chats(client, tokens[len(people) :])
        await votes(client, tokens, answers, lambda index, answer: answer["model"] == "live-lora-a" or index % 3 == 0)
        promoted = await wait_for(client, admin, "live-lora-a", "active")
        assert promoted["status"] == "active", promoted
        assert promoted["transitions"][-1]["actor"] == "canary"
        assert promoted["canary"]["decision"] == "promote"

        # The next candidate is disliked: rolled back, then unloaded once drained.
        await register_and_gate(settings, sessions, "live-lora-b", adapters["live-lora-b"])
        await promote(client, admin, "live-lora-b", "passed the gates")
        await wait_served(live_server, "live-lora-b")
        in_b = [canary_bucket(principal.user_id, "live-lora-b") < FRACTION for principal, _ in people]
        tokens = [token for _, token in people] + extra_rounds(people, in_b)
        answers = await chats(client, tokens)
        assert {answer["model"] for answer in answers} == {"live-lora-a", "live-lora-b"}
        await votes(client, tokens, answers, lambda _, answer: answer["model"] == "live-lora-a")
        rolled_back = await wait_for(client, admin, "live-lora-b", "rolled_back")
        assert rolled_back["status"] == "rolled_back", rolled_back
        assert rolled_back["canary"]["decision"] == "rollback"
        deadline = time.monotonic() + 120
        while "live-lora-b" in await served_by_vllm(live_server) and time.monotonic() < deadline:
            await asyncio.sleep(2)
        assert "live-lora-b" not in await served_by_vllm(live_server)

        listed = json.loads(ratchet(live_server.env, "models", "show", "live-lora-a"))
        assert listed["status"] == "active" and listed["active_for"] == ["ratchet"]

        # The vLLM serving the active version dies: chat is a 503 meanwhile, never a 4xx/5xx from an adapter vLLM
        # lost; once ready, the active version is back and answers.
        vllm = live_server.vllm_process("live-lora-a") or live_server.vllm_process()
        assert vllm is not None
        os.killpg(os.getpgid(vllm.pid), signal.SIGKILL)
        token = people[0][1]
        noticed = time.monotonic() + 30  # readiness is at most one reconcile pass (a second) old
        while (await client.get("/readyz")).status_code == 200 and time.monotonic() < noticed:
            await asyncio.sleep(0.5)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            response = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code in (200, 503), response.text
            await asyncio.sleep(2)
        assert (await client.get("/readyz")).status_code == 200, live_server.log_tail()
        assert "live-lora-a" in await served_by_vllm(live_server)
        answer = await chat(client, token)
        assert answer["model"] == "live-lora-a"
