"""The HTML pages: the live dashboard and the shared-screen presenter view."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import aiohttp_jinja2
import segno
from aiohttp import web

from . import keys
from .schemas import DEFAULT_BOARD, Board
from .store import StoreUnavailable

QR_CACHE_SIZE: Final = 32
QR_SCALE: Final = 6

routes = web.RouteTableDef()


@lru_cache(maxsize=QR_CACHE_SIZE)
def qr_svg(url: str) -> str:
    """The join URL as an inline SVG QR code (pure Python; made once per URL)."""
    qr = segno.make(url, error="m")
    svg: str = qr.svg_inline(scale=QR_SCALE, dark="#000", light="#fff", omitsize=True)
    return svg


def join_url(request: web.Request) -> str:
    """FV_PUBLIC_URL when set, else the address the presenter's browser used."""
    configured = request.app[keys.SETTINGS].public_url
    return configured or f"{request.scheme}://{request.host}/"


async def current_board(request: web.Request) -> Board:
    """The board for the first paint; the page follows it live from the first push anyway."""
    try:
        return await request.app[keys.STORE].board()
    except StoreUnavailable:
        return DEFAULT_BOARD


@routes.get("/")
@aiohttp_jinja2.template("index.html")
async def dashboard(request: web.Request) -> dict[str, object]:
    board = await current_board(request)
    return {"board_title": board.title, "board_round": board.round}


@routes.get("/present")
@aiohttp_jinja2.template("present.html")
async def present(request: web.Request) -> dict[str, object]:
    url = join_url(request)
    board = await current_board(request)
    return {
        "board_title": board.title,
        "board_round": board.round,
        "join_url": url,
        "join_display": url.split("://", 1)[-1].rstrip("/"),
        "qr_svg": qr_svg(url),
    }
