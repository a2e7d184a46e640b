"""The Slack bot end to end: real signed requests to a running `ratchet serve`, answers from the real vLLM,
Slack's Web API replaced by a local server that records every call and can answer 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, start_server, stop_server, stored_message, wait_ready
from tests.slack_fake import (
    FakeSlack,
    button_payload,
    event_body,
    fake_slack,
    interaction_body,
    mention,
    signed_headers,
)

pytestmark = pytest.mark.integration

SECRET = "live-signing-secret"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with fake_slack() as fake:
        yield fake


@pytest.fixture(scope="module")
def slack_server(
    live_server: LiveServer, slack: FakeSlack, tmp_path_factory: pytest.TempPathFactory, rails_data_dir: Path
) -> Iterator[LiveServer]:
    """A second app with Slack configured, on the first one's vLLM."""
    data_dir = tmp_path_factory.mktemp("slack")
    server = start_server(
        data_dir,
        f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
        PREPARED_MODEL,
        {
            "RATCHET_VLLM_URL": live_server.vllm_url,
            "RATCHET_SLACK_SIGNING_SECRET": SECRET,
            "RATCHET_SLACK_BOT_TOKEN": "xoxb-live-test",
            "RATCHET_SLACK_API_URL": slack.url,
        },
        classifier_from=rails_data_dir,
    )
    try:
        wait_ready(server, 300)
        yield server
    finally:
        stop_server(server)


def send(server: LiveServer, path: str, body: bytes, **sign: Any) -> httpx.Response:
    content_type = "application/json" if body.startswith(b"{") else "application/x-www-form-urlencoded"
    headers = {"content-type": content_type, **signed_headers(SECRET, body, **sign)}
    return httpx.post(f"{server.base_url}{path}", content=body, headers=headers, timeout=10)


def wait_for(check: Callable[[], Any], timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s")


def answered(slack: FakeSlack, thread_ts: str, count: int = 1) -> list[str]:
    """Wait until `count` answers were streamed into the thread and stopped; their message ts."""

    def done() -> list[str] | None:
        streams = slack.streams_in(thread_ts)
        finished = [ts for ts in streams if slack.streamed_text(ts) is not None]
        return finished if len(finished) >= count else None

    return wait_for(done)


def answer_id(slack: FakeSlack, ts: str) -> str:
    [actions] = slack.stop_blocks(ts)
    return actions["elements"][0]["positive_button"]["value"].split(":", 1)[1]


async def test_a_mention_is_answered_in_its_thread_streamed_from_vllm_with_feedback_buttons(
    slack_server: LiveServer, slack: FakeSlack
) -> None:
    body = event_body(mention("What is the capital of France?", "U0ALICE", "1000.0001"), "Ev-live-1")
    started = time.monotonic()
    assert send(slack_server, "/slack/events", body).status_code == 200
    assert time.monotonic() - started < 3, "Slack must be acknowledged within 3 seconds"
    [ts] = answered(slack, "1000.0001")
    text = slack.streamed_text(ts) or ""
    assert text.strip()
    stored = await stored_message(slack_server, answer_id(slack, ts))
    assert stored.channel == "slack" and stored.status == "complete" and stored.model_version
    assert stored.content.strip() == text.strip()


async def test_slacks_retry_of_an_event_is_answered_once(slack_server: LiveServer, slack: FakeSlack) -> None:
    body = event_body(mention("Name a primary colour.", "U0BOB", "1000.0002"), "Ev-live-2")
    for retry in (None, 1, 2):
        assert send(slack_server, "/slack/events", body, retry=retry).status_code == 200
    answered(slack, "1000.0002")
    await asyncio.sleep(3)
    assert len(slack.streams_in("1000.0002")) == 1


async def test_a_rate_limited_slack_is_waited_out_and_the_answer_still_delivered(
    slack_server: LiveServer, slack: FakeSlack
) -> None:
    slack.fail("chat.startStream", 429, times=1)
    body = event_body(mention("What is 2 + 2?", "U0CAROL", "1000.0003"), "Ev-live-3")
    assert send(slack_server, "/slack/events", body).status_code == 200
    [ts] = answered(slack, "1000.0003")
    limited = [call for call in slack.of("chat.startStream") if call.status == 429]
    assert limited and limited[0].params.get("thread_ts") == "1000.0003"
    assert (slack.streamed_text(ts) or "").strip()


async def test_two_questions_in_one_thread_at_once_keep_the_conversation_consistent(
    slack_server: LiveServer, slack: FakeSlack
) -> None:
    first = event_body(mention("My name is Dana.", "U0DANA", "1000.0004"), "Ev-live-4")
    second = event_body(mention("What is my name?", "U0DANA", "1000.0005", thread_ts="1000.0004"), "Ev-live-5")
    assert send(slack_server, "/slack/events", first).status_code == 200
    assert send(slack_server, "/slack/events", second).status_code == 200
    stored = [await stored_message(slack_server, answer_id(slack, ts)) for ts in answered(slack, "1000.0004", 2)]
    earlier, later = sorted(stored, key=lambda message: len(message.prompt_messages or []))
    assert later.conversation_id == earlier.conversation_id
    # One at a time: the second question was answered with the first and its answer as context.
    contents = [turn["content"] for turn in later.prompt_messages or []]
    assert "My name is Dana." in contents and earlier.content in contents
    assert contents[-1] == "What is my name?"


async def test_button_and_reaction_votes_reach_the_review_queue_and_export_as_slack(
    slack_server: LiveServer, slack: FakeSlack
) -> None:
    body = event_body(mention("Give me one tip for a meeting.", "U0ERIN", "1000.0006"), "Ev-live-6")
    assert send(slack_server, "/slack/events", body).status_code == 200
    [ts] = answered(slack, "1000.0006")
    message_id = answer_id(slack, ts)
    button = button_payload(f"down:{message_id}", "U0FRANK", "trigger-live-1")
    assert send(slack_server, "/slack/interactions", interaction_body(button)).status_code == 200
    reaction = {
        "type": "reaction_added",
        "user": "U0GRACE",
        "reaction": "+1",
        "item": {"type": "message", "channel": "C0GENERAL", "ts": ts},
        "event_ts": "1000.0007",
    }
    assert send(slack_server, "/slack/events", event_body(reaction, "Ev-live-7")).status_code == 200
    ops = slack_server.headers(slack_server.ops_token)
    wait_for(
        lambda: (
            message_id
            in httpx.get(f"{slack_server.base_url}/api/review/items", params={"channel": "slack"}, headers=ops).text
        ),
        30,
    )
    admin = slack_server.headers(slack_server.admin_token)

    def exported() -> dict[str, Any] | None:
        manifest = httpx.get(
            f"{slack_server.base_url}/api/exports/training-data/manifest", params={"channel": "slack"}, headers=admin
        ).json()
        sources = manifest["rows_by_source"]
        return manifest if sources.get("kto.thumbs_down") and sources.get("kto.thumbs_up") else None

    assert wait_for(exported, 30)["filters"]["channel"] == "slack"
