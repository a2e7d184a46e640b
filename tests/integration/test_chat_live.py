"""The chat API through the real parts: `ratchet serve`, its supervised vLLM (CPU), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from server.models.generation_defaults import served_defaults
from server.settings import Settings
from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


async def test_plain_answer_is_returned_and_stored_with_provenance(chat_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=120) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"messages": QUESTION, "max_tokens": 40, "temperature": 0},
            headers=chat_server.headers(),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    answer = body["choices"][0]["message"]["content"]
    assert answer.strip()
    message_id = body["ratchet"]["message_id"]
    assert response.headers["x-ratchet-message-id"] == message_id
    assert body["id"] == f"chatcmpl-{message_id}"

    stored = await stored_message(chat_server, message_id)
    assert stored.status == "complete"
    assert stored.content == answer
    assert stored.role == "assistant" and stored.channel == "api"
    assert stored.model_alias == "ratchet" and stored.model_version == body["model"]
    assert stored.system_prompt_version and stored.system_prompt_version.startswith("sp-")
    # What the client sent, and the served defaults for what it left out.
    served = served_defaults(Settings(base_model=PREPARED_MODEL)).sampling()
    assert stored.sampling == {**served, "max_tokens": 40, "temperature": 0.0}
    assert stored.prompt_tokens == body["usage"]["prompt_tokens"]
    assert stored.completion_tokens == body["usage"]["completion_tokens"]
    assert stored.finish_reason == body["choices"][0]["finish_reason"]
    assert stored.latency_ms and stored.latency_ms > 0
    assert stored.prompt_messages and stored.prompt_messages[0]["role"] == "system"
    assert stored.prompt_messages[-1] == QUESTION[0]


async def test_streamed_chunks_join_into_the_stored_message(chat_server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{chat_server.base_url}/v1", api_key=chat_server.user_token)
    stream = await client.chat.completions.create(
        model="ratchet", messages=QUESTION, max_tokens=48, stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    chunk_ids: set[str] = set()
    usage = None
    async for chunk in stream:
        chunk_ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    await client.close()
    (chunk_id,) = chunk_ids
    message_id = chunk_id.removeprefix("chatcmpl-")
    stored = await stored_message(chat_server, message_id)
    assert stored.status == "complete"
    assert stored.content == "".join(pieces) and stored.content.strip()
    assert usage is not None and stored.completion_tokens == usage.completion_tokens
    assert stored.ttft_ms is not None and 0 < stored.ttft_ms <= stored.latency_ms


async def test_conversation_continues_and_stays_private(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120) as client:
        first = await client.post(
            "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 16}, headers=live_server.headers()
        )
        conversation_id = first.json()["ratchet"]["conversation_id"]
        follow_up = [
            *QUESTION,
            {"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]},
            {"role": "user", "content": "And of Italy?"},
        ]
        second = await client.post(
            "/v1/chat/completions",
            json={"messages": follow_up, "max_tokens": 16, "conversation_id": conversation_id},
            headers=live_server.headers(),
        )
        assert second.status_code == 200
        assert second.json()["ratchet"]["conversation_id"] == conversation_id
        intruder = live_server.create_user("mallory")
        stolen = await client.post(
            "/v1/chat/completions",
            json={"messages": follow_up, "max_tokens": 16, "conversation_id": conversation_id},
            headers=live_server.headers(intruder),
        )
        assert stolen.status_code == 404


async def test_eight_concurrent_chats_all_answer_and_are_stored(chat_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=300) as client:

        async def chat(index: int) -> httpx.Response:
            messages = [{"role": "user", "content": f"Give me one tip for staying focused, number {index}."}]
            return await client.post(
                "/v1/chat/completions",
                json={"messages": messages, "max_tokens": 32, "stream": index % 2 == 0},
                headers=chat_server.headers(),
            )

        responses = await asyncio.gather(*(chat(index) for index in range(8)))
    ids = {response.headers["x-ratchet-message-id"] for response in responses}
    assert all(response.status_code == 200 for response in responses)
    assert len(ids) == 8
    for message_id in ids:
        stored = await stored_message(chat_server, message_id)
        assert stored.status == "complete" and stored.content.strip()


async def vllm_running_requests(vllm_url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{vllm_url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")
    )


async def test_client_disconnect_mid_stream_aborts_generation_in_vllm(live_server: LiveServer) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        "max_tokens": 1500,
        "temperature": 0.8,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=live_server.headers()) as resp:
            message_id = resp.headers["x-ratchet-message-id"]
            received = 0
            async for line in resp.aiter_lines():
                received += line.startswith("data: ")
                if received >= 5:
                    break
    # 1,500 tokens take well over a minute here; the abort must free vLLM within seconds.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and await vllm_running_requests(live_server.vllm_url) > 0:
        await asyncio.sleep(0.25)
    assert await vllm_running_requests(live_server.vllm_url) == 0
    stored = await stored_message(live_server, message_id)
    assert stored.status == "aborted"
    assert stored.error == "the client disconnected"


async def test_metrics_count_requests_tokens_and_ttft_by_model_version(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120) as client:
        await client.post(
            "/v1/chat/completions",
            json={"messages": QUESTION, "max_tokens": 8, "stream": True},
            headers=live_server.headers(),
        )
        metrics = (await client.get("/metrics")).text
    version = 'model_version="smollm2-135m-instruct"'

    def counted(prefix: str, *labels: str) -> bool:
        return any(
            line.startswith(prefix) and all(label in line for label in labels) and float(line.rsplit(" ", 1)[1]) > 0
            for line in metrics.splitlines()
        )

    assert counted("ratchet_requests_total{", version, 'status="complete"')
    assert counted("ratchet_time_to_first_token_seconds_count{", version)
    assert counted("ratchet_tokens_total{", version, 'kind="completion"')
    assert counted("ratchet_request_seconds_count{", version, 'route="/v1/chat/completions"')


async def test_model_list_shows_the_alias_and_the_version(live_server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.user_token)
    models = {model.id for model in (await client.models.list()).data}
    await client.close()
    assert {"ratchet", "smollm2-135m-instruct"} <= models
