"""The SSO mode believes the user header only from the proxy (its shared secret or its address), and refuses to
start without a way to tell."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.app import create_app
from server.settings import Settings
from tests.unit.feedback_store import exchange, person
from tests.unit.served import served

USER_HEADER = "X-Remote-User"
SECRET_HEADER = "X-Ratchet-Proxy-Secret"
SECRET = "proxy-shared-secret-0f3a"


def sso_settings(settings: Settings, **overrides: Any) -> Settings:
    return Settings(
        **{**settings.model_dump(), "rails_enabled": False, "trusted_user_header": USER_HEADER, **overrides}
    )


def test_the_sso_mode_without_a_proxy_secret_or_addresses_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="RATCHET_TRUSTED_PROXY_SECRET or RATCHET_TRUSTED_PROXIES"):
        sso_settings(settings)
    env = {**os.environ, "RATCHET_TRUSTED_USER_HEADER": USER_HEADER, "RATCHET_DATA_DIR": str(settings.data_dir)}
    env.pop("RATCHET_TRUSTED_PROXY_SECRET", None)
    env.pop("RATCHET_TRUSTED_PROXIES", None)
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "RATCHET_TRUSTED_PROXY_SECRET or RATCHET_TRUSTED_PROXIES" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_a_malformed_proxy_address_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="not-an-address"):
        sso_settings(settings, trusted_proxies="10.0.0.0/8, not-an-address")


async def test_the_user_header_is_only_believed_with_the_proxy_secret(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    carol = await person(sessions, "carol")
    await exchange(sessions, carol, "Where is the payroll calendar?", "On the HR page.")
    as_carol = {USER_HEADER: "carol"}
    async with AsyncTestClient(app=create_app(sso_settings(settings, trusted_proxy_secret=SECRET))) as client:
        for secret in (None, "", "wrong", SECRET[:-1], SECRET + "x"):
            headers = as_carol if secret is None else {**as_carol, SECRET_HEADER: secret}
            response = await client.get("/api/conversations", headers=headers)
            assert response.status_code == 401, (secret, response.text)
        response = await client.get("/api/conversations", headers={**as_carol, SECRET_HEADER: SECRET})
        assert response.status_code == 200
        assert [row["title"] for row in response.json()] == ["Where is the payroll calendar?"]
        # Clients that do not go through the proxy still authenticate with their own tokens.
        assert (await client.get("/api/conversations", headers=carol.headers)).status_code == 200


async def test_the_user_header_is_only_believed_from_a_trusted_proxy_address(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    carol = await person(sessions, "carol")
    await exchange(sessions, carol, "Where is the payroll calendar?", "On the HR page.")
    as_carol = {USER_HEADER: "carol"}
    with served(create_app(sso_settings(settings, trusted_proxies="127.0.0.1"))) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/api/conversations", headers=as_carol)
            assert response.status_code == 200
            assert [row["title"] for row in response.json()] == ["Where is the payroll calendar?"]
            # A forwarded-for header naming the proxy does not make another peer the proxy, nor the reverse.
            spoofed = {**as_carol, "X-Forwarded-For": "10.1.2.3"}
            assert (await client.get("/api/conversations", headers=spoofed)).status_code == 200
    with served(create_app(sso_settings(settings, trusted_proxies="10.0.0.0/8"))) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            for headers in (as_carol, {**as_carol, "X-Forwarded-For": "10.1.2.3"}):
                assert (await client.get("/api/conversations", headers=headers)).status_code == 401


async def test_with_both_secret_and_addresses_the_proxy_must_show_both(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await person(sessions, "carol")
    both = sso_settings(settings, trusted_proxy_secret=SECRET, trusted_proxies="10.0.0.0/8")
    with served(create_app(both)) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/api/conversations", headers={USER_HEADER: "carol", SECRET_HEADER: SECRET})
            assert response.status_code == 401
