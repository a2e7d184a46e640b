"""The employees' chat: conversations (list, search, rename, delete), questions answered through the one chat path
(channel `web`, streamed to the page as server-sent events), regeneration and votes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.response import Redirect, Response, ServerSentEvent, ServerSentEventMessage, Template

from server.chat.conversations import ConversationService
from server.chat.events import Failed, Finished, TextDelta
from server.chat.regeneration import RegenerationService
from server.chat.services import ChatService
from server.db.models import Channel, MessageStatus, VoteReason, VoteValue
from server.feedback.schemas import MAX_COMMENT_CHARS
from server.feedback.services import AnswerNotFoundError, FeedbackService
from server.limits import CHAT, FEEDBACK, rate_limited
from server.ui.controllers.forms import choice, choices, form_of, optional_uuid, text, wants_fragment
from server.ui.services import AnswerView, Thread, build_thread, next_turn_request

MAX_QUESTION_CHARS = 20_000
CONVERSATIONS_SHOWN = 100


def provide_chat_service(state: State) -> ChatService:
    return state.chat


def provide_conversation_service(state: State) -> ConversationService:
    return state.conversations


def provide_regeneration_service(state: State) -> RegenerationService:
    return state.regeneration


def provide_feedback_service(state: State) -> FeedbackService:
    return FeedbackService(state.sessions)


def conversation_url(conversation_id: UUID) -> str:
    return f"/ui/chat/{conversation_id}"


def render(request: Request[Any, Any, Any], template: str, **context: Any) -> str:
    """A fragment rendered outside a response (inside the event stream), with what the templates expect."""
    engine = request.app.template_engine
    return engine.get_template(template).render(request=request, user=request.user, **context)


class ChatPageController(Controller):
    path = "/chat"
    dependencies = {
        "chat_service": Provide(provide_chat_service, sync_to_thread=False),
        "conversations": Provide(provide_conversation_service, sync_to_thread=False),
        "feedback": Provide(provide_feedback_service, sync_to_thread=False),
        "regeneration": Provide(provide_regeneration_service, sync_to_thread=False),
    }

    async def _page(
        self,
        request: Request[Any, Any, Any],
        conversations: ConversationService,
        feedback: FeedbackService,
        conversation_id: UUID | None,
        q: str,
    ) -> Template:
        listed = await conversations.list_conversations(request.user, CONVERSATIONS_SHOWN, 0, q.strip()[:200])
        conversation, thread = None, Thread()
        if conversation_id is not None:
            conversation, messages = await conversations.get_conversation(request.user, conversation_id)
            thread = build_thread(messages)
            thread.attach_votes(await feedback.votes_on(request.user, thread.answer_ids))
        return Template(
            "chat.html.j2",
            context={
                "user": request.user,
                "conversations": listed,
                "conversation": conversation,
                "thread": thread,
                "q": q,
                "reasons": list(VoteReason),
            },
        )

    @get("/")
    async def new_chat(
        self,
        request: Request[Any, Any, Any],
        conversations: ConversationService,
        feedback: FeedbackService,
        q: str = "",
    ) -> Template:
        return await self._page(request, conversations, feedback, None, q)

    @get("/{conversation_id:uuid}")
    async def show(
        self,
        request: Request[Any, Any, Any],
        conversation_id: UUID,
        conversations: ConversationService,
        feedback: FeedbackService,
        q: str = "",
    ) -> Template:
        return await self._page(request, conversations, feedback, conversation_id, q)

    @post("/turns", status_code=200, opt=rate_limited(CHAT))
    async def ask(
        self, request: Request[Any, Any, Any], chat_service: ChatService, conversations: ConversationService
    ) -> Response[Any]:
        """Ask a question. The page's script reads the answer as server-sent events; a browser without script gets
        the conversation page once the answer is stored."""
        form = await form_of(request)
        question = text(form, "question", MAX_QUESTION_CHARS, required=True).strip()
        conversation_id = optional_uuid(form, "conversation_id")
        thread = Thread()
        if conversation_id is not None:
            _, messages = await conversations.get_conversation(request.user, conversation_id)
            thread = build_thread(messages)
        turn = await chat_service.start_turn(
            request.user, next_turn_request(thread, question, conversation_id), Channel.WEB
        )
        if "text/event-stream" in request.headers.get("accept", ""):
            return ServerSentEvent(self._stream(request, chat_service, turn), headers={"X-Accel-Buffering": "no"})
        async with aclosing(chat_service.stream_turn(turn)) as events:
            async for _ in events:
                pass
        return Redirect(f"{conversation_url(turn.conversation_id)}#m-{turn.message_id}", status_code=303)

    async def _stream(
        self, request: Request[Any, Any, Any], chat_service: ChatService, turn: Any
    ) -> AsyncIterator[ServerSentEventMessage]:
        """`turn` first (ids, so the page can link the new conversation), `delta`s of text, then `done` or `failed`
        carrying the stored answer rendered as on a reload. A client that goes away stops the answer (aclosing)."""
        yield _event(
            "turn",
            conversation_id=str(turn.conversation_id),
            message_id=str(turn.message_id),
            url=conversation_url(turn.conversation_id),
        )
        shown: list[str] = []
        async with aclosing(chat_service.stream_turn(turn)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    shown.append(event.text)
                    yield _event("delta", text=event.text)
                elif isinstance(event, Finished):
                    refused = event.finish_reason == "content_filter"
                    answer = AnswerView(
                        id=turn.message_id,
                        content=event.content,
                        status=MessageStatus.BLOCKED if refused else MessageStatus.COMPLETE,
                        finish_reason=event.finish_reason,
                        model_version=event.metadata.model_version,
                    )
                    html = render(request, "_answer.html.j2", answer=answer, conversation_id=turn.conversation_id)
                    yield _event("done", html=html)
                elif isinstance(event, Failed):
                    answer = AnswerView(
                        id=turn.message_id,
                        content="".join(shown),
                        status=MessageStatus.FAILED,
                        finish_reason=None,
                        model_version=None,
                        error=event.message,
                    )
                    html = render(request, "_answer.html.j2", answer=answer, conversation_id=turn.conversation_id)
                    yield _event("failed", html=html, message=event.message)

    @post("/{conversation_id:uuid}/rename", status_code=303)
    async def rename(
        self, request: Request[Any, Any, Any], conversation_id: UUID, conversations: ConversationService
    ) -> Redirect:
        title = text(await form_of(request), "title", 200, required=True)
        await conversations.rename_conversation(request.user, conversation_id, title)
        return Redirect(conversation_url(conversation_id), status_code=303)

    @post("/{conversation_id:uuid}/delete", status_code=303)
    async def delete(
        self, request: Request[Any, Any, Any], conversation_id: UUID, conversations: ConversationService
    ) -> Redirect:
        await conversations.delete_conversation(request.user, conversation_id)
        return Redirect("/ui/chat/", status_code=303)


def _event(name: str, **data: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=name, data=json.dumps(data))


class AnswerController(Controller):
    """Actions on one answer; each re-renders the answer as it now stands."""

    path = "/messages/{message_id:uuid}"
    dependencies = ChatPageController.dependencies

    async def _answer(
        self,
        request: Request[Any, Any, Any],
        conversations: ConversationService,
        feedback: FeedbackService,
        conversation_id: UUID,
        message_id: UUID,
    ) -> Response[Any]:
        if not wants_fragment(request):
            return Redirect(f"{conversation_url(conversation_id)}#m-{message_id}", status_code=303)
        _, messages = await conversations.get_conversation(request.user, conversation_id)
        thread = build_thread(messages)
        thread.attach_votes(await feedback.votes_on(request.user, thread.answer_ids))
        for exchange in thread.exchanges:
            if exchange.answer is not None and exchange.answer.id == message_id:
                return Template(
                    "_answer.html.j2", context={"answer": exchange.answer, "conversation_id": conversation_id}
                )
        raise NotFoundException(f"No answer {message_id} in this conversation.")

    @post("/feedback", status_code=200, opt=rate_limited(FEEDBACK))
    async def vote(
        self,
        request: Request[Any, Any, Any],
        message_id: UUID,
        conversations: ConversationService,
        feedback: FeedbackService,
    ) -> Response[Any]:
        """`value` up or down (with `reasons` and `comment`), or `none` to withdraw the vote."""
        form = await form_of(request)
        conversation_id = optional_uuid(form, "conversation_id")
        if conversation_id is None:
            raise NotFoundException("No conversation given.")
        value = text(form, "value", 10)
        try:
            if value == "none":
                await feedback.withdraw_vote(request.user, message_id)
            else:
                comment = text(form, "comment", MAX_COMMENT_CHARS).strip()
                reasons = choices(form, VoteReason, "reasons") if value == VoteValue.DOWN else []
                await feedback.set_vote(request.user, message_id, choice(VoteValue, value, "value"), reasons, comment)
        except AnswerNotFoundError as error:
            raise NotFoundException(str(error)) from error
        return await self._answer(request, conversations, feedback, conversation_id, message_id)

    @post("/regenerate", status_code=200, opt=rate_limited(CHAT))
    async def regenerate(
        self,
        request: Request[Any, Any, Any],
        message_id: UUID,
        regeneration: RegenerationService,
        conversations: ConversationService,
        feedback: FeedbackService,
    ) -> Response[Any]:
        sibling = await regeneration.regenerate(request.user, message_id)
        return await self._answer(request, conversations, feedback, sibling.conversation_id, sibling.id)
