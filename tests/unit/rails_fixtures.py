"""Shared helpers for the rails tests: the real NeMo rails on a copy of guardrails/ that a test may edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

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
