"""Thin handlers of a board's controls (ADR-007) and of the boards themselves (ADR-012): the
board, its rounds and exports under both the default board's paths and /boards/{slug}, and
POST/GET/DELETE /boards, /boards/by-code/{code}."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from aiohttp import web

from .api import (
    BOARD_PREFIX,
    NO_STORE,
    VARY_AUTH,
    audience_of,
    board_of,
    claims_of,
    client_of,
    core_of,
    json_response,
    on_every_board,
    read_body,
)
from .auth import Role
from .core import Export, ExportFormat
from .errors import ApiError
from .schemas import (
    PAGE_DEFAULT,
    PAGE_MAX,
    BoardList,
    ProblemItem,
    RoundList,
    board_create_decoder,
    board_patch_decoder,
)

_ROUND: Final = re.compile(r"[1-9][0-9]{0,17}")  # fullmatch: "1\n" is no round number
_LIMIT: Final = re.compile(r"[0-9]{1,3}")
_BOARD_CURSOR: Final = re.compile(r"[A-Za-z0-9_-]{1,200}")
NO_CACHE: Final = {"Cache-Control": "no-cache"}

routes = web.RouteTableDef()


@routes.get("/board")
@routes.get(BOARD_PREFIX)
async def get_board(request: web.Request) -> web.Response:
    board = await board_of(request)
    return json_response(await core_of(request).board(board), headers=NO_CACHE)


@routes.patch("/board")
@routes.patch(BOARD_PREFIX)
async def patch_board(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    board = await board_of(request)
    patch = await read_body(request, board_patch_decoder)
    return json_response(await core_of(request).patch_board(board, admin, patch))


@routes.post("/board/reset")
@routes.post(BOARD_PREFIX + "/reset")
async def reset_board(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    board = await board_of(request)
    return json_response(await core_of(request).next_round(board, admin))


@on_every_board(routes, "GET", "/rounds")
async def list_rounds(request: web.Request) -> web.Response:
    rounds = await core_of(request).rounds(await board_of(request))
    return json_response(RoundList(items=rounds), headers=NO_CACHE)


@on_every_board(routes, "GET", "/rounds/{n}")
async def get_round(request: web.Request) -> web.Response:
    board = await board_of(request)
    raw = request.match_info["n"]
    if not _ROUND.fullmatch(raw):
        raise ApiError(404, f"round {raw!r} does not exist; rounds are positive integers")
    standings = await core_of(request).closed_round(
        board, int(raw), await audience_of(request, board)
    )
    return json_response(standings, headers={**VARY_AUTH, **NO_CACHE})


async def _export(request: web.Request, fmt: ExportFormat) -> web.Response:
    board = await board_of(request)
    raw = request.query.get("round")
    if raw is not None and not _ROUND.fullmatch(raw):
        msg = "must be a round number (a positive integer)"
        raise ApiError(422, f"round: {msg}", errors=[ProblemItem(loc="query.round", msg=msg)])
    round_no = None if raw is None else int(raw)
    export = await core_of(request).export(board, fmt, round_no, await audience_of(request, board))
    return _download(export)


def _download(export: Export) -> web.Response:
    headers = {
        "Content-Disposition": f'attachment; filename="{export.filename}"',
        **VARY_AUTH,
        **NO_CACHE,
    }
    return web.Response(
        body=export.body, content_type=export.media_type, charset="utf-8", headers=headers
    )


@on_every_board(routes, "GET", "/export.json")
async def export_json(request: web.Request) -> web.Response:
    return await _export(request, ExportFormat.JSON)


@on_every_board(routes, "GET", "/export.csv")
async def export_csv(request: web.Request) -> web.Response:
    return await _export(request, ExportFormat.CSV)


# --- the boards themselves ------------------------------------------------------------------------


@routes.post("/boards")
async def create_board(request: web.Request) -> web.Response:
    core = core_of(request)
    # Who may, and the per-address budget, before the body is read.
    await core.admit_board(request.headers.get("Authorization"), client_of(request))
    new = await read_body(request, board_create_decoder)
    created = await core.create_board(new.title)
    headers = {"Location": f"/boards/{created.board.slug}", **NO_STORE}
    return json_response(created, status=201, headers=headers)


@routes.delete(BOARD_PREFIX)
async def delete_board(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    board = await board_of(request)
    await core_of(request).delete_board(admin, board.slug)
    return web.Response(status=204)


@routes.get("/boards/by-code/{code}")
async def board_by_code(request: web.Request) -> web.Response:
    store = await core_of(request).board_store_by_code(request.match_info["code"])
    return json_response(await store.board(), headers=NO_CACHE)


def encode_board_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")


def decode_board_cursor(cursor: str) -> str:
    try:
        if not _BOARD_CURSOR.fullmatch(cursor):
            raise ValueError(cursor)
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        msg = "not a cursor this server made"
        raise ApiError(
            422, f"cursor: {msg}", errors=[ProblemItem(loc="query.cursor", msg=msg)]
        ) from None


@routes.get("/boards")
async def list_boards(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    raw_limit = request.query.get("limit", str(PAGE_DEFAULT))
    if not (_LIMIT.fullmatch(raw_limit) and 1 <= int(raw_limit) <= PAGE_MAX):
        msg = f"must be an integer from 1 to {PAGE_MAX}"
        raise ApiError(422, f"limit: {msg}", errors=[ProblemItem(loc="query.limit", msg=msg)])
    cursor = request.query.get("cursor")
    after = decode_board_cursor(cursor) if cursor else None
    page = await core_of(request).list_boards(admin, limit=int(raw_limit), after=after)
    next_cursor = encode_board_cursor(page.next_after) if page.next_after else None
    return json_response(BoardList(items=page.items, next_cursor=next_cursor), headers=NO_CACHE)
