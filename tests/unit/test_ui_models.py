"""The admins' model pages through the real app and database: a version's gates, canary and transitions, and the
actions with their reason and confirmation (the registry's rules decide, as for the API)."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelTransition, ModelVersion, Role
from server.ui.controllers.models import offered_actions
from tests.unit.feedback_store import person
from tests.unit.ui_client import post_form, sign_in

GATES = [
    {"name": "win_rate_lc", "value": 0.62, "threshold": 0.5, "passed": True, "detail": "16 prompts", "bound": "min"},
    {"name": "kl_per_token", "value": 0.08, "threshold": 0.5, "passed": True, "detail": "nats", "bound": "max"},
]


async def a_gated_version(sessions: async_sessionmaker[AsyncSession], name: str) -> None:
    async with sessions.begin() as session:
        session.add(
            ModelVersion(
                name=name,
                kind="lora",
                base_model="/models/base",
                adapter_path=f"/models/{name}",
                status="gated",
                run_id="20261201-010000-abcd",
                method="kto",
                gate_results=GATES,
                gates_passed=True,
            )
        )


async def status_and_transitions(sessions: async_sessionmaker[AsyncSession], name: str) -> tuple[str, list[str]]:
    async with sessions() as session:
        version = await session.scalar(select(ModelVersion).where(ModelVersion.name == name))
        assert version is not None
        rows = await session.scalars(select(ModelTransition).where(ModelTransition.version_name == name))
        return version.status, [f"{row.to_status} by {row.actor}: {row.reason}" for row in rows]


async def test_a_version_page_shows_its_gates_and_offers_the_actions_its_status_allows(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    admin = await person(sessions, "admin-models", Role.ADMIN)
    await a_gated_version(sessions, "ratchet-kto-7")
    await sign_in(client, admin.token)

    listing = (await client.get("/ui/admin/models")).text
    assert '<a href="/ui/admin/models/ratchet-kto-7">' in listing
    page = (await client.get("/ui/admin/models/ratchet-kto-7")).text
    assert "Passed every gate." in page
    assert "win_rate_lc" in page and "0.620" in page and "≥ 0.500" in page and "≤ 0.500" in page
    assert "This version has not run a canary." in page
    assert 'action="/ui/admin/models/ratchet-kto-7/promote"' in page and "Start a canary" in page
    assert 'action="/ui/admin/models/ratchet-kto-7/retire"' in page
    assert "/rollback" not in page  # a gated version has nothing to roll back
    assert (await client.get("/ui/admin/models/no-such-version")).status_code == 404


async def test_an_action_without_its_reason_or_confirmation_is_a_400_and_changes_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    admin = await person(sessions, "admin-refused", Role.ADMIN)
    await a_gated_version(sessions, "ratchet-kto-8")
    await sign_in(client, admin.token)
    page = "/ui/admin/models/ratchet-kto-8"

    unconfirmed = await post_form(client, f"{page}/retire", {"reason": "not needed"}, page)
    no_reason = await post_form(client, f"{page}/retire", {"reason": " ", "confirm": "yes"}, page)
    no_such_action = await post_form(client, f"{page}/delete", {"reason": "x", "confirm": "yes"}, page)

    assert (unconfirmed.status_code, no_reason.status_code, no_such_action.status_code) == (400, 400, 400)
    assert "confirmation" in unconfirmed.text
    assert await status_and_transitions(sessions, "ratchet-kto-8") == ("gated", [])


async def test_a_confirmed_retirement_is_kept_with_its_reason_and_a_refused_one_says_why(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    admin = await person(sessions, "admin-retire", Role.ADMIN)
    await a_gated_version(sessions, "ratchet-kto-9")
    await sign_in(client, admin.token)
    page = "/ui/admin/models/ratchet-kto-9"

    retired = await post_form(client, f"{page}/retire", {"reason": "superseded by kto-10", "confirm": "yes"}, page)

    assert retired.status_code == 303 and retired.headers["location"] == f"{page}?done=retire"
    assert await status_and_transitions(sessions, "ratchet-kto-9") == (
        "retired",
        ["retired by admin:admin-retire: superseded by kto-10"],
    )
    after = (await client.get(retired.headers["location"])).text
    assert "Done: retire." in after and "superseded by kto-10" in after
    again = await post_form(client, f"{page}/rollback", {"reason": "undo", "confirm": "yes"}, page)
    assert again.status_code == 409 and "only a canary or an active version rolls back" in again.text


async def test_ops_read_the_models_api_but_may_not_act_from_the_pages(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    olivia = await person(sessions, "olivia-models", Role.OPS)
    await a_gated_version(sessions, "ratchet-kto-11")
    await sign_in(client, olivia.token)
    page = "/ui/admin/models/ratchet-kto-11"

    assert (await client.get(page)).status_code == 403
    refused = await post_form(client, f"{page}/retire", {"reason": "x", "confirm": "yes"}, "/ui/review/")

    assert refused.status_code == 403
    assert await status_and_transitions(sessions, "ratchet-kto-11") == ("gated", [])


def test_an_active_version_is_offered_a_rollback_only_when_it_replaced_one() -> None:
    assert offered_actions("active", replaced_one=False) == []
    assert offered_actions("active", replaced_one=True) == [("rollback", "Roll back to the version it replaced")]
    assert [action for action, _ in offered_actions("canary", replaced_one=False)] == ["promote", "rollback", "retire"]
