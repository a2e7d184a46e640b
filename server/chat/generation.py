"""Having vLLM take a turn's request on: the chat completion every base and LoRA version gets, or, for a soft
prompt (prompt_tuning) version, a text completion of the prompt as embeddings (server/models/soft_prompts.py).

Either way the result is what the rest of the chat path reads (server/chat/answers.py): an open ChatStream whose
chunks carry the text in `delta.content`, or a whole completion in the chat completion's shape. A soft prompt's
request goes to vLLM under the base model's name with the same sampling fields and request id; its provenance,
rails, storage and canary attribution are the turn's, as for any other version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.chat.turns import Generation
from server.engine.client import EngineClient
from server.models.services import ModelRouter, Route
from server.models.soft_prompts import SoftPrompts

# Fields of a chat request that a completions request does not take (the prompt goes as embeddings).
_CHAT_ONLY = ("model", "messages")


class Generator:
    def __init__(
        self,
        engine: EngineClient,
        router: ModelRouter,
        soft_prompts: SoftPrompts,
        own_engine: Callable[[str], EngineClient | None] | None = None,
    ) -> None:
        """`own_engine(version)`: the engine serving that version alone (a LoRA version served merged), if any;
        every other version is asked of `engine`."""
        self._engine = engine
        self._router = router
        self._soft_prompts = soft_prompts
        self._own_engine = own_engine

    async def generate(self, route: Route, payload: dict[str, Any], stream: bool) -> Generation:
        version = self._router.soft_prompt(route.version)
        if version is None:
            engine = (self._own_engine(route.version) if self._own_engine else None) or self._engine
            if stream:
                return await engine.open_chat_stream(payload)
            return await engine.chat(payload)
        embeds = await self._soft_prompts.prompt_embeds(version, payload["messages"])
        request = completion_request(payload, self._soft_prompts.base_model_name, embeds)
        if stream:
            return await self._engine.open_completion_stream_with_embeds(request)
        return as_chat_completion(await self._engine.complete_with_embeds(request))


def completion_request(payload: dict[str, Any], base_model_name: str, prompt_embeds: str) -> dict[str, Any]:
    """The chat request `payload` as a /v1/completions request of the base model with the prompt as embeddings."""
    fields = {name: value for name, value in payload.items() if name not in _CHAT_ONLY}
    return {"model": base_model_name, "prompt_embeds": prompt_embeds, **fields}


def as_chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A whole text completion in the shape of a chat completion (each choice's `text` as its message)."""
    choices = [
        {
            "index": choice.get("index", 0),
            "message": {"role": "assistant", "content": choice.get("text") or ""},
            "finish_reason": choice.get("finish_reason"),
        }
        for choice in body.get("choices", [])
    ]
    return {**body, "object": "chat.completion", "choices": choices}
