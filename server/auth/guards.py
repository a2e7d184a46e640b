"""Role guards for route handlers and controllers."""

from __future__ import annotations

from collections.abc import Callable

from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from server.db.models import Role


def requires_role(role: Role) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        # Litestar answers OPTIONS itself (the `Allow` header, no data) and its authentication middleware lets
        # OPTIONS through unauthenticated, as CORS preflights carry no credentials: there is no user to check.
        if connection.scope["method"] == "OPTIONS":
            return
        if not connection.user.has_role(role):
            raise PermissionDeniedException(f"This needs the {role} role.")

    return guard
