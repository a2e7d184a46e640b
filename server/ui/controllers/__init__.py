"""The web UI's routes under /ui, one controller per area; each checks the role it needs on the server. The router
puts the session, authentication, CSRF and security headers around every page, and serves the static files."""

from __future__ import annotations

from typing import Any

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from server.errors import EXCEPTION_HANDLERS
from server.settings import Settings
from server.ui.controllers.admin import AdminController
from server.ui.controllers.chat import AnswerController, ChatPageController
from server.ui.controllers.models import ModelPagesController
from server.ui.controllers.review import ReviewDeskController
from server.ui.controllers.session import AccountController, SessionController
from server.ui.errors import ui_error
from server.ui.security import PUBLIC_OPT, SECURITY_HEADERS, ui_middleware
from server.ui.templating import PREFIX, STATIC_DIR

CONTROLLERS = [
    SessionController,
    AccountController,
    ChatPageController,
    AnswerController,
    ReviewDeskController,
    AdminController,
    ModelPagesController,
]


@get("/", opt={PUBLIC_OPT: True}, include_in_schema=False)
async def ui_home() -> Redirect:
    return Redirect(f"{PREFIX}/chat")


@get("/", opt={"exclude_from_auth": True}, include_in_schema=False)
async def site_root() -> Redirect:
    return Redirect(f"{PREFIX}/chat")


def ui_routes(settings: Settings) -> list[Any]:
    """The site's root (a redirect into the UI) and the UI's router."""
    static = create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        # Public, and no CSRF cookie on them: a cached file must not carry a Set-Cookie.
        opt={PUBLIC_OPT: True, "exclude_from_csrf": True},
        cache_control=CacheControlHeader(max_age=365 * 24 * 3600, public=True),
        include_in_schema=False,
    )
    handlers = {cls: ui_error for cls in EXCEPTION_HANDLERS}
    ui = Router(
        path=PREFIX,
        route_handlers=[ui_home, static, *CONTROLLERS],
        # The bearer-token middleware of the API leaves these routes to the UI's own session middleware.
        opt={"exclude_from_auth": True},
        middleware=ui_middleware(settings),
        response_headers=SECURITY_HEADERS,
        exception_handlers={**handlers, Exception: ui_error},
        include_in_schema=False,
    )
    return [site_root, ui]
