"""The generation defaults served for whatever sampling parameter a client leaves out: where they come from, what
`ratchet model prepare` writes into the checkpoint, and what the app sends and stores. The chat tests run the real
app against a stand-in OpenAI-compatible server that has no defaults of its own, so everything it samples with is
what the app sent."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from transformers import GenerationConfig

from server.app import create_app
from server.db.models import Message
from server.models.base_checkpoint import MANIFEST, prepare_base_model
from server.models.generation_defaults import (
    GENERATION_CONFIG,
    RECOMMENDED,
    GenerationDefaults,
    prepared_defaults,
    served_defaults,
)
from server.settings import Settings
from tests.conftest import PREPARED_MODEL

TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
ANSWER = "A mutex lets one thread at a time use a shared resource."


def checkpoint(directory: Path, generation_config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    (directory / GENERATION_CONFIG).write_text(json.dumps(generation_config))
    return directory


def test_a_checkpoint_without_sampling_settings_is_served_ratchets_recommended_defaults(tmp_path: Path) -> None:
    settings = Settings(base_model=checkpoint(tmp_path / "model", TOKEN_IDS))
    assert served_defaults(settings) == RECOMMENDED
    assert RECOMMENDED.temperature <= 0.5 and RECOMMENDED.top_p == 0.9  # SmolLM2's model card: low, and 0.9


def test_without_the_checkpoint_on_this_machine_the_recommended_defaults_are_served(tmp_path: Path) -> None:
    # An external vLLM serves a checkpoint that need not exist where the app runs.
    settings = Settings(base_model=tmp_path / "elsewhere", vllm_url="http://vllm.example:8000")
    assert served_defaults(settings) == RECOMMENDED


def test_a_configured_checkpoints_own_recommendation_is_served(tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "model", {**TOKEN_IDS, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 300})
    served = served_defaults(Settings(base_model=model))
    assert (served.temperature, served.top_p, served.max_tokens) == (0.6, 0.95, 300)
    assert served.repetition_penalty == RECOMMENDED.repetition_penalty


def test_each_setting_overrides_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = checkpoint(tmp_path / "model", {**TOKEN_IDS, "temperature": 0.6, "top_p": 0.95})
    monkeypatch.setenv("RATCHET_GENERATION_TEMPERATURE", "0.3")
    monkeypatch.setenv("RATCHET_GENERATION_TOP_P", "0.8")
    monkeypatch.setenv("RATCHET_GENERATION_MAX_TOKENS", "200")
    monkeypatch.setenv("RATCHET_GENERATION_REPETITION_PENALTY", "1.15")
    monkeypatch.setenv("RATCHET_GENERATION_FREQUENCY_PENALTY", "0")
    assert served_defaults(Settings(base_model=model)) == GenerationDefaults(0.3, 0.8, 200, 1.15, 0.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", 2.5), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("max_tokens", 0)],
)
def test_out_of_range_generation_settings_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=f"generation_{name}"):
        Settings(**{f"generation_{name}": value})


def test_the_penalties_are_sent_only_when_they_do_something() -> None:
    # The repetition penalty is a vLLM extension: other OpenAI-compatible servers may refuse a field they do not know.
    assert GenerationDefaults(0.2, 0.9, 512, 1.0, 0.0).sampling() == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 512,
    }
    assert GenerationDefaults(0.2, 0.9, 512, 1.1, 0.2).sampling() == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 512,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.2,
    }


def test_the_frequency_penalty_stays_out_of_generation_config_which_has_no_such_field() -> None:
    config = GenerationDefaults(0.2, 0.9, 512, 1.1, 0.2).generation_config()
    assert config == {
        "do_sample": True,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_new_tokens": 512,
        "repetition_penalty": 1.1,
    }


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    """A conversion of the shipped GGUF as an earlier `ratchet model prepare` left it: a manifest that matches,
    and a generation_config.json with token ids only. Weights are left out: prepare must not need them."""
    if not (PREPARED_MODEL / MANIFEST).exists():
        pytest.skip("base model not prepared here")
    target = tmp_path / "smollm2"
    target.mkdir()
    for name in (MANIFEST, "config.json"):
        shutil.copy(PREPARED_MODEL / name, target / name)
    (target / GENERATION_CONFIG).write_text(json.dumps({**TOKEN_IDS, "transformers_version": "5.19.0"}))
    return target


def test_prepare_gives_an_existing_conversion_the_defaults_without_converting_again(converted: Path) -> None:
    wanted = prepared_defaults(Settings(generation_temperature=0.3))
    result = prepare_base_model(converted, generation=wanted)
    assert result.created is False and result.generation_config_updated is True
    assert not (converted / "model.safetensors").exists()
    written = json.loads((converted / GENERATION_CONFIG).read_text())
    assert written["bos_token_id"] == 1 and written["pad_token_id"] == 2
    # transformers reads them as its defaults (vLLM reads the same file)...
    config = GenerationConfig.from_pretrained(converted)
    assert config.do_sample is True
    assert (config.temperature, config.top_p, config.max_new_tokens) == (0.3, wanted.top_p, wanted.max_tokens)
    assert config.repetition_penalty == wanted.repetition_penalty
    # ...and so does the app when it serves this checkpoint.
    assert served_defaults(Settings(base_model=converted)) == wanted


def test_prepare_leaves_a_generation_config_that_has_the_defaults_untouched(converted: Path) -> None:
    prepare_base_model(converted, generation=RECOMMENDED)
    before = (converted / GENERATION_CONFIG).stat().st_mtime_ns
    again = prepare_base_model(converted, generation=RECOMMENDED)
    assert again.generation_config_updated is False
    assert (converted / GENERATION_CONFIG).stat().st_mtime_ns == before


class StandInServer:
    """An OpenAI-compatible chat server without defaults of its own; records every request body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                recorded.append(body)
                completion_id = f"chatcmpl-{body.get('request_id', 'x')}"
                usage = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
                if body.get("stream"):
                    chunks = [
                        {"id": completion_id, "choices": [{"index": 0, "delta": {"content": ANSWER}}]},
                        {"id": completion_id, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                        {"id": completion_id, "choices": [], "usage": usage},
                    ]
                    payload = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
                    content_type = "text/event-stream"
                else:
                    message = {"role": "assistant", "content": ANSWER}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    payload = json.dumps(
                        {"id": completion_id, "model": body["model"], "choices": [choice], "usage": usage}
                    )
                    content_type = "application/json"
                data = payload.encode()
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StandInServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandInServer]:
    with StandInServer() as server:
        yield server


@pytest.fixture
async def app_client(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], stand_in: StandInServer
) -> AsyncIterator[AsyncTestClient]:
    """The real app on the test database, generating through the stand-in server; rails off (not what is tested)."""
    pointed = Settings(**{**settings.model_dump(), "vllm_url": stand_in.url, "rails_enabled": False})
    async with AsyncTestClient(app=create_app(pointed)) as client:
        yield client


def question(**sampling: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "What is a mutex?"}], **sampling}


async def stored_sampling(sessions: async_sessionmaker[AsyncSession], message_id: str) -> dict[str, Any] | None:
    async with sessions() as session:
        message = await session.get(Message, UUID(message_id))
    assert message is not None
    return message.sampling


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_request_without_sampling_parameters_is_sent_and_stored_with_the_served_defaults(
    app_client: AsyncTestClient,
    sessions: async_sessionmaker[AsyncSession],
    user_token: str,
    stand_in: StandInServer,
    settings: Settings,
    stream: bool,
) -> None:
    response = await app_client.post(
        "/v1/chat/completions", json=question(stream=stream), headers={"authorization": f"Bearer {user_token}"}
    )
    assert response.status_code == 200
    defaults = served_defaults(settings).sampling()
    sent = stand_in.requests[-1]
    assert {name: sent.get(name) for name in defaults} == defaults
    assert await stored_sampling(sessions, response.headers["x-ratchet-message-id"]) == defaults


async def test_the_clients_own_sampling_parameters_win_over_the_defaults(
    app_client: AsyncTestClient,
    sessions: async_sessionmaker[AsyncSession],
    user_token: str,
    stand_in: StandInServer,
    settings: Settings,
) -> None:
    own = {"temperature": 0.0, "top_p": 0.5, "max_tokens": 7}
    response = await app_client.post(
        "/v1/chat/completions", json=question(**own), headers={"authorization": f"Bearer {user_token}"}
    )
    assert response.status_code == 200
    expected = {**served_defaults(settings).sampling(), **own}
    assert {name: stand_in.requests[-1].get(name) for name in expected} == expected
    assert await stored_sampling(sessions, response.json()["ratchet"]["message_id"]) == expected


async def test_a_regenerated_answer_from_before_the_defaults_gets_them_for_what_it_left_out(
    app_client: AsyncTestClient,
    sessions: async_sessionmaker[AsyncSession],
    user_token: str,
    stand_in: StandInServer,
    settings: Settings,
) -> None:
    headers = {"authorization": f"Bearer {user_token}"}
    first = (await app_client.post("/v1/chat/completions", json=question(), headers=headers)).json()
    message_id = first["ratchet"]["message_id"]
    async with sessions.begin() as session:  # as an answer stored before served defaults were recorded
        await session.execute(update(Message).where(Message.id == UUID(message_id)).values(sampling={"max_tokens": 64}))
    response = await app_client.post(f"/api/messages/{message_id}/regenerate", headers=headers)
    assert response.status_code == 201
    expected = {**served_defaults(settings).sampling(), "max_tokens": 64}
    assert {name: stand_in.requests[-1].get(name) for name in expected} == expected
    assert await stored_sampling(sessions, response.json()["message_id"]) == expected
