"""Posting an answer into its Slack thread: streamed (chat.startStream/appendStream/stopStream), edited in
chunks (chat.update) or posted whole, then the feedback buttons. Slack failing mid-way never stops the answer:
the events are drained so the chat path stores the whole answer, and the outbox re-delivers it later."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

from aiohttp import ClientError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from server.chat.events import ChatEvent, Failed, Finished, TextDelta
from server.slack.blocks import answer_blocks, feedback_blocks
from server.slack.store import SlackStore, ThreadKey

log = logging.getLogger("ratchet.slack")

# A Slack failure is a Web API error (after the client's own retries of 429s and 5xx) or a transport error.
SLACK_ERRORS = (SlackApiError, SlackClientError, ClientError, TimeoutError)
_UPDATE_EVERY_S = 1.0
_STREAM_BUFFER_CHARS = 64


@dataclass
class Delivery:
    """What happened to one answer on its way to Slack."""

    finished: Finished | None = None
    failed: Failed | None = None
    text: str = ""
    slack_ts: str | None = None
    error: str | None = None
    parts: list[str] = field(default_factory=list)


class SlackDelivery:
    def __init__(self, client: AsyncWebClient, store: SlackStore, mode: str) -> None:
        self._client = client
        self._store = store
        self._mode = mode

    async def deliver(
        self, thread: ThreadKey, message_id: UUID, recipient_user_id: str, events: AsyncIterator[ChatEvent]
    ) -> Delivery:
        if self._mode == "stream":
            delivery = await self._stream(thread, message_id, recipient_user_id, events)
        elif self._mode == "update":
            delivery = await self._update(thread, message_id, events)
        else:
            delivery = await _drain(events)
            delivery.slack_ts, delivery.error = await self.post_whole(thread, message_id, _final_text(delivery))
        await self._store.answer_delivered(message_id, delivery.slack_ts, delivery.error)
        return delivery

    async def post_whole(
        self, thread: ThreadKey, message_id: UUID, text: str, slack_ts: str | None = None
    ) -> tuple[str | None, str | None]:
        """Post (or, when part of it is already in Slack, replace) the whole answer with its buttons."""
        try:
            if slack_ts:
                await self._client.chat_update(
                    channel=thread.channel_id, ts=slack_ts, text=text, blocks=answer_blocks(text, message_id)
                )
                return slack_ts, None
            response = await self._client.chat_postMessage(
                channel=thread.channel_id,
                thread_ts=thread.thread_ts,
                text=text,
                blocks=answer_blocks(text, message_id),
            )
            return str(response["ts"]), None
        except SLACK_ERRORS as error:
            log.warning("could not post answer %s to Slack: %s", message_id, _describe(error))
            return slack_ts, _describe(error)

    async def _stream(
        self, thread: ThreadKey, message_id: UUID, recipient_user_id: str, events: AsyncIterator[ChatEvent]
    ) -> Delivery:
        delivery = Delivery()
        streamer = None
        async for event in events:
            if isinstance(event, TextDelta):
                delivery.parts.append(event.text)
                if delivery.error is not None:
                    continue
                try:
                    if streamer is None:
                        streamer = await self._client.chat_stream(
                            channel=thread.channel_id,
                            thread_ts=thread.thread_ts,
                            recipient_team_id=thread.team_id,
                            recipient_user_id=recipient_user_id,
                            buffer_size=_STREAM_BUFFER_CHARS,
                        )
                    await streamer.append(markdown_text=event.text)
                    if delivery.slack_ts is None and streamer.ts is not None:
                        delivery.slack_ts = streamer.ts
                        await self._store.answer_posted(message_id, streamer.ts)
                except SLACK_ERRORS as error:
                    delivery.error = _describe(error)
                    log.warning("streaming answer %s to Slack failed: %s", message_id, delivery.error)
            else:
                _record_end(delivery, event)
        if delivery.error is not None:
            return delivery
        try:
            if streamer is None:
                delivery.slack_ts, delivery.error = await self.post_whole(thread, message_id, _final_text(delivery))
                return delivery
            tail = _final_text(delivery)[len("".join(delivery.parts)) :]
            await streamer.stop(markdown_text=tail or None, blocks=feedback_blocks(message_id))
            delivery.slack_ts = streamer.ts
        except SLACK_ERRORS as error:
            delivery.error = _describe(error)
        return delivery

    async def _update(self, thread: ThreadKey, message_id: UUID, events: AsyncIterator[ChatEvent]) -> Delivery:
        delivery = Delivery()
        shown, last_update = "", 0.0
        async for event in events:
            if not isinstance(event, TextDelta):
                _record_end(delivery, event)
                continue
            delivery.parts.append(event.text)
            if delivery.error is not None or time.monotonic() - last_update < _UPDATE_EVERY_S:
                continue
            text = "".join(delivery.parts)
            try:
                if delivery.slack_ts is None:
                    response = await self._client.chat_postMessage(
                        channel=thread.channel_id, thread_ts=thread.thread_ts, text=text
                    )
                    delivery.slack_ts = str(response["ts"])
                    await self._store.answer_posted(message_id, delivery.slack_ts)
                elif text != shown:
                    await self._client.chat_update(channel=thread.channel_id, ts=delivery.slack_ts, text=text)
                shown, last_update = text, time.monotonic()
            except SLACK_ERRORS as error:
                delivery.error = _describe(error)
        if delivery.error is None:
            delivery.slack_ts, delivery.error = await self.post_whole(
                thread, message_id, _final_text(delivery), delivery.slack_ts
            )
        return delivery


async def _drain(events: AsyncIterator[ChatEvent]) -> Delivery:
    delivery = Delivery()
    async for event in events:
        if isinstance(event, TextDelta):
            delivery.parts.append(event.text)
        else:
            _record_end(delivery, event)
    return delivery


def _record_end(delivery: Delivery, event: ChatEvent) -> None:
    if isinstance(event, Finished):
        delivery.finished = event
    elif isinstance(event, Failed):
        delivery.failed = event


def _final_text(delivery: Delivery) -> str:
    if delivery.finished is not None:
        return delivery.finished.content
    text = "".join(delivery.parts)
    if delivery.failed is not None and not text:
        return "Sorry, I can't answer right now: the model server is down. Please try again in a few minutes."
    if delivery.failed is not None:
        return f"{text}\n\n_The answer was cut off: the model server failed. Please ask again._"
    return text


def _describe(error: BaseException) -> str:
    if isinstance(error, SlackApiError):
        return f"Slack answered {error.response.status_code}: {error.response.get('error', '')}"
    return f"{type(error).__name__}: {error}"
