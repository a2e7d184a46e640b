"""The web UI's doors: sessions, sign-out, CSRF, roles on every page and action, security headers."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.db.models import Conversation, ReviewDecision, Role
from server.settings import Settings
from server.ui.controllers.session import safe_next
from server.ui.security import CONTENT_SECURITY_POLICY, SESSION_COOKIE, ui_secret
from tests.unit.feedback_store import exchange, person
from tests.unit.ui_client import form_token, post_form, sign_in

USER_FORBIDDEN_PAGES = ["/ui/review/", "/ui/admin/", "/ui/admin/models", "/ui/admin/runs", "/ui/admin/runs/nightly-1"]


async def test_signed_out_page_views_go_to_the_sign_in_page(client: AsyncTestClient) -> None:
    response = await client.get("/ui/chat/", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fchat"
    assert (await client.get("/", follow_redirects=False)).headers["location"] == "/ui/chat"


async def test_signing_in_exchanges_the_token_for_an_httponly_samesite_session_cookie(
    client: AsyncTestClient, user_token: str
) -> None:
    response = await sign_in(client, user_token)
    cookie = next(value for value in response.headers.get_list("set-cookie") if value.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert user_token not in cookie
    page = await client.get("/ui/chat/")
    assert page.status_code == 200
    assert "Sign out" in page.text


async def test_a_wrong_token_is_refused_with_no_session(client: AsyncTestClient) -> None:
    response = await client.post(
        "/ui/login", data={"_csrf_token": await form_token(client), "token": "rt_wrong", "next": "/ui/chat/"}
    )
    assert response.status_code == 401
    assert "not valid" in response.text
    assert not any(value.startswith(SESSION_COOKIE) for value in response.headers.get_list("set-cookie"))


async def test_signing_out_revokes_the_session_so_a_copied_cookie_stops_working(
    client: AsyncTestClient, user_token: str
) -> None:
    await sign_in(client, user_token)
    copied = client.cookies.get(SESSION_COOKIE)
    assert (await post_form(client, "/ui/logout", {})).headers["location"] == "/ui/login"
    client.cookies.set(SESSION_COOKIE, copied)
    response = await client.get("/ui/chat/", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"].startswith("/ui/login")


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-csrf")
    turn = await exchange(sessions, alice, "What is a mutex?", "A lock.")
    await sign_in(client, alice.token)
    forged = await client.post(f"/ui/chat/{turn.conversation_id}/rename", data={"title": "pwned"})
    assert forged.status_code == 403
    wrong = await client.post(
        f"/ui/chat/{turn.conversation_id}/rename", data={"title": "pwned", "_csrf_token": "0" * 128}
    )
    assert wrong.status_code == 403
    async with sessions() as session:
        assert (await session.get(Conversation, turn.conversation_id)).title == "What is a mutex?"


async def test_the_bearer_token_api_needs_no_csrf_token(client: AsyncTestClient, user_token: str) -> None:
    await sign_in(client, user_token)
    response = await client.put(
        f"/api/messages/{uuid.uuid4()}/feedback",
        json={"value": "up"},
        headers={"authorization": f"Bearer {user_token}"},
    )
    assert response.status_code == 404  # reached the handler: not refused by CSRF
    assert (await client.get("/api/conversations")).status_code == 401  # the session cookie is not an API key


@pytest.mark.parametrize("path", USER_FORBIDDEN_PAGES)
async def test_a_user_gets_403_on_review_and_admin_pages(client: AsyncTestClient, user_token: str, path: str) -> None:
    await sign_in(client, user_token)
    response = await client.get(path)
    assert response.status_code == 403
    assert "Not allowed" in response.text


async def test_a_users_forged_review_decision_is_403_and_records_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-forger")
    turn = await exchange(sessions, alice, "Q", "A")
    await sign_in(client, alice.token)
    response = await post_form(client, f"/ui/review/{turn.answer_id}/decide", {"decision": "approve"})
    assert response.status_code == 403
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ReviewDecision)) == 0


async def test_ops_open_the_review_desk_but_not_admin_pages(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    olivia = await person(sessions, "olivia-ops-ui", Role.OPS)
    await sign_in(client, olivia.token)
    assert (await client.get("/ui/review/")).status_code == 200
    assert (await client.get("/ui/admin/")).status_code == 403
    page = await client.get("/ui/chat/")
    assert 'href="/ui/review/"' in page.text
    assert 'href="/ui/admin/"' not in page.text


async def test_pages_carry_a_csp_without_inline_script_and_no_framing(client: AsyncTestClient) -> None:
    response = await client.get("/ui/login")
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in response.text  # the only script is the app's own file


async def test_cookies_are_secure_when_the_request_came_over_https(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], user_token: str
) -> None:
    async with AsyncTestClient(app=create_app(settings), base_url="https://ratchet.example") as client:
        response = await sign_in(client, user_token)
        cookies = response.headers.get_list("set-cookie")
        assert cookies
        assert all("; Secure" in cookie for cookie in cookies)
    async with AsyncTestClient(app=create_app(settings)) as client:
        login = await client.get("/ui/login")
        assert all("Secure" not in cookie for cookie in login.headers.get_list("set-cookie"))


async def test_the_trusted_sso_header_signs_in_without_a_session(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings.model_copy(update={"trusted_user_header": "x-forwarded-user"})
    async with AsyncTestClient(app=create_app(settings)) as client:
        page = await client.get("/ui/chat/", headers={"x-forwarded-user": "sso-sam"})
        assert page.status_code == 200
        assert "sso-sam" in page.text
        assert "signed in by SSO" in page.text


def test_sign_in_only_returns_to_pages_inside_the_ui() -> None:
    assert safe_next("/ui/review/") == "/ui/review/"
    for outside in ["https://evil.example/", "//evil.example/ui/", "/api/exports/training-data", "/ui/\\evil"]:
        assert safe_next(outside) == "/ui/chat"


def test_without_a_configured_secret_one_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = ui_secret(settings)
    assert len(first) >= 32
    assert ui_secret(settings) == first  # sessions survive a restart
    assert stat.S_IMODE((tmp_path / "ui-secret").stat().st_mode) == 0o600
    assert (
        ui_secret(Settings(data_dir=tmp_path, ui_secret="configured-on-every-replica"))
        == b"configured-on-every-replica"
    )
