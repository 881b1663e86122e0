"""The HTML pages: each board's dashboard, shared screen and presenter control view; /new
(create a board) and /join (type its code). `/` and `/present` are the default board's."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

import aiohttp_jinja2
import segno
from aiohttp import web
from yarl import URL

from . import keys
from .addresses import is_loopback, reachable_hosts
from .schemas import DEFAULT_BOARD, MAIN_SLUG, Board
from .store import StoreUnavailable
from .store.errors import BoardNotFound

QR_CACHE_SIZE: Final = 32
QR_SCALE: Final = 6
DEFAULT_SLUG: Final = MAIN_SLUG
JOIN_CODE_MAX: Final = 32  # longer input is no code of ours: answered "unknown" unread
JOIN_CODE_NOISE: Final = re.compile(r"[\s\-]+")  # people type "ab3 k9p" or "AB3-K9P"

routes = web.RouteTableDef()


@lru_cache(maxsize=QR_CACHE_SIZE)
def qr_svg(url: str) -> str:
    """The join URL as an inline SVG QR code (pure Python; made once per URL)."""
    qr = segno.make(url, error="m")
    svg: str = qr.svg_inline(scale=QR_SCALE, dark="#000", light="#fff", omitsize=True)
    return svg


def site_url(request: web.Request) -> str:
    """FV_PUBLIC_URL when set, else the address the presenter's browser used; no slash at
    the end."""
    configured = request.app[keys.SETTINGS].public_url
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


def join_url(request: web.Request, board: Board) -> str:
    """The short URL a phone opens: /join/{code} on the site's URL (the site itself for a
    board without a code)."""
    site = site_url(request)
    return f"{site}/join/{board.join_code}" if board.join_code else f"{site}/"


def normal_code(text: str) -> str:
    """A join code as typed (any case, spaces, dashes) in the form the server looks up."""
    return JOIN_CODE_NOISE.sub("", text).upper()


async def find_board(request: web.Request, slug: str) -> Board | None:
    """The board for the first paint (the page follows it live from the first push anyway);
    None for an unknown slug."""
    try:
        store = await request.app[keys.CORE].board_store(slug)
        return await store.board()
    except BoardNotFound:
        return None
    except StoreUnavailable:
        if slug == DEFAULT_SLUG:  # the default board's page still loads; its socket resyncs
            return DEFAULT_BOARD
        raise


async def find_board_by_code(request: web.Request, code: str) -> Board | None:
    code = normal_code(code)
    if not code or len(code) > JOIN_CODE_MAX:
        return None
    try:
        store = await request.app[keys.CORE].board_store_by_code(code)
        return await store.board()
    except BoardNotFound:
        return None


def board_paths(slug: str) -> dict[str, str]:
    """The pages of one board; the default board keeps its short paths."""
    if slug == DEFAULT_SLUG:
        return {
            "dashboard_path": "/",
            "present_path": "/present",
            "control_path": f"/b/{slug}/control",
        }
    return {
        "dashboard_path": f"/b/{slug}",
        "present_path": f"/b/{slug}/present",
        "control_path": f"/b/{slug}/control",
    }


def board_context(board: Board) -> dict[str, object]:
    return {
        "slug": board.slug,
        "board_title": board.title,
        "board_round": board.round,
        "join_code": board.join_code,
        **board_paths(board.slug),
    }


def not_found(request: web.Request, what: str) -> web.Response:
    return aiohttp_jinja2.render_template(
        "not_found.html", request, {"what": what}, status=web.HTTPNotFound.status_code
    )


async def render_board_page(request: web.Request, slug: str, template: str) -> web.Response:
    board = await find_board(request, slug)
    if board is None:
        return not_found(request, "board")
    context = board_context(board)
    if template != "index.html":  # the shared screen and the control view show how to join
        context.update(present_context(request, board))
    return aiohttp_jinja2.render_template(template, request, context)


def present_context(request: web.Request, board: Board) -> dict[str, object]:
    """The QR code, the short URL and code, and whether phones can reach that address."""
    settings = request.app[keys.SETTINGS]
    url = join_url(request, board)
    site = site_url(request)
    host = URL(site).host or ""
    local = is_loopback(host)
    return {
        "join_url": url,
        "join_display": site.split("://", 1)[-1] + ("/join" if board.join_code else ""),
        "qr_svg": qr_svg(url),
        "loopback": local,
        "listens_on_loopback": is_loopback(settings.host),
        "suggested_url": suggested_url(request) if local else "",
    }


def suggested_url(request: web.Request) -> str:
    """A URL phones on the same network could open: the machine's first address."""
    settings = request.app[keys.SETTINGS]
    if is_loopback(settings.host):
        hosts = reachable_hosts("0.0.0.0")
    else:
        hosts = reachable_hosts(settings.host)
    host = next((h for h in hosts if not is_loopback(h)), "")
    return f"http://{host}:{settings.port}" if host else ""


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    return await render_board_page(request, DEFAULT_SLUG, "index.html")


@routes.get("/present")
async def present(request: web.Request) -> web.Response:
    return await render_board_page(request, DEFAULT_SLUG, "present.html")


@routes.get("/b/{slug}")
async def board_dashboard(request: web.Request) -> web.Response:
    return await render_board_page(request, request.match_info["slug"], "index.html")


@routes.get("/b/{slug}/present")
async def board_present(request: web.Request) -> web.Response:
    return await render_board_page(request, request.match_info["slug"], "present.html")


@routes.get("/b/{slug}/control")
async def board_control(request: web.Request) -> web.Response:
    return await render_board_page(request, request.match_info["slug"], "control.html")


@routes.get("/new")
@aiohttp_jinja2.template("new.html")
async def new_board(request: web.Request) -> dict[str, object]:
    return {}


@routes.get("/join")
async def join(request: web.Request) -> web.Response:
    """The code form; submitted (GET ?code=), a known code goes on to its board."""
    typed = request.query.get("code")
    if typed is None:
        return aiohttp_jinja2.render_template("join.html", request, {"code": "", "error": ""})
    board = await find_board_by_code(request, typed)
    if board is not None:
        raise web.HTTPSeeOther(f"/b/{board.slug}")
    error = (
        "Type the code shown on the screen."
        if not typed.strip()
        else ("No board has that code. Check the letters on the screen and try again.")
    )
    status = web.HTTPUnprocessableEntity.status_code if not typed.strip() else 404
    return aiohttp_jinja2.render_template(
        "join.html",
        request,
        {"code": typed.strip()[:JOIN_CODE_MAX], "error": error},
        status=status,
    )


@routes.get("/join/{code}")
async def join_code(request: web.Request) -> web.Response:
    board = await find_board_by_code(request, request.match_info["code"])
    if board is None:
        return not_found(request, "code")
    raise web.HTTPSeeOther(f"/b/{board.slug}")
