"""Where deploy/ keeps what, and how its files are read, for the deploy tests and bench/replicas.py."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
ENV_DIR = DEPLOY / "env"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(path for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").exists())
# Where the units expect the install; tests map it onto this checkout's virtualenv.
INSTALLED_BIN = "/opt/ratchet/.venv/bin/"
# Settings the issues that build them read; deploy/ sets them already so that they plug in (deploy/README.md).
PENDING_SETTINGS = {
    "RATCHET_REDIS_URL": "issue 11 (rate limits) and 15 (Slack de-duplication) across app replicas",
    "RATCHET_SLACK_BOT_TOKEN": "issue 15",
    "RATCHET_SLACK_SIGNING_SECRET": "issue 15",
    "RATCHET_VLLM_REPLICA_URLS": "issue 13 (the registry's reconciler)",
    "RATCHET_VLLM_REPLICAS_DNS": "issue 13 (the registry's reconciler)",
}


def tool(name: str) -> str:
    """A command-line tool of the dev extra, from this virtualenv first."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is missing: pip install -e '.[dev]'")
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as systemd's EnvironmentFile= and Compose's env_file read this repo's files."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def unit_values(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps the last: read the file)."""
    values, current = [], ""
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """An Exec*= line as systemd runs it: ${NAME} is one word, $NAME splits on whitespace."""
    argv: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda match: env.get(match.group(1), ""), word))
    return argv


def local_command(argv: list[str]) -> list[str]:
    """An installed path (/opt/ratchet/.venv/bin/x) mapped onto this virtualenv's bin directory."""
    if argv and argv[0].startswith(INSTALLED_BIN):
        return [str(Path(sys.executable).parent / argv[0].removeprefix(INSTALLED_BIN)), *argv[1:]]
    return argv


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def dockerfile_command(path: Path = DEPLOY / "Dockerfile") -> list[str]:
    """The final stage's ENTRYPOINT + CMD (exec form), i.e. what `docker run IMAGE` runs."""
    entrypoint: list[str] = []
    command: list[str] = []
    for instruction in _instructions(path):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "FROM":
            entrypoint, command = [], []
        elif keyword.upper() == "ENTRYPOINT":
            entrypoint = yaml.safe_load(rest)
        elif keyword.upper() == "CMD":
            command = yaml.safe_load(rest)
    return [*entrypoint, *command]


def _instructions(path: Path) -> list[str]:
    joined = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
