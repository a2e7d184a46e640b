"""Heavy: each exported file goes, unchanged, into the TRL trainer that consumes it, on the prepared SmolLM2,
and takes one optimisation step on CPU (a few minutes on 2 cores). The export itself is built from a store
seeded with realistic conversations (votes, corrections, a regeneration, a repeated question, personal data)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from trl.data_utils import is_conversational, maybe_apply_chat_template

from server.db.engine import open_sessions
from server.db.migrate import upgrade
from server.exports.services import ExportFilters, ExportService
from server.settings import Settings
from tests.conftest import PREPARED_MODEL
from tests.unit.feedback_store import seed_realistic_store

pytestmark = pytest.mark.trl

MODEL = str(PREPARED_MODEL)


def cpu_args(output_dir: Path) -> dict[str, object]:
    # TRL configs default to bf16 and gradient checkpointing; neither suits a 2-core CPU.
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": 2,
        "max_steps": 1,
        "learning_rate": 1e-6,
        "max_length": 128,
    }


def load(directory: Path, name: str) -> Dataset:
    dataset = load_dataset("json", data_files=str(directory / name), split="train")
    assert len(dataset) > 0 and is_conversational(dataset[0])
    return dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export from a seeded SQLite store. The file shapes do not depend on the backend (test_export_api pins
    the same content on SQLite and PostgreSQL), so the minute of training runs once, not per backend."""
    if not (PREPARED_MODEL / "config.json").exists():
        pytest.fail(f"no prepared model at {PREPARED_MODEL}: run `ratchet model prepare` (make test does)")
    directory = tmp_path_factory.mktemp("trl-export")
    url = f"sqlite+aiosqlite:///{directory / 'ratchet.db'}"
    upgrade(url)

    async def build() -> None:
        async with open_sessions(Settings(data_dir=directory, database_url=url)) as sessions:
            await seed_realistic_store(sessions)
            async with sessions() as session:
                export = await ExportService(session, max_pairs_per_prompt=8).build(ExportFilters())
        export.write(directory / "export")

    asyncio.run(build())
    return directory / "export"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(MODEL)


# Which trainer reads which exported file.
TRAINERS = {
    "kto": (KTOTrainer, KTOConfig, "kto.jsonl"),
    "reward": (RewardTrainer, RewardConfig, "preference.jsonl"),
    "dpo": (DPOTrainer, DPOConfig, "preference.jsonl"),
    "sft": (SFTTrainer, SFTConfig, "sft.jsonl"),
}


# One trainer per test, so each model is freed before the next is loaded.
@pytest.mark.parametrize("name", list(TRAINERS))
def test_exported_file_trains_one_step_with_the_trl_trainer_that_consumes_it(
    name: str, exported: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    trainer_class, config_class, file_name = TRAINERS[name]
    trainer = trainer_class(
        model=MODEL,
        args=config_class(**cpu_args(tmp_path / name)),
        train_dataset=load(exported, file_name),
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 1


def test_reward_triplets_render_through_trl_chat_templating_with_a_numeric_reward(
    exported: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    triplets = load(exported, "reward.jsonl")
    assert set(triplets.column_names) == {"prompt", "completion", "reward"}
    rendered = triplets.map(lambda row: maybe_apply_chat_template(row, tokenizer))
    for row, source in zip(rendered, triplets, strict=True):
        # The whole context is in the rendered prompt: system prompt first, the last user turn at the end.
        assert row["prompt"].startswith("<|im_start|>system\n" + source["prompt"][0]["content"])
        assert row["prompt"].rstrip().endswith("<|im_start|>assistant")
        assert source["completion"][0]["content"] in row["completion"]
        assert row["reward"] in (1.0, -1.0)
