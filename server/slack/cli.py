"""`ratchet slack …`: tie a Slack user to an existing Ratchet account."""

from __future__ import annotations

import asyncio

import click

from server.auth.services import Principal
from server.db.engine import open_sessions
from server.exceptions import NotFoundError
from server.settings import Settings, get_settings
from server.slack.store import SlackStore


@click.group()
def slack() -> None:
    """The Slack bot."""


async def _link(settings: Settings, team_id: str, slack_user_id: str, user_name: str) -> Principal:
    async with open_sessions(settings) as sessions:
        return await SlackStore(sessions).link(team_id, slack_user_id, user_name)


@slack.command("link")
@click.argument("team_id")
@click.argument("slack_user_id")
@click.argument("user_name")
def slack_link(team_id: str, slack_user_id: str, user_name: str) -> None:
    """From now on, SLACK_USER_ID of workspace TEAM_ID chats and votes as the existing user USER_NAME."""
    try:
        principal = asyncio.run(_link(get_settings(), team_id, slack_user_id, user_name))
    except NotFoundError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{team_id}/{slack_user_id} is now {principal.name} ({principal.role})")
