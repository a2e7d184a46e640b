"""Connection URLs' passwords, tokens and secrets never appear in `ratchet settings`, its errors, or the server's
logs (the server run for real, at debug level, through start-up, requests and failures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.settings import Settings, masked_url
from tests.conftest import PREPARED_MODEL, UNREACHABLE_VLLM, scratch_postgres_database
from tests.live_server import free_port

DB_PASSWORD = "db-pw-7Hq2x"
REDIS_PASSWORD = "redis-pw-Kx81"
PROXY_SECRET = "proxy-secret-Zu4e"
SECRETS = (DB_PASSWORD, REDIS_PASSWORD, PROXY_SECRET)


def ratchet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def secret_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "COLUMNS": "300",  # rich would wrap the table's cells, splitting what the assertions look for
        "RATCHET_DATA_DIR": str(tmp_path),
        "RATCHET_DATABASE_URL": database_url,
        "RATCHET_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/15",
        "RATCHET_TRUSTED_USER_HEADER": "X-Remote-User",
        "RATCHET_TRUSTED_PROXY_SECRET": PROXY_SECRET,
        "RATCHET_VLLM_URL": UNREACHABLE_VLLM,
        "RATCHET_BASE_MODEL": str(PREPARED_MODEL),
    }


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_masked_url_hides_only_the_password() -> None:
    assert masked_url(f"postgresql+asyncpg://app:{DB_PASSWORD}@db:5432/ratchet") == (
        "postgresql+asyncpg://app:***@db:5432/ratchet"
    )
    assert masked_url(f"redis://:{REDIS_PASSWORD}@cache:6379/0") == "redis://:***@cache:6379/0"
    assert masked_url(f"postgresql://db/ratchet?user=app&password={DB_PASSWORD}") == (
        "postgresql://db/ratchet?user=app&password=***"
    )
    for plain in ("sqlite+aiosqlite:////srv/ratchet/ratchet.db", "postgresql://app@db/ratchet", ""):
        assert masked_url(plain) == plain


def test_ratchet_settings_shows_connection_urls_without_their_passwords(tmp_path: Path) -> None:
    env = secret_env(tmp_path, f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:5432/ratchet")
    for args in (("settings",), ("settings", "--markdown")):
        result = ratchet(env, *args)
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout + result.stderr)
    shown = ratchet(env, "settings").stdout
    assert "postgresql+asyncpg://postgres:***@127.0.0.1:5432/ratchet" in shown
    assert "redis://:***@127.0.0.1:6379/15" in shown
    assert "(set)" in shown  # the proxy secret: that it is set, nothing of it


def test_invalid_settings_are_reported_without_echoing_any_value(tmp_path: Path) -> None:
    env = secret_env(tmp_path, f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:5432/ratchet")
    result = ratchet({**env, "RATCHET_DB_POOL_SIZE": f"not-a-number-{DB_PASSWORD}"}, "settings")
    assert result.returncode != 0
    assert "db_pool_size" in result.stderr
    assert_no_secret(result.stdout + result.stderr)
    assert repr(Settings(database_url=f"postgresql://u:{DB_PASSWORD}@h/d")).count(DB_PASSWORD) == 0


def test_the_server_never_logs_a_password_or_secret(tmp_path: Path) -> None:
    """PostgreSQL here trusts local connections, so the URL's password is sent and ignored. Nothing listens at the
    Redis URL: the rate limiter's store fails with the URL's password in hand, and the server logs that failure."""
    with scratch_postgres_database("ratchet_secrets") as url:
        database_url = url.replace("postgresql+asyncpg://postgres@", f"postgresql+asyncpg://postgres:{DB_PASSWORD}@")
        port = free_port()
        env = {
            **secret_env(tmp_path, database_url),
            "RATCHET_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:9/0",
            "RATCHET_PORT": str(port),
            "RATCHET_LOG_LEVEL": "debug",
            "RATCHET_RAILS_ENABLED": "false",
        }
        upgrade = ratchet(env, "db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        token = ratchet(env, "users", "create", "alice").stdout.strip()
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    pytest.fail(f"ratchet serve exited:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            headers = {"authorization": f"Bearer {token}"}
            question = {"messages": [{"role": "user", "content": "hi"}]}
            assert httpx.get(f"{base}/readyz").status_code == 503
            assert (
                httpx.get(f"{base}/api/conversations", headers={"authorization": "Bearer rt_wrong"}).status_code == 401
            )
            assert httpx.post(f"{base}/v1/chat/completions", json=question, headers=headers).status_code == 503
            assert httpx.get(f"{base}/api/conversations", headers={"X-Remote-User": "alice"}).status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        logs = upgrade.stdout + upgrade.stderr + log_path.read_text()
        assert "rate-limit store unreachable" in logs  # the failure that had the Redis password in hand was logged
        assert_no_secret(logs)
