"""Per-user rate limits on the routes that cost the most (chat, feedback), on Litestar's rate-limit middleware.

Counts are kept per user (never per address: many users share a proxy's) in Litestar's store named `rate_limit`:
Redis when RATCHET_REDIS_URL is set, so every replica counts against the same budget, each process's memory
otherwise. A route opts in with `opt=rate_limited(CHAT)`. Over the limit a client gets 429 with `Retry-After`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.stores.memory import MemoryStore
from redis.exceptions import RedisError

from server.settings import Settings

if TYPE_CHECKING:
    from litestar import Request
    from litestar.stores.base import Store
    from litestar.types import Receive, Scope, Send

log = logging.getLogger("ratchet.limits")

CHAT = "chat"
FEEDBACK = "feedback"
STORE_NAME = "rate_limit"


def rate_limited(budget: str) -> dict[str, str]:
    """A route handler's `opt` that counts its requests against `budget`."""
    return {"rate_limit": budget}


@dataclass
class UserRateLimitConfig(RateLimitConfig):
    budget: str = ""
    """What is counted (`chat`, `feedback`): the routes that opt into it, the count's key, the refusal's words."""


class UserRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's middleware (fixed one-minute windows, history in the store), telling a refused client when to
    retry and what it ran into; a store that is down lets requests through rather than take chat down with it."""

    store_down = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        key = self.cache_key_from_request(request)
        try:
            async with self._lock:
                store = self.config.get_store_from_app(app)
                cache_object = await self.retrieve_cached_history(key, store)
                if len(cache_object.history) >= self.max_requests:
                    raise self._refusal(cache_object)
                await self.set_cached_history(key=key, cache_object=cache_object, store=store)
        except (RedisError, OSError) as error:
            if not UserRateLimitMiddleware.store_down:
                log.warning("rate-limit store unreachable, not limiting until it is back: %s", type(error).__name__)
            UserRateLimitMiddleware.store_down = True
            await self.app(scope, receive, send)
            return
        if UserRateLimitMiddleware.store_down:
            log.warning("rate-limit store reachable again, limiting")
            UserRateLimitMiddleware.store_down = False
        await self.app(scope, receive, self.create_send_wrapper(send=send, cache_object=cache_object))

    def _refusal(self, cache_object: CacheObject) -> TooManyRequestsException:
        retry_after = max(1, cache_object.reset - int(time.time()))
        budget = self.config.budget if isinstance(self.config, UserRateLimitConfig) else "these"
        return TooManyRequestsException(
            detail=f"Rate limit reached: {self.max_requests} {budget} requests per minute per user. "
            f"Retry in {retry_after} s.",
            headers={**self.create_response_headers(cache_object), "Retry-After": str(retry_after)},
        )


def _user_rate_limit(budget: str, per_minute: int) -> DefineMiddleware:
    def counts(request: Request[Any, Any, Any]) -> bool:
        # The app's middleware meets the UI's routes before the UI's own sign-in has set the user; the UI router's
        # copy of this middleware, after that sign-in, counts them.
        return request.route_handler.opt.get("rate_limit") == budget and request.scope.get("user") is not None

    def identifier(request: Request[Any, Any, Any]) -> str:
        return f"{budget}:{request.user.user_id}"

    config = UserRateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=identifier,
        check_throttle_handler=counts,
        middleware_class=UserRateLimitMiddleware,
        store=STORE_NAME,
        budget=budget,
    )
    return config.middleware


def rate_limit_middleware(settings: Settings) -> list[DefineMiddleware]:
    """The limits that are on (a limit of 0 is off); they must come after authentication, which sets the user."""
    budgets = {CHAT: settings.rate_limit_chat_per_minute, FEEDBACK: settings.rate_limit_feedback_per_minute}
    return [_user_rate_limit(budget, per_minute) for budget, per_minute in budgets.items() if per_minute > 0]


def rate_limit_store(settings: Settings) -> Store:
    redis_url = settings.redis_url.get_secret_value()
    if not redis_url:
        return MemoryStore()
    from litestar.stores.redis import RedisStore

    return RedisStore.with_client(url=redis_url, namespace="ratchet")
