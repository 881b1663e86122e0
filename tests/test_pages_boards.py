"""The pages of boards (issue 15): /new, /join, /b/{slug}, /b/{slug}/present and
/b/{slug}/control, served as HTML (aiohttp test client) and driven in real headless Chromium
against a real server process; and the start-up log's URLs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any, Final

import pytest
from aiohttp import web

from service.__main__ import startup_urls
from service.addresses import is_loopback, reachable_hosts, url_host
from service.app import create_app
from service.pages import normal_code, qr_svg

from .browser import Server, chromium_path
from .conftest import AiohttpClient, Client, make_settings

PUBLIC_URL: Final = "https://votes.example.org/"
LIVE_MS: Final = 5_000
IDLE_MS: Final = 10_000  # the presenter corner fades after present.js's ENTRY_IDLE_MS (3 s)
PHONE: Final = {"width": 390, "height": 844}
CODE: Final = re.compile(r"^[A-HJKMNP-Z2-9]{6}$")  # no 0/O, 1/I/L
TOKEN_KEY: Final = "featureVotes.adminToken"


async def make_board(client: Client, title: str = "Team demo") -> dict[str, Any]:
    resp = await client.post("/boards", json={"title": title})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


# --- served HTML ---------------------------------------------------------------------------


async def test_join_code_redirects_to_the_board_in_any_case(client: Client) -> None:
    board = (await make_board(client))["board"]
    code, slug = board["join_code"], board["slug"]
    for typed in (code, code.lower()):
        resp = await client.get(f"/join/{typed}", allow_redirects=False)
        assert resp.status == 303
        assert resp.headers["Location"] == f"/b/{slug}"
    # the /join form: spaces around and inside, lower case
    spaced = f"  {code[:3].lower()} {code[3:]} "
    resp = await client.get("/join", params={"code": spaced}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == f"/b/{slug}"
    page = await client.get(f"/b/{slug}")
    assert page.status == 200
    assert f'data-slug="{slug}"' in await page.text()


@pytest.mark.parametrize("path", ["/join/ZZZZZZ", "/join/not-a-code-at-all", "/b/nosuchboard",
                                  "/b/nosuchboard/present", "/b/nosuchboard/control"])
async def test_unknown_code_or_board_is_a_404_page(client: Client, path: str) -> None:
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 404
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert "<h2" in html and ('href="/join"' in html)
    assert "Content-Security-Policy" in resp.headers


async def test_join_form_shows_a_visible_error_for_an_unknown_code(client: Client) -> None:
    resp = await client.get("/join", params={"code": "zzzzzz"})
    assert resp.status == 404
    html = await resp.text()
    assert re.search(r'id="code-error" role="alert">No board has that code', html)
    assert 'aria-invalid="true"' in html
    assert 'value="zzzzzz"' in html  # what was typed stays to be corrected
    blank = await client.get("/join", params={"code": "  "})
    assert blank.status == 422
    assert "Type the code" in await blank.text()
    empty = await client.get("/join")
    assert empty.status == 200
    assert 'role="alert"></p>' in await empty.text()


@pytest.mark.parametrize(
    ("path", "script"),
    [("", "dashboard.js"), ("/present", "present.js"), ("/control", "control.js")],
)
async def test_board_pages_carry_the_slug_and_their_script(
    client: Client, path: str, script: str
) -> None:
    board = (await make_board(client, "Pages"))["board"]
    resp = await client.get(f"/b/{board['slug']}{path}")
    assert resp.status == 200
    html = await resp.text()
    assert '<body class="' in html and f'data-slug="{board["slug"]}"' in html
    assert f'src="/static/js/{script}"' in html
    assert "<script>" not in html
    if path:
        assert board["join_code"] in html


async def test_default_pages_are_the_main_board_with_links_to_new_and_join(
    client: Client,
) -> None:
    html = await (await client.get("/")).text()
    assert 'data-slug="main"' in html
    assert '<a href="/new">New board</a>' in html and '<a href="/join">Join by code</a>' in html
    assert 'data-slug="main"' in await (await client.get("/present")).text()
    assert (await client.get("/new")).status == 200


async def test_present_qr_is_the_short_join_url_on_the_public_url(
    aiohttp_client: AiohttpClient,
) -> None:
    app: web.Application = create_app(make_settings(public_url=PUBLIC_URL))
    client = await aiohttp_client(app)
    board = (await make_board(client))["board"]
    html = await (await client.get(f"/b/{board['slug']}/present")).text()
    url = f"https://votes.example.org/join/{board['join_code']}"
    assert qr_svg(url) in html
    assert f'aria-label="QR code to join: {url}"' in html
    assert '<strong id="join-url">votes.example.org/join</strong>' in html
    assert f'id="join-code" aria-describedby="join-code-label">{board["join_code"]}<' in html
    assert "loopback-warning" not in html


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_present_on_a_loopback_address_says_phones_cannot_reach_it(
    client: Client, host: str
) -> None:
    board = (await make_board(client))["board"]
    html = await (
        await client.get(f"/b/{board['slug']}/present", headers={"Host": f"{host}:8080"})
    ).text()
    assert 'id="loopback-warning" role="note"' in html
    assert "Phones cannot reach this address" in html and "FV_PUBLIC_URL" in html
    assert qr_svg(f"http://{host}:8080/join/{board['join_code']}") in html
    lan = await client.get(f"/b/{board['slug']}/present", headers={"Host": "192.0.2.7:8080"})
    assert "loopback-warning" not in await lan.text()


@pytest.mark.parametrize(
    ("typed", "code"), [("abc123", "ABC123"), (" ab c-12 3 ", "ABC123"), ("", "")]
)
def test_normal_code(typed: str, code: str) -> None:
    assert normal_code(typed) == code


# --- the start-up log's URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
     ("[::1]", True), ("app.localhost", True), ("LOCALHOST.", True), ("192.0.2.1", False),
     ("fd00::2", False), ("votes.example.org", False), ("", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


ADDRESSES: Final = [ipaddress.ip_address(a) for a in ("192.0.2.2", "10.1.2.3", "fd00::2")]


@pytest.mark.parametrize(
    ("listen", "hosts"),
    [("0.0.0.0", ["192.0.2.2", "10.1.2.3"]), ("::", ["192.0.2.2", "10.1.2.3", "[fd00::2]"]),
     ("192.0.2.2", ["192.0.2.2"]), ("127.0.0.1", ["127.0.0.1"]), ("::1", ["[::1]"])],
)
def test_reachable_hosts(listen: str, hosts: list[str]) -> None:
    assert reachable_hosts(listen, ADDRESSES) == hosts
    assert reachable_hosts("0.0.0.0", []) == ["127.0.0.1"]  # loopback when there is none
    assert url_host("fd00::2") == "[fd00::2]"


def test_machine_addresses_are_never_loopback_or_link_local() -> None:
    for host in reachable_hosts("::"):
        address = ipaddress.ip_address(host.strip("[]"))
        assert not address.is_loopback or host in ("127.0.0.1", "[::1]")
        assert not address.is_link_local


def test_startup_urls_name_new_dashboard_and_presenter_on_every_address() -> None:
    lines = startup_urls(make_settings(port=8080), ["192.0.2.2", "[fd00::2]"])
    assert lines == [
        "start a board: http://192.0.2.2:8080/new",
        "dashboard: http://192.0.2.2:8080/",
        "presenter: http://192.0.2.2:8080/present",
        "start a board: http://[fd00::2]:8080/new",
        "dashboard: http://[fd00::2]:8080/",
        "presenter: http://[fd00::2]:8080/present",
    ]
    with_public = startup_urls(make_settings(port=8080, public_url=PUBLIC_URL), ["192.0.2.2"])
    assert with_public[0] == "start a board: https://votes.example.org/new"
    alone = startup_urls(make_settings(host="127.0.0.1", port=8080))
    assert alone[0] == "start a board: http://127.0.0.1:8080/new"
    assert "phones cannot reach it" in alone[-1] and "FV_PUBLIC_URL" in alone[-1]


def test_the_start_up_log_prints_the_urls() -> None:
    srv = Server(FV_LOG_LEVEL="info", FV_LOG_FORMAT="text").start()
    try:
        log = srv.log_text()
    finally:
        srv.kill()
    assert f"start a board: http://127.0.0.1:{srv.port}/new" in log
    assert f"presenter: http://127.0.0.1:{srv.port}/present" in log
    assert "FV_PUBLIC_URL" in log


# --- in Chromium ---------------------------------------------------------------------------

try:  # without playwright the browser tests skip; the ones above still run
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - playwright is in requirements-dev.txt
    SKIP_BROWSER: str | None = "playwright is not installed"
else:
    SKIP_BROWSER = None if chromium_path() else (
        "Debian chromium is not installed (apt-get install -y chromium)"
    )
needs_chromium = pytest.mark.skipif(SKIP_BROWSER is not None, reason=SKIP_BROWSER or "")


class Console:
    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))


@pytest.fixture
def loopback_server() -> Iterator[Server]:
    """Served on 127.0.0.1 without FV_PUBLIC_URL: what a presenter trying it locally gets."""
    srv = Server().start()
    try:
        yield srv
    finally:
        srv.kill()


def row(page: Page, title: str) -> Any:
    return page.locator("#board li", has=page.locator(".title", has_text=title))


def live(page: Page) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def create_on_new(page: Page, url: str, title: str) -> str:
    """/new → the board's shared screen; returns its slug."""
    page.goto(url + "/new")
    page.click("#new-board button[type=submit]")  # an empty title is refused first
    expect(page.locator("#title-error")).to_have_text("Give the board a title.")
    expect(page.locator("#title")).to_have_attribute("aria-invalid", "true")
    page.fill("#title", title)
    page.click("#new-board button[type=submit]")
    page.wait_for_url(re.compile(r"/b/[a-z2-7]+/present$"))
    live(page)
    slug = page.url.rsplit("/", 2)[-2]
    return slug


@needs_chromium
def test_new_board_presents_a_phone_joins_by_code_and_the_control_view_drives_the_screen(
    browser: Browser, loopback_server: Server
) -> None:
    url = loopback_server.url
    laptop = browser.new_context(viewport={"width": 1280, "height": 720}, accept_downloads=True)
    phone_context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        screen = laptop.new_page()
        consoles = [Console(screen)]
        slug = create_on_new(screen, url, "Team demo")
        # presenter mode already: the token /new kept for this board is the screen's
        token = screen.evaluate(f"localStorage.getItem('{TOKEN_KEY}.{slug}')")
        assert token
        expect(screen.locator("body")).to_have_attribute("data-presenter", "true")
        expect(screen.locator("#stage-title")).to_have_text("Team demo")
        code = screen.locator("#join-code").inner_text()
        assert CODE.match(code), code
        expect(screen.locator("#join-code")).to_be_visible()
        expect(screen.locator("#join-url")).to_have_text(f"127.0.0.1:{loopback_server.port}/join")
        warning = screen.locator("#loopback-warning")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("Phones cannot reach this address")
        expect(warning).to_contain_text("FV_PUBLIC_URL")
        fits = screen.evaluate(
            "[document.documentElement.scrollHeight <= innerHeight,"
            " document.documentElement.scrollWidth <= innerWidth]"
        )
        assert fits == [True, True], "the shared screen scrolls at 1280x720"
        qr = screen.locator("#qr svg").bounding_box()
        assert qr is not None and qr["width"] > 150, "the QR code is too small to scan"
        expect(screen.locator("#control-link")).to_have_attribute("href", f"/b/{slug}/control")

        # the control view on the presenter's laptop: the kept token, no pasting
        control = laptop.new_page()
        consoles.append(Console(control))
        control.goto(url + f"/b/{slug}/control")
        live(control)
        expect(control.locator("#admin-panel")).to_be_visible()
        expect(control.locator("#admin-form")).to_be_hidden()
        expect(control.locator("#join-code")).to_have_text(code)

        # a phone types the code (lower case, with spaces) on /join, proposes and votes
        phone = phone_context.new_page()
        consoles.append(Console(phone))
        phone.goto(url + "/join")
        phone.fill("#code", "zzz zzz")
        phone.click("#join button[type=submit]")
        expect(phone.locator("#code-error")).to_contain_text("No board has that code")
        expect(phone.locator("#code")).to_have_attribute("aria-invalid", "true")
        phone.fill("#code", f" {code[:3].lower()} {code[3:].lower()} ")
        phone.click("#join button[type=submit]")
        phone.wait_for_url(url + f"/b/{slug}")
        live(phone)
        expect(phone.locator("[data-board=title]")).to_have_text("Team demo")
        phone.fill("#title", "Dark mode")
        phone.click("#propose button[type=submit]")
        expect(row(phone, "Dark mode")).to_have_count(1, timeout=LIVE_MS)
        up = row(phone, "Dark mode").locator("button.vote.up")
        up.click()
        expect(up).to_have_attribute("aria-pressed", "true")
        fits = phone.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert fits, "the dashboard scrolls sideways on a phone"

        # the shared screen follows; the default board is untouched
        expect(row(screen, "Dark mode").locator(".score")).to_have_text("+1", timeout=LIVE_MS)
        expect(screen.locator("[data-total=votes]")).to_have_text("1", timeout=LIVE_MS)
        expect(control.locator("[data-total=votes]")).to_have_text("1", timeout=LIVE_MS)
        assert loopback_server.request("GET", "/stats")[1]["total_features"] == 0

        # lock: the screen and the phone say so, the phone's buttons go grey
        control.click("#toggle-lock")
        for page in (screen, phone, control):
            expect(page.locator("#closed-banner")).to_be_visible(timeout=LIVE_MS)
        expect(control.locator("#toggle-lock")).to_have_text("Unlock voting")
        expect(control.locator("#toggle-lock")).to_have_attribute("aria-pressed", "true")
        expect(up).to_be_disabled()
        # hide: no numbers on the projected screen; reveal: back
        control.click("#toggle-hide")
        expect(screen.locator("#hidden-banner")).to_be_visible(timeout=LIVE_MS)
        expect(row(screen, "Dark mode").locator(".score")).to_have_text("—", timeout=LIVE_MS)
        expect(control.locator("#toggle-hide")).to_have_text("Reveal results")
        control.click("#toggle-hide")
        expect(screen.locator("#hidden-banner")).to_be_hidden(timeout=LIVE_MS)
        expect(row(screen, "Dark mode").locator(".score")).to_have_text("+1", timeout=LIVE_MS)

        # export from the control view: this board's standings
        with control.expect_download() as download_info:
            control.click("#admin-panel .control-row button.export[data-format=json]")
        assert slug in download_info.value.suggested_filename

        # next round, confirmed: archived, votes cleared, voting open again, everyone follows
        control.click("#next-round")
        expect(control.locator("#confirm-round")).to_be_visible()
        expect(control.locator("#confirm-text")).to_contain_text("start round 2")
        control.click("#confirm-yes")
        for page in (screen, phone, control):
            expect(page.locator("[data-board=round]").first).to_have_text("2", timeout=LIVE_MS)
            expect(page.locator("[data-total=votes]")).to_have_text("0", timeout=LIVE_MS)
            expect(page.locator("#closed-banner")).to_be_hidden(timeout=LIVE_MS)
        expect(row(screen, "Dark mode").locator(".score")).to_have_text("0")
        expect(up).to_have_attribute("aria-pressed", "false")
        expect(up).to_be_enabled()
        expect(control.locator("#past-rounds li")).to_have_count(1, timeout=LIVE_MS)
        assert loopback_server.request("GET", "/stats")[1]["board"]["round"] == 1

        # the phone's one failed load is the unknown code's 404 page
        assert [e for e in consoles[2].errors if "status of 404" not in e] == [], consoles[2].errors
        assert [c.errors for c in consoles[:2]] == [[], []]
    finally:
        laptop.close()
        phone_context.close()


@needs_chromium
def test_control_view_on_another_device_takes_a_pasted_token(
    browser: Browser, loopback_server: Server
) -> None:
    _, first = loopback_server.request("POST", "/boards", {"title": "First"})
    _, other = loopback_server.request("POST", "/boards", {"title": "Other"})
    slug = first["board"]["slug"]
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(loopback_server.url + f"/b/{slug}/control")
        live(page)
        expect(page.locator("#admin-form")).to_be_visible()
        expect(page.locator("#admin-panel")).to_be_hidden()
        for wrong in (loopback_server.token(), other["admin_token"]):
            page.fill("#admin-token", wrong)
            page.click("#admin-form button[type=submit]")
            expect(page.locator("#admin-error")).to_contain_text("does not administer this board")
            expect(page.locator("#admin-token")).to_have_attribute("aria-invalid", "true")
        page.fill("#admin-token", first["admin_token"])
        page.click("#admin-form button[type=submit]")
        expect(page.locator("#admin-panel")).to_be_visible()
        expect(page.locator("#toggle-lock")).to_be_focused()
        assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}.{slug}')") == first["admin_token"]
        fits = page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert fits, "the control view scrolls sideways on a phone"
        page.click("#toggle-lock")
        expect(page.locator("#closed-banner")).to_be_visible(timeout=LIVE_MS)
        assert loopback_server.request("GET", f"/boards/{slug}")[1]["voting_open"] is False
        other_slug = other["board"]["slug"]
        assert loopback_server.request("GET", f"/boards/{other_slug}")[1]["voting_open"] is True
        page.click("#sign-out")
        expect(page.locator("#admin-form")).to_be_visible()
        assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}.{slug}')") is None
    finally:
        context.close()


@needs_chromium
def test_presenter_corner_hides_while_idle_and_comes_back(
    browser: Browser, loopback_server: Server
) -> None:
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    try:
        page.goto(loopback_server.url + "/present")
        live(page)
        entry = page.locator("#presenter-entry")
        expect(page.locator("#control-link")).to_have_attribute("href", "/b/main/control")
        expect(entry).to_have_css("opacity", "1")
        expect(page.locator("body")).to_have_class(re.compile(r"\bentry-idle\b"), timeout=IDLE_MS)
        expect(entry).to_have_css("opacity", "0", timeout=IDLE_MS)
        page.mouse.move(200, 200)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bentry-idle\b"))
        expect(entry).to_have_css("opacity", "1")
        # the keyboard reaches it too, and it stays while focused
        expect(page.locator("body")).to_have_class(re.compile(r"\bentry-idle\b"), timeout=IDLE_MS)
        page.locator("#control-link").focus()
        expect(entry).to_have_css("opacity", "1")
    finally:
        page.close()
