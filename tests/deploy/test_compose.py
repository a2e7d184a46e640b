"""The Compose files parse, name only files that exist, keep vLLM private, and pass compose-lint."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.layout import DEPLOY, REPO, compose, expand_exec, read_env_file, tool, unit_values

FILES = ["compose.yaml", "compose.replicas.yaml"]


def _services() -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for name in FILES:
        for service, spec in compose(name)["services"].items():
            merged.setdefault(service, {}).update(spec)
    return merged


@pytest.mark.parametrize("name", FILES)
def test_compose_file_names_only_files_that_exist(name: str) -> None:
    for service, spec in compose(name)["services"].items():
        build = spec.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), service
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), service
        for env_file in spec.get("env_file", []):
            assert (DEPLOY / env_file).is_file(), f"{service}: {env_file}"
        if "extends" in spec:
            assert (DEPLOY / spec["extends"]["file"]).is_file()
            assert spec["extends"]["service"] in compose(spec["extends"]["file"])["services"]


def test_services_use_only_declared_networks_volumes_and_services() -> None:
    base = compose()
    services = _services()
    for service, spec in services.items():
        assert set(spec.get("networks", [])) <= set(base["networks"]), service
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith("/") or source in base["volumes"], f"{service}: {volume}"
        assert set(spec.get("depends_on", {})) <= set(services), service


def test_every_variable_has_a_default_a_required_message_or_an_example() -> None:
    example = read_env_file(DEPLOY / ".env.example")
    documented = set(example) | {
        line.lstrip("# ").split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
    }
    for name in FILES:
        for variable, rest in re.findall(r"\$\{([A-Z0-9_]+)([^}]*)\}", (DEPLOY / name).read_text()):
            assert rest.startswith((":-", ":?")) or variable in documented, f"{name}: ${{{variable}}}"
            if rest.startswith(":?"):
                assert variable in example, f"{variable} is required but not in .env.example"


def test_vllm_and_its_adapter_routes_are_reachable_only_on_the_internal_network() -> None:
    base = compose()
    services = _services()
    assert base["networks"]["engine"] == {"internal": True}
    for name in ("vllm", "vllm-1"):
        spec = base["services"].get(name) or services[name]
        assert "ports" not in spec
    assert base["services"]["vllm"]["networks"] == ["engine"]
    assert base["services"]["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    on_engine = {name for name, spec in services.items() if "engine" in spec.get("networks", [])}
    assert on_engine == {"vllm", "app", "nightly", "router"}
    assert base["services"]["vllm"]["volumes"] == ["data:/data:ro"]


def test_long_running_services_have_health_checks_restart_policies_and_limits() -> None:
    for service, spec in compose()["services"].items():
        assert spec["deploy"]["resources"]["limits"], service
        assert "restart" in spec, service
        if spec["restart"] == "unless-stopped" and service != "app":  # the app's check is the image's HEALTHCHECK
            assert "healthcheck" in spec, service


def test_nightly_job_is_a_one_shot_started_by_the_host_timer() -> None:
    nightly = compose()["services"]["nightly"]
    assert nightly["restart"] == "no" and nightly["profiles"] == ["nightly"]
    assert nightly["command"] == ["tune", "nightly"]
    assert "data:/data" in nightly["volumes"]
    command = expand_exec(unit_values("ratchet-compose-nightly.service", "Service", "ExecStart")[0], {})
    assert command[1:] == ["compose", "--profile", "nightly", "run", "--rm", "nightly"]


def test_router_settings_agree_between_compose_and_systemd() -> None:
    router = compose("compose.replicas.yaml")["services"]["router"]["command"]
    unit = expand_exec(unit_values("ratchet-vllm-router.service", "Service", "ExecStart")[0], {})
    placement = ("--host", "--port", "--worker-urls", "--prometheus-host", "--prometheus-port")
    flags = {arg for arg in router if arg.startswith("--") and not arg.startswith(placement)}
    assert flags == {arg for arg in unit if arg.startswith("--") and not arg.startswith(placement)}
    workers = router[router.index("--worker-urls") + 1 : router.index("--worker-urls") + 3]
    assert workers == ["http://vllm:8000", "http://vllm-1:8000"]


def test_compose_lint_finds_nothing_high_or_critical() -> None:
    result = subprocess.run(
        [tool("compose-lint"), "--fail-on", "high", *[str(DEPLOY / name) for name in FILES]],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
