"""`ratchet models list|show|promote|rollback|pin|unpin|retire`: the registry from the command line, acting on the
same database and vLLM as the app (a running app picks the change up within RATCHET_MODEL_SYNC_INTERVAL_S)."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

from server.db.engine import open_sessions
from server.engine.client import EngineClient
from server.engine.launcher import serves_lora_merged
from server.exceptions import RatchetError
from server.models.lifecycle import ModelLifecycle
from server.models.loading import AdapterLoader
from server.models.merged_serving import MergedVersions
from server.models.registry import ModelRegistry
from server.settings import get_settings

T = TypeVar("T")


@asynccontextmanager
async def _services() -> AsyncIterator[tuple[ModelRegistry, ModelLifecycle]]:
    settings = get_settings()
    engine = EngineClient(settings.engine_url, settings.vllm_request_timeout_s)
    # Served merged, the CLI merges a version on its way in; the running app starts its engine (a process of its own).
    merged = MergedVersions(settings, fleet=None) if serves_lora_merged(settings) else None
    try:
        async with open_sessions(settings) as sessions:
            loader = AdapterLoader([engine], merged=merged)
            yield ModelRegistry(sessions, settings), ModelLifecycle(sessions, settings, loader)
    finally:
        await engine.close()


def _run(work: Callable[[ModelRegistry, ModelLifecycle], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _services() as (registry, lifecycle):
            return await work(registry, lifecycle)

    try:
        return asyncio.run(main())
    except RatchetError as error:
        raise click.ClickException(str(error)) from None


def _actor(by: str | None) -> str:
    return f"admin:{by or getpass.getuser()}"


def _show(name: str) -> None:
    detail = _run(lambda registry, _: registry.describe(name))
    click.echo(msgspec.json.format(msgspec.json.encode(detail)).decode())


reason_option = click.option("--reason", required=True, help="Why; kept with the transition.")
by_option = click.option("--by", default=None, help="The admin's name in the log (default: the login name).")


@click.group()
def models() -> None:
    """Model versions: list, show, promote, roll back, pin, retire."""


@models.command("list")
def list_versions() -> None:
    """Aliases and every version, newest first."""
    overview = _run(lambda registry, _: registry.overview())
    console = Console()
    aliases = Table("alias", "active", "canary", "share", "previous")
    for alias in overview.aliases:
        share = f"{alias.canary_fraction:.0%}" if alias.canary_version else ""
        aliases.add_row(alias.alias, alias.version, alias.canary_version or "", share, alias.previous_version or "")
    console.print(aliases)
    versions = Table("version", "kind", "status", "method", "run", "parent", "created")
    for version in overview.versions:
        versions.add_row(
            version.name,
            version.kind,
            version.status,
            version.method,
            version.run_id or "",
            version.parent or "",
            f"{version.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(versions)


@models.command("show")
@click.argument("name")
def show(name: str) -> None:
    """One version as JSON: lineage, hashes, metrics, gate results, transitions, pins, canary figures."""
    _show(name)


def _act(name: str, action: Callable[[ModelLifecycle], Awaitable[Any]]) -> None:
    _run(lambda _, lifecycle: action(lifecycle))
    _show(name)


@models.command("promote")
@click.argument("name")
@reason_option
@click.option("--alias", default=None, help="For a gated version: the alias whose canary it becomes.")
@by_option
def promote(name: str, reason: str, alias: str | None, by: str | None) -> None:
    """Gated → canary (loaded into vLLM first), or canary → active."""
    _act(name, lambda lifecycle: lifecycle.promote(name, _actor(by), reason, alias=alias))


@models.command("rollback")
@click.argument("name")
@reason_option
@by_option
def rollback(name: str, reason: str, by: str | None) -> None:
    """Stop a canary, or hand an active version's alias back to the version it replaced."""
    _act(name, lambda lifecycle: lifecycle.rollback(name, _actor(by), reason))


@models.command("retire")
@click.argument("name")
@reason_option
@by_option
def retire(name: str, reason: str, by: str | None) -> None:
    """Set a gated version or a canary aside."""
    _act(name, lambda lifecycle: lifecycle.retire(name, _actor(by), reason))


users_option = click.option("--user", "users", multiple=True, required=True, help="A user's name (repeatable).")
alias_option = click.option("--alias", default=None, help="The alias (default: RATCHET_DEFAULT_MODEL_ALIAS).")


@models.command("pin")
@click.argument("name")
@users_option
@reason_option
@alias_option
@by_option
def pin(name: str, users: tuple[str, ...], reason: str, alias: str | None, by: str | None) -> None:
    """These users get this version whenever they ask for the alias."""
    _act(name, lambda lifecycle: lifecycle.pin(name, users, _actor(by), reason, alias=alias))


@models.command("unpin")
@click.argument("name")
@users_option
@reason_option
@alias_option
@by_option
def unpin(name: str, users: tuple[str, ...], reason: str, alias: str | None, by: str | None) -> None:
    """Remove these users' pin to this version."""
    _act(name, lambda lifecycle: lifecycle.unpin(name, users, _actor(by), reason, alias=alias))
