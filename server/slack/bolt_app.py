"""The slack_bolt app: Slack's request verification (signature and a 5-minute timestamp window), routing of
events and interactions to the Slack service, and the inbox that keeps each one before Slack is acknowledged.

Listeners run after the acknowledgement (bolt's `process_before_response=False`), so Slack hears back within
its 3 seconds however long an answer takes; a retried delivery of the same event finds its key already in the
inbox and is acknowledged without being processed again."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt import BoltResponse
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from server.slack.blocks import DOWN_MODAL, FEEDBACK_ACTION
from server.slack.services import SlackService
from server.slack.store import SlackStore

log = logging.getLogger("ratchet.slack")


def inbox_key(body: dict[str, Any]) -> str | None:
    """What makes a Slack request unique: the event id (the same on every retry) or the interaction's trigger."""
    if body.get("event_id"):
        return f"event:{body['event_id']}"
    if body.get("trigger_id"):
        return f"{body.get('type', 'interaction')}:{body['trigger_id']}"
    return None


def build_bolt_app(
    signing_secret: str, token: str, client: AsyncWebClient, store: SlackStore, service: SlackService
) -> AsyncApp:
    app = AsyncApp(signing_secret=signing_secret, token=token, client=client, process_before_response=False)

    @app.middleware
    async def keep_in_inbox(
        req: AsyncBoltRequest, body: dict[str, Any], context: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> Any:
        key = inbox_key(body)
        if key is not None:
            redelivered = bool(req.headers.get("x-slack-retry-num"))
            if not await store.receive(key, body.get("type", ""), body, redelivered):
                log.info("Slack redelivered %s: acknowledged, not processed again", key)
                return BoltResponse(status=200, body="")
            context["inbox_key"] = key
        return await next()

    async def processed(context: dict[str, Any], work: Awaitable[None]) -> None:
        """Run a listener's work and record in the inbox how it ended."""
        key = context.get("inbox_key")
        try:
            await work
        except Exception as error:
            log.exception("Slack %s failed", key)
            if key:
                await store.finish_event(key, f"{type(error).__name__}: {error}")
            return
        if key:
            await store.finish_event(key)

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], context: dict[str, Any]) -> None:
        await processed(context, service.answer(context["team_id"], event))

    @app.event("message")
    async def on_direct_message(event: dict[str, Any], context: dict[str, Any]) -> None:
        # Channel messages reach the bot only as mentions; edits, joins and bot posts carry a subtype.
        if event.get("channel_type") == "im" and not event.get("subtype") and not event.get("bot_id"):
            await processed(context, service.answer(context["team_id"], event))
        else:
            await processed(context, _nothing())

    @app.event("reaction_added")
    async def on_reaction_added(event: dict[str, Any], context: dict[str, Any]) -> None:
        await processed(context, service.vote_from_reaction(context["team_id"], event, added=True))

    @app.event("reaction_removed")
    async def on_reaction_removed(event: dict[str, Any], context: dict[str, Any]) -> None:
        await processed(context, service.vote_from_reaction(context["team_id"], event, added=False))

    @app.action(FEEDBACK_ACTION)
    async def on_feedback_button(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        await ack()
        [action] = body.get("actions") or [{}]
        vote = service.vote_from_button(
            context["team_id"], body["user"]["id"], str(action.get("value", "")), body.get("trigger_id")
        )
        await processed(context, vote)

    @app.view(DOWN_MODAL)
    async def on_downvote_reason(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        await ack()
        await processed(context, service.feedback_from_modal(context["team_id"], body["user"]["id"], body["view"]))

    return app


async def _nothing() -> None:
    return None
