"""Exception → response mapping. `/v1` routes answer in OpenAI's error shape; the rest in Litestar's."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from server.chat.exceptions import ConversationNotFoundError, InvalidChatError
from server.engine.client import EngineRejectedError, EngineUnavailableError
from server.engine.router import UnknownModelError
from server.system import metrics

log = logging.getLogger("ratchet.errors")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    503: "engine_unavailable",
}


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
    return error_response(request, exc.status_code, exc.detail)


def handle_domain_exception(request: Request[Any, Any, Any], exc: Exception) -> Response:
    if isinstance(exc, EngineUnavailableError):
        return error_response(request, 503, str(exc), "engine_unavailable")
    if isinstance(exc, UnknownModelError):
        return error_response(request, 404, str(exc), "model_not_found")
    if isinstance(exc, ConversationNotFoundError):
        return error_response(request, 404, str(exc), "conversation_not_found")
    if isinstance(exc, EngineRejectedError):
        return error_response(request, 400, str(exc), "rejected")
    if isinstance(exc, InvalidChatError):
        return error_response(request, 400, str(exc), "invalid_messages")
    log.exception("unhandled error on %s", request.url.path)
    return error_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error")


EXCEPTION_HANDLERS = {
    HTTPException: handle_http_exception,
    EngineUnavailableError: handle_domain_exception,
    EngineRejectedError: handle_domain_exception,
    UnknownModelError: handle_domain_exception,
    ConversationNotFoundError: handle_domain_exception,
    InvalidChatError: handle_domain_exception,
    Exception: handle_domain_exception,
}
