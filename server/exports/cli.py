"""`ratchet data export`: the training data as files (`ratchet data delete-user` is the feedback domain's)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from server.db.engine import open_sessions
from server.exports.services import ExportFilters, ExportService, TrainingExport
from server.settings import Settings, get_settings

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@click.group()
def data() -> None:
    """Training data exports and users' data."""


async def _export(settings: Settings, filters: ExportFilters) -> TrainingExport:
    async with open_sessions(settings) as sessions, sessions() as session:
        return await ExportService(session, settings.export_max_pairs_per_prompt).build(filters)


@data.command("export")
@click.option(
    "--since", type=click.DateTime(DATE_FORMATS), help="Answers whose feedback last changed at or after this (UTC)."
)
@click.option(
    "--until", type=click.DateTime(DATE_FORMATS), help="Answers whose feedback last changed before this (UTC)."
)
@click.option("--model-version", default=None, help="Only answers of this concrete model version.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def export(since: datetime | None, until: datetime | None, model_version: str | None, out_dir: Path) -> None:
    """Write reward/KTO/preference/SFT JSONL files (TRL's conversational format) and manifest.json to OUT."""
    filters = ExportFilters(_utc(since), _utc(until), model_version)
    if filters.since and filters.until and filters.since >= filters.until:
        raise click.BadParameter("--since must be before --until")
    result = asyncio.run(_export(get_settings(), filters))
    result.write(out_dir)
    for name, info in result.manifest["files"].items():
        click.echo(f"{out_dir / name}: {info['rows']} rows")
    removed = ", ".join(f"{key} {count}" for key, count in result.manifest["removed"].items() if count)
    click.echo(f"removed by filters: {removed or 'none'}")
    click.echo(f"content hash {result.content_hash}")
