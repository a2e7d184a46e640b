"""The UI's error pages. The status and message come from the app's one exception mapping (server/errors.py)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.response import Redirect, Template

from server.errors import EXCEPTION_HANDLERS
from server.exceptions import RatchetError
from server.ui.templating import PREFIX


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
    # What the error tells the client to do next (Retry-After on a 429, Allow on a 405) reaches the browser too.
    headers = (exc.headers or {}) if isinstance(exc, HTTPException) else {}
    if not wants_page:
        return Response({"status_code": status, "detail": detail}, status_code=status, headers=headers)
    return Template(
        "error.html.j2",
        context={"status": status, "detail": detail, "user": request.scope.get("user")},
        status_code=status,
        headers=headers,
    )
