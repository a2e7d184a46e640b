"""Start the Slack bot with the app when it is configured: its Web API client (which waits out 429s and
retries 5xx), the bolt app, Socket Mode when an app token is set, and the loop that re-delivers answers a
Slack outage held back and finishes events a stopped process had acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from server.feedback.services import FeedbackService
from server.settings import Settings
from server.slack.bolt_app import build_bolt_app
from server.slack.delivery import SlackDelivery
from server.slack.services import SlackService
from server.slack.store import SlackStore

log = logging.getLogger("ratchet.slack")

RECOVERY_INTERVAL_S = 30.0


def web_client(settings: Settings) -> AsyncWebClient:
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            AsyncServerErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
        ],
    )


async def _recover(service: SlackService, store: SlackStore, settings: Settings) -> None:
    """Re-deliver held-back answers; re-run events acknowledged long enough ago that no process is on them."""
    while True:
        try:
            await service.redeliver()
            stale_after = settings.vllm_request_timeout_s + 60
            for event in await store.claim_stale_events(stale_after, max_attempts=3):
                log.warning("re-running Slack %s, which a stopped process had acknowledged", event.key)
                inner = event.payload.get("event", {})
                if inner.get("type") in ("app_mention", "message") and inner.get("user"):
                    await service.answer(event.payload.get("team_id", ""), inner)
                await store.finish_event(event.key)
        except Exception:
            log.exception("Slack recovery pass failed")
        await asyncio.sleep(RECOVERY_INTERVAL_S)


@asynccontextmanager
async def slack_lifespan(app: Litestar) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    client = web_client(settings)
    store = SlackStore(state.sessions)
    service = SlackService(
        store,
        state.chat,
        FeedbackService(state.sessions),
        SlackDelivery(client, store, settings.slack_delivery),
        client,
        settings.slack_ops_channel,
        settings.public_url,
    )
    state.slack_bolt = build_bolt_app(
        settings.slack_signing_secret.get_secret_value(),
        settings.slack_bot_token.get_secret_value(),
        client,
        store,
        service,
    )
    socket_mode = None
    if settings.slack_app_token.get_secret_value():
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        socket_mode = AsyncSocketModeHandler(state.slack_bolt, settings.slack_app_token.get_secret_value())
        await socket_mode.connect_async()
    recovery = asyncio.create_task(_recover(service, store, settings))
    try:
        yield
    finally:
        recovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recovery
        if socket_mode is not None:
            await socket_mode.close_async()
