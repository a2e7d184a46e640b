"""How the web UI knows who is asking and keeps other sites out: an encrypted, HttpOnly session cookie (or the SSO
proxy's header), CSRF tokens on every state-changing request, a Content Security Policy that runs only the app's own
script, and the Secure flag on cookies whenever the request came over HTTPS."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders, ResponseHeader
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.auth.middleware import trusted_principal
from server.auth.services import UserService
from server.limits import rate_limit_middleware
from server.settings import Settings

SESSION_COOKIE = "ratchet_session"
CSRF_COOKIE = "ratchet_csrf"
# The route option that lets a page through without a signed-in user (sign-in page, static files).
PUBLIC_OPT = "ui_public"
SESSION_KEY = "token_hash"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
]


def ui_secret(settings: Settings) -> bytes:
    """The configured secret, or one generated once and kept in the data directory (mode 600)."""
    configured = settings.ui_secret.get_secret_value()
    if configured:
        return configured.encode()
    path = Path(settings.data_dir) / "ui-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker wrote it first: use theirs
            pass
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _derived_key(secret: bytes, purpose: str) -> bytes:
    """One key per use, so the session cipher and the CSRF signature never share key material."""
    return hmac.new(secret, purpose.encode(), hashlib.sha256).digest()


def session_config(settings: Settings, secret: bytes) -> CookieBackendConfig:
    return CookieBackendConfig(
        secret=_derived_key(secret, "session"),
        key=SESSION_COOKIE,
        max_age=settings.ui_session_max_age_s,
        httponly=True,
        samesite="lax",
        path="/",
    )


def csrf_config(secret: bytes) -> CSRFConfig:
    return CSRFConfig(
        secret=_derived_key(secret, "csrf").hex(),
        cookie_name=CSRF_COOKIE,
        cookie_httponly=True,
        cookie_samesite="strict",
        header_name="x-csrf-token",
    )


class WebSessionMiddleware(SessionMiddleware[ClientSideSessionBackend]):
    """Builds its cipher when the app starts: routers are deep-copied on registration, and a cipher cannot be."""

    def __init__(self, app: ASGIApp, config: CookieBackendConfig) -> None:
        super().__init__(app, backend=ClientSideSessionBackend(config))


class WebAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    """The SSO header when that mode is on, else the session cookie's token (unrevoked, user still there)."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        if (principal := await trusted_principal(connection)) is not None:
            return AuthenticationResult(user=principal, auth=None)
        digest = connection.session.get(SESSION_KEY) if "session" in connection.scope else None
        if isinstance(digest, str):
            users: UserService = connection.app.state.users
            principal = await users.principal_for_token_hash(digest)
            if principal is not None:
                return AuthenticationResult(user=principal, auth=digest)
        raise NotAuthorizedException("Sign in to use Ratchet.")


class SecureCookiesOverHttps:
    """Adds `Secure` to every cookie the UI sets when the request arrived over HTTPS (directly, or through a proxy
    uvicorn trusts for `X-Forwarded-Proto`), so one deployment works on plain HTTP locally and HTTPS in production."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                cookies = headers.getall("set-cookie", [])
                if cookies:
                    del headers["set-cookie"]
                    for cookie in cookies:
                        headers.add("set-cookie", cookie if "; secure" in cookie.lower() else f"{cookie}; Secure")
            await send(message)

        await self.app(scope, receive, send_secure)


def ui_middleware(settings: Settings) -> list[DefineMiddleware | type[SecureCookiesOverHttps]]:
    """Outermost first: cookies marked Secure on HTTPS, the session loaded, the user known, CSRF checked, then the
    per-user rate limits (the API's budgets: a user's chats count the same from the page and from the API)."""
    secret = ui_secret(settings)
    return [
        SecureCookiesOverHttps,
        DefineMiddleware(WebSessionMiddleware, config=session_config(settings, secret)),
        DefineMiddleware(WebAuthenticationMiddleware, exclude_from_auth_key=PUBLIC_OPT),
        DefineMiddleware(CSRFMiddleware, config=csrf_config(secret)),
        *rate_limit_middleware(settings),
    ]
