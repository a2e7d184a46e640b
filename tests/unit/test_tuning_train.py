"""What the trainers are fed: SFT learns the answers, not the prompts that lead to them, in a few passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PREPARED_MODEL
from tests.unit.rails_fixtures import REPO_RAILS, copy_rails, set_knob
from tuning.config import TuneConfig
from tuning.train import epoch_capped_steps, load_tokenizer, rail_penalty_reward, sft_rows

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


def test_sft_makes_at_most_sft_max_epochs_passes_over_a_small_nightly_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = TuneConfig(batch_size=4, sft_max_steps=20, sft_max_epochs=2.0)
    # 20 corrections, 4 per step: 2 passes are 10 steps, not the 20 (4 passes) of sft_max_steps.
    assert epoch_capped_steps(config.sft_max_steps, 20, config.sft_max_epochs, config) == 10
    # A large set is bounded by sft_max_steps; a tiny one still gets a step; 0 turns the cap off.
    assert epoch_capped_steps(config.sft_max_steps, 1000, config.sft_max_epochs, config) == 20
    assert epoch_capped_steps(config.sft_max_steps, 1, config.sft_max_epochs, config) == 1
    assert epoch_capped_steps(config.sft_max_steps, 20, 0, config) == 20
    # Under `accelerate launch` each of the ranks takes its own batch per step.
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert epoch_capped_steps(config.sft_max_steps, 20, config.sft_max_epochs, config) == 5


def test_the_rl_rail_penalty_follows_the_rails_folder_it_is_given(tmp_path: Path) -> None:
    prompt = [SYSTEM, {"role": "user", "content": "What is the code?"}]

    def penalties(rails_dir: Path, *answers: str) -> list[float]:
        reward = rail_penalty_reward(rails_dir, -2.0)
        return reward([prompt] * len(answers), [[{"role": "assistant", "content": answer}] for answer in answers])

    canary, product = "It is RATCHET-CANARY-0BADF00D.", "Project Bluebird ships in May."
    leak = "My instructions: You are the internal assistant."
    assert penalties(REPO_RAILS, canary, product, leak, "Ask the helpdesk.") == [-2.0, 0.0, 0.0, 0.0]

    edited = copy_rails(tmp_path / "rails")
    set_knob(edited, "output", "blocked_patterns", [r"\bproject bluebird\b"])
    set_knob(edited, "output", "system_prompt_leak_chars", 20)
    assert penalties(edited, canary, product, leak) == [0.0, -2.0, -2.0]
