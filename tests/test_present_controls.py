"""Presenter controls in a real Chromium: the presenter (admin token entered on the control view,
/b/main/control) locks, hides, reveals and starts a new round, and the projected /present and
the dashboard follow each change live. Real server process (tests/browser.py), Debian's
chromium."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Final

import pytest

from service.auth import Role, Tokens

from .browser import Server, chromium_path
from .conftest import make_settings

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)"
)
expect = playwright_api.expect
Page = playwright_api.Page
Browser = playwright_api.Browser

LIVE_MS: Final = 3_000


def admin_token() -> str:
    """Signed with the secret the server process runs with (tests/browser.py's FV_SECRET)."""
    config = make_settings()
    tokens = Tokens(config.secret, voter_ttl=60, admin_ttl=600, cache_size=1)
    return tokens.issue(Role.ADMIN, "presenter")[0]


class Console:
    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    return page


def row(page: Page, title: str) -> playwright_api.Locator:
    return page.locator("#board li", has=page.locator(".title", has_text=title))


def sign_in(page: Page, token: str) -> None:
    """Enter an admin token on /present (in its presenter drawer) or on the control view."""
    drawer = page.locator("#controls summary")
    if drawer.count():
        drawer.click()
    page.fill("#admin-token", token)
    page.click("#admin-form button[type=submit]")
    expect(page.locator("#admin-panel")).to_be_visible()


def test_presenter_controls_drive_every_screen(browser: Browser, server: Server) -> None:
    voter = server.token()
    ids = {t: server.feature(t, voter) for t in ("Dark mode", "Export", "SSO")}
    for _ in range(3):
        server.vote(ids["SSO"], 1, server.token())
    server.vote(ids["Export"], -1, server.token())

    presenter = open_page(browser, server.url + "/present")
    control = open_page(browser, server.url + "/b/main/control")
    dashboard = open_page(browser, server.url + "/")
    consoles = [Console(presenter), Console(control), Console(dashboard)]
    expect(row(dashboard, "SSO").locator(".score")).to_have_text("+3")
    expect(dashboard.locator("#closed-banner")).to_be_hidden()
    # the projected screen has no lock, hide or round buttons: they are on the control view
    assert presenter.locator("#toggle-lock, #toggle-hide, #next-round").count() == 0

    # a wrong token is refused and nothing is shown
    control.fill("#admin-token", voter)
    control.click("#admin-form button[type=submit]")
    expect(control.locator("#admin-error")).to_contain_text("does not administer")
    expect(control.locator("#admin-panel")).to_be_hidden()
    sign_in(control, admin_token())
    assert control.evaluate("localStorage.getItem('featureVotes.adminToken')")

    # lock: every screen says so at once, the dashboard's vote buttons go grey, votes are 409
    control.click("#toggle-lock")
    for page in (presenter, control, dashboard):
        expect(page.locator("#closed-banner")).to_be_visible(timeout=LIVE_MS)
    expect(control.locator("#toggle-lock")).to_have_text("Unlock voting")
    expect(row(dashboard, "Dark mode").locator("button.vote.up")).to_be_disabled()
    status, _ = server.request("PUT", f"/features/{ids['Dark mode']}/vote", {"value": 1}, voter)
    assert status == 409

    # hide: the room sees no numbers and no ranking, the total still counts
    control.click("#toggle-hide")
    for page in (presenter, dashboard):
        expect(page.locator("#hidden-banner")).to_be_visible(timeout=LIVE_MS)
        expect(page.locator("#board li .score")).to_have_text(["—", "—", "—"], timeout=LIVE_MS)
        expect(page.locator("#board li .title")).to_have_text(["Dark mode", "Export", "SSO"])
    expect(dashboard.locator("#board li .n-up").first).to_have_text("—")
    _, stats = server.request("GET", "/stats")
    assert stats["up"] is None and stats["total_votes"] == 4
    # votes keep coming while hidden: totals move, numbers stay hidden
    control.click("#toggle-lock")
    expect(dashboard.locator("#closed-banner")).to_be_hidden(timeout=LIVE_MS)
    server.vote(ids["Dark mode"], 1, server.token())
    expect(dashboard.locator("[data-total=votes]")).to_have_text("5", timeout=LIVE_MS)
    expect(presenter.locator("[data-total=votes]")).to_have_text("5", timeout=LIVE_MS)
    expect(row(dashboard, "Dark mode").locator(".score")).to_have_text("—")
    # the presenter's own socket carries the real numbers: a peek shows them on that screen only
    sign_in(presenter, admin_token())
    presenter.check("#peek")
    expect(row(presenter, "SSO").locator(".score")).to_have_text("+3")
    expect(presenter.locator("#board li .title").first).to_have_text("SSO")
    expect(row(dashboard, "SSO").locator(".score")).to_have_text("—")
    presenter.uncheck("#peek")
    expect(row(presenter, "SSO").locator(".score")).to_have_text("—")

    # reveal: the real numbers and order reach everyone at once
    control.click("#toggle-hide")
    for page in (presenter, dashboard):
        expect(page.locator("#hidden-banner")).to_be_hidden(timeout=LIVE_MS)
        expect(page.locator("#board li .title")).to_have_text(
            ["SSO", "Dark mode", "Export"], timeout=LIVE_MS
        )
    expect(row(dashboard, "Dark mode").locator(".score")).to_have_text("+1")

    # export: the presenter downloads the standings with their numbers
    with control.expect_download() as download_info:
        control.click("#admin-panel .control-row button.export[data-format=csv]")
    download = download_info.value
    assert download.suggested_filename.endswith("round-1.csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [(r["title"], r["score"]) for r in rows] == [("SSO", "3"), ("Dark mode", "1"),
                                                         ("Export", "-1")]

    # next round, after a confirmation: archived, votes cleared, voting open, everyone follows
    dashboard.locator("button.vote.up").first.click()  # the dashboard's voter has a vote now
    expect(dashboard.locator("button.vote.up").first).to_have_attribute("aria-pressed", "true")
    control.click("#toggle-lock")
    expect(dashboard.locator("#closed-banner")).to_be_visible(timeout=LIVE_MS)
    control.click("#next-round")
    expect(control.locator("#confirm-round")).to_be_visible()
    expect(control.locator("#confirm-text")).to_contain_text("start round 2")
    control.click("#confirm-yes")
    for page in (presenter, control, dashboard):
        expect(page.locator("[data-board=round]").first).to_have_text("2", timeout=LIVE_MS)
        expect(page.locator("[data-total=votes]")).to_have_text("0", timeout=LIVE_MS)
        expect(page.locator("#closed-banner")).to_be_hidden(timeout=LIVE_MS)
    expect(dashboard.locator("#board li .score")).to_have_text(["0", "0", "0"])
    expect(dashboard.locator("button.vote.up").first).to_have_attribute("aria-pressed", "false")
    expect(dashboard.locator("button.vote.up").first).to_be_enabled()
    _, rounds = server.request("GET", "/rounds")
    assert [r["round"] for r in rounds["items"]] == [1]
    assert rounds["items"][0]["total_votes"] == 6
    expect(control.locator("#past-rounds li")).to_have_count(1, timeout=LIVE_MS)

    # the one refused sign-in is the only failed request
    assert consoles[0].errors == [], consoles[0].errors
    assert [e for e in consoles[1].errors if "status of 403" not in e] == [], consoles[1].errors
    assert consoles[2].errors == [], consoles[2].errors


def test_dashboard_sort_switch_lists_and_follows(browser: Browser, server: Server) -> None:
    voter = server.token()
    ids = {t: server.feature(t, voter) for t in ("Calm", "Split", "Loved")}
    for n in range(4):
        server.vote(ids["Loved"], 1, server.token())
        server.vote(ids["Split"], 1 if n % 2 else -1, server.token())
    page = open_page(browser, server.url + "/")
    console = Console(page)
    titles = page.locator("#board li .title")
    expect(titles).to_have_text(["Loved", "Split", "Calm"])  # top: Split and Calm tie, up wins
    page.locator(".sort-switch label", has_text="Controversial").click()
    expect(page.locator("#board-title")).to_have_text("Most controversial")
    expect(titles).to_have_text(["Split", "Loved", "Calm"])
    page.locator(".sort-switch label", has_text="New").click()
    expect(titles).to_have_text(["Loved", "Split", "Calm"])
    page.locator(".sort-switch label", has_text="Best rated").click()
    expect(titles).to_have_text(["Loved", "Split", "Calm"])
    # live: votes re-rank the chosen order without a reload
    for _ in range(6):
        server.vote(ids["Calm"], 1, server.token())
    expect(titles).to_have_text(["Calm", "Loved", "Split"], timeout=LIVE_MS)
    expect(row(page, "Calm").locator(".score")).to_have_text("+6")
    page.reload()  # the choice is remembered
    expect(page.locator(".sort-switch input[value=wilson]")).to_be_checked()
    expect(titles).to_have_text(["Calm", "Loved", "Split"])
    assert console.errors == [], console.errors
    assert json.loads(json.dumps(page.evaluate("localStorage.getItem('featureVotes.sort')"))) == (
        "wilson"
    )
