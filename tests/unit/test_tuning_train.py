"""What the trainers are fed: SFT learns the answers, not the prompts that lead to them."""

from __future__ import annotations

from tests.conftest import PREPARED_MODEL
from tuning.train import load_tokenizer, sft_rows

SYSTEM = {"role": "system", "content": "You are the internal assistant."}


def test_sft_trains_on_the_answer_alone_with_the_chat_up_to_the_assistant_turn_as_prompt() -> None:
    tokenizer = load_tokenizer(PREPARED_MODEL)
    store_row = {
        "prompt": [SYSTEM, {"role": "user", "content": "How do I book a room?"}],
        "completion": [{"role": "assistant", "content": "Use the Rooms tab."}],
    }
    business_pair = {"prompt": "What does Ratchet do?", "completion": "It answers questions."}

    (from_store, from_business) = sft_rows([store_row, business_pair], tokenizer)

    assert from_store["completion"] == "Use the Rooms tab."
    assert from_store["prompt"].endswith("How do I book a room?<|im_end|>\n<|im_start|>assistant\n")
    assert "You are the internal assistant." in from_store["prompt"]
    assert from_business["completion"] == "It answers questions."
    assert from_business["prompt"].endswith("What does Ratchet do?<|im_end|>\n<|im_start|>assistant\n")


def test_a_business_document_is_learnt_in_full() -> None:
    (row,) = sft_rows([{"text": "# Handbook\n\nOffices open at 8."}], load_tokenizer(PREPARED_MODEL))
    assert row == {"prompt": "", "completion": "# Handbook\n\nOffices open at 8."}
