"""Authentication: bearer API tokens, or a trusted header set by an SSO proxy when that mode is on."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from server.auth.services import Principal, UserService
from server.settings import Settings


async def trusted_principal(connection: ASGIConnection) -> Principal | None:
    """The user an SSO proxy vouches for, when that mode is on and the header is present (API and web UI alike)."""
    settings: Settings = connection.app.state.settings
    if not settings.trusted_user_header:
        return None
    name = connection.headers.get(settings.trusted_user_header)
    if not name:
        return None
    users: UserService = connection.app.state.users
    return await users.principal_for_trusted_name(name)


class TokenAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        users: UserService = connection.app.state.users
        if (principal := await trusted_principal(connection)) is not None:
            return AuthenticationResult(user=principal, auth=None)
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("Missing bearer token: send `Authorization: Bearer <token>`.")
        principal = await users.authenticate_token(token.strip())
        if principal is None:
            raise NotAuthorizedException("Invalid or revoked API token.")
        return AuthenticationResult(user=principal, auth=token)
