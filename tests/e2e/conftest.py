"""A real browser (Debian's chromium, driven by Playwright) against the real app: `ratchet serve` supervising a
real vLLM on the prepared SmolLM2, on SQLite. One server and one browser for the whole e2e session."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.conftest import PREPARED_MODEL
from tests.live_server import LiveServer, free_port, start_server, stop_server, wait_ready

CHROMIUM = Path(os.environ.get("RATCHET_E2E_CHROMIUM", "/usr/bin/chromium"))
READY_TIMEOUT_S = 900
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="package")
def e2e_server(tmp_path_factory: pytest.TempPathFactory, rails_data_dir: Path) -> Iterator[LiveServer]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no browser at {CHROMIUM}: `make setup` installs Debian's chromium")
        pytest.skip(f"no browser at {CHROMIUM} (scripts/install-browser.sh installs it as root)")
    if not (PREPARED_MODEL / "config.json").exists():
        pytest.fail(f"no prepared model at {PREPARED_MODEL}: run `ratchet model prepare` (make test does)")
    data_dir = tmp_path_factory.mktemp("e2e")
    server = start_server(
        data_dir,
        f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}",
        PREPARED_MODEL,
        # Short answers keep the suite's time bounded on a CPU; the stop test stops long before this.
        {"RATCHET_VLLM_PORT": str(free_port()), "RATCHET_VLLM_URL": "", "RATCHET_GENERATION_MAX_TOKENS": "160"},
        classifier_from=rails_data_dir,
    )
    try:
        wait_ready(server, READY_TIMEOUT_S)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright, e2e_server: LiveServer) -> Iterator[Browser]:
    # Root in a container has no user namespaces for chromium's sandbox.
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    yield browser
    browser.close()


def new_context(browser: Browser, server: LiveServer, **options: object) -> BrowserContext:
    context = browser.new_context(base_url=server.base_url, viewport=DESKTOP, **options)  # type: ignore[arg-type]
    context.set_default_timeout(30_000)
    return context


def sign_in(context: BrowserContext, token: str) -> Page:
    page = context.new_page()
    page.goto("/ui/chat/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/chat/?$"))
    return page


@pytest.fixture
def alice(browser: Browser, e2e_server: LiveServer) -> Iterator[Page]:
    context = new_context(browser, e2e_server)
    yield sign_in(context, e2e_server.user_token)
    context.close()


@pytest.fixture
def olivia(browser: Browser, e2e_server: LiveServer) -> Iterator[Page]:
    context = new_context(browser, e2e_server)
    yield sign_in(context, e2e_server.ops_token)
    context.close()


@pytest.fixture
def admin(browser: Browser, e2e_server: LiveServer) -> Iterator[Page]:
    context = new_context(browser, e2e_server, accept_downloads=True)
    yield sign_in(context, e2e_server.admin_token)
    context.close()
