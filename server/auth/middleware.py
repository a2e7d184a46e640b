"""Authentication: bearer API tokens, or a trusted header set by an SSO proxy when that mode is on."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from server.auth.services import UserService
from server.settings import Settings


class TokenAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        users: UserService = connection.app.state.users
        settings: Settings = connection.app.state.settings
        if settings.trusted_user_header:
            name = connection.headers.get(settings.trusted_user_header)
            if name:
                return AuthenticationResult(user=await users.principal_for_trusted_name(name), auth=None)
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("Missing bearer token: send `Authorization: Bearer <token>`.")
        principal = await users.authenticate_token(token.strip())
        if principal is None:
            raise NotAuthorizedException("Invalid or revoked API token.")
        return AuthenticationResult(user=principal, auth=token)
