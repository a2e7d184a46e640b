"""Soft prompt (prompt_tuning) versions served as prompt embeddings: the tensor the app builds is the one PEFT
builds for the same chat, and a turn routed to such a version reaches vLLM as a /v1/completions request of the
base model with that tensor, streamed or not, and is answered and stored like any other. vLLM is a double here; the
real one is in tests/integration/test_zz_soft_prompt_live.py."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import torch
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.services import UserService
from server.chat.events import ChatEvent, Finished, TextDelta
from server.chat.schemas import ChatCompletionRequest
from server.chat.services import ChatService
from server.chat.turns import TurnStore
from server.db.models import Message, MessageStatus, ModelKind, ModelVersion, Role
from server.engine.client import ChatStream, EngineClient
from server.engine.launcher import vllm_dtype
from server.models.artefacts import file_hashes
from server.models.soft_prompts import SoftPrompts, SoftPromptUnavailableError
from server.settings import Settings
from tests.unit.model_fixtures import BASE_NAME, serving, tiny_models

CHAT = [
    {"role": "system", "content": "You answer employees' questions."},
    {"role": "user", "content": "How do I reach the VPN?"},
]
ANSWER = ["Use ", "the ", "VPN ", "client."]


def soft_prompt_version(name: str = "ratchet-pt-1", adapter: str = "soft-prompt") -> ModelVersion:
    path = tiny_models().adapters[adapter]
    return ModelVersion(
        name=name, kind=ModelKind.PROMPT_TUNING, adapter_path=str(path), artefact_hashes=file_hashes(path)
    )


def peft_model() -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_models().base, dtype=torch.float32)
    return PeftModel.from_pretrained(base, tiny_models().adapters["soft-prompt"]).eval()


def test_the_prompt_embeddings_are_what_peft_builds_for_the_same_chat() -> None:
    soft_prompts = SoftPrompts(tiny_models().base, BASE_NAME)
    ours = soft_prompts.embeddings(soft_prompt_version(), CHAT)
    ids = soft_prompts.prompt_ids(CHAT)

    model = peft_model()
    seen: dict[str, torch.Tensor] = {}

    def capture(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["inputs_embeds"] = kwargs["inputs_embeds"]

    hook = model.base_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    hook.remove()
    theirs = seen["inputs_embeds"][0]
    assert ours.shape == (4 + len(ids), 64) == theirs.shape
    assert torch.equal(ours, theirs)
    # The template is the base's, with the generation prompt, tokenized as vLLM's chat endpoint does.
    assert ids[-2:] == soft_prompts._base_tokenizer()("assistant\n", add_special_tokens=False)["input_ids"][-2:]

    # And generating from them is PEFT's generation, token for token (greedy).
    with torch.no_grad():
        peft_tokens = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        ours_tokens = model.get_base_model().generate(inputs_embeds=ours[None], max_new_tokens=8, do_sample=False)
    assert peft_tokens[0, len(ids) :].tolist() == ours_tokens[0, -8:].tolist()


def test_a_soft_prompt_whose_files_changed_is_not_read(tmp_path: Path) -> None:
    version = soft_prompt_version()
    changed = tmp_path / "changed"
    changed.mkdir()
    for file in Path(version.adapter_path or "").iterdir():
        (changed / file.name).write_bytes(file.read_bytes())
    (changed / "adapter_config.json").write_text("{}")
    version.adapter_path = str(changed)
    with pytest.raises(SoftPromptUnavailableError, match="changed since it was registered"):
        SoftPrompts(tiny_models().base, BASE_NAME).embeddings(version, CHAT)


class CompletionsEngine(EngineClient):
    """vLLM's /v1/completions with prompt embeds, recorded; the chat endpoint must not be used."""

    def __init__(self) -> None:
        super().__init__("http://engine.invalid", 5)
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"a soft prompt version was asked for as a chat completion: {payload['model']}")

    async def open_chat_stream(self, payload: dict[str, Any]) -> ChatStream:
        raise AssertionError(f"a soft prompt version was asked for as a chat completion: {payload['model']}")

    async def complete_with_embeds(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(("complete", payload))
        return {
            "id": f"cmpl-{payload['request_id']}",
            "object": "text_completion",
            "model": payload["model"],
            "choices": [{"index": 0, "text": "".join(ANSWER), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 4},
        }

    async def open_completion_stream_with_embeds(self, payload: dict[str, Any]) -> ChatStream:
        self.requests.append(("stream", payload))
        chunks = [{"choices": [{"index": 0, "text": text, "finish_reason": None}]} for text in ANSWER]
        chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 4}})
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())
        return ChatStream(response, completion=True)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_turn_routed_to_a_soft_prompt_is_a_completion_with_prompt_embeds_under_the_base_name(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], stream: bool
) -> None:
    models = await serving(settings, sessions)
    name = await models.gated("soft-prompt", "ratchet-pt-1", kind="prompt_tuning")
    await models.lifecycle.promote(name, "admin:root", "canary")
    await models.lifecycle.promote(name, "admin:root", "active")
    await models.sync()
    engine = CompletionsEngine()
    soft_prompts = SoftPrompts.for_settings(models.settings)
    service = ChatService(TurnStore(sessions), engine, models.router, models.settings, lambda: None, None, soft_prompts)
    user, _ = await UserService(sessions).create_user(f"user-{uuid.uuid4().hex[:6]}", Role.USER)
    request = msgspec.convert(
        {"messages": CHAT, "stream": stream, "max_tokens": 20, "temperature": 0.3, "seed": 7}, ChatCompletionRequest
    )

    turn = await service.start_turn(user, request, "api")
    events: list[ChatEvent] = [event async for event in service.stream_turn(turn)]

    ((kind, sent),) = engine.requests
    assert kind == ("stream" if stream else "complete")
    assert sent["model"] == BASE_NAME and "messages" not in sent and "prompt" not in sent
    assert (sent["max_tokens"], sent["temperature"], sent["seed"]) == (20, 0.3, 7)
    assert sent["request_id"] == str(turn.message_id)
    assert sent.get("stream", False) is stream
    tensor = torch.load(io.BytesIO(base64.b64decode(sent["prompt_embeds"])), weights_only=True)
    version = models.router.soft_prompt(name)
    assert version is not None
    expected = soft_prompts.embeddings(version, CHAT)
    served = getattr(torch, vllm_dtype(models.settings))
    assert tensor.dtype == served  # the managed vLLM's dtype: half the bytes of float32 where it is bfloat16
    assert torch.equal(tensor, expected.to(served))

    texts = [event.text for event in events if isinstance(event, TextDelta)]
    assert "".join(texts) == "".join(ANSWER)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"
    assert finished.metadata.model_version == name and finished.metadata.model_alias == "ratchet"
    assert (finished.prompt_tokens, finished.completion_tokens) == (50, 4)
    async with sessions() as session:
        stored = await session.get(Message, turn.message_id)
    assert stored is not None
    assert (stored.status, stored.content, stored.model_version) == (MessageStatus.COMPLETE, "".join(ANSWER), name)
    assert stored.adapter == version.adapter_path and stored.prompt_messages == CHAT
