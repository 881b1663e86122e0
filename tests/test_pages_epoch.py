"""Issue 16's page case in a real headless Chromium: after the server's data is lost (a memory
store restarted: a new epoch), the dashboard shows no vote its voter no longer has — not even
on a new feature that got the same id as the one voted on before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pytest

from .browser import Server, chromium_path

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)"
)
expect = playwright_api.expect
Browser = playwright_api.Browser
Page = playwright_api.Page
RECONNECT_TIMEOUT_MS: Final = 20_000  # live.js's backoff after an outage, with its jitter


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(FV_STORE="memory").start()  # a restart loses everything: a new epoch
    try:
        yield srv
    finally:
        srv.kill()


def row(page: Page, title: str) -> playwright_api.Locator:
    return page.locator("#board li", has=page.locator(".title", has_text=title))


def test_a_new_epoch_leaves_no_stale_vote_on_the_dashboard(
    browser: Browser, server: Server
) -> None:
    admin = server.token()
    first = server.feature("Offline mode", admin)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    up = row(page, "Offline mode").locator("button.vote.up")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    assert server.request("GET", f"/features/{first}")[1]["up"] == 1
    epoch_before = server.request("GET", "/stats")[1]["epoch"]

    server.kill()
    server.start()  # the same port and secret (the page's token stays valid), no data
    second = server.feature("Dark mode", server.token())
    assert second == first  # ids count from 1 again: the old vote's id is a new feature's
    assert server.request("GET", "/stats")[1]["epoch"] != epoch_before

    # The page reconnects on its own, gets the new epoch, forgets its vote, reloads its votes.
    expect(row(page, "Dark mode")).to_have_count(1, timeout=RECONNECT_TIMEOUT_MS)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(row(page, "Dark mode").locator("button.vote.up")).to_have_attribute(
        "aria-pressed", "false"
    )
    expect(row(page, "Dark mode").locator("button.vote.down")).to_have_attribute(
        "aria-pressed", "false"
    )
    expect(row(page, "Offline mode")).to_have_count(0)
    page.close()
