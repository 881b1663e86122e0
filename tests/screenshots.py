"""The README's screenshots: `make screenshots` writes docs/img/; tests/test_pages.py a tmp dir.

A seeded board in a real service process, photographed in Debian's Chromium. The test suite
only checks that this works (into a temporary directory): it never rewrites tracked files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

from .browser import ROOT, Server, chromium_browser, chromium_path

README_IMAGES: Final = ROOT / "docs" / "img"
PUBLIC_URL: Final = "https://votes.example.org/"
BOARD: Final = {  # title: (up votes, down votes)
    "Dark mode for projectors": (9, 1),
    "Export results as CSV": (7, 2),
    "Keyboard shortcuts": (5, 0),
    "Single sign-on": (4, 4),
    "Offline voting on phones": (2, 3),
    "Slack announcements": (1, 0),
}
PAGES: Final = (("/", "dashboard", (1280, 800)), ("/present", "present", (1920, 1080)))
# A board of its own (issue 15): its shared screen with the join code, the presenter's control
# view and the join page on a phone.
SESSION_TITLE: Final = "Workshop: what should the app do next?"
SESSION: Final = {"Share results as a link": (6, 0), "Vote from a smartwatch": (3, 2),
                  "Anonymous comments": (2, 1)}
SESSION_PAGES: Final = (
    ("/b/{slug}/present", "board-present", (1920, 1080)),
    ("/b/{slug}/control", "control", (390, 844)),
    ("/join", "join", (390, 844)),
)
TOKEN_KEY: Final = "featureVotes.adminToken.{slug}"
# Entry animations and transitions run for well under a second; a page still moving after
# this is a bug worth a failure, not a blurred screenshot.
SETTLE_TIMEOUT_MS: Final = 10_000


def seed(server: Server) -> None:
    token = server.token()
    for title, (ups, downs) in BOARD.items():
        feature_id = server.feature(title, token)
        for n in range(ups + downs):
            server.vote(feature_id, 1 if n < ups else -1, server.token())


def seed_session(server: Server) -> tuple[str, str]:
    """A board made over POST /boards, with a few votes; its slug and admin token."""
    status, created = server.request("POST", "/boards", {"title": SESSION_TITLE})
    assert status == 201, created
    slug: str = created["board"]["slug"]
    token = server.token()
    for title, (ups, downs) in SESSION.items():
        status, feature = server.request(
            "POST", f"/boards/{slug}/features", {"title": title, "description": ""}, token
        )
        assert status == 201, feature
        for n in range(ups + downs):
            status, _ = server.request(
                "PUT", f"/boards/{slug}/features/{feature['id']}/vote",
                {"value": 1 if n < ups else -1}, server.token(),
            )
            assert status == 200
    return slug, created["admin_token"]


def settle(page: Any) -> None:
    """Wait for what the picture needs: no animation or transition still running."""
    page.wait_for_function(
        "() => document.getAnimations().every(a => a.playState !== 'running')",
        timeout=SETTLE_TIMEOUT_MS,
    )


def make_screenshots(browser: Any, server: Server, folder: Path) -> list[Path]:
    """Photograph the dashboard and /present of a seeded `server`, and a board's shared
    screen, control view and the join page, into `folder`."""
    from playwright.sync_api import expect

    seed(server)
    slug, admin_token = seed_session(server)
    folder.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    pages = [(path, name, size, len(BOARD)) for path, name, size in PAGES] + [
        (path.format(slug=slug), name, size, len(SESSION)) for path, name, size in SESSION_PAGES
    ]
    for path, name, (width, height), rows in pages:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.add_init_script(
            f"try {{ localStorage.setItem({TOKEN_KEY.format(slug=slug)!r}, {admin_token!r}) }}"
            " catch (_) {}"  # about:blank has no storage
        )
        page = context.new_page()
        try:
            page.goto(server.url + path)
            if page.locator("#conn").count():
                expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            if page.locator("#board").count():
                expect(page.locator("#board li")).to_have_count(rows)
            if path.endswith("/control"):  # with the board's token, kept as /new keeps it
                expect(page.locator("#admin-panel")).to_be_visible()
            settle(page)
            target = folder / f"{name}.png"
            page.screenshot(path=str(target))
            shots.append(target)
        finally:
            context.close()
    return shots


def main() -> int:
    """Write the README's screenshots into docs/img/ (run by `make screenshots`)."""
    if chromium_path() is None:
        print("screenshots: Debian chromium is missing (apt-get install -y chromium)",
              file=sys.stderr)
        return 1
    server = Server(FV_PUBLIC_URL=PUBLIC_URL).start()
    try:
        with chromium_browser() as browser:
            for shot in make_screenshots(browser, server, README_IMAGES):
                print(f"screenshots: wrote {shot.relative_to(ROOT)} ({shot.stat().st_size} bytes)")
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
