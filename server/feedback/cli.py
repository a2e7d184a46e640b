"""`ratchet data delete-user`: a user's data deleted from the shell, as `DELETE /api/users/{id}/data` does."""

from __future__ import annotations

import asyncio

import click

from server.db.engine import open_sessions
from server.feedback.schemas import DeletedData
from server.feedback.services import UserDataService, UserNotFoundError
from server.settings import Settings, get_settings


async def _delete(settings: Settings, name: str) -> DeletedData:
    async with open_sessions(settings) as sessions, sessions() as session:
        return await UserDataService(session).delete_named_user_data(name)


@click.command("delete-user")
@click.argument("name")
@click.confirmation_option(prompt="Delete all of this user's conversations, votes and what derives from them?")
def delete_user(name: str) -> None:
    """Delete a user's conversations, votes and everything derived from them (the account stays)."""
    try:
        deleted = asyncio.run(_delete(get_settings(), name))
    except UserNotFoundError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"deleted {deleted.conversations} conversations, {deleted.messages} messages, {deleted.votes} votes, "
        f"{deleted.vote_history} vote changes, {deleted.review_flags} flags, {deleted.review_decisions} decisions"
    )
