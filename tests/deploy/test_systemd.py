"""The systemd units pass `systemd-analyze verify`, in a scratch root where the installed paths exist."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.layout import SYSTEMD, expand_exec, unit_values

UNITS = sorted(path.name for path in SYSTEMD.iterdir() if path.suffix in {".service", ".timer"})
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes")


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A filesystem root holding the system's own units, ours, and an executable at every path our units name."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine (apt-get install systemd)")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, installed / name)
        for key in ("ExecStart", "ExecStartPre", "ExecReload"):
            for line in unit_values(name, "Service", key):
                executable = root / expand_exec(line, {})[0].lstrip("/")
                executable.parent.mkdir(parents=True, exist_ok=True)
                executable.write_text("#!/bin/sh\n")
                executable.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit_root: Path, unit: str) -> None:
    name = unit.replace("@.service", "@0.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unit_root}", "--man=no", name], capture_output=True, text=True
    )
    # verify exits 0 on unknown keys and other warnings: any output at all is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", [name for name in UNITS if name.endswith(".service") and "compose" not in name])
def test_service_runs_unprivileged_and_hardened(unit: str) -> None:
    text = (SYSTEMD / unit).read_text()
    assert "User=ratchet" in text
    for option in HARDENING:
        assert option in text.splitlines(), f"{unit} lacks {option}"
    assert "CapabilityBoundingSet=\n" in text


def test_every_timer_starts_a_oneshot_service() -> None:
    for timer in (name for name in UNITS if name.endswith(".timer")):
        service = unit_values(timer, "Timer", "Unit")[0]
        assert unit_values(service, "Service", "Type") == ["oneshot"]
        assert unit_values(timer, "Timer", "Persistent") == ["true"]
