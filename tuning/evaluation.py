"""Offline evaluation of a model version with transformers: batched, seeded generation from the base checkpoint or
a PEFT adapter on it (LoRA or soft prompt), at the sampling the server applies, and the log-probability of each
generated token under any version (for the drift between two versions).

Nothing here talks to vLLM: the nightly job evaluates candidates before any of them is loaded for users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

Chat = list[dict[str, str]]


class SamplingSettings(Protocol):
    """What generation reads from a set of sampling settings (the server's generation defaults fit it too)."""

    temperature: float
    top_p: float
    repetition_penalty: float
    frequency_penalty: float


class FrequencyPenalty(LogitsProcessor):
    """OpenAI's frequency penalty as vLLM applies it, which transformers lacks: each token's logit is lowered by
    `penalty` times the number of times the answer so far used it (the prompt's tokens do not count)."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.penalty * counts


def sampling_processors(sampling: SamplingSettings, prompt_length: int, sample: bool) -> LogitsProcessorList:
    """vLLM's order: the penalties on the raw logits, then (when sampling) temperature, then top_p."""
    penalties: list[LogitsProcessor] = [
        RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty),
        FrequencyPenalty(sampling.frequency_penalty, prompt_length),
    ]
    if not sample:
        return LogitsProcessorList(penalties)
    return LogitsProcessorList(
        [*penalties, TemperatureLogitsWarper(sampling.temperature), TopPLogitsWarper(sampling.top_p)]
    )


@dataclass(frozen=True)
class Completion:
    text: str
    # The generated token ids up to and including the end-of-turn token (none when cut at the token limit).
    token_ids: list[int]
    truncated: bool

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


class Generator:
    """Batched HF generate for the base model and for a PEFT adapter (LoRA or soft prompt) on top of it."""

    def __init__(self, base: Path) -> None:
        self.path = base
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(base)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        eos = self.base.generation_config.eos_token_id
        self.end_ids = {eos} if isinstance(eos, int) else set(eos or [self.tokenizer.eos_token_id])

    def with_adapter(self, adapter: Path) -> Any:
        # A fresh base each time: PEFT injects LoRA layers into the model it is given.
        fresh = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        return PeftModel.from_pretrained(fresh, adapter).eval()

    def model(self, adapter: Path | None) -> Any:
        """The base model, or the adapter on a fresh copy of it."""
        return self.base if adapter is None else self.with_adapter(adapter)

    def prompt_ids(self, chat: Chat) -> list[int]:
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def complete(
        self,
        model: Any,
        chats: list[Chat],
        max_new_tokens: int,
        sampling: SamplingSettings | None,
        seed: int | None = None,
        top_k: int = 0,
        batch: int = 16,
    ) -> list[Completion]:
        """One completion per chat: greedy when `sampling` is None, else sampled with it (top_k off, as vLLM serves).
        Every model given the same seed draws the same random numbers, so two versions differ by what they
        learnt more than by luck."""
        if seed is not None:
            torch.manual_seed(seed)
        sample = sampling is not None and sampling.temperature > 0
        out: list[Completion] = []
        for start in range(0, len(chats), batch):
            prompts = [{"input_ids": self.prompt_ids(chat)} for chat in chats[start : start + batch]]
            self.tokenizer.padding_side = "left"
            inputs = self.tokenizer.pad(prompts, return_tensors="pt")
            prompt_length = inputs["input_ids"].shape[1]
            # Sampling goes through our own processors, in vLLM's order; the neutral values keep transformers from
            # adding its own (it would otherwise take them from the checkpoint's generation_config.json).
            generated = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=1.0,
                top_p=1.0,
                top_k=top_k if sample else None,
                repetition_penalty=1.0,
                logits_processor=None if sampling is None else sampling_processors(sampling, prompt_length, sample),
                pad_token_id=self.tokenizer.pad_token_id,
            )
            for row in generated[:, prompt_length:].tolist():
                out.append(self._completion(row))
        return out

    def _completion(self, row: list[int]) -> Completion:
        end = next((index for index, token in enumerate(row) if token in self.end_ids), None)
        ids = row if end is None else row[: end + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Completion(text=text, token_ids=ids, truncated=end is None)

    def answers(
        self,
        model: Any,
        chats: list[Chat],
        max_new_tokens: int,
        sampling: SamplingSettings | None,
        top_k: int = 0,
        batch: int = 32,
        seed: int | None = None,
    ) -> list[str]:
        """The completions' texts."""
        completions = self.complete(model, chats, max_new_tokens, sampling, seed=seed, top_k=top_k, batch=batch)
        return [completion.text for completion in completions]

    @torch.inference_mode()
    def token_logprobs(
        self,
        model: Any,
        chats: list[Chat],
        completions: list[list[int]],
        temperature: float = 1.0,
        batch: int = 4,
    ) -> list[list[float]]:
        """log p(token | chat, earlier tokens) of each completion token under `model`, with its logits divided by
        `temperature` (the distribution the tokens were sampled from, when it is the sampling temperature).

        Right-padded, so every real token sits at the position it had when generated: PEFT ignores position ids
        for a soft prompt, which it places before the whole prompt, as in training and generation."""
        out: list[list[float]] = []
        for start in range(0, len(chats), batch):
            prompts = [self.prompt_ids(chat) for chat in chats[start : start + batch]]
            answers = completions[start : start + batch]
            rows = [{"input_ids": prompt + answer} for prompt, answer in zip(prompts, answers, strict=True)]
            self.tokenizer.padding_side = "right"
            inputs = self.tokenizer.pad(rows, return_tensors="pt")
            length = inputs["input_ids"].shape[1]
            # A soft prompt adds its virtual tokens in front: keep the logits of the real positions.
            logits = model(**inputs).logits[:, -length:].float() / temperature
            for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
                if not answer:
                    out.append([])
                    continue
                # The logits at position t predict token t + 1.
                predicting = logits[index, len(prompt) - 1 : len(prompt) - 1 + len(answer)]
                chosen = torch.tensor(answer).unsqueeze(1)
                out.append(torch.log_softmax(predicting, dim=-1).gather(1, chosen).squeeze(1).tolist())
        return out
