"""vLLM dies: the answer in flight is marked failed, requests get 503 with the reason, the supervisor
restarts vLLM and chat recovers. Named to run last: it restarts the session's vLLM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.integration


async def test_vllm_killed_mid_answer_gives_failed_message_then_503_then_recovers(live_server: LiveServer) -> None:
    vllm = live_server.vllm_process()
    assert vllm is not None
    body = {
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        "max_tokens": 1500,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=live_server.headers()) as resp:
            message_id = resp.headers["x-ratchet-message-id"]
            lines = resp.aiter_lines()
            received = 0
            async for line in lines:
                received += line.startswith("data: ")
                if received >= 3:
                    break
            # vLLM runs its engine in child processes of its own session: take them all down, as a crash would.
            os.killpg(os.getpgid(vllm.pid), signal.SIGKILL)
            rest = [line async for line in lines]
        assert not any(line == "data: [DONE]" for line in rest)
        assert any('"error"' in line for line in rest)

        stored = await stored_message(live_server, message_id)
        assert stored.status == "failed"
        assert stored.error

        chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        response = await client.post("/v1/chat/completions", json=chat, headers=live_server.headers())
        assert response.status_code == 503
        assert "vLLM" in response.json()["error"]["message"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["vllm"] != "ok"

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(2)
        response = await client.post("/v1/chat/completions", json=chat, headers=live_server.headers())
    assert response.status_code == 200, live_server.log_tail()
    assert response.json()["choices"][0]["message"]["content"].strip()
    new_vllm = live_server.vllm_process()
    assert new_vllm is not None and new_vllm.pid != vllm.pid
