"""The dashboard and presenter pages in a real headless Chromium against a real server process."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from .browser import Server, chromium_path
from .screenshots import make_screenshots

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)"
)
expect = playwright_api.expect
Page = playwright_api.Page
Browser = playwright_api.Browser

LIVE_TIMEOUT_MS: Final = 2_000  # the bound for a REST vote to appear on screen
PUBLIC_URL: Final = "https://votes.example.org/"
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(FV_PUBLIC_URL=PUBLIC_URL).start()
    try:
        yield srv
    finally:
        srv.kill()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 800) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    return page


def row(page: Page, title: str) -> playwright_api.Locator:
    return page.locator("#board li", has=page.locator(".title", has_text=title))


def wait_for(predicate: object, timeout: float = 3.0) -> None:
    """Poll a REST-side condition (a callable returning bool) with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_dashboard_shows_seeded_features(browser: Browser, server: Server) -> None:
    token = server.token()
    titles = ["Dark mode", "Export to CSV", "Keyboard shortcuts"]
    ids = [server.feature(t, token) for t in titles]
    server.vote(ids[2], 1, token)
    page = open_page(browser, server.url + "/")
    rows = page.locator("#board li .title")
    expect(rows).to_have_text(["Keyboard shortcuts", "Dark mode", "Export to CSV"])
    expect(row(page, "Keyboard shortcuts").locator(".score")).to_have_text("+1")
    expect(page.locator("[data-total=features]")).to_have_text("3")


def test_rest_vote_appears_without_reload(browser: Browser, server: Server) -> None:
    token = server.token()
    first = server.feature("First", token)
    second = server.feature("Second", token)
    page = open_page(browser, server.url + "/")
    expect(page.locator("#board li .title")).to_have_text(["First", "Second"])
    page.evaluate("window.__marker = 'same document'")
    for _ in range(2):
        server.vote(second, 1, server.token())
    server.vote(first, -1, server.token())
    expect(page.locator("#board li .title")).to_have_text(
        ["Second", "First"], timeout=LIVE_TIMEOUT_MS
    )
    expect(row(page, "Second").locator(".score")).to_have_text("+2", timeout=LIVE_TIMEOUT_MS)
    expect(row(page, "First").locator(".n-down")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__marker") == "same document"  # no reload happened


def test_click_votes_and_toggle_retracts(browser: Browser, server: Server) -> None:
    feature_id = server.feature("Offline mode", server.token())
    page = open_page(browser, server.url + "/")
    up = row(page, "Offline mode").locator("button.vote.up")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    wait_for(lambda: server.request("GET", f"/features/{feature_id}")[1]["up"] == 1)
    expect(row(page, "Offline mode").locator(".score")).to_have_text("+1")

    down = row(page, "Offline mode").locator("button.vote.down")
    down.click()  # moves the vote
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(up).to_have_attribute("aria-pressed", "false")
    wait_for(lambda: server.request("GET", f"/features/{feature_id}")[1]["down"] == 1)

    down.click()  # pressing again takes it back
    expect(down).to_have_attribute("aria-pressed", "false")
    wait_for(lambda: server.request("GET", f"/features/{feature_id}")[1]["down"] == 0)
    _, feature = server.request("GET", f"/features/{feature_id}")
    assert (feature["up"], feature["down"]) == (0, 0)

    page.reload()  # the token in localStorage keeps the voter; /me/votes restores the toggles
    up = row(page, "Offline mode").locator("button.vote.up")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(row(page, "Offline mode").locator("button.vote.up")).to_have_attribute(
        "aria-pressed", "true"
    )
    assert server.request("GET", f"/features/{feature_id}")[1]["up"] == 1


def test_propose_adds_a_row_and_shows_server_errors(browser: Browser, server: Server) -> None:
    page = open_page(browser, server.url + "/")
    page.fill("#title", "   ")
    page.click("#propose button[type=submit]")
    expect(page.locator("#title-error")).to_contain_text("1..120 characters")
    expect(page.locator("#title")).to_have_attribute("aria-invalid", "true")

    page.fill("#title", "Slack integration")
    page.fill("#description", "Post the winners to a channel")
    page.click("#propose button[type=submit]")
    expect(row(page, "Slack integration")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#title-error")).to_have_text("")
    _, listing = server.request("GET", "/features")
    assert [f["title"] for f in listing["items"]] == ["Slack integration"]


def test_present_shows_qr_and_live_board(browser: Browser, server: Server) -> None:
    token = server.token()
    ids = [server.feature(f"Idea {n}", token) for n in range(1, 13)]
    for size in ((1920, 1080), (1280, 720)):
        page = open_page(browser, server.url + "/present", *size)
        expect(page.locator("#qr svg")).to_have_count(1)
        expect(page.locator("#join-url")).to_have_text("votes.example.org/join")
        expect(page.locator("#join-code")).to_have_text(re.compile(r"^[A-HJKMNP-Z2-9]{6}$"))
        expect(page.locator("#board li")).to_have_count(8)
        fits = page.evaluate(
            "[document.documentElement.scrollHeight <= innerHeight,"
            " document.documentElement.scrollWidth <= innerWidth]"
        )
        assert fits == [True, True], f"/present scrolls at {size}"
        box = page.locator("#qr svg").bounding_box()
        assert box is not None and box["width"] > 150, "the QR code is too small to scan"
        page.close()
    page = open_page(browser, server.url + "/present")
    server.vote(ids[-1], 1, server.token())
    expect(page.locator("#board li .title").first).to_have_text("Idea 12", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("[data-total=votes]")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)


def test_no_console_errors(browser: Browser, server: Server) -> None:
    feature_id = server.feature("Quiet console", server.token())
    for path in ("/", "/present"):
        page = browser.new_page()
        console = Console(page)
        page.goto(server.url + path)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        server.vote(feature_id, 1, server.token())
        expect(page.locator("#board li")).to_have_count(1)
        if path == "/":
            page.locator("button.vote.down").click()
            expect(page.locator("button.vote.down")).to_have_attribute("aria-pressed", "true")
        page.wait_for_timeout(300)
        assert console.errors == [], f"{path}: {console.errors}"
        page.close()


def test_api_docs_render_offline_under_the_csp(browser: Browser, server: Server) -> None:
    page = browser.new_page()
    console = Console(page)
    page.goto(server.url + "/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=10_000)
    assert page.locator(".opblock").count() >= 15
    assert console.errors == [], console.errors


def test_reconnects_after_a_restart(browser: Browser, server: Server) -> None:
    server.feature("Before the restart", server.token())
    page = open_page(browser, server.url + "/")
    expect(row(page, "Before the restart")).to_have_count(1)
    server.kill()
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=3_000)
    server.start()  # same port, a fresh in-memory board
    server.feature("After the restart", server.token())
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.locator("#board li .title")).to_have_text(["After the restart"], timeout=5_000)
    # still live: a vote after the resync reaches the page
    _, listing = server.request("GET", "/features")
    server.vote(listing["items"][0]["id"], 1, server.token())
    expect(page.locator("#board li .score")).to_have_text(["+1"], timeout=LIVE_TIMEOUT_MS)


def test_screenshots_for_the_readme_can_be_made(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """`make screenshots` works: the same code writes PNGs here, never into docs/img/."""
    shots = make_screenshots(browser, server, tmp_path)
    assert [shot.name for shot in shots] == [
        "dashboard.png", "present.png", "board-present.png", "control.png", "join.png"
    ]
    for shot in shots:
        assert shot.parent == tmp_path
        data = shot.read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{shot} is not a PNG"
        assert len(data) > 10_000, f"{shot} looks empty"
