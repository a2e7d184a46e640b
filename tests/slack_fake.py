"""Slack's side, for tests and the bench: a local HTTP server standing in for Slack's Web API (it records every
call and can answer 429 or 500 on demand), and requests signed exactly as Slack signs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TEAM = "T0RATCHET"
BOT_USER = "U0BOT"


@dataclass
class SlackCall:
    method: str
    params: dict[str, Any]
    status: int
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeSlack:
    """Records calls; `fail(method, status, times)` makes the next calls of a method fail."""

    url: str = ""
    calls: list[SlackCall] = field(default_factory=list)
    _failures: dict[str, list[int]] = field(default_factory=dict)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(method, []).extend([status] * times)

    def of(self, method: str) -> list[SlackCall]:
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def ok_calls(self, method: str) -> list[SlackCall]:
        return [call for call in self.of(method) if call.status == 200]

    def streams_in(self, thread_ts: str) -> list[str]:
        """The message ts of every answer streamed into a thread."""
        return [c.response["ts"] for c in self.ok_calls("chat.startStream") if c.params.get("thread_ts") == thread_ts]

    def streamed_text(self, ts: str) -> str | None:
        """The whole text of a streamed answer once its stream was stopped; None while it is still open."""
        stops = [call for call in self.ok_calls("chat.stopStream") if call.params.get("ts") == ts]
        if not stops:
            return None
        parts = [streamed_markdown(c.params) for c in self.ok_calls("chat.appendStream") if c.params.get("ts") == ts]
        starts = [c for c in self.ok_calls("chat.startStream") if c.response.get("ts") == ts]
        opening = streamed_markdown(starts[0].params) if starts else ""
        return opening + "".join(parts) + streamed_markdown(stops[0].params)

    def stop_blocks(self, ts: str) -> list[dict[str, Any]]:
        [stop] = [call for call in self.ok_calls("chat.stopStream") if call.params.get("ts") == ts]
        blocks = stop.params.get("blocks") or []
        return json.loads(blocks) if isinstance(blocks, str) else blocks

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.read()
        if request.content_type == "application/json":
            params = json.loads(raw or b"{}")
        else:
            params = {key: values[0] for key, values in urllib.parse.parse_qs(raw.decode()).items()}
        with self._lock:
            pending = self._failures.get(method)
            status = pending.pop(0) if pending else 200
            call = SlackCall(method, params, status)
            self.calls.append(call)
        if status == 429:
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        if status != 200:
            return web.json_response({"ok": False, "error": "fatal_error"}, status=status)
        body: dict[str, Any] = {"ok": True}
        if method == "auth.test":
            body.update(user_id=BOT_USER, bot_id="B0BOT", team_id=TEAM, url="https://ratchet.slack.test/")
        if method in ("chat.postMessage", "chat.startStream"):
            body.update(channel=params.get("channel"), ts=f"{int(time.time())}.{next(self._ts):06d}")
        if method in ("chat.update", "chat.appendStream", "chat.stopStream"):
            body.update(channel=params.get("channel"), ts=params.get("ts"))
        call.response = body
        return web.json_response(body)


@contextmanager
def fake_slack() -> Iterator[FakeSlack]:
    """Run the fake Web API on a loopback port in its own thread (the app under test may be another process)."""
    fake = FakeSlack()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: dict[str, web.AppRunner] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", fake._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}/api/"
        runner_box["runner"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner_box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def signed_headers(secret: str, body: bytes, timestamp: int | None = None, retry: int | None = None) -> dict[str, str]:
    """Slack's request signature: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    basestring = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}
    if retry is not None:
        headers.update({"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"})
    return headers


def event_body(event: dict[str, Any], event_id: str) -> bytes:
    return json.dumps(
        {
            "token": "unused",
            "team_id": TEAM,
            "api_app_id": "A0RATCHET",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
            "event": event,
        }
    ).encode()


def mention(text: str, user: str, ts: str, channel: str = "C0GENERAL", thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}", "ts": ts, "channel": channel}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def interaction_body(payload: dict[str, Any]) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def button_payload(value: str, user: str, trigger_id: str, channel: str = "C0GENERAL") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM},
        "user": {"id": user, "team_id": TEAM},
        "api_app_id": "A0RATCHET",
        "trigger_id": trigger_id,
        "channel": {"id": channel},
        "container": {"type": "message", "channel_id": channel},
        "actions": [{"type": "feedback_buttons", "action_id": "ratchet_feedback", "value": value, "action_ts": "1.1"}],
    }


def streamed_markdown(params: dict[str, Any]) -> str:
    """The text one streaming call carries: `markdown_text`, or the markdown chunks newer slack_sdk sends."""
    chunks = params.get("chunks") or []
    if isinstance(chunks, str):
        chunks = json.loads(chunks)
    from_chunks = "".join(chunk.get("text", "") for chunk in chunks if chunk.get("type") == "markdown_text")
    return (params.get("markdown_text") or "") + from_chunks
