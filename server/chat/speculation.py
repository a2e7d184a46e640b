"""Speculative generation: start the vLLM request while the input rails are still checking the question.

The input rails cost ~12 ms of CPU per question (a MiniLM forward pass); vLLM needs hundreds of ms to answer. Run
one after the other, users wait for both; run side by side, the check is hidden behind prefill. The speculative
request is sent exactly as the rails-approved request would be (same messages, sampling and request id), so a
question the rails pass unchanged uses its answer as is. A question they refuse or rewrite abandons it: the
connection to vLLM is closed, which aborts the generation there, and nothing of it is stored or shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from server.engine.client import ChatStream

T = TypeVar("T")


class Speculation(Generic[T]):
    """One request to vLLM running in the background; `result()` takes it over, `abandon()` throws it away."""

    def __init__(self, request: Coroutine[Any, Any, T]) -> None:
        self._task: asyncio.Task[T] = asyncio.create_task(request)

    async def result(self) -> T:
        """The request's outcome, its exceptions (engine down, request rejected) included."""
        return await self._task

    async def abandon(self) -> None:
        """Cancel the request; a stream that was already open is closed. Never raises the request's errors."""
        self._task.cancel()
        await asyncio.wait([self._task])
        if self._task.cancelled() or self._task.exception() is not None:
            return
        opened = self._task.result()
        if isinstance(opened, ChatStream):
            await opened.aclose()
