"""What a user who sends no sampling parameters gets, through the real parts: `ratchet serve`, its vLLM (CPU),
SQLite and PostgreSQL. bench/quality.py measures the same over many questions."""

from __future__ import annotations

import openai
import pytest

from bench.degenerate import degenerate_reason
from server.models.generation_defaults import served_defaults
from server.settings import Settings, get_settings
from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.integration


async def test_a_request_without_sampling_parameters_gets_a_readable_answer_at_the_served_defaults(
    chat_server: LiveServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{chat_server.base_url}/v1", api_key=chat_server.user_token)
    # As the web UI, the Slack bot and most scripts ask: no temperature, top_p or max_tokens.
    response = await client.chat.completions.with_raw_response.create(
        model="ratchet", messages=[{"role": "user", "content": "What is a mutex?"}]
    )
    completion = response.parse()
    answer = completion.choices[0].message.content or ""
    served = served_defaults(Settings(base_model=PREPARED_MODEL))

    stored = await stored_message(chat_server, response.headers["x-ratchet-message-id"])
    assert stored.sampling == served.sampling()
    # An answer that ends by itself, well inside the limit, in words, without looping.
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and 5 <= completion.usage.completion_tokens <= served.max_tokens // 2
    assert degenerate_reason(answer, "stop", get_settings().system_prompt) is None, answer
