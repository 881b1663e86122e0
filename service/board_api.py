"""Thin handlers of the presenter controls: the board, its rounds, and exports (ADR-007)."""

from __future__ import annotations

import csv
import io
import re
from typing import Final

from aiohttp import web

from . import keys
from .api import VARY_AUTH, audience_of, claims_of, json_response, read_body
from .auth import Role
from .errors import ApiError
from .schemas import ProblemItem, RoundList, Standings, board_patch_decoder, encoder

_ROUND: Final = re.compile(r"^[1-9][0-9]{0,17}$")
CSV_COLUMNS: Final = (
    "rank", "id", "title", "status", "up", "down", "score", "created_at", "description"
)
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such
# user text is exported with a leading apostrophe, which spreadsheets show as plain text.
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
NO_CACHE: Final = {"Cache-Control": "no-cache"}

routes = web.RouteTableDef()


@routes.get("/board")
async def get_board(request: web.Request) -> web.Response:
    return json_response(await request.app[keys.STORE].board(), headers=NO_CACHE)


@routes.patch("/board")
async def patch_board(request: web.Request) -> web.Response:
    claims_of(request, Role.ADMIN)
    patch = await read_body(request, board_patch_decoder)
    return json_response(await request.app[keys.STORE].update_board(patch))


@routes.post("/board/reset")
async def reset_board(request: web.Request) -> web.Response:
    claims_of(request, Role.ADMIN)
    return json_response(await request.app[keys.STORE].reset_board())


@routes.get("/rounds")
async def list_rounds(request: web.Request) -> web.Response:
    rounds = await request.app[keys.STORE].rounds()
    return json_response(RoundList(items=rounds), headers=NO_CACHE)


@routes.get("/rounds/{n}")
async def get_round(request: web.Request) -> web.Response:
    raw = request.match_info["n"]
    if not _ROUND.match(raw):
        raise ApiError(404, f"round {raw!r} does not exist; rounds are positive integers")
    standings = await request.app[keys.STORE].standings(int(raw), audience=audience_of(request))
    if standings.closed_at is None:
        raise ApiError(404, f"round {raw} is still open: its standings are at /export.json")
    return json_response(standings, headers={**VARY_AUTH, **NO_CACHE})


async def _export(request: web.Request) -> Standings:
    raw = request.query.get("round")
    if raw is not None and not _ROUND.match(raw):
        msg = "must be a round number (a positive integer)"
        raise ApiError(422, f"round: {msg}", errors=[ProblemItem(loc="query.round", msg=msg)])
    round_no = None if raw is None else int(raw)
    return await request.app[keys.STORE].standings(round_no, audience=audience_of(request))


def _download(body: bytes, content_type: str, name: str) -> web.Response:
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        **VARY_AUTH,
        **NO_CACHE,
    }
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


@routes.get("/export.json")
async def export_json(request: web.Request) -> web.Response:
    standings = await _export(request)
    name = f"feature-votes-round-{standings.round}.json"
    return _download(encoder.encode(standings), "application/json", name)


@routes.get("/export.csv")
async def export_csv(request: web.Request) -> web.Response:
    standings = await _export(request)
    name = f"feature-votes-round-{standings.round}.csv"
    return _download(standings_csv(standings).encode(), "text/csv", name)


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _count_cell(value: int | None) -> str:
    return "" if value is None else str(value)


def standings_csv(standings: Standings) -> str:
    """One header row, then a row per feature in standings order (RFC 4180, CRLF).

    Hidden counts are empty cells, and so is the rank, since the rows then run by id.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for rank, f in enumerate(standings.standings, start=1):
        writer.writerow(
            (
                "" if f.score is None else rank,
                f.id,
                _text_cell(f.title),
                f.status.value,
                _count_cell(f.up),
                _count_cell(f.down),
                _count_cell(f.score),
                f.created_at.isoformat(),
                _text_cell(f.description),
            )
        )
    return out.getvalue()
