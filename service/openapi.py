"""The OpenAPI 3.1 document: schemas from the msgspec Structs, operations from the table below."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Final

import msgspec

from . import __version__
from .schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_MAX,
    JOIN_CODE_ALPHABET,
    JOIN_CODE_LENGTH,
    PAGE_DEFAULT,
    PAGE_MAX,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    SLUG_PATTERN,
    Board,
    BoardCreate,
    BoardCreated,
    BoardList,
    BoardPatch,
    Feature,
    FeatureCreate,
    FeatureList,
    FeaturePatch,
    Health,
    MyVotes,
    RoundList,
    Sort,
    Standings,
    Stats,
    Status,
    TokenOut,
    VoteIn,
    VoteOut,
)

REF: Final = "#/components/schemas/{name}"
BODY_ERRORS: Final = (400, 413, 415, 422)

# Ids and round numbers: positive, at most 18 digits (anything else is 404).
POSITIVE_ID: Final = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}
ID_PARAM: Final = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": POSITIVE_ID,
    "description": "Feature id; anything else is 404.",
}
LIST_PARAMS: Final = [
    {
        "name": "sort",
        "in": "query",
        "schema": {"enum": [s.value for s in Sort], "default": "top"},
        "description": (
            "top: score desc, up desc, id asc; new: id desc; wilson: lower bound of the 95 % "
            "Wilson score interval of up/(up+down) desc, features without votes last, id asc; "
            "controversial: (up+down)^(min(up,down)/max(up,down)) desc, votes desc, id asc "
            "(ADR-007). While results are hidden, top, wilson and controversial reach "
            "everyone but an admin in id order."
        ),
    },
    {"name": "status", "in": "query", "schema": {"enum": [s.value for s in Status]}},
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT},
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
        "description": (
            "Opaque; next_cursor of the previous page, with the same sort and status. "
            "Any other value is 422."
        ),
    },
]
IDEMPOTENCY_PARAM: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX,
        "pattern": "^[\\x21-\\x7e]+$",  # printable ASCII, no space
    },
    "description": "Same key and same body within the TTL: the first answer again, no new feature.",
}
ROUND_PARAM: Final = {
    "name": "n",
    "in": "path",
    "required": True,
    "schema": POSITIVE_ID,
    "description": "A closed round's number; anything else (the open round too) is 404.",
}
ROUND_QUERY: Final = {
    "name": "round",
    "in": "query",
    "required": False,
    "schema": POSITIVE_ID,
    "description": "A closed round (unknown: 404); absent, or the open round: the standings now.",
}
# Public reads that carry vote counts: a valid admin token sees hidden results; any other token
# (or none) is just a public reader, never a 401.
ADMIN_VIEW: Final = (
    "Send an admin bearer token to see vote counts while results are hidden; without one "
    "(or with any other token) up, down and score are null then."
)
IF_NONE_MATCH_PARAM: Final = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}


SLUG_PARAM: Final = {
    "name": "slug",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^({SLUG_PATTERN})$"},
    "description": "The board: `main` (the default board) or the slug POST /boards made.",
}
CODE_PARAM: Final = {
    "name": "code",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": (
        f"A join code: {JOIN_CODE_LENGTH} of {JOIN_CODE_ALPHABET}, in any case (spaces and "
        "dashes ignored)."
    ),
}


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    ok: int
    response: type | None = None
    request: type | None = None
    auth: str | None = None  # "voter" or "admin"
    errors: tuple[int, ...] = ()
    params: tuple[dict[str, Any], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    media: str = "application/json"
    description: str = ""
    error_media: str = "application/problem+json"  # the pages answer errors as HTML pages


def _vote_op(method: str, summary: str, request: type | None) -> Op:
    return Op(
        method,
        "/features/{id}/vote",
        summary,
        200,
        VoteOut,
        request=request,
        auth="voter",
        errors=(401, 404, 409, 429, 503),
        params=(ID_PARAM,),
    )


def _stats_op(path: str) -> Op:
    return Op(
        "get",
        path,
        "Totals, the top features and seq (ETag from seq)",
        200,
        Stats,
        errors=(304, 503),
        params=(IF_NONE_MATCH_PARAM,),
        headers={
            "ETag": 'W/"<epoch>.<seq>" (W/"<epoch>.<seq>-public" or -admin while hidden)'
        },
        description=ADMIN_VIEW,
    )


OPERATIONS: Final[list[Op]] = [
    Op(
        "get",
        "/features",
        "List features",
        200,
        FeatureList,
        errors=(422, 503),
        params=tuple(LIST_PARAMS),
        description=ADMIN_VIEW,
    ),
    Op(
        "post",
        "/features",
        "Propose a feature",
        201,
        Feature,
        request=FeatureCreate,
        auth="voter",
        errors=(401, 409, 429, 503),  # 409: the board holds max_features features
        params=(IDEMPOTENCY_PARAM,),
        headers={"Location": "/features/{id}"},
    ),
    _stats_op("/features/stats"),
    _stats_op("/stats"),
    Op(
        "get",
        "/features/{id}",
        "One feature",
        200,
        Feature,
        errors=(404, 503),
        params=(ID_PARAM,),
        description=ADMIN_VIEW,
    ),
    Op(
        "patch",
        "/features/{id}",
        "Change title, description or status",
        200,
        Feature,
        request=FeaturePatch,
        auth="admin",
        errors=(401, 403, 404, 503),
        params=(ID_PARAM,),
    ),
    Op(
        "delete",
        "/features/{id}",
        "Delete a feature and its votes",
        204,
        auth="admin",
        errors=(401, 403, 404, 503),
        params=(ID_PARAM,),
    ),
    _vote_op("put", "Set or move the caller's vote", VoteIn),
    _vote_op("post", "Same as PUT (for clients of the original design)", VoteIn),
    _vote_op("delete", "Retract the caller's vote (retracting nothing is fine)", None),
    Op(
        "get",
        "/me/votes",
        "The caller's current votes",
        200,
        MyVotes,
        auth="voter",
        errors=(401, 503),
    ),
    Op("post", "/auth/token", "Mint an anonymous voter token", 201, TokenOut, errors=(429, 503)),
    Op("get", "/board", "Title, round, lock and reveal state", 200, Board, errors=(503,)),
    Op(
        "patch",
        "/board",
        "Change the title, lock or unlock voting, hide or reveal results",
        200,
        Board,
        request=BoardPatch,
        auth="admin",
        errors=(401, 403, 503),
    ),
    Op(
        "post",
        "/board/reset",
        "Close the round: archive its standings, clear every vote, start the next round",
        200,
        Board,
        auth="admin",
        errors=(401, 403, 503),
    ),
    Op("get", "/rounds", "Closed rounds, newest first", 200, RoundList, errors=(503,)),
    Op(
        "get",
        "/rounds/{n}",
        "A closed round's final standings",
        200,
        Standings,
        errors=(404, 503),
        params=(ROUND_PARAM,),
        description=ADMIN_VIEW + " A round that closed hidden stays hidden to non-admins.",
    ),
    Op(
        "get",
        "/export.json",
        "Download the standings now, or of a closed round",
        200,
        Standings,
        errors=(404, 422, 503),
        params=(ROUND_QUERY,),
        headers={"Content-Disposition": 'attachment; filename="feature-votes-round-1.json"'},
        description=ADMIN_VIEW,
    ),
    Op(
        "get",
        "/export.csv",
        "Download the standings as CSV (header row; rank,id,title,status,up,down,score,...)",
        200,
        errors=(404, 422, 503),
        params=(ROUND_QUERY,),
        headers={"Content-Disposition": 'attachment; filename="feature-votes-round-1.csv"'},
        media="text/csv",
        description=ADMIN_VIEW,
    ),
    Op(
        "get",
        "/ws",
        "Live stats push (WebSocket upgrade; see the README)",
        101,
        errors=(403, 426, 429, 503),
        media="text/plain",
    ),
    Op("get", "/healthz", "Liveness", 200, Health),
    Op("get", "/readyz", "Readiness: store reachable and not draining", 200, Health, errors=(503,)),
    Op("get", "/metrics", "Prometheus metrics", 200, media="text/plain"),
    Op("get", "/openapi.json", "This document", 200, media="application/json"),
    Op("get", "/docs", "Swagger UI for this document", 200, media="text/html"),
    Op("get", "/", "The live dashboard page", 200, media="text/html"),
    Op(
        "get",
        "/present",
        "The shared-screen presenter page with a join QR code",
        200,
        media="text/html",
    ),
    Op(
        "get",
        "/new",
        "The page that makes a board and opens its presenter view",
        200,
        media="text/html",
    ),
    Op("get", "/join", "The page to type a join code on", 200, media="text/html"),
    Op(
        "get",
        "/join/{code}",
        "Redirect (303) to the dashboard of the board with this join code",
        303,
        errors=(404,),
        params=(CODE_PARAM,),
        media="text/html",
        headers={"Location": "/b/{slug}"},
        error_media="text/html",
    ),
    Op(
        "get",
        "/b/{slug}",
        "A board's live dashboard page",
        200,
        errors=(404,),
        params=(SLUG_PARAM,),
        media="text/html",
        error_media="text/html",
    ),
    Op(
        "get",
        "/b/{slug}/present",
        "A board's shared-screen page (join code and QR)",
        200,
        errors=(404,),
        params=(SLUG_PARAM,),
        media="text/html",
        error_media="text/html",
    ),
    Op(
        "get",
        "/b/{slug}/control",
        "A board's presenter controls, for the presenter's device",
        200,
        errors=(404,),
        params=(SLUG_PARAM,),
        media="text/html",
        error_media="text/html",
    ),
]


# The default board's paths that every board also answers under /boards/{slug} (ADR-012).
BOARD_PATHS: Final = {
    "/features": "/features",
    "/features/stats": "/features/stats",
    "/stats": "/stats",
    "/features/{id}": "/features/{id}",
    "/features/{id}/vote": "/features/{id}/vote",
    "/me/votes": "/me/votes",
    "/board": "",
    "/board/reset": "/reset",
    "/rounds": "/rounds",
    "/rounds/{n}": "/rounds/{n}",
    "/export.json": "/export.json",
    "/export.csv": "/export.csv",
    "/ws": "/ws",
}


def _on_board(op: Op) -> Op:
    """The same operation on any board, under /boards/{slug}; an unknown board is 404."""
    headers = {k: v.replace("/features", "/boards/{slug}/features") for k, v in op.headers.items()}
    return replace(
        op,
        path="/boards/{slug}" + BOARD_PATHS[op.path],
        summary=op.summary + " (on one board)",
        errors=tuple(sorted({*op.errors, 404})),
        params=(SLUG_PARAM, *op.params),
        headers=headers,
    )


BOARD_OPERATIONS: Final[list[Op]] = [
    Op(
        "post",
        "/boards",
        "Make a board: its join code, and the admin token of that board only",
        201,
        BoardCreated,
        request=BoardCreate,
        errors=(401, 403, 409, 429, 503),  # 409: max_boards; 401/403: board_creation = admin
        headers={"Location": "/boards/{slug}"},
        description=(
            "Anyone may, within a per-address rate limit (board_create_rate); with "
            'board_creation = "admin" only a site admin token. The admin_token is shown once.'
        ),
    ),
    Op(
        "get",
        "/boards",
        "Every board (site admins only: knowing a slug or a code is what lets one in)",
        200,
        BoardList,
        auth="admin",
        errors=(403, 422, 503),
        params=tuple(p for p in LIST_PARAMS if p["name"] in ("limit", "cursor")),
    ),
    Op(
        "delete",
        "/boards/{slug}",
        "Delete a board with its features, votes and rounds; its sockets close with 1001",
        204,
        auth="admin",
        errors=(403, 404, 409, 503),  # 409: main
        params=(SLUG_PARAM,),
    ),
    Op(
        "get",
        "/boards/by-code/{code}",
        "The board a join code names",
        200,
        Board,
        errors=(404, 503),
        params=(CODE_PARAM,),
    ),
]
OPERATIONS.extend(_on_board(op) for op in list(OPERATIONS) if op.path in BOARD_PATHS)
OPERATIONS.extend(BOARD_OPERATIONS)


def _problem(status: int, media: str = "application/problem+json") -> dict[str, Any]:
    schema = {"$ref": REF.format(name="Problem")} if media.endswith("json") else {}
    content = {media: {"schema": schema}}
    response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if status != 304:
        response["content"] = content
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _header(r"^Bearer(\s|$)", "Bearer")}
    if status in (429, 503):
        response["headers"] = {"Retry-After": _header("^[0-9]+$", "seconds")}
    return response


def _header(pattern: str, description: str) -> dict[str, Any]:
    """A response header that is always sent."""
    return {
        "required": True,
        "schema": {"type": "string", "pattern": pattern},
        "description": description,
    }


def _operation(op: Op) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": HTTPStatus(op.ok).phrase}
    if op.response is not None:
        ok["content"] = {op.media: {"schema": {"$ref": REF.format(name=op.response.__name__)}}}
    elif op.ok != 204:
        ok["content"] = {op.media: {"schema": {}}}
    if op.headers:
        ok["headers"] = {
            name: {"required": True, "schema": {"type": "string"}, "description": f"e.g. {example}"}
            for name, example in op.headers.items()
        }
    errors = set(op.errors)
    if op.request is not None:
        errors |= set(BODY_ERRORS)
    if op.auth is not None:
        # 429: a new token from an address over its failed-token budget (auth_failure_rate),
        # refused before its signature is checked.
        errors |= {401, 429}
    responses = {str(op.ok): ok} | {str(s): _problem(s, op.error_media) for s in sorted(errors)}
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method + re.sub(r"[^a-z]+", "_", op.path.lower()).rstrip("_"),
        "responses": responses,
    }
    if op.params:
        out["parameters"] = list(op.params)
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(name=op.request.__name__)}}
            },
        }
    if op.description:
        out["description"] = op.description
    if op.auth is not None:
        out["security"] = [{"bearer": []}]
        if op.auth == "admin":
            out["description"] = (
                "Needs an admin token of this board: a site admin's (python -m service token "
                "--admin) or the one POST /boards gave for it; another board's is 403."
            )
    return out


def build_document() -> dict[str, Any]:
    """The whole document as plain data, ready to encode."""
    _, components = msgspec.json.schema_components(RESPONSE_TYPES + REQUEST_TYPES, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Feature Votes",
            "version": __version__,
            "description": "Propose features, vote on them, and watch the board change live.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def document_bytes() -> bytes:
    return msgspec.json.encode(build_document())
