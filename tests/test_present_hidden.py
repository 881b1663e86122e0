"""/present with an admin token while results are hidden, in a real Chromium against a real
server process: the shared screen lists what a public reader sees (the same features, in the
same order, no numbers) and its sockets carry no hidden numbers, until the presenter ticks
"Show hidden numbers on this screen" (issue 14, item 7).

The scenario of the review: 25 features, 1-5 voted down, the others voted up unevenly, so the
top eight by score are neither 1-8 (the public list) nor 6-13 (the leaders re-sorted by id)."""

from __future__ import annotations

import json
import string
from typing import Any, Final

import pytest

from .browser import Server, chromium_path
from .test_present_controls import Console, admin_token, sign_in

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)"
)
expect = playwright_api.expect
Page = playwright_api.Page
Browser = playwright_api.Browser

ROWS: Final = 8  # present.js shows the first eight of `top`
LIVE_MS: Final = 5_000
# Letters, not numbers, so any digit on the board is a count or a rank.
TITLES: Final = [f"Feature {letter}" for letter in string.ascii_uppercase[:25]]
UPS: Final = [0, 4, 1, 3, 2]  # feature 6 + i gets UPS[i % 5] up votes


class Frames:
    """Every stats frame a page's sockets receive, parsed."""

    def __init__(self, page: Page) -> None:
        self.stats: list[dict[str, Any]] = []
        page.on("websocket", self._watch)

    def _watch(self, ws: Any) -> None:
        ws.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        msg = json.loads(payload)
        if msg.get("type") == "stats":
            self.stats.append(msg["stats"])

    def numbers(self) -> list[dict[str, Any]]:
        """The features of received frames that carry a count."""
        return [
            f for s in self.stats for f in s["top"]
            if any(f[k] is not None for k in ("up", "down", "score"))
        ]


def board_ids(page: Page) -> list[int]:
    ids: list[str] = page.eval_on_selector_all("#board li", "rows => rows.map(r => r.dataset.id)")
    return [int(i) for i in ids]


def expect_ids(page: Page, ids: list[int]) -> None:
    expect(page.locator("#board li")).to_have_count(len(ids), timeout=LIVE_MS)
    titles = [TITLES[i - 1] for i in ids]
    expect(page.locator("#board li .title")).to_have_text(titles, timeout=LIVE_MS)
    assert board_ids(page) == ids


def expect_no_numbers(page: Page) -> None:
    """Nothing on the board or in its live region gives a count or a rank away."""
    expect(page.locator("#board li .score")).to_have_text(["—"] * ROWS)
    expect(page.locator("#board li .n-up")).to_have_text(["—"] * ROWS)
    expect(page.locator("#board li .n-down")).to_have_text(["—"] * ROWS)
    expect(page.locator("#board li .rank")).to_have_text(["·"] * ROWS)
    text = page.locator("#board").inner_text() + page.locator("#announce").inner_text()
    assert not any(ch.isdigit() for ch in text), text
    widths = page.eval_on_selector_all("#board li .bar", "bars => bars.map(b => b.style.width)")
    assert len(set(widths)) <= 1, widths  # bar lengths would rank the features


def open_present(browser: Browser, url: str) -> tuple[Page, Frames]:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    frames = Frames(page)
    page.goto(url + "/present")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    return page, frames


def test_hidden_results_on_the_shared_screen_match_the_public_view(
    browser: Browser, server: Server
) -> None:
    admin = admin_token()
    proposer = server.token()
    ids = [server.feature(title, proposer) for title in TITLES]
    assert ids == list(range(1, 26))
    voters = [server.token() for _ in range(max(UPS) + 1)]
    for voter in voters[:3]:
        for fid in ids[:5]:
            server.vote(fid, -1, voter)
    for i, fid in enumerate(ids[5:]):
        for voter in voters[: UPS[i % len(UPS)]]:
            server.vote(fid, 1, voter)
    status, _ = server.request("PATCH", "/board", {"results_hidden": True}, admin)
    assert status == 200

    _, public_stats = server.request("GET", "/stats")
    public_ids = [f["id"] for f in public_stats["top"]][:ROWS]
    assert public_ids == list(range(1, ROWS + 1))
    _, admin_stats = server.request("GET", "/stats", token=admin)
    ranked = [f["id"] for f in admin_stats["top"]]
    leaders = ranked[:ROWS]
    # the scenario is worth testing: the leaders are neither the public list nor in id order
    assert sorted(leaders) != public_ids and leaders != sorted(leaders), leaders

    audience, _ = open_present(browser, server.url)  # a screen without a token
    presenter, frames = open_present(browser, server.url)
    consoles = [Console(audience), Console(presenter)]
    expect_ids(audience, public_ids)
    sign_in(presenter, admin)

    def settle(votes: int) -> None:
        """A vote after the sign-in: both screens show the push it caused."""
        server.vote(ids[0], -1, server.token())
        for page in (presenter, audience):
            expect(page.locator("[data-total=votes]")).to_have_text(str(votes), timeout=LIVE_MS)

    votes = public_stats["total_votes"] + 1
    settle(votes)
    expect_ids(audience, public_ids)
    expect_ids(presenter, public_ids)
    expect_no_numbers(presenter)
    assert frames.numbers() == []  # not even hidden from view: the page never got them

    # a reload keeps the token (localStorage) and still shows the public list
    presenter.reload()
    expect(presenter.locator("#conn")).to_have_attribute("data-state", "live")
    presenter.locator("#controls summary").click()
    expect(presenter.locator("#admin-panel")).to_be_visible()  # the stored token is used
    assert presenter.evaluate("localStorage.getItem('featureVotes.adminToken')") == admin
    votes += 1
    settle(votes)
    expect_ids(presenter, public_ids)
    expect_no_numbers(presenter)
    assert frames.numbers() == []

    # the presenter asks for numbers: the admin's ranked view, on this screen only
    expect(presenter.locator("#peek")).not_to_be_checked()
    presenter.check("#peek")
    _, admin_stats = server.request("GET", "/stats", token=admin)
    leaders = [f["id"] for f in admin_stats["top"]][:ROWS]
    expect_ids(presenter, leaders)
    scores = [f["score"] for f in admin_stats["top"][:ROWS]]
    expect(presenter.locator("#board li .score")).to_have_text(
        [f"+{s}" if s > 0 else str(s) for s in scores]
    )
    expect(presenter.locator("#board li .rank")).to_have_text([str(n) for n in range(1, 9)])
    assert frames.numbers()  # now the admin frames do come
    expect_ids(audience, public_ids)
    expect_no_numbers(audience)

    # and unticks it: back to the public list at once, and it follows the public pushes
    presenter.uncheck("#peek")
    expect_ids(presenter, public_ids)
    expect_no_numbers(presenter)
    seen = len(frames.stats)
    votes += 1
    settle(votes)
    expect_ids(presenter, public_ids)
    expect_no_numbers(presenter)
    later = [f for s in frames.stats[seen:] for f in s["top"] if f["score"] is not None]
    assert later == [], later
    assert [c.errors for c in consoles] == [[], []]
