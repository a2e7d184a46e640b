"""`ratchet tune …` and `python -m tuning …`: the nightly job's commands. Each runs in its own process; on
several GPUs, `accelerate launch --config_file tuning/accelerate/<profile>.yaml -m tuning nightly`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tuning.config import CONFIG_FILE_ENV, ENV_PREFIX, TuneConfig

console = Console(stderr=True)
# Exit codes a scheduler can tell apart: 0 trained or skipped, 1 failed, 75 (EX_TEMPFAIL) another run holds the
# lock, 3 an unfinished run waits for resume or abandon.
EXIT_BUSY, EXIT_UNFINISHED = 75, 3


def _nightly(config_path: Path | None):  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from server.settings import get_settings
    from tuning.nightly import Nightly
    from tuning.runs import limit_resources

    config = _config(config_path)
    limit_resources(config)
    return Nightly(get_settings(), config, console)


def _config(config_path: Path | None) -> TuneConfig:
    try:
        return TuneConfig.load(config_path)
    except ValueError as error:
        raise click.ClickException(str(error)) from error


def _run(action: str, config_path: Path | None) -> None:
    from tuning.runs import TuningBusy, UnfinishedRun

    job = _nightly(config_path)
    if action == "abandon" and not job.ranks.is_main:
        return  # nothing to train: rank 0 alone marks the run abandoned
    try:
        run = getattr(job, action)()
    except TuningBusy as error:
        console.print(f"[yellow]{error}[/]")
        sys.exit(EXIT_BUSY)
    except UnfinishedRun as error:
        console.print(f"[yellow]{error}[/]")
        sys.exit(EXIT_UNFINISHED)
    if not job.ranks.is_main:
        return  # under `accelerate launch`, rank 0 says how the run went
    report = run.record.get("report")
    click.echo(f"{run.run_id} {run.record['status']}: {run.record.get('message', '')}")
    if report:
        click.echo(f"report: {report}")


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of tuning settings (default: $RATCHET_TUNE_CONFIG); RATCHET_TUNE_<NAME> env vars override it.",
)


@click.group()
def tune() -> None:
    """The nightly tuning job: reward model and policy updates from the feedback store."""


@tune.command("nightly")
@config_option
def nightly(config_path: Path | None) -> None:
    """Train on the feedback stored since the last successful run (skips when there is too little)."""
    _run("nightly", config_path)


@tune.command("resume")
@config_option
def resume(config_path: Path | None) -> None:
    """Continue the last unfinished (killed or failed) run from its last finished stage."""
    _run("resume", config_path)


@tune.command("abandon")
@config_option
def abandon(config_path: Path | None) -> None:
    """Give up the last unfinished run; its data window is picked up by the next nightly run."""
    _run("abandon", config_path)


def _shown(value: object) -> str:
    if isinstance(value, list):
        value = ",".join(map(str, value))  # the form the env var takes
    return "(empty)" if value is None or value == "" else str(value)


@tune.command("settings")
@config_option
@click.option("--markdown", is_flag=True, help="Print docs/tuning.md's settings table.")
def settings(config_path: Path | None, markdown: bool) -> None:
    """Every tuning setting, its env var, default and current value (from --config and the environment)."""
    file_row = (CONFIG_FILE_ENV, "(empty)", "TOML file of these settings (the env vars below override it).")
    rows = [
        (f"{ENV_PREFIX}{name.upper()}", _shown(field.get_default(call_default_factory=True)), field.description or "")
        for name, field in TuneConfig.model_fields.items()
    ]
    if markdown:
        click.echo("| env var | default | what it does |\n|---|---|---|")
        for env, default, doc in [file_row, *rows]:
            shown = default if default == "(empty)" else f"`{default}`"
            click.echo(f"| `{env}` | {shown} | {doc} |")
        return
    current = _config(config_path).model_dump()
    table = Table("env var", "default", "current", "what it does")
    table.add_row(*file_row[:2], _shown(config_path or os.environ.get(CONFIG_FILE_ENV)), file_row[2])
    for (env, default, doc), value in zip(rows, current.values(), strict=True):
        table.add_row(env, default, _shown(value), doc)
    Console().print(table)
