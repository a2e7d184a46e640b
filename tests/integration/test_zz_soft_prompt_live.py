"""A soft prompt (prompt_tuning) version end to end on the real vLLM: made with PEFT on the served base, registered,
gated, promoted to canary and then to active through the API; it answers chats (streamed and not) for the users
the split gives it, stored with the version as provenance, and its greedy answer is HF PEFT's greedy answer for the
same prompt.

Named to run last (after test_zz_models_live.py): it changes the alias's active version."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import UserService
from server.db.engine import open_sessions
from server.db.models import Role
from server.models.registry import ModelRegistry
from server.models.services import canary_bucket
from server.settings import Settings
from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.integration

NAME = "live-soft-prompt-1"
FRACTION = 0.2  # RATCHET_CANARY_FRACTION's default, which the live server runs with
GREEDY_TOKENS = 8
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
async def store(live_server: LiveServer) -> AsyncIterator[tuple[Settings, async_sessionmaker[AsyncSession]]]:
    settings = Settings(data_dir=live_server.data_dir, database_url=live_server.database_url, base_model=PREPARED_MODEL)
    async with open_sessions(settings) as sessions:
        yield settings, sessions


def make_soft_prompt(out: Path) -> Path:
    """A soft prompt as the nightly job's prompt tuning saves one: 4 virtual tokens initialised from text, then
    nudged (as training would) so that it is not just those tokens' embeddings."""
    import torch
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(PREPARED_MODEL, dtype=torch.float32)
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text="Answer in one short sentence.",
        tokenizer_name_or_path=str(PREPARED_MODEL),
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        weight = peft_model.prompt_encoder["default"].embedding.weight
        weight.add_(torch.randn_like(weight) * weight.std() * 0.1)
    peft_model.save_pretrained(out)
    return out


def peft_greedy(path: Path, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[str, int]:
    """HF PEFT's greedy answer to the chat (in vLLM's dtype), and the prompt's length with the soft prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PREPARED_MODEL)
    base = AutoModelForCausalLM.from_pretrained(PREPARED_MODEL, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, path).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        # Plain greedy: not the penalties the checkpoint's generation_config.json may name.
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ids.shape[1] + 4


# Compared with HF PEFT's plain greedy answer, so without the served defaults' penalties.
PLAIN_GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "frequency_penalty": 0.0}


async def chat(client: httpx.AsyncClient, token: str, **fields: object) -> dict:
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, **fields}
    response = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


async def streamed(client: httpx.AsyncClient, token: str) -> tuple[str, str, str]:
    """The streamed answer's text, the version that answered and the answer's id."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "stream": True}
    texts, model, message_id = [], "", ""
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
    ) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            model = chunk.get("model", model)
            message_id = (chunk.get("ratchet") or {}).get("message_id", message_id)
            texts.extend(choice["delta"].get("content") or "" for choice in chunk.get("choices", []))
    return "".join(texts), model, message_id


async def test_a_soft_prompt_version_answers_through_the_api_as_peft_would(
    live_server: LiveServer, store: tuple[Settings, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    settings, sessions = store
    registry = ModelRegistry(sessions, settings)
    await registry.register_candidate(
        NAME,
        "prompt_tuning",
        make_soft_prompt(tmp_path / NAME),
        parent=settings.base_model_name,
        run_id="live-test",
        data_hash="0" * 64,
        method="prompt_tuning",
        method_settings={"num_virtual_tokens": 4},
        metrics={"steps": 0},
    )
    await registry.record_gate_results(NAME, [{"name": "all", "passed": True}], passed=True)
    stored_path = (await registry.get(NAME)).adapter_path
    admin = {"authorization": f"Bearer {live_server.admin_token}"}
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=300) as client:
        # Canary: the users the split gives it are answered by it, from the embeddings the app sends.
        response = await client.post(f"/api/models/{NAME}/promote", json={"reason": "passed the gates"}, headers=admin)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canary"
        users = UserService(sessions)
        people = [await users.create_user(f"soft-user-{index}", Role.USER) for index in range(40)]
        in_share = [token for principal, token in people if canary_bucket(principal.user_id, NAME) < FRACTION]
        outside = [token for principal, token in people if canary_bucket(principal.user_id, NAME) >= FRACTION]
        assert in_share and outside
        for _ in range(30):  # the router picks the canary up within RATCHET_MODEL_SYNC_INTERVAL_S
            answer = await chat(client, in_share[0], temperature=0)
            if answer["model"] == NAME:
                break
            await asyncio.sleep(0.5)
        assert answer["model"] == NAME, live_server.log_tail()
        assert answer["choices"][0]["message"]["content"].strip()
        assert (await chat(client, outside[0]))["model"] != NAME
        text, model, message_id = await streamed(client, in_share[0])
        assert model == NAME and text.strip()
        stored = await stored_message(live_server, message_id)
        assert (stored.status, stored.model_version, stored.adapter) == ("complete", NAME, stored_path)
        assert stored.content == text

        # Active: everyone gets it; stored with the version as provenance; greedy, it is HF PEFT's answer.
        response = await client.post(f"/api/models/{NAME}/promote", json={"reason": "good canary"}, headers=admin)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active"
        for _ in range(30):  # the router picks the new active version up within RATCHET_MODEL_SYNC_INTERVAL_S
            answer = await chat(client, live_server.user_token, max_tokens=GREEDY_TOKENS, **PLAIN_GREEDY)
            if answer["model"] == NAME:
                break
            await asyncio.sleep(0.5)
        assert answer["model"] == NAME, live_server.log_tail()
        stored = await stored_message(live_server, answer["ratchet"]["message_id"])
        assert (stored.status, stored.model_alias, stored.model_version) == ("complete", "ratchet", NAME)
        assert stored.adapter == stored_path and stored.prompt_messages
        expected, prompt_tokens = peft_greedy(tmp_path / NAME, stored.prompt_messages, GREEDY_TOKENS)
        # vLLM saw the soft prompt's 4 virtual tokens in front of the chat-templated prompt.
        assert answer["usage"]["prompt_tokens"] == prompt_tokens
        assert answer["choices"][0]["message"]["content"] == expected
