"""The settings files read the same under systemd, Compose and the tests, and name only real settings."""

from __future__ import annotations

import re

import pytest

from server.settings import Settings
from tests.deploy.layout import ENV_DIR, K8S, PENDING_SETTINGS, read_env_file

ENV_FILES = [*sorted(ENV_DIR.glob("*.env*")), K8S / "base" / "ratchet.env"]
# systemd and Compose agree only on plain lines: no quotes, no spaces around `=`, no `export`.
PLAIN_LINE = re.compile(r"[A-Z_][A-Z0-9_]*=[^\"'\s]*( [^\"'\s]+)*")


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda path: str(path.relative_to(K8S.parent)))
def test_env_file_has_only_plain_key_value_lines(path) -> None:  # type: ignore[no-untyped-def]
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert PLAIN_LINE.fullmatch(line), f"{path.name}:{number}: {line!r}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda path: str(path.relative_to(K8S.parent)))
def test_every_ratchet_variable_is_a_setting(path) -> None:  # type: ignore[no-untyped-def]
    known = {f"RATCHET_{name.upper()}" for name in Settings.model_fields} | set(PENDING_SETTINGS)
    unknown = {key for key in read_env_file(path) if key.startswith("RATCHET_")} - known
    assert not unknown


def test_secrets_stay_out_of_the_settings_file() -> None:
    settings = read_env_file(ENV_DIR / "ratchet.env")
    assert not {key for key in settings if re.search(r"DATABASE_URL|REDIS_URL|TOKEN$|SECRET", key)}


def test_kubernetes_and_bare_metal_settings_name_the_same_keys() -> None:
    assert set(read_env_file(K8S / "base" / "ratchet.env")) == set(read_env_file(ENV_DIR / "ratchet.env"))
