"""`ratchet rails …`: reload the serving policy, validate a config folder, measure the rails on the eval sets."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import click
import httpx
import numpy as np

from server.rails.base import Rails, RailsConfigError
from server.settings import get_settings


@click.group()
def rails() -> None:
    """The guardrails (NeMo Guardrails config in RATCHET_RAILS_CONFIG, default guardrails/)."""


def _admin_token(token: str | None) -> str:
    if token:
        return token
    path = get_settings().data_dir / "admin.token"
    if not path.exists():
        raise click.ClickException(f"no admin token: pass --token, set RATCHET_ADMIN_TOKEN or create {path}")
    return path.read_text().strip()


@rails.command("reload")
@click.option("--url", default=None, help="The running server; defaults to http://RATCHET_HOST:RATCHET_PORT.")
@click.option("--token", envvar="RATCHET_ADMIN_TOKEN", default=None, help="An admin API token.")
def reload(url: str | None, token: str | None) -> None:
    """Make the running server load its rails config again. A config that does not load is refused with the
    reason, and the server keeps serving the previous one (the same happens on SIGHUP)."""
    settings = get_settings()
    url = (url or f"http://{settings.host}:{settings.port}").rstrip("/")
    try:
        response = httpx.post(
            f"{url}/admin/rails/reload", headers={"authorization": f"Bearer {_admin_token(token)}"}, timeout=120
        )
    except httpx.HTTPError as error:
        raise click.ClickException(f"cannot reach the server at {url}: {type(error).__name__}") from error
    body = response.json()
    if response.status_code != 200:
        raise click.ClickException(str(body.get("detail", body)))
    click.echo(f"rails {body['version']} serving from {body['config']} (was {body['previous']})")


def _load(path: Path) -> Rails:
    # Imported here: the other commands should not pay for loading torch and NeMo.
    from server.rails.registry import load_rails

    try:
        return load_rails(path, get_settings().data_dir)
    except RailsConfigError as error:
        raise click.ClickException(str(error)) from error


@rails.command("check")
@click.argument("path", type=click.Path(path_type=Path), required=False)
def check(path: Path | None) -> None:
    """Validate a rails config folder (default RATCHET_RAILS_CONFIG) without touching the server. Fits the jailbreak
    classifier into the data dir when its training texts changed, so the server's next load does not have to."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loaded = _load(path or get_settings().rails_config)
    click.echo(f"ok: {loaded.version}")
    asyncio.run(loaded.aclose())


@rails.command("eval")
@click.option("--config", "config_dir", type=click.Path(path_type=Path), default=None, help="Rails config folder.")
@click.option("--sets", type=click.Path(path_type=Path), default=None, help="Folder of attacks/benign.jsonl.")
@click.option("--split", "splits", multiple=True, help="Only this split (repeatable), e.g. --split dev --split dev2.")
@click.option(
    "--show-misses", is_flag=True, help="List attacks let through and benign prompts refused (development splits)."
)
def evaluate_command(config_dir: Path | None, sets: Path | None, splits: tuple[str, ...], show_misses: bool) -> None:
    """Block rate on the attack set (target ≥ 0.95) and false-positive rate on the benign set (target ≤ 0.02),
    per split: dev and dev2 (used while writing the rules), heldout and external (never used for tuning: run them
    rarely, and never look at their texts)."""
    from server.rails.evaluation import TEST_SPLITS, EvalReport, evaluate

    config_dir = config_dir or get_settings().rails_config
    loaded = _load(config_dir)
    started = time.perf_counter()

    async def run() -> EvalReport:
        try:
            return await evaluate(loaded, sets or config_dir / "eval", splits or None)
        finally:
            await loaded.aclose()

    report = asyncio.run(run())
    for line in report.lines():
        click.echo(line)
    prompts = sum(score.total for score in (*report.attacks.values(), *report.benign.values()))
    click.echo(f"input_rails_ms_mean {(time.perf_counter() - started) * 1000 / max(prompts, 1):.1f}")
    if show_misses:
        # Only development splits: looking at held-out misses would turn them into tuning data.
        for kind, scores in (("missed attack", report.attacks), ("refused benign", report.benign)):
            for split in sorted(set(scores) - TEST_SPLITS):
                for text in scores[split].misses:
                    click.echo(f"{kind} ({split}): {text[:160]!r}")


@rails.command("profile")
@click.option("--config", "config_dir", type=click.Path(path_type=Path), default=None, help="Rails config folder.")
@click.option("--rounds", default=5, show_default=True, help="Passes over the short questions.")
def profile_command(config_dir: Path | None, rounds: int) -> None:
    """Time of each rail on short chat messages (the development splits' benign questions, each made unique so no
    embedding is cached) and a short answer, called through the same interface as the chat path: p50 and p95 per rail
    and for the whole input and output check, in milliseconds. No vLLM needed."""
    from server.rails.evaluation import TEST_SPLITS, load_set

    config_dir = config_dir or get_settings().rails_config
    loaded = _load(config_dir)
    questions = [
        row["text"]
        for row in load_set(config_dir / "eval" / "benign.jsonl")
        if len(row["text"]) < 200 and row["split"] not in TEST_SPLITS
    ]
    answer = "Open Settings, choose Reset token and follow the prompts; if that fails, contact the helpdesk."

    async def run() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        try:
            for number in range(rounds * len(questions)):
                messages = [{"role": "user", "content": f"{questions[number % len(questions)]} ({number})"}]
                for name, check in (
                    ("input", loaded.check_input(messages)),
                    ("output", loaded.check_output(messages, f"{answer} ({number})")),
                ):
                    started = time.perf_counter()
                    result = await check
                    times.setdefault(f"{name} total", []).append((time.perf_counter() - started) * 1000)
                    for verdict in result.verdicts:
                        times.setdefault(f"{verdict.direction} {verdict.rail}", []).append(verdict.duration_ms)
        finally:
            await loaded.aclose()
        return times

    for name, values in asyncio.run(run()).items():
        p50, p95 = np.percentile(values, [50, 95], method="nearest")
        click.echo(f"rail_ms[{name}] p50 {p50:.2f} p95 {p95:.2f}")
