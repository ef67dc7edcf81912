"""A real headless browser for the console's tests: the system's Chromium (Debian's
`chromium` package, installed by `make test` like redis-server), driven by Playwright.

The gateway runs in the test's trio loop; a browser scenario is plain synchronous
Playwright code run in a worker thread (`await browse(scenario)`), so the gateway keeps
serving while the browser waits on it. A scenario that needs the test's async helpers
calls them with `trio.from_thread.run(fn, *args)`.

    async def test_x(console_gateway):
        def scenario(page: Page) -> None:
            sign_in(page, console_gateway.base_url, console_gateway.admin)
            page.get_by_role("link", name="Usage").click()
            shot(page, "usage")
        await browse(scenario)

Screenshots go to tests/screenshots/ (git ignores it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio
from playwright.sync_api import Page, sync_playwright

T = TypeVar("T")
SCREENSHOTS = Path(__file__).parent / "screenshots"
# The flags a sandboxed root machine with a closed network needs (no background
# connections, no component downloads, no first-run pages).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    """The system's Chromium; the tests fail (not skip) without it: `make test` installs it."""
    found = os.environ.get("SB_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("no chromium on PATH: run `make chromium` (Debian: apt-get install "
                           "chromium) or set SB_CHROMIUM to a Chromium binary")
    return found


async def browse(scenario: Callable[[Page], T], *, javascript: bool = True,
                 viewport: tuple[int, int] = (1280, 860), clipboard: bool = False) -> T:
    """Run `scenario(page)` in a fresh browser (a fresh profile: no cookies) and return
    what it returns. `javascript=False` browses with scripts off; `clipboard` grants the
    page clipboard access (read it with `page.evaluate("navigator.clipboard.readText()")`)."""

    def run() -> T:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
            try:
                context = browser.new_context(
                    java_script_enabled=javascript,
                    viewport={"width": viewport[0], "height": viewport[1]})
                if clipboard:
                    context.grant_permissions(["clipboard-read", "clipboard-write"])
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                page.on("dialog", lambda dialog: dialog.accept())  # confirm() says yes
                return scenario(page)
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


def sign_in(page: Page, base_url: str, secret: str) -> None:
    """Sign in through the form, as a person would; ends on the page it leads to."""
    page.goto(base_url + "/console/sign-in")
    page.get_by_label("Access key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as tests/screenshots/NAME.png (git ignores the folder)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
