"""The tuning config: defaults, then a TOML file, then RATCHET_TUNE_* env vars; bad settings refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.config import TuneConfig


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
