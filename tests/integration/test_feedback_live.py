"""Regeneration and feedback through the real parts: `ratchet serve`, its vLLM, SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import httpx
import pytest

from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]


async def ask(client: httpx.AsyncClient, server: LiveServer) -> str:
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 24, "temperature": 1.0, "seed": 7},
        headers=server.headers(),
    )
    assert response.status_code == 200, response.text
    return response.json()["ratchet"]["message_id"]


async def test_regenerated_answer_is_a_linked_sibling_and_votes_on_both_become_a_preference_pair(
    chat_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=180) as client:
        first_id = await ask(client, chat_server)
        response = await client.post(f"/api/messages/{first_id}/regenerate", headers=chat_server.headers())
        assert response.status_code == 201, response.text
        regenerated = response.json()
        assert regenerated["regenerated_from_id"] == first_id
        assert regenerated["message_id"] != first_id
        assert regenerated["status"] == "complete" and regenerated["content"].strip()

        first = await stored_message(chat_server, first_id)
        sibling = await stored_message(chat_server, regenerated["message_id"])
        assert sibling.reply_to_id == first.reply_to_id and sibling.conversation_id == first.conversation_id
        assert str(sibling.regenerated_from_id) == first_id
        assert sibling.prompt_messages == first.prompt_messages
        assert sibling.content == regenerated["content"]
        assert "seed" not in (sibling.sampling or {})  # the original's seed would reproduce the same answer

        for message_id, value in ((first_id, "down"), (regenerated["message_id"], "up")):
            voted = await client.put(
                f"/api/messages/{message_id}/feedback", json={"value": value}, headers=chat_server.headers()
            )
            assert voted.status_code == 200, voted.text

        export = await client.get("/api/exports/training-data", headers=chat_server.headers(chat_server.admin_token))
        assert export.status_code == 200, export.text
        with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
            pairs = [json.loads(line) for line in archive.read("preference.jsonl").decode().splitlines()]
            manifest = json.loads(archive.read("manifest.json"))
        # Sampled at temperature 1 without the seed, 24 tokens about the sea do not repeat.
        assert sibling.content != first.content
        assert {"role": "assistant", "content": sibling.content} in [pair["chosen"][0] for pair in pairs]
        assert manifest["rows_by_source"]["preference.regeneration"] >= 1
        assert all(pair["prompt"][0]["role"] == "system" for pair in pairs)


async def test_regenerating_someone_elses_or_a_missing_answer_is_404(chat_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=180) as client:
        first_id = await ask(client, chat_server)
        for message_id, token in ((first_id, chat_server.ops_token), (str(uuid.uuid4()), chat_server.user_token)):
            response = await client.post(f"/api/messages/{message_id}/regenerate", headers=chat_server.headers(token))
            assert response.status_code == 404, response.text
