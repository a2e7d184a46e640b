"""The base classes of every domain's exceptions. A domain raises its own subclass (defined in the domain);
the app maps these bases to HTTP once (server/errors.py), so no controller translates exceptions itself."""

from __future__ import annotations


class RatchetError(Exception):
    """An error a client can act on. `status_code` and `code` say how it reaches the client."""

    status_code: int = 400
    code: str = "invalid_request"


class InvalidInputError(RatchetError, ValueError):
    status_code = 400
    code = "invalid_request"


class NotFoundError(RatchetError, LookupError):
    status_code = 404
    code = "not_found"


class ConflictError(RatchetError):
    status_code = 409
    code = "conflict"


class UnavailableError(RatchetError):
    """A dependency (vLLM, the database, Slack) is down: the client may retry later."""

    status_code = 503
    code = "unavailable"
