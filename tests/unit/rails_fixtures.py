"""Shared helpers for the rails tests: the real NeMo rails on a copy of guardrails/ that a test may edit, and data
dirs that already hold the jailbreak classifier fitted on the shipped library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from server.rails.classifier import CACHE_FILE

REPO_RAILS = Path(__file__).resolve().parents[2] / "guardrails"


def copy_rails(target: Path) -> Path:
    """A private copy of the shipped rails config (without the eval sets)."""
    shutil.copytree(REPO_RAILS, target, ignore=shutil.ignore_patterns("eval", "__pycache__"))
    return target


def set_knob(config_dir: Path, section: str, key: str, value: object) -> None:
    """Change one `custom_data.ratchet.<section>.<key>` knob in a copied config.yml."""
    path = config_dir / "config.yml"
    config = yaml.safe_load(path.read_text())
    config["custom_data"]["ratchet"][section][key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def set_classifier_knob(config_dir: Path, key: str, value: object) -> None:
    """Change one `custom_data.ratchet.jailbreak.classifier.<key>` knob in a copied config.yml."""
    path = config_dir / "config.yml"
    config = yaml.safe_load(path.read_text())
    config["custom_data"]["ratchet"]["jailbreak"]["classifier"][key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def add_jailbreak_pattern(config_dir: Path, name: str, regex: str) -> None:
    """Append a pattern to a copied patterns file, the way an admin would (the patterns list ends the file)."""
    with (config_dir / "patterns" / "jailbreak.yml").open("a") as patterns:
        patterns.write(f"    - name: {json.dumps(name)}\n      regex: [{json.dumps(regex)}]\n")


def seed_classifier(fitted_data_dir: Path, data_dir: Path) -> None:
    """Copy the fitted jailbreak classifier of `fitted_data_dir` (if it has one) into a fresh data dir, so rails
    loaded there read it instead of spending a minute or two fitting it again."""
    source = fitted_data_dir / CACHE_FILE
    if source.is_file():
        (data_dir / CACHE_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, data_dir / CACHE_FILE)
