"""Signing in (an API token exchanged for a session cookie), signing out, and the user's own data."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.response import Redirect, Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.services import UserService
from server.chat.conversations import ConversationService
from server.feedback.services import FeedbackService, UserDataService
from server.ui.controllers.chat import provide_conversation_service, provide_feedback_service
from server.ui.controllers.forms import form_of, text
from server.ui.security import PUBLIC_OPT, SESSION_KEY

HOME = "/ui/chat"
EVERYTHING = 100_000


def safe_next(target: str) -> str:
    """Only a path inside the UI: an open redirect to another site would make the sign-in page a phishing aid."""
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


def provide_users(state: State) -> UserService:
    return state.users


class SessionController(Controller):
    path = "/"
    dependencies = {"users": Provide(provide_users, sync_to_thread=False)}

    @get("/login", opt={PUBLIC_OPT: True})
    async def login_page(self, request: Request[Any, Any, Any], next: str = HOME) -> Template:
        sso = bool(request.app.state.settings.trusted_user_header)
        return Template("login.html.j2", context={"next": safe_next(next), "error": None, "sso": sso, "user": None})

    @post("/login", opt={PUBLIC_OPT: True}, status_code=303)
    async def login(self, request: Request[Any, Any, Any], users: UserService) -> Response[Any]:
        form = await form_of(request)
        target = safe_next(text(form, "next", 2000))
        principal = await users.authenticate_token(text(form, "token", 500).strip())
        if principal is None:
            return Template(
                "login.html.j2",
                context={
                    "next": target,
                    "error": "That token is not valid, or it was revoked.",
                    "sso": False,
                    "user": None,
                },
                status_code=401,
            )
        request.set_session({SESSION_KEY: await users.start_web_session(principal)})
        return Redirect(target, status_code=303)

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any], users: UserService) -> Redirect:
        digest = request.session.get(SESSION_KEY)
        if isinstance(digest, str):
            await users.end_web_session(digest)
        request.clear_session()
        return Redirect("/ui/login", status_code=303)


def provide_user_data_service(db_session: AsyncSession) -> UserDataService:
    return UserDataService(db_session)


class AccountController(Controller):
    path = "/account"
    dependencies = {
        "user_data": Provide(provide_user_data_service, sync_to_thread=False),
        "conversations": Provide(provide_conversation_service, sync_to_thread=False),
        "feedback": Provide(provide_feedback_service, sync_to_thread=False),
    }

    @get("/")
    async def account(self, request: Request[Any, Any, Any]) -> Template:
        return Template("account.html.j2", context={"user": request.user, "deleted": None})

    @get("/data.json")
    async def download(
        self, request: Request[Any, Any, Any], conversations: ConversationService, feedback: FeedbackService
    ) -> Response[list[dict[str, Any]]]:
        """Everything Ratchet keeps of what the user said: each conversation, its messages and the user's votes."""
        listed = await conversations.list_conversations(request.user, EVERYTHING, 0)
        shown = []
        for conversation in listed:
            _, messages = await conversations.get_conversation(request.user, conversation.id)
            votes = await feedback.votes_on(request.user, [message.id for message in messages])
            shown.append(
                {
                    "id": conversation.id,
                    "title": conversation.title,
                    "channel": conversation.channel,
                    "created_at": conversation.created_at,
                    "messages": [
                        {
                            "id": message.id,
                            "role": message.role,
                            "content": message.content,
                            "status": message.status,
                            "created_at": message.created_at,
                            "model_version": message.model_version,
                            "vote": votes.get(message.id),
                        }
                        for message in messages
                    ],
                }
            )
        return Response(shown, headers={"Content-Disposition": 'attachment; filename="my-ratchet-data.json"'})

    @post("/delete-data", status_code=200)
    async def delete_data(self, request: Request[Any, Any, Any], user_data: UserDataService) -> Template:
        """The user's conversations, messages and votes, and what derives from them, gone in one transaction."""
        form = await form_of(request)
        if text(form, "confirm", 10) != "yes":
            return Template(
                "account.html.j2",
                context={"user": request.user, "deleted": None, "error": "Tick the box to confirm."},
                status_code=400,
            )
        deleted = await user_data.delete_user_data(request.user.user_id)
        return Template("account.html.j2", context={"user": request.user, "deleted": deleted})
