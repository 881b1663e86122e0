"""Thin handlers of the presenter controls: the board, its rounds, and exports (ADR-007)."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from .api import VARY_AUTH, audience_of, claims_of, core_of, json_response, read_body
from .auth import Role
from .core import Export, ExportFormat
from .errors import ApiError
from .schemas import ProblemItem, RoundList, board_patch_decoder

_ROUND: Final = re.compile(r"[1-9][0-9]{0,17}")  # fullmatch: "1\n" is no round number
NO_CACHE: Final = {"Cache-Control": "no-cache"}

routes = web.RouteTableDef()


@routes.get("/board")
async def get_board(request: web.Request) -> web.Response:
    return json_response(await core_of(request).board(), headers=NO_CACHE)


@routes.patch("/board")
async def patch_board(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    patch = await read_body(request, board_patch_decoder)
    return json_response(await core_of(request).patch_board(admin, patch))


@routes.post("/board/reset")
async def reset_board(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    return json_response(await core_of(request).next_round(admin))


@routes.get("/rounds")
async def list_rounds(request: web.Request) -> web.Response:
    rounds = await core_of(request).rounds()
    return json_response(RoundList(items=rounds), headers=NO_CACHE)


@routes.get("/rounds/{n}")
async def get_round(request: web.Request) -> web.Response:
    raw = request.match_info["n"]
    if not _ROUND.fullmatch(raw):
        raise ApiError(404, f"round {raw!r} does not exist; rounds are positive integers")
    standings = await core_of(request).closed_round(int(raw), await audience_of(request))
    return json_response(standings, headers={**VARY_AUTH, **NO_CACHE})


async def _export(request: web.Request, fmt: ExportFormat) -> web.Response:
    raw = request.query.get("round")
    if raw is not None and not _ROUND.fullmatch(raw):
        msg = "must be a round number (a positive integer)"
        raise ApiError(422, f"round: {msg}", errors=[ProblemItem(loc="query.round", msg=msg)])
    round_no = None if raw is None else int(raw)
    export = await core_of(request).export(fmt, round_no, await audience_of(request))
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


@routes.get("/export.json")
async def export_json(request: web.Request) -> web.Response:
    return await _export(request, ExportFormat.JSON)


@routes.get("/export.csv")
async def export_csv(request: web.Request) -> web.Response:
    return await _export(request, ExportFormat.CSV)
