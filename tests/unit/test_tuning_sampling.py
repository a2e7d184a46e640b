"""The nightly job's offline generation samples as vLLM serves: the served defaults' penalties, temperature and
top_p in vLLM's order, the frequency penalty (which transformers lacks) counting the answer's tokens only."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from server.models.generation_defaults import RECOMMENDED
from tests.conftest import PREPARED_MODEL
from tuning.evaluation import FrequencyPenalty, Generator, sampling_processors


def test_the_frequency_penalty_counts_each_use_in_the_answer_and_none_in_the_prompt() -> None:
    prompt, answer = [5, 5, 7], [3, 3, 4]
    scores = torch.zeros(1, 8)
    penalised = FrequencyPenalty(0.5, prompt_length=len(prompt))(torch.tensor([prompt + answer]), scores)
    assert penalised[0].tolist() == [0.0, 0.0, 0.0, -1.0, -0.5, 0.0, 0.0, 0.0]


def test_penalties_come_before_temperature_and_top_p_and_greedy_keeps_only_the_penalties() -> None:
    sampled = [type(step) for step in sampling_processors(RECOMMENDED, 10, sample=True)]
    greedy = [type(step) for step in sampling_processors(RECOMMENDED, 10, sample=False)]
    assert sampled == [RepetitionPenaltyLogitsProcessor, FrequencyPenalty, TemperatureLogitsWarper, TopPLogitsWarper]
    assert greedy == [RepetitionPenaltyLogitsProcessor, FrequencyPenalty]


def test_the_real_model_answers_at_the_served_defaults_and_greedily() -> None:
    if not (PREPARED_MODEL / "config.json").exists():
        pytest.fail(f"no prepared model at {PREPARED_MODEL}: run `ratchet model prepare` (make test does)")
    generator = Generator(PREPARED_MODEL)
    chats = [[{"role": "user", "content": "What is the capital of France?"}]] * 2
    sampled = generator.complete(generator.base, chats, 8, RECOMMENDED, seed=1)
    again = generator.complete(generator.base, chats, 8, RECOMMENDED, seed=1)
    greedy = generator.complete(generator.base, chats, 8, None)
    assert [c.token_ids for c in sampled] == [c.token_ids for c in again]  # seeded
    assert all(completion.tokens > 0 for completion in sampled + greedy)
    assert greedy[0].token_ids == greedy[1].token_ids
