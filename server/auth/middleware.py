"""Authentication: bearer API tokens, or a trusted header set by an SSO proxy when that mode is on."""

from __future__ import annotations

import hmac
import ipaddress

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from server.auth.services import Principal, UserService
from server.settings import Settings


def from_trusted_proxy(connection: ASGIConnection, settings: Settings) -> bool:
    """Whether the request comes from the SSO proxy: it carries the shared secret and/or comes from one of the
    proxy's addresses, whichever of the two are configured (both, when both are)."""
    secret = settings.trusted_proxy_secret.get_secret_value()
    if secret:
        sent = connection.headers.get(settings.trusted_proxy_secret_header, "")
        if not hmac.compare_digest(sent.encode(), secret.encode()):
            return False
    if settings.trusted_proxy_networks:
        try:
            peer = ipaddress.ip_address(connection.client.host if connection.client else "")
        except ValueError:
            return False
        if not any(peer in network for network in settings.trusted_proxy_networks):
            return False
    return True


async def trusted_principal(connection: ASGIConnection) -> Principal | None:
    """The user an SSO proxy vouches for, when that mode is on and the header is present (API and web UI alike).
    The header is believed only from the proxy: anyone else sending it gets a 401."""
    settings: Settings = connection.app.state.settings
    if not settings.trusted_user_header:
        return None
    name = connection.headers.get(settings.trusted_user_header)
    if not name:
        return None
    if not from_trusted_proxy(connection, settings):
        raise NotAuthorizedException(
            f"`{settings.trusted_user_header}` is only taken from the SSO proxy, and this request does not come "
            "from it."
        )
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
