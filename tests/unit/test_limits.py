"""Per-user rate limits (in memory, and shared by two app instances through Redis) and the request body limit,
through the real app and database."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.db.models import Conversation, Message, MessageVote
from server.settings import Settings
from tests.unit.feedback_store import count, exchange, person
from tests.unit.ui_client import post_form, sign_in

REDIS_URL = "redis://127.0.0.1:6379/15"
QUESTION = {"messages": [{"role": "user", "content": "How do I book a meeting room?"}]}


@asynccontextmanager
async def app_client(settings: Settings, **overrides: Any) -> AsyncIterator[AsyncTestClient]:
    """The real app on the test database with some settings changed."""
    changed = Settings(**{**settings.model_dump(), "rails_enabled": False, **overrides})
    async with AsyncTestClient(app=create_app(changed)) as client:
        yield client


def retry_after(response: Any) -> int:
    seconds = int(response.headers["retry-after"])
    assert 1 <= seconds <= 60
    return seconds


async def test_votes_past_the_limit_get_429_with_retry_after_while_other_users_still_vote(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice, bob = await person(sessions, "alice"), await person(sessions, "bob")
    alices = await exchange(sessions, alice, "Where is the printer?", "Second floor.")
    bobs = await exchange(sessions, bob, "Where is the kitchen?", "First floor.")
    async with app_client(settings, rate_limit_feedback_per_minute=3) as client:
        url = f"/api/messages/{alices.answer_id}/feedback"
        for value in ("up", "down", "up"):
            assert (await client.put(url, json={"value": value}, headers=alice.headers)).status_code == 200
        refused = await client.put(url, json={"value": "down"}, headers=alice.headers)
        assert refused.status_code == 429
        retry_after(refused)
        assert "3 feedback requests per minute" in refused.json()["detail"]
        # Withdrawing counts against the same budget; the refused writes changed nothing.
        assert (await client.delete(url, headers=alice.headers)).status_code == 429
        current = (await client.get(url, headers=alice.headers)).json()
        assert (current["value"], current["revision"]) == ("up", 3)

        bobs_url = f"/api/messages/{bobs.answer_id}/feedback"
        for value in ("up", "down", "up"):
            assert (await client.put(bobs_url, json={"value": value}, headers=bob.headers)).status_code == 200


async def test_chat_past_the_limit_is_an_openai_shaped_429_and_other_users_still_reach_the_model(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice, bob = await person(sessions, "alice"), await person(sessions, "bob")
    async with app_client(settings, rate_limit_chat_per_minute=2) as client:
        for _ in range(2):
            # vLLM is unreachable here: 503 shows the request got past the limit to the model.
            response = await client.post("/v1/chat/completions", json=QUESTION, headers=alice.headers)
            assert response.status_code == 503
        refused = await client.post("/v1/chat/completions", json=QUESTION, headers=alice.headers)
        assert refused.status_code == 429
        retry_after(refused)
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "2 chat requests per minute" in error["message"]
        # Regenerating an answer asks the model too: same budget, refused before the answer is even looked up.
        regenerate = await client.post(f"/api/messages/{uuid.uuid4()}/regenerate", headers=alice.headers)
        assert regenerate.status_code == 429

        response = await client.post("/v1/chat/completions", json=QUESTION, headers=bob.headers)
        assert response.status_code == 503


@pytest.fixture
def redis_url() -> str:
    """Counts are keyed by user id (new in every test) and expire after their minute: nothing to clean up."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.exceptions.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_URL}, and CI must test on it")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    return REDIS_URL


async def test_two_app_instances_share_each_users_count_through_redis(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    alice = await person(sessions, "alice")
    turn = await exchange(sessions, alice, "Where is the printer?", "Second floor.")
    url = f"/api/messages/{turn.answer_id}/feedback"
    limits = {"rate_limit_feedback_per_minute": 3, "redis_url": redis_url}
    async with app_client(settings, **limits) as first, app_client(settings, **limits) as second:
        assert (await first.put(url, json={"value": "up"}, headers=alice.headers)).status_code == 200
        assert (await second.put(url, json={"value": "down"}, headers=alice.headers)).status_code == 200
        assert (await first.put(url, json={"value": "up"}, headers=alice.headers)).status_code == 200
        assert (await second.put(url, json={"value": "down"}, headers=alice.headers)).status_code == 429
        assert (await first.put(url, json={"value": "down"}, headers=alice.headers)).status_code == 429


async def test_an_unreachable_redis_does_not_take_voting_down(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    turn = await exchange(sessions, alice, "Where is the printer?", "Second floor.")
    nothing_listens = "redis://127.0.0.1:9/0"
    async with app_client(settings, rate_limit_feedback_per_minute=3, redis_url=nothing_listens) as client:
        url = f"/api/messages/{turn.answer_id}/feedback"
        assert (await client.put(url, json={"value": "up"}, headers=alice.headers)).status_code == 200


class RecordingEngine(BaseHTTPRequestHandler):
    """Stands in for vLLM: notes every request it gets and answers 503."""

    paths: list[str] = []

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        self.paths.append(self.path)
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def recording_engine() -> Iterator[str]:
    RecordingEngine.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


async def test_a_10_mb_chat_message_is_a_clear_413_that_reaches_neither_vllm_nor_the_store(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], recording_engine: str
) -> None:
    alice = await person(sessions, "alice")
    huge = {"messages": [{"role": "user", "content": "a" * 10_000_000}]}
    async with app_client(settings, vllm_url=recording_engine) as client:
        response = await client.post("/v1/chat/completions", json=huge, headers=alice.headers)
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and "1048576 bytes" in error["message"]
        assert "/v1/chat/completions" not in RecordingEngine.paths
        assert await count(sessions, Message) == 0 and await count(sessions, Conversation) == 0

        # The same question at an ordinary size does reach the stand-in vLLM.
        await client.post("/v1/chat/completions", json=QUESTION, headers=alice.headers)
        assert "/v1/chat/completions" in RecordingEngine.paths


async def test_every_route_refuses_a_body_over_the_limit(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice")
    turn = await exchange(sessions, alice, "Where is the printer?", "Second floor.")
    async with app_client(settings, max_body_bytes=4096) as client:
        url = f"/api/messages/{turn.answer_id}/feedback"
        response = await client.put(url, json={"value": "up", "comment": "x" * 5000}, headers=alice.headers)
        assert response.status_code == 413
        assert "4096 bytes" in response.json()["detail"]
        assert await count(sessions, MessageVote) == 0
        # Under the limit the same route works.
        assert (await client.put(url, json={"value": "up"}, headers=alice.headers)).status_code == 200


async def test_the_web_ui_spends_the_same_per_user_budget_as_the_api(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-ui")
    async with app_client(settings, rate_limit_chat_per_minute=2) as client:
        await sign_in(client, alice.token)
        # vLLM is unreachable here: 503 shows the request got past the limit to the model.
        from_api = await client.post("/v1/chat/completions", json=QUESTION, headers=alice.headers)
        from_page = await post_form(client, "/ui/chat/turns", {"question": "Where is the printer?"})
        assert (from_api.status_code, from_page.status_code) == (503, 503)

        refused = await post_form(client, "/ui/chat/turns", {"question": "And the kitchen?"})
        assert refused.status_code == 429
        retry_after(refused)
        assert "2 chat requests per minute" in refused.text
        assert (await client.post("/v1/chat/completions", json=QUESTION, headers=alice.headers)).status_code == 429
