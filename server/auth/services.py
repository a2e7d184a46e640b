"""Users and bearer tokens: creation, hashing, verification (with a short in-memory cache)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ApiToken, Role, User

TOKEN_PREFIX = "rt_"
# A web UI sign-in is a token of its own whose secret half is never shown: the session cookie carries its hash,
# and signing out revokes it, so a copied cookie stops working too.
WEB_SESSION_LABEL = "web session"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling; what request handlers see as ``request.user``."""

    user_id: UUID
    name: str
    role: Role

    def has_role(self, role: Role) -> bool:
        order = [Role.USER, Role.OPS, Role.ADMIN]
        return order.index(self.role) >= order.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], token_cache_ttl_s: float = 10.0) -> None:
        self._sessions = sessions
        self._ttl = token_cache_ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def create_user(self, name: str, role: Role, token_label: str = "cli") -> tuple[Principal, str]:
        """Create a user (or reuse one of that name, updating its role) and issue a new token for it."""
        async with self._sessions.begin() as session:
            user = await session.scalar(select(User).where(User.name == name))
            if user is None:
                user = User(name=name, role=role)
                session.add(user)
            else:
                user.role = role
            await session.flush()
            token = await self._issue_token(session, user, token_label)
            return Principal(user.id, user.name, Role(user.role)), token

    async def _issue_token(self, session: AsyncSession, user: User, label: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), label=label))
        return token

    async def authenticate_token(self, token: str) -> Principal | None:
        return await self.principal_for_token_hash(hash_token(token))

    async def principal_for_token_hash(self, digest: str) -> Principal | None:
        """The owner of an unrevoked token given by its hash (what a web session keeps), or None."""
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        async with self._sessions() as session:
            row = await session.scalar(
                select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
            )
            if row is None:
                return None
            principal = Principal(row.user.id, row.user.name, Role(row.user.role))
        self._cache[digest] = (now + self._ttl, principal)
        return principal

    async def start_web_session(self, principal: Principal) -> str:
        """Issue the token a web UI sign-in runs on; returns its hash, which is all the session cookie holds."""
        async with self._sessions.begin() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise LookupError(f"No user {principal.user_id}.")
            return hash_token(await self._issue_token(session, user, WEB_SESSION_LABEL))

    async def end_web_session(self, digest: str) -> None:
        """Sign out: the session's token is revoked, so every copy of the cookie stops working."""
        self._cache.pop(digest, None)
        async with self._sessions.begin() as session:
            await session.execute(
                update(ApiToken)
                .where(ApiToken.token_hash == digest, ApiToken.label == WEB_SESSION_LABEL)
                .values(revoked_at=datetime.now(UTC))
            )

    async def principal_for_trusted_name(self, name: str) -> Principal:
        """Trusted-header mode: the SSO proxy vouches for the name; first sight creates a plain user."""
        async with self._sessions.begin() as session:
            user = await session.scalar(select(User).where(User.name == name))
            if user is None:
                user = User(name=name, role=Role.USER)
                session.add(user)
                await session.flush()
            return Principal(user.id, user.name, Role(user.role))
