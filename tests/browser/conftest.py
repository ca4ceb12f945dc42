"""Playwright driving Debian's `chromium` (no `playwright install`: there is no internet) against
the real server. Every page records each request it makes; a request that leaves the server's
origin fails the test. Screenshots, one or more per test, go to `$TOOLSTUDIO_TEST_ARTIFACTS` if set,
else to `browser-screenshots/` under pytest's base temp dir (printed at the end of the run).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import CliServer

playwright_api = pytest.importorskip("playwright.sync_api")
# A 135M model on shared CPUs: answers take seconds to minutes, not the default 5 s.
playwright_api.expect.set_options(timeout=120_000)

CHROMIUM = os.environ.get("TOOLSTUDIO_CHROMIUM", "/usr/bin/chromium")
FIRST_START_KEY = re.compile(r"Created an API key \(shown only now\):\s+(sk-unsloth-[0-9a-f]{32})")


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    chosen = os.environ.get("TOOLSTUDIO_TEST_ARTIFACTS")  # CI may keep them somewhere lasting
    folder = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "browser-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nbrowser screenshots: {folder}")


# Package scope, not session: the sync API keeps an event loop running on the main thread while it
# is open, and every later test that calls asyncio.run() would then fail.
@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def admin_key(real_server: CliServer) -> str:
    """The key `toolstudio run` printed at its first start: the admin key."""
    found = FIRST_START_KEY.search(real_server.log())
    assert found, "toolstudio run did not print a key at its first start"
    return found.group(1)


class Page:
    """A Playwright page on the server, with the requests it made and screenshot helpers."""

    def __init__(self, page: Any, base_url: str, folder: Path, name: str) -> None:
        self.page = page
        self.base_url = base_url
        self.folder = folder
        self.name = name
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def shot(self, label: str) -> Path:
        path = self.folder / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path))
        return path

    def open(self, key: str | None = None) -> None:
        """Load the page; with `key`, sign in with it."""
        self.page.goto(self.base_url + "/")
        self.page.wait_for_selector("html[data-ready=true]")
        if key is not None:
            self.page.fill("#login-key", key)
            self.page.click("#login-form button[type=submit]")
            self.page.wait_for_selector("#chat-view:not([hidden])")

    def off_origin(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base_url + "/", "data:", "blob:"))]


@pytest.fixture
def web(chromium: Any, real_server: CliServer, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=real_server.base_url)
    page = Page(context.new_page(), real_server.base_url, screenshots, request.node.name)
    page.page.set_default_timeout(120_000)  # a 135M model on shared CPUs: minutes, not seconds
    try:
        yield page
        page.shot("end")
        assert page.off_origin() == [], "the page made requests off its origin"
        assert page.errors == [], page.errors
    finally:
        context.close()
