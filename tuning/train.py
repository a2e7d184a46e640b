"""One function per training stage, each a TRL trainer with a PEFT config, in the style of TRL's example scripts.

Every function trains into ``out`` and returns what the run record keeps: the trainer's log history (loss,
rewards, KL per step) and a summary. Adapters are saved in the form vLLM loads at run time: LoRA without
extra saved modules or biases; the soft prompt also as a plain ``(virtual tokens, hidden)`` tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit
from sklearn.metrics import roc_auc_score
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    set_seed,
)

from server.models.generation_defaults import GenerationDefaults
from tuning.config import TuneConfig

Row = dict[str, Any]


class NotEnoughData(ValueError):
    """This method has nothing to learn from in this snapshot; the run goes on without its adapter."""


POLICY_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def trainer_args(config: TuneConfig, out: Path, max_steps: int, learning_rate: float) -> dict[str, Any]:
    # TRL configs default to bf16 (emulated, slow on AVX2) and gradient checkpointing (slower for 135M): off on CPU.
    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(out / "trainer"),
        "use_cpu": not on_gpu,
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "logging_steps": config.logging_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "disable_tqdm": False,
    }


def epoch_capped_steps(max_steps: int, rows: int, epochs: float, config: TuneConfig) -> int:
    """`max_steps`, but no more than `epochs` passes over `rows` (0 means no cap). A fixed step count over a small
    nightly set is many passes over the same few answers: the model memorises their phrasing."""
    if epochs <= 0:
        return max_steps
    # Under `accelerate launch` every rank takes its own batch per step.
    per_step = config.batch_size * config.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, min(max_steps, math.ceil(epochs * rows / per_step)))


def load_tokenizer(base: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def policy_lora(config: TuneConfig) -> LoraConfig:
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=POLICY_TARGETS,
        bias="none",
    )


def policy_start(base: Path, start_adapter: Path | None, config: TuneConfig) -> tuple[Any, LoraConfig | None]:
    """What a LoRA policy update trains, and the PEFT config TRL wraps it with: the active version's adapter trained
    further when one serves (so what earlier nights learnt carries into tonight's candidate), else a fresh LoRA on
    the base. KTO takes a frozen copy of a pretrained adapter as its reference; GRPO's KL stays to the base."""
    if start_adapter is None:
        return str(base), policy_lora(config)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, start_adapter, is_trainable=True), None


def save_adapter(trainer: Any, folder: Path) -> None:
    # The trained adapter alone: KTO adds its frozen reference copy of a pretrained one as a second adapter.
    trainer.model.save_pretrained(folder, selected_adapters=["default"])


def writes(trainer: Any) -> bool:
    """Under `accelerate launch` every rank trains (ZeRO-2 keeps full weights on each) and rank 0 alone saves."""
    return trainer.accelerator.is_main_process


def _result(trainer: Any, **summary: Any) -> dict[str, Any]:
    # processes: how many ranks trained together (several under `accelerate launch`), which sets the real batch size.
    steps = trainer.state.global_step
    processes = trainer.accelerator.num_processes
    return {"log_history": trainer.state.log_history, "summary": {"steps": steps, "processes": processes, **summary}}


def train_reward_model(base: Path, pairs: list[Row], config: TuneConfig, out: Path) -> dict[str, Any]:
    """Bradley-Terry on (chosen, rejected) pairs; LoRA on a one-label classifier whose score head trains in full,
    merged so GRPO and the evaluation load a plain checkpoint."""
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(base)
    # The score head is initialised here, before the trainer seeds anything: without this its starting weights,
    # and the held-out AUC with them, depended on whatever had drawn random numbers earlier in the process.
    set_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(
            max_length=config.max_length,
            **trainer_args(config, out, config.reward_max_steps, config.reward_learning_rate),
        ),
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="SEQ_CLS",
            r=config.reward_lora_r,
            lora_alpha=2 * config.reward_lora_r,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["score"],
        ),
    )
    trainer.train()
    if writes(trainer):
        merged = trainer.model.merge_and_unload()
        merged.config.pad_token_id = tokenizer.pad_token_id
        merged.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    return _result(trainer, pairs=len(pairs))


@torch.inference_mode()
def score(
    model_dir: Path, rows: list[tuple[list[dict[str, str]], list[dict[str, str]]]], max_length: int
) -> list[float]:
    """The reward model's scalar for each (prompt messages, completion messages)."""
    tokenizer = load_tokenizer(model_dir)
    # Keep the answer when a long context must be cut: it is what is being judged.
    tokenizer.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(prompt + completion, tokenize=False) for prompt, completion in rows]
    scores: list[float] = []
    for start in range(0, len(texts), 8):
        batch = tokenizer(
            texts[start : start + 8], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        scores += model(**batch).logits[:, 0].tolist()
    return scores


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half): the ROC AUC."""
    if not positives or not negatives:
        return None
    labels = [1] * len(positives) + [0] * len(negatives)
    return float(roc_auc_score(labels, [*positives, *negatives]))


def evaluate_reward_model(model_dir: Path, pairs: list[Row], pointwise: list[Row], max_length: int) -> dict[str, Any]:
    """Held-out figures: pairwise accuracy on pairs, ROC AUC of up- vs down-voted answers."""
    figures: dict[str, Any] = {"held_out_pairs": len(pairs), "held_out_pointwise": len(pointwise)}
    if pairs:
        chosen = score(model_dir, [(pair["prompt"], pair["chosen"]) for pair in pairs], max_length)
        rejected = score(model_dir, [(pair["prompt"], pair["rejected"]) for pair in pairs], max_length)
        figures["pairwise_accuracy"] = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
        figures["pair_auc"] = auc(chosen, rejected)
    if pointwise:
        scores = score(model_dir, [(row["prompt"], row["completion"]) for row in pointwise], max_length)
        figures["pointwise_auc"] = auc(
            [s for s, row in zip(scores, pointwise, strict=True) if row["reward"] > 0],
            [s for s, row in zip(scores, pointwise, strict=True) if row["reward"] <= 0],
        )
    return figures


def rail_penalty_reward(rails_dir: Path, penalty: float) -> Callable[..., list[float]]:
    """`penalty` for every completion our own output rails would block (a private key, control tokens, a
    configured term, the system prompt repeated), 0 otherwise: the same check the server applies to answers."""
    from server.rails.checks import check_output_policy
    from server.rails.policy import load_policy

    policy = load_policy(rails_dir)

    def rail_penalty(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        rewards = []
        for prompt, completion in zip(prompts, completions, strict=True):
            system = next((turn["content"] for turn in prompt if turn["role"] == "system"), None)
            blocked = check_output_policy(completion[0]["content"], policy, system).flagged
            rewards.append(penalty if blocked else 0.0)
        return rewards

    return rail_penalty


def length_reward(budget: int, per_token: float) -> Callable[..., list[float]]:
    """Costs every token past the budget, so a reward model that likes longer answers cannot be farmed."""

    def length_penalty(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [-per_token * max(0, len(ids) - budget) for ids in completion_ids]

    return length_penalty


def train_rl(
    base: Path,
    reward_model: Path,
    prompts: list[Row],
    rails_dir: Path,
    config: TuneConfig,
    out: Path,
    generation: GenerationDefaults,
    start_adapter: Path | None = None,
) -> dict[str, Any]:
    """GRPO as a PPO-style update: clipped surrogate (num_iterations > 1, epsilon) and a KL penalty to the base.
    Completions are sampled with the served top_p and repetition penalty, so the policy is judged on the kind of
    answer users get; the temperature stays rl_temperature, since the group baseline needs answers that differ."""
    from trl import GRPOConfig, GRPOTrainer

    if not prompts:
        raise NotEnoughData("no trainable logged prompts in the training split")
    tokenizer = load_tokenizer(base)
    args = trainer_args(config, out, config.rl_max_steps, config.rl_learning_rate)
    # GRPO needs the generation batch to be a multiple of the group size: whole groups, one per prompt, per step.
    args["per_device_train_batch_size"] = config.rl_num_generations * config.rl_prompts_per_step
    model, peft_config = policy_start(base, start_adapter, config)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[
            str(reward_model),
            rail_penalty_reward(rails_dir, config.rl_rail_penalty),
            length_reward(config.rl_length_budget, config.rl_length_penalty_per_token),
        ],
        args=GRPOConfig(
            num_generations=config.rl_num_generations,
            num_iterations=config.rl_num_iterations,
            epsilon=config.rl_epsilon,
            beta=config.rl_beta,
            max_completion_length=config.rl_max_completion_length,
            temperature=config.rl_temperature,
            top_p=generation.top_p,
            repetition_penalty=generation.repetition_penalty,
            mask_truncated_completions=config.rl_mask_truncated_completions,
            reward_weights=[config.rl_rm_weight, 1.0, 1.0],
            model_init_kwargs={"dtype": torch.float32},
            **args,
        ),
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    if writes(trainer):
        save_adapter(trainer, out / "adapter")
    return _result(trainer, prompts=len(prompts))


def _kto(
    base: Path, model: Any, rows: list[Row], peft_config: Any, config: TuneConfig, out: Path, steps: int, lr: float
) -> Any:
    from trl import KTOConfig, KTOTrainer

    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    if not desirable or not undesirable:
        raise NotEnoughData(f"KTO needs both up- and down-voted answers (got {desirable} up, {undesirable} down)")
    # Weighted so both classes count alike: mostly-negative thumbs otherwise push the model into collapse.
    trainer = KTOTrainer(
        model=model,
        args=KTOConfig(
            max_length=config.max_length,
            beta=config.kto_beta,
            desirable_weight=1.0,
            undesirable_weight=desirable / undesirable,
            model_init_kwargs={"dtype": torch.float32},
            **trainer_args(config, out, steps, lr),
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(base),
        peft_config=peft_config,
    )
    trainer.train()
    return trainer


def train_kto(
    base: Path, rows: list[Row], config: TuneConfig, out: Path, start_adapter: Path | None = None
) -> dict[str, Any]:
    model, peft_config = policy_start(base, start_adapter, config)
    trainer = _kto(base, model, rows, peft_config, config, out, config.kto_max_steps, config.kto_learning_rate)
    if writes(trainer):
        save_adapter(trainer, out / "adapter")
    return _result(trainer, rows=len(rows))


def train_prompt_tuning(base: Path, rows: list[Row], config: TuneConfig, out: Path) -> dict[str, Any]:
    """A soft prompt (PEFT prompt tuning) trained with KTO on the thumbs; vLLM serves it as prompt embeddings
    placed before the chat-templated prompt, exactly where PEFT put it in training."""
    peft_config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=config.prompt_tuning_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=config.prompt_tuning_init_text,
        tokenizer_name_or_path=str(base),
    )
    steps, lr = config.prompt_tuning_max_steps, config.prompt_tuning_learning_rate
    trainer = _kto(base, str(base), rows, peft_config, config, out, steps, lr)
    soft_prompt = trainer.model.get_prompt_embedding_to_save("default").detach().cpu().contiguous()
    if writes(trainer):
        trainer.model.save_pretrained(out / "adapter")
        torch.save(soft_prompt, out / "adapter" / "soft_prompt.pt")
    return _result(trainer, rows=len(rows), soft_prompt_shape=list(soft_prompt.shape))


def sft_rows(rows: list[Row], tokenizer: PreTrainedTokenizerBase) -> list[Row]:
    """Prompt/completion strings for the three sources, so TRL's completion-only loss trains the answers alone.

    Training on whole chat texts also taught the model to write the system prompt and the questions, and the
    SFT candidate of bench/learning.py then answered 10% fewer of its 62 known-answer questions than the base.
    Store rows and business pairs are chat-templated up to the assistant turn (the answer is what follows; TRL
    appends the end-of-turn token); a business document is all completion, since its text is what to learn.
    """
    out = []
    for row in rows:
        if "text" in row:
            out.append({"prompt": "", "completion": row["text"]})
            continue
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
            completion = [{"role": "assistant", "content": completion}]
        prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        out.append({"prompt": prefix, "completion": "".join(turn["content"] for turn in completion)})
    return out


def train_sft(
    base: Path, rows: list[Row], config: TuneConfig, out: Path, start_adapter: Path | None = None
) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise NotEnoughData("no corrections or approved answers in the training split, and no business data")
    tokenizer = load_tokenizer(base)
    steps = epoch_capped_steps(config.sft_max_steps, len(rows), config.sft_max_epochs, config)
    model, peft_config = policy_start(base, start_adapter, config)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            max_length=config.max_length,
            completion_only_loss=True,
            model_init_kwargs={"dtype": torch.float32},
            **trainer_args(config, out, steps, config.sft_learning_rate),
        ),
        train_dataset=Dataset.from_list(sft_rows(rows, tokenizer)),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    if writes(trainer):
        save_adapter(trainer, out / "adapter")
    return _result(trainer, rows=len(rows))


def finite(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log history with NaN/inf dropped, so the run record stays valid JSON."""
    return [
        {key: value for key, value in entry.items() if not (isinstance(value, float) and not math.isfinite(value))}
        for entry in history
    ]
