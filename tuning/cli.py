"""`ratchet tune …` and `python -m tuning …`: the nightly job's commands. Each runs in its own process; on
several GPUs, `accelerate launch --config_file tuning/accelerate/<profile>.yaml -m tuning nightly`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from tuning.config import TuneConfig

console = Console(stderr=True)
# Exit codes a scheduler can tell apart: 0 trained or skipped, 1 failed, 75 (EX_TEMPFAIL) another run holds the
# lock, 3 an unfinished run waits for resume or abandon.
EXIT_BUSY, EXIT_UNFINISHED = 75, 3


def _nightly(config_path: Path | None):  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from server.settings import get_settings
    from tuning.nightly import Nightly, limit_resources

    config = TuneConfig.load(config_path)
    limit_resources(config)
    return Nightly(get_settings(), config, console)


def _run(action: str, config_path: Path | None) -> None:
    from tuning.nightly import TuningBusy, UnfinishedRun

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


@tune.command("settings")
def settings() -> None:
    """Every tuning setting with its env var and default."""
    for env, default in TuneConfig.field_docs():
        click.echo(f"{env}={default}")
