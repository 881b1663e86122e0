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
# Entry animations and transitions run for well under a second; a page still moving after
# this is a bug worth a failure, not a blurred screenshot.
SETTLE_TIMEOUT_MS: Final = 10_000


def seed(server: Server) -> None:
    token = server.token()
    for title, (ups, downs) in BOARD.items():
        feature_id = server.feature(title, token)
        for n in range(ups + downs):
            server.vote(feature_id, 1 if n < ups else -1, server.token())


def make_screenshots(browser: Any, server: Server, folder: Path) -> list[Path]:
    """Photograph the dashboard and /present of a seeded `server` into `folder`."""
    from playwright.sync_api import expect

    seed(server)
    folder.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    for path, name, (width, height) in PAGES:
        page = browser.new_page(viewport={"width": width, "height": height})
        try:
            page.goto(server.url + path)
            expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            expect(page.locator("#board li")).to_have_count(len(BOARD))
            # Wait for what the picture needs: no animation or transition still running.
            page.wait_for_function(
                "() => document.getAnimations().every(a => a.playState !== 'running')",
                timeout=SETTLE_TIMEOUT_MS,
            )
            target = folder / f"{name}.png"
            page.screenshot(path=str(target))
            shots.append(target)
        finally:
            page.close()
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
