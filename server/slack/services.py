"""The bot's behaviour: a mention or direct message becomes a chat turn on the one chat path (channel `slack`,
the thread as the conversation), delivered into the thread; buttons, reactions and the thumbs-down modal become
the same vote records as the web UI's.

Answers in one thread are served one at a time, so the second of two questions asked at once sees the first
answer as context; the thread's conversation is fixed by a unique key, so replicas agree on it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from uuid import UUID
from weakref import WeakValueDictionary

from slack_sdk.web.async_client import AsyncWebClient

from server.auth.services import Principal
from server.chat.schemas import ChatCompletionRequest, ChatMessage
from server.chat.services import ChatService
from server.db.models import Channel, VoteReason, VoteValue
from server.exceptions import RatchetError, UnavailableError
from server.feedback.services import FeedbackService
from server.slack.blocks import downvote_modal
from server.slack.delivery import SLACK_ERRORS, SlackDelivery
from server.slack.store import SlackStore, ThreadKey

log = logging.getLogger("ratchet.slack")

_MENTION = re.compile(r"<@[A-Z0-9]+>")
_UP_REACTIONS = {"+1", "thumbsup"}
_DOWN_REACTIONS = {"-1", "thumbsdown"}
_UNAVAILABLE = "Sorry, I can't answer right now: the model server is down. Please try again in a few minutes."


def question_text(event: dict[str, Any]) -> str:
    """The question without the bot's mention."""
    return _MENTION.sub("", event.get("text") or "").strip()


def thread_of(team_id: str, event: dict[str, Any]) -> ThreadKey:
    return ThreadKey(team_id, event["channel"], event.get("thread_ts") or event["ts"])


class SlackService:
    def __init__(
        self,
        store: SlackStore,
        chat: ChatService,
        feedback: FeedbackService,
        delivery: SlackDelivery,
        client: AsyncWebClient,
        ops_channel: str = "",
        public_url: str = "",
    ) -> None:
        self._store = store
        self._chat = chat
        self._feedback = feedback
        self._delivery = delivery
        self._client = client
        self._ops_channel = ops_channel
        self._public_url = public_url.rstrip("/")
        self._thread_locks: WeakValueDictionary[ThreadKey, asyncio.Lock] = WeakValueDictionary()

    # Questions

    async def answer(self, team_id: str, event: dict[str, Any]) -> None:
        """Answer a mention or direct message in its thread."""
        text = question_text(event)
        if not text:
            return
        thread = thread_of(team_id, event)
        lock = self._thread_locks.setdefault(thread, asyncio.Lock())
        async with lock:
            principal = await self._store.principal_for(team_id, event["user"])
            await self._show_thinking(thread, event)
            try:
                await self._answer_in_thread(principal, thread, event["user"], text)
            finally:
                await self._hide_thinking(thread, event)

    async def _answer_in_thread(self, principal: Principal, thread: ThreadKey, slack_user: str, text: str) -> None:
        conversation_id = await self._store.thread_conversation(thread)
        history = await self._store.thread_history(conversation_id) if conversation_id else []
        owned = conversation_id is not None and await self._store.conversation_owner(conversation_id) == (
            principal.user_id
        )
        request = ChatCompletionRequest(
            messages=[*(ChatMessage(role=m["role"], content=m["content"]) for m in history), ChatMessage("user", text)],
            stream=True,
            conversation_id=conversation_id if owned else None,
        )
        try:
            turn = await self._chat.start_turn(principal, request, Channel.SLACK)
        except UnavailableError:
            await self._say(thread, _UNAVAILABLE)
            return
        except RatchetError as error:
            await self._say(thread, f"Sorry, I can't answer that: {error}")
            return
        if conversation_id is None:
            await self._store.bind_thread(thread, turn.conversation_id)
        await self._store.owe_answer(turn.message_id, thread)
        delivery = await self._delivery.deliver(thread, turn.message_id, slack_user, self._chat.stream_turn(turn))
        if delivery.finished is not None and delivery.finished.finish_reason == "content_filter":
            await self._notify_ops(thread, turn.user_message_id, turn.message_id, delivery.finished.metadata.rails)

    async def redeliver(self, older_than_s: float = 30, max_attempts: int = 20) -> int:
        """Post answers that are stored but never reached Slack (an outage, or a process that died)."""
        delivered = 0
        for answer, message in await self._store.undelivered_answers(older_than_s, max_attempts):
            thread = ThreadKey(answer.team_id, answer.channel_id, answer.thread_ts)
            text = message.content or "_The answer failed before any text was produced. Please ask again._"
            slack_ts, error = await self._delivery.post_whole(thread, message.id, text, answer.slack_ts)
            await self._store.answer_delivered(message.id, slack_ts, error)
            delivered += error is None
        return delivered

    # Votes

    async def vote_from_button(self, team_id: str, slack_user: str, value: str, trigger_id: str | None) -> None:
        """A feedback button: `up:<answer id>` or `down:<answer id>`; thumbs-down also asks why, in a modal."""
        direction, _, answer = value.partition(":")
        vote = VoteValue(direction)
        message_id = UUID(answer)
        principal = await self._store.principal_for(team_id, slack_user)
        await self._feedback.set_vote(principal, message_id, vote, [], "", shared_channel=Channel.SLACK)
        if vote == VoteValue.DOWN and trigger_id:
            try:
                await self._client.views_open(trigger_id=trigger_id, view=downvote_modal(message_id))
            except SLACK_ERRORS as error:
                log.info("could not open the thumbs-down modal: %s", error)

    async def vote_from_reaction(self, team_id: str, event: dict[str, Any], added: bool) -> None:
        """:+1: and :-1: on one of the bot's answers; removing the reaction withdraws that vote."""
        reaction = event.get("reaction", "").split("::")[0]
        if reaction in _UP_REACTIONS:
            vote = VoteValue.UP
        elif reaction in _DOWN_REACTIONS:
            vote = VoteValue.DOWN
        else:
            return
        item = event.get("item") or {}
        if item.get("type") != "message":
            return
        message_id = await self._store.answer_for_slack_message(item.get("channel", ""), item.get("ts", ""))
        if message_id is None:
            return
        principal = await self._store.principal_for(team_id, event["user"])
        if added:
            await self._feedback.set_vote(principal, message_id, vote, [], "", shared_channel=Channel.SLACK)
            return
        current = await self._feedback.get_vote(principal, message_id, shared_channel=Channel.SLACK)
        if current.value == vote:
            await self._feedback.withdraw_vote(principal, message_id, shared_channel=Channel.SLACK)

    async def feedback_from_modal(self, team_id: str, slack_user: str, view: dict[str, Any]) -> None:
        """The thumbs-down modal: the vote gets its reason and comment (a new revision, history kept)."""
        message_id = UUID(json.loads(view.get("private_metadata") or "{}")["message_id"])
        values = view.get("state", {}).get("values", {})
        selected = (values.get("reason", {}).get("value", {}).get("selected_option") or {}).get("value")
        comment = values.get("comment", {}).get("value", {}).get("value") or ""
        reasons = [VoteReason(selected)] if selected in set(VoteReason) else []
        principal = await self._store.principal_for(team_id, slack_user)
        await self._feedback.set_vote(
            principal, message_id, VoteValue.DOWN, reasons, comment[:2000], shared_channel=Channel.SLACK
        )

    # Around the answer

    async def _show_thinking(self, thread: ThreadKey, event: dict[str, Any]) -> None:
        """Assistant threads show a status line; in channels the question gets an :eyes: reaction meanwhile."""
        try:
            if event.get("channel_type") == "im":
                await self._client.assistant_threads_setStatus(
                    channel_id=thread.channel_id, thread_ts=thread.thread_ts, status="is thinking…"
                )
            else:
                await self._client.reactions_add(channel=thread.channel_id, timestamp=event["ts"], name="eyes")
        except SLACK_ERRORS as error:
            log.info("could not show the thinking status: %s", error)

    async def _hide_thinking(self, thread: ThreadKey, event: dict[str, Any]) -> None:
        try:
            if event.get("channel_type") != "im":
                await self._client.reactions_remove(channel=thread.channel_id, timestamp=event["ts"], name="eyes")
        except SLACK_ERRORS as error:
            log.info("could not clear the thinking status: %s", error)

    async def _say(self, thread: ThreadKey, text: str) -> None:
        try:
            await self._client.chat_postMessage(channel=thread.channel_id, thread_ts=thread.thread_ts, text=text)
        except SLACK_ERRORS as error:
            log.warning("could not post to Slack: %s", error)

    async def _notify_ops(
        self, thread: ThreadKey, question_id: UUID, answer_id: UUID, verdicts: list[dict[str, Any]]
    ) -> None:
        """A guardrail block is a high-priority review item: tell ops where it is."""
        if not self._ops_channel:
            return
        blocked = [verdict for verdict in verdicts if verdict.get("verdict") == "block"]
        on_question = any(verdict.get("direction") == "input" for verdict in blocked)
        item = question_id if on_question else answer_id
        rails = ", ".join(sorted({str(verdict.get("rail")) for verdict in blocked})) or "a guardrail"
        link = f"{self._public_url}/ui/review/{item}" if self._public_url else f"review item {item}"
        where = "question" if on_question else "answer"
        text = f":rotating_light: {rails} blocked a Slack {where} in <#{thread.channel_id}>. Review: {link}"
        try:
            await self._client.chat_postMessage(channel=self._ops_channel, text=text)
        except SLACK_ERRORS as error:
            log.warning("could not notify ops in Slack: %s", error)
