"""Browser fixtures for the console: Debian's chromium driven by Playwright.

`playwright install` downloads a browser build, which cannot work on our machines, so
the tests launch `/usr/bin/chromium` (installed by `make browser-deps`, part of `make
setup`). Every page records console errors and every URL it requested, so each test can
assert the page ran clean and the function key never travelled in a URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import ARTIFACTS, AppStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def admin(app_stack: AppStack) -> Iterator[httpx.Client]:
    """The operator's HTTP client (function key), for setting up what a browser test then looks at."""
    with httpx.Client(base_url=app_stack.url, headers=app_stack.admin_headers, timeout=30) as client:
        yield client


# Module scope: Playwright's sync API keeps an event loop running on this thread while it
# is open, which would break `asyncio.run` in every later test of the session.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is missing: run `make browser-deps` (apt-get install -y chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class ConsolePage:
    """One browser tab on the console of the test stack."""

    page: Page
    stack: AppStack
    console_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.stack.url}/api/console{fragment}")

    def sign_in(self, key: str | None = None) -> None:
        self.page.fill("#function-key", key if key is not None else self.stack.function_key)
        self.page.click("#signin-form button[type=submit]")

    def open_signed_in(self, fragment: str = "") -> None:
        self.open(fragment)
        self.sign_in()
        self.page.wait_for_selector("#signin", state="hidden")

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"console-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def attr(self, selector: str, name: str) -> str:
        return str(self.page.get_attribute(selector, name) or "")


@pytest.fixture
def open_console(browser: Browser, app_stack: AppStack) -> Iterator[Callable[..., ConsolePage]]:
    """Opens console tabs (desktop-sized unless told); checks afterwards that no URL held the key."""
    tabs: list[ConsolePage] = []
    contexts: list[Any] = []

    def make(viewport: dict[str, int] | None = None) -> ConsolePage:
        ctx = browser.new_context(viewport=viewport or DESKTOP)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        tab = ConsolePage(page, app_stack)
        page.on("console", lambda msg: tab.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: tab.console_errors.append(f"uncaught: {exc}"))
        page.on("request", lambda req: tab.urls.append(req.url))
        tabs.append(tab)
        return tab

    yield make
    for ctx in contexts:
        ctx.close()
    for tab in tabs:
        leaked = [u for u in tab.urls if app_stack.function_key in u]
        assert not leaked, f"the function key travelled in a URL: {leaked}"
