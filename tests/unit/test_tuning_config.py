"""The tuning config: defaults, then a TOML file, then RATCHET_TUNE_* env vars; bad settings refused up front. And
the `accelerate launch` profiles for GPUs are configs accelerate accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuning.config import TuneConfig

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "tuning" / "accelerate"


def test_env_overrides_file_which_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tuning.toml"
    path.write_text('methods = ["sft"]\nkto_max_steps = 7\nrl_beta = 0.1\n')
    monkeypatch.setenv("RATCHET_TUNE_KTO_MAX_STEPS", "9")
    monkeypatch.setenv("RATCHET_TUNE_METHODS", "kto, rl")
    config = TuneConfig.load(path)
    assert config.methods == ["kto", "rl"]
    assert config.kto_max_steps == 9
    assert config.rl_beta == 0.1
    assert config.sft_max_steps == TuneConfig.model_fields["sft_max_steps"].default


def test_config_file_is_found_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tuning.toml"
    path.write_text("min_new_rows = 3\n")
    monkeypatch.setenv("RATCHET_TUNE_CONFIG", str(path))
    assert TuneConfig.load().min_new_rows == 3


def test_values_given_in_code_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A resumed run rebuilds the config it started with from its record; the environment of today must not leak in.
    monkeypatch.setenv("RATCHET_TUNE_KTO_MAX_STEPS", "9")
    recorded = TuneConfig(kto_max_steps=3).to_dict()
    assert TuneConfig(**recorded).kto_max_steps == 3


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such tuning config file"):
        TuneConfig.load(tmp_path / "absent.toml")


def test_tune_settings_lists_every_setting_with_its_env_var_default_and_current_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from tuning.cli import tune

    monkeypatch.setenv("RATCHET_TUNE_KTO_MAX_STEPS", "9")
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    table = CliRunner().invoke(tune, ["settings"])
    assert table.exit_code == 0, table.output
    for name in TuneConfig.model_fields:
        assert f"RATCHET_TUNE_{name.upper()}" in table.output
    kto_row = next(line for line in table.output.splitlines() if "RATCHET_TUNE_KTO_MAX_STEPS" in line)
    assert [cell.strip() for cell in kto_row.split("│")][2:4] == ["20", "9"]

    markdown = CliRunner().invoke(tune, ["settings", "--markdown"])
    rows = [line for line in markdown.output.splitlines() if line.startswith("| `RATCHET_TUNE_")]
    assert len(rows) == len(TuneConfig.model_fields) + 1  # and RATCHET_TUNE_CONFIG, the file
    assert "| `RATCHET_TUNE_METHODS` | `kto,rl` |" in markdown.output


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
        TuneConfig.load(path)


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
