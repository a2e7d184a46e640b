"""The tuning config: defaults, then a TOML file, then RATCHET_TUNE_* env vars; bad settings refused up front. And
the `accelerate launch` profiles for GPUs are configs accelerate accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuning.config import TuneConfig

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "tuning" / "accelerate"


def test_env_overrides_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "tuning.toml"
    path.write_text('methods = ["sft"]\nkto_max_steps = 7\nrl_beta = 0.1\n')
    config = TuneConfig.load(path, environ={"RATCHET_TUNE_KTO_MAX_STEPS": "9", "RATCHET_TUNE_METHODS": "kto, rl"})
    assert config.methods == ["kto", "rl"]
    assert config.kto_max_steps == 9
    assert config.rl_beta == 0.1
    assert config.sft_max_steps == TuneConfig().sft_max_steps


def test_config_file_is_found_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tuning.toml"
    path.write_text("min_new_rows = 3\n")
    assert TuneConfig.load(environ={"RATCHET_TUNE_CONFIG": str(path)}).min_new_rows == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('methods = ["ppo"]', "unknown tuning methods"),
        ("rl_num_iterations = 1", "num_iterations > 1"),
        ("rl_beta = 0.0", "rl_beta > 0"),
        ("batch_size = 1", "at least 2"),
        ("learning_rate = 1.0", "unknown tuning settings"),
    ],
)
def test_settings_that_would_train_the_wrong_thing_are_refused(tmp_path: Path, settings: str, message: str) -> None:
    path = tmp_path / "tuning.toml"
    path.write_text(settings + "\n")
    with pytest.raises(ValueError, match=message):
        TuneConfig.load(path, environ={})


@pytest.mark.parametrize(
    ("profile", "distributed_type"),
    [("single_gpu", "NO"), ("multi_gpu", "MULTI_GPU"), ("multi_gpu_zero2", "DEEPSPEED")],
)
def test_accelerate_profiles_are_valid_accelerate_configs(profile: str, distributed_type: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PROFILES / f"{profile}.yaml"))
    assert config.distributed_type.name == distributed_type
    assert config.num_machines == 1  # rank 0 writes the run directory the other ranks read: one host


def test_the_zero2_profile_points_at_a_stage_2_deepspeed_config_filled_from_the_trainer_arguments() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PROFILES / "multi_gpu_zero2.yaml"))
    # Relative to the repo root, where the docs say to launch from.
    deepspeed = json.loads((REPO / config.deepspeed_config["deepspeed_config_file"]).read_text())
    # Stage 2 keeps whole weights on every rank, so rank 0 can merge and save adapters without gathering shards.
    assert deepspeed["zero_optimization"]["stage"] == 2
    # "auto" lets the trainers' own settings (batch size, accumulation, bf16) decide, so config and DeepSpeed agree.
    assert deepspeed["train_micro_batch_size_per_gpu"] == "auto" and deepspeed["bf16"]["enabled"] == "auto"
