"""HTTP client for a vLLM OpenAI-compatible server (managed or external)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource, SSEError

from server.exceptions import InvalidInputError, UnavailableError


class EngineUnavailableError(UnavailableError):
    """vLLM cannot be reached or failed; the API answers 503 with this reason."""

    code = "engine_unavailable"


class EngineRejectedError(InvalidInputError):
    """vLLM refused the request as invalid (e.g. prompt too long); the API answers 400 with its message."""

    code = "rejected"

    def __init__(self, message: str, engine_status: int) -> None:
        super().__init__(f"The model server rejected the request: {message}")
        self.engine_status = engine_status


class ChunkDelta(msgspec.Struct):
    content: str | None = None
    role: str | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChunkDelta = msgspec.field(default_factory=ChunkDelta)
    finish_reason: str | None = None
    # A text completion's chunk (/v1/completions) carries its piece here instead of in `delta`.
    text: str | None = None


class ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatChunk(msgspec.Struct):
    """The part of a streamed completion chunk that the chat path reads."""

    choices: list[ChunkChoice] = []
    usage: ChunkUsage | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(ChatChunk)


def _error_message(response: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return response.text[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:500]


class ChatStream:
    """A streamed chat completion, open. Closing it closes the connection, which aborts the generation in vLLM.

    A streamed text completion (`completion=True`, from /v1/completions) reads the same: each choice's `text` is
    moved into its `delta.content`, so whoever relays the stream need not know which endpoint produced it."""

    def __init__(self, response: httpx.Response, *, completion: bool = False) -> None:
        self._response = response
        self._completion = completion

    async def chunks(self) -> AsyncIterator[ChatChunk]:
        """The completion's chunks up to `[DONE]`; raises EngineUnavailableError when the stream breaks or ends
        early, or vLLM reports an error mid-answer."""
        done = False
        try:
            # Any SSE framing (CRLF, multi-line data): RATCHET_VLLM_URL may be any OpenAI-compatible server.
            async for event in EventSource(self._response).aiter_sse():
                if done or not event.data:
                    # Read on to the end of the body, so the connection goes back to the pool.
                    continue
                if event.data == "[DONE]":
                    done = True
                    continue
                chunk = _chunk_decoder.decode(event.data)
                if chunk.error is not None:
                    raise EngineUnavailableError(f"vLLM failed mid-answer: {chunk.error.get('message', chunk.error)}")
                if self._completion:
                    for choice in chunk.choices:
                        choice.delta = ChunkDelta(content=choice.text, role=None)
                yield chunk
        except (httpx.HTTPError, SSEError) as error:
            raise EngineUnavailableError(f"lost vLLM mid-answer: {type(error).__name__}") from error
        except msgspec.DecodeError as error:
            raise EngineUnavailableError(f"vLLM sent an unreadable chunk: {error}") from error
        if not done:
            raise EngineUnavailableError("the stream from vLLM ended before it finished")

    async def aclose(self) -> None:
        await self._response.aclose()


class EngineClient:
    def __init__(self, base_url: str, request_timeout_s: float) -> None:
        self.base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(request_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    async def close(self) -> None:
        await self._http.aclose()

    def _unreachable(self, error: httpx.HTTPError) -> EngineUnavailableError:
        return EngineUnavailableError(f"vLLM at {self.base_url} unreachable: {type(error).__name__}")

    async def is_healthy(self) -> tuple[bool, str]:
        try:
            response = await self._http.get("/health", timeout=2.0)
        except httpx.HTTPError as error:
            return False, str(self._unreachable(error))
        if response.status_code != 200:
            return False, f"vLLM at {self.base_url} unhealthy: HTTP {response.status_code}"
        return True, "ok"

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            raise EngineUnavailableError(f"vLLM failed: HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code >= 400:
            raise EngineRejectedError(_error_message(response), response.status_code)

    async def chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._complete("/v1/chat/completions", payload)

    async def open_chat_stream(self, payload: dict[str, Any]) -> ChatStream:
        """Start a streamed chat completion; a refusal or failure before its first byte raises here."""
        return await self._open_stream("/v1/chat/completions", payload)

    async def complete_with_embeds(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A text completion (/v1/completions) of a prompt given as `prompt_embeds` (base64 of `torch.save` of a
        (tokens, hidden) tensor; vLLM needs --enable-prompt-embeds). Returned as vLLM sent it."""
        return await self._complete("/v1/completions", payload)

    async def open_completion_stream_with_embeds(self, payload: dict[str, Any]) -> ChatStream:
        """The streamed form of `complete_with_embeds`, read like a chat stream (see ChatStream)."""
        return await self._open_stream("/v1/completions", payload, completion=True)

    async def _complete(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(
                path, content=msgspec.json.encode(payload), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        self._check(response)
        return msgspec.json.decode(response.content)

    async def _open_stream(self, path: str, payload: dict[str, Any], *, completion: bool = False) -> ChatStream:
        request = self._http.build_request(
            "POST",
            path,
            content=msgspec.json.encode(payload),
            headers={"content-type": "application/json", "accept": "text/event-stream"},
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        if response.status_code >= 400:
            try:
                await response.aread()
            except httpx.HTTPError as error:
                raise self._unreachable(error) from error
            finally:
                await response.aclose()
            self._check(response)
        return ChatStream(response, completion=completion)

    async def load_lora_adapter(self, name: str, path: str) -> None:
        """Load an adapter under `name` (vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING); loading a name vLLM already
        has is a no-op, never an in-place reload: names are immutable. vLLM answers an adapter it cannot load with a
        500 and the loader's message: that is a refusal of the adapter, not the engine being down."""
        response = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if response.status_code == 400 and "already been loaded" in response.text:
            return
        if response.status_code >= 400:
            raise EngineRejectedError(f"adapter {name} not loaded: {_error_message(response)}", response.status_code)

    async def unload_lora_adapter(self, name: str) -> None:
        """Drop `name` from vLLM (its slot is freed by LRU eviction later); an unknown name is already unloaded."""
        response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code == 404:
            return
        self._check(response)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http.post(path, json=body)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    async def served_models(self) -> list[str]:
        try:
            response = await self._http.get("/v1/models", timeout=5.0)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        self._check(response)
        return [model["id"] for model in response.json()["data"]]
