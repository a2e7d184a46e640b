"""The Dockerfiles pass hadolint, and the app image runs exactly the command the tests and the units start."""

from __future__ import annotations

import inspect
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests import live_server
from tests.deploy.layout import DEPLOY, REPO, compose, dockerfile_command, expand_exec, tool, unit_values

SERVE = ["ratchet", "serve"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "router.Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = subprocess.run([tool("hadolint"), str(DEPLOY / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_image_runs_ratchet_serve_like_the_tests_and_the_systemd_unit() -> None:
    assert dockerfile_command() == SERVE
    exec_start = expand_exec(unit_values("ratchet.service", "Service", "ExecStart")[0], {})
    assert [Path(exec_start[0]).name, *exec_start[1:]] == SERVE
    # `ratchet` is server.cli:main, which the test harness runs as `python -m server.cli serve`.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ratchet"] == "server.cli:main"
    assert '"-m", "server.cli", "serve"' in inspect.getsource(live_server.start_server)


def test_compose_and_kubernetes_keep_the_image_command() -> None:
    app = compose()["services"]["app"]
    assert "command" not in app and "entrypoint" not in app
    assert app["build"]["dockerfile"] == "deploy/Dockerfile"
    app_manifest = (DEPLOY / "k8s" / "base" / "app.yaml").read_text()
    container = app_manifest.split("      containers:\n", 1)[1].split("\n---", 1)[0]
    assert "command:" not in container and "args:" not in container


def test_image_runs_as_a_fixed_non_root_user_with_a_health_check() -> None:
    final_stage = (DEPLOY / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    assert "\nUSER 10001:10001" in final_stage
    assert "\nHEALTHCHECK " in final_stage
    assert "/healthz" in final_stage
