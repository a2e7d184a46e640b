"""The web UI mounted under /ui: its router (session, CSRF and security headers on every page), its templates, its
static files (served with long-lived caching under a content-hashed URL), and its error pages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotAuthorizedException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from server.db.models import Role, VoteReason
from server.errors import EXCEPTION_HANDLERS
from server.exceptions import RatchetError
from server.settings import Settings
from server.ui.controllers import CONTROLLERS
from server.ui.markdown import render_markdown
from server.ui.security import PUBLIC_OPT, SECURITY_HEADERS, ui_middleware

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PREFIX = "/ui"


REASON_LABELS = {
    VoteReason.WRONG: "Wrong or inaccurate",
    VoteReason.UNHELPFUL: "Not helpful",
    VoteReason.UNSAFE: "Unsafe or inappropriate",
    VoteReason.OFF_TOPIC: "Off topic",
    VoteReason.TOO_LONG: "Too long",
    VoteReason.TOO_SHORT: "Too short",
    VoteReason.REFUSED: "Refused when it should not have",
    VoteReason.OTHER: "Something else",
}


def shown(value: object) -> str:
    """A figure of a run record as a table cell shows it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _static_versions() -> dict[str, str]:
    """A short content hash per static file: its URL changes when it does, so browsers may cache it for a year."""
    return {
        str(path.relative_to(STATIC_DIR)): hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        for path in STATIC_DIR.rglob("*")
        if path.is_file()
    }


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    versions = _static_versions()
    environment.filters["markdown"] = render_markdown
    environment.globals["static"] = lambda name: f"{PREFIX}/static/{name}?v={versions[name]}"
    environment.globals["Role"] = Role
    environment.globals["vote_reasons"] = list(REASON_LABELS.items())
    environment.filters["shown"] = shown
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def _status_and_detail(request: Request[Any, Any, Any], exc: Exception) -> tuple[int, str]:
    """The status and message the app's one exception mapping gives (server/errors.py), so the UI and the API
    always agree on what an error means. A domain error on the shared bases (server/exceptions.py) carries its own."""
    if isinstance(exc, RatchetError):
        return exc.status_code, str(exc)
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            response = handler(request, exc)
            content = response.content if isinstance(response.content, dict) else {}
            detail = content.get("detail") or content.get("error", {}).get("message") or "Something went wrong."
            return response.status_code, str(detail)
    return 500, "Internal server error"


def ui_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Error pages: signed-out page views go to the sign-in page; script requests get JSON; the rest a page."""
    wants_page = "x-ratchet-fetch" not in request.headers
    if isinstance(exc, NotAuthorizedException) and request.method == "GET" and wants_page:
        return Redirect(f"{PREFIX}/login", query_params={"next": request.url.path})
    status, detail = _status_and_detail(request, exc)
    if not wants_page:
        return Response({"status_code": status, "detail": detail}, status_code=status)
    return Template(
        "error.html.j2",
        context={"status": status, "detail": detail, "user": request.scope.get("user")},
        status_code=status,
    )


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
