"""Exception → response mapping, in one place. A domain raises its own `RatchetError` subclass, which says its
status and code; this module answers it without knowing the domain. `/v1` routes answer in OpenAI's error shape,
the rest in Litestar's."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from server.exceptions import RatchetError
from server.system import metrics

log = logging.getLogger("ratchet.errors")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "engine_unavailable",
}
_HTTP_CODES = {413: "request_too_large", 429: "rate_limit_exceeded"}


def error_response(request: Request[Any, Any, Any], status: int, message: str, code: str | None = None) -> Response:
    # The route template, not the raw path, so that probing random URLs cannot blow up label cardinality.
    route = request.scope.get("path_template") or "unmatched"
    metrics.ERRORS.labels(route, "", code or str(status)).inc()
    if request.url.path.startswith("/v1"):
        error_type = _OPENAI_TYPES.get(status, "api_error")
        body: dict[str, Any] = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    else:
        body = {"status_code": status, "detail": message}
    return Response(body, status_code=status, media_type=MediaType.JSON)


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    details = "; ".join(f"{item.get('key', '')}: {item.get('message', '')}".strip(": ") for item in extra)
    return f"Invalid request body: {details}" if details else f"Invalid request body: {exc.detail}"


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        return error_response(request, 400, _validation_message(exc), "invalid_body")
    detail = exc.detail
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        detail = f"The request body is larger than the {limit} bytes this server takes (RATCHET_MAX_BODY_BYTES)."
    response = error_response(request, exc.status_code, detail, _HTTP_CODES.get(exc.status_code))
    response.headers.update(exc.headers or {})  # e.g. Retry-After on 429, Allow on 405
    return response


def handle_ratchet_error(request: Request[Any, Any, Any], exc: RatchetError) -> Response:
    return error_response(request, exc.status_code, str(exc), exc.code)


def handle_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error")


EXCEPTION_HANDLERS = {
    HTTPException: handle_http_exception,
    RatchetError: handle_ratchet_error,
    Exception: handle_unexpected_error,
}
