"""Thin REST handlers: parse the request, call the core (service/core.py), render the answer."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from . import keys
from .auth import Claims, Role
from .core import Core
from .errors import ApiError, invalid_input
from .logs import VOTER_KEY
from .schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_MAX,
    MAIN_SLUG,
    PAGE_DEFAULT,
    PAGE_MAX,
    RANKED_SORTS,
    SLUG_PATTERN,
    Feature,
    FeatureList,
    MyVotes,
    ProblemItem,
    Sort,
    Status,
    encoder,
    feature_create_decoder,
    feature_patch_decoder,
    vote_decoder,
)
from .store import Audience, BoardNotFound, CursorKey, Store
from .store.base import HIDDEN_KEY_LENGTH, KEY_LENGTH

JSON: Final = "application/json"
# Answers whose numbers depend on who asks (hidden results): caches must key on the token.
VARY_AUTH: Final = {"Vary": "Authorization"}
NO_STORE: Final = {"Cache-Control": "no-store"}  # a new token is nobody else's
# Whole-string matches only (fullmatch): with re.match, "$" also matches before a trailing
# newline, so "1\n" (a path's %0A) would pass, and int() ignores the newline.
_FEATURE_ID: Final = re.compile(r"[1-9][0-9]{0,17}")
_IDEMPOTENCY_KEY: Final = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")
_LIMIT: Final = re.compile(r"[0-9]{1,3}")
_CURSOR: Final = re.compile(CURSOR_PATTERN)
_SLUG: Final = re.compile(SLUG_PATTERN)
# Every board answers under /boards/{slug}; the paths without it are the default board's.
BOARD_PREFIX: Final = "/boards/{slug}"
_cursor_decoder: Final = msgspec.json.Decoder(list[str | int])
ID_ORDER: Final = "id"  # cursor marker: the key is (id,) of a listing in id order
T = TypeVar("T")

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def on_every_board(
    table: web.RouteTableDef, method: str, *paths: str
) -> Callable[[Handler], Handler]:
    """Register a handler under each path for the default board and under /boards/{slug}."""

    def register(handler: Handler) -> Handler:
        for path in paths:
            table.route(method, path)(handler)
            table.route(method, BOARD_PREFIX + path)(handler)
        return handler

    return register


def json_response(
    obj: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=encoder.encode(obj), status=status, content_type=JSON, headers=headers)


def _query_error(name: str, msg: str) -> ApiError:
    return ApiError(422, f"{name}: {msg}", errors=[ProblemItem(loc=f"query.{name}", msg=msg)])


def core_of(request: web.Request) -> Core:
    return request.app[keys.CORE]


def client_of(request: web.Request) -> str:
    """The client's address for per-address limits (X-Forwarded-For only from trusted proxies)."""
    return request.app[keys.RATE_LIMITS].address(
        request.remote, request.headers.get("X-Forwarded-For")
    )


def slug_of(request: web.Request) -> str:
    """The board a request is on: its path's slug, or the default board's."""
    return request.match_info.get("slug", MAIN_SLUG)


async def board_of(request: web.Request) -> Store:
    """The store of the board a request is on; 404 for a board that does not exist."""
    slug = slug_of(request)
    if not _SLUG.fullmatch(slug):
        raise BoardNotFound(f"board {slug!r} does not exist")
    return await core_of(request).board_store(slug)


async def claims_of(request: web.Request, role: Role = Role.VOTER) -> Claims:
    """Verified claims of the request's bearer token (401/403/429 through the domain errors)."""
    claims = await core_of(request).claims(
        request.headers.get("Authorization"), client_of(request), role
    )
    request[VOTER_KEY] = claims.sub  # for the access log, which writes only a hash of it
    return claims


async def audience_of(request: web.Request, board: Store) -> Audience:
    """ADMIN for a valid admin token of this board; anyone else reads as PUBLIC."""
    authorization = request.headers.get("Authorization")
    if not authorization:
        return Audience.PUBLIC
    return await core_of(request).audience(authorization, client_of(request), board.slug)


def feature_id(request: web.Request) -> int:
    return parse_feature_id(request.match_info["id"])


def parse_feature_id(raw: str) -> int:
    if not _FEATURE_ID.fullmatch(raw):
        raise ApiError(404, f"feature {raw!r} does not exist; ids are positive integers")
    return int(raw)


def check_media_type(content_type: str) -> None:
    """415 unless the body is declared JSON."""
    if content_type != JSON and not content_type.endswith("+json"):
        raise ApiError(415, f"send the body as {JSON}, not {content_type!r}")


async def read_raw(request: web.Request) -> bytes:
    """The whole body (413 over the size limit through aiohttp)."""
    try:
        return await request.read()
    except web.RequestPayloadError as exc:  # undecodable Content-Encoding, broken chunking
        raise ApiError(400, f"the body could not be read: {exc.__cause__ or exc}") from None


def decode_json(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """400 for bytes that are not JSON (or not UTF-8), 422 for the wrong shape or values."""
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise invalid_input(exc) from None
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 inside strings and keys lazily
        raise ApiError(
            400,
            "the body is not valid UTF-8",
            errors=[ProblemItem(loc="$", msg=f"invalid UTF-8 at byte {exc.start}")],
        ) from None


async def read_body(request: web.Request, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode a JSON body; 415 for another media type, 413 over the size limit, 400/422 else."""
    check_media_type(request.content_type)
    return decode_json(await read_raw(request), decoder)


# --- stats and identity -------------------------------------------------------------------------


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of an If-None-Match list against our ETag."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


@on_every_board(routes, "GET", "/features/stats", "/stats")
async def stats(request: web.Request) -> web.Response:
    board = await board_of(request)
    view = await core_of(request).stats(board, await audience_of(request, board))
    # The ETag names the audience whenever the audiences' bodies differ, so an admin's tag never
    # earns a public reader a 304 (etag_for).
    headers = {"ETag": view.etag, "Cache-Control": "no-cache", **VARY_AUTH}
    if etag_matches(request.headers.get("If-None-Match"), view.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=view.body, content_type=JSON, headers=headers)


# --- features -----------------------------------------------------------------------------------


def encode_cursor(sort: Sort, status: Status | None, key: CursorKey) -> str:
    # A ranked listing that ran by id (hidden results) marks its key, so no other cursor of
    # that sort is mistaken for one.
    marker = [ID_ORDER] if sort in RANKED_SORTS and len(key) == HIDDEN_KEY_LENGTH else []
    raw = encoder.encode([sort.value, status.value if status else "", *marker, *key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sort, status: Status | None) -> CursorKey:
    try:
        if not _CURSOR.fullmatch(cursor):  # b64decode would skip stray characters
            raise ValueError(cursor)
        parts = _cursor_decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _query_error("cursor", "not a cursor this server made") from None
    if parts[:2] != [sort.value, status.value if status else ""]:
        raise _query_error("cursor", "the cursor belongs to another sort or status")
    key = parts[2:]
    length = KEY_LENGTH[sort]
    if sort in RANKED_SORTS and key[:1] == [ID_ORDER]:
        key, length = key[1:], HIDDEN_KEY_LENGTH
    if len(key) != length or not all(type(k) is int for k in key):
        raise _query_error("cursor", "not a cursor this server made")
    return tuple(k for k in key if isinstance(k, int))


def _enum_query(request: web.Request, name: str, kind: type[Sort] | type[Status]) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw).value
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise _query_error(name, f"must be one of {allowed}") from None


@on_every_board(routes, "GET", "/features")
async def list_features(request: web.Request) -> web.Response:
    board = await board_of(request)
    sort = Sort(_enum_query(request, "sort", Sort) or Sort.TOP)
    raw_status = _enum_query(request, "status", Status)
    status = Status(raw_status) if raw_status else None
    raw_limit = request.query.get("limit", str(PAGE_DEFAULT))
    if not (_LIMIT.fullmatch(raw_limit) and 1 <= int(raw_limit) <= PAGE_MAX):
        raise _query_error("limit", f"must be an integer from 1 to {PAGE_MAX}")
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, sort, status) if cursor else None
    page = await core_of(request).features(
        board,
        sort=sort,
        status=status,
        limit=int(raw_limit),
        after=after,
        audience=await audience_of(request, board),
    )
    next_cursor = encode_cursor(sort, status, page.next_key) if page.next_key else None
    return json_response(FeatureList(items=page.items, next_cursor=next_cursor), headers=VARY_AUTH)


def board_path(slug: str) -> str:
    """Where a board's paths start: '' for the default board, else /boards/{slug}."""
    return "" if slug == MAIN_SLUG else f"/boards/{slug}"


def _created(slug: str, feature: Feature, replayed: bool) -> web.Response:
    headers = {"Location": f"{board_path(slug)}/features/{feature.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(feature, status=201, headers=headers)


@on_every_board(routes, "POST", "/features")
async def create_feature(request: web.Request) -> web.Response:
    core = core_of(request)
    claims = await claims_of(request)  # 401 before anything about the board
    board = await board_of(request)
    ticket = await core.admit_proposal(board, claims)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            422,
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters",
            errors=[ProblemItem(loc="header.Idempotency-Key", msg="invalid")],
        )
    new = await read_body(request, feature_create_decoder)
    created = await core.propose(board, ticket, new, key)
    return _created(board.slug, created.feature, created.replayed)


# Digits only, so /features/stats keeps its own methods: PATCH or DELETE on it is a 405 (with
# Allow), not an admin operation on a feature called "stats".
FEATURE_PATH: Final = "/features/{id:[0-9]+}"


@on_every_board(routes, "GET", FEATURE_PATH)
async def get_feature(request: web.Request) -> web.Response:
    board = await board_of(request)
    fid = feature_id(request)
    feature = await core_of(request).feature(board, fid, await audience_of(request, board))
    return json_response(feature, headers=VARY_AUTH)


@on_every_board(routes, "PATCH", FEATURE_PATH)
async def patch_feature(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    board = await board_of(request)
    fid = feature_id(request)
    patch = await read_body(request, feature_patch_decoder)
    return json_response(await core_of(request).patch_feature(board, admin, fid, patch))


@on_every_board(routes, "DELETE", FEATURE_PATH)
async def delete_feature(request: web.Request) -> web.Response:
    admin = await claims_of(request, Role.ADMIN)
    board = await board_of(request)
    await core_of(request).delete_feature(board, admin, feature_id(request))
    return web.Response(status=204)


# --- votes --------------------------------------------------------------------------------------


@on_every_board(routes, "PUT", "/features/{id}/vote")
@on_every_board(routes, "POST", "/features/{id}/vote")
async def put_vote(request: web.Request) -> web.Response:
    # token, board, rate limit, feature id, media type, body, store, metric: a flood is
    # refused before its id or body is looked at.
    core = core_of(request)
    claims = await claims_of(request)
    board = await board_of(request)
    ticket = await core.admit_vote(board, claims)
    fid = feature_id(request)
    vote = await read_body(request, vote_decoder)
    return json_response(await core.vote(board, ticket, fid, vote.value))


@on_every_board(routes, "DELETE", "/features/{id}/vote")
async def retract_vote(request: web.Request) -> web.Response:
    core = core_of(request)
    claims = await claims_of(request)
    board = await board_of(request)
    ticket = await core.admit_vote(board, claims)
    return json_response(await core.retract(board, ticket, feature_id(request)))


@on_every_board(routes, "GET", "/me/votes")
async def my_votes(request: web.Request) -> web.Response:
    claims = await claims_of(request)
    board = await board_of(request)
    votes = await core_of(request).my_votes(board, claims)
    return json_response(MyVotes(votes={str(k): v for k, v in votes.items()}))


@routes.post("/auth/token")
async def issue_token(request: web.Request) -> web.Response:
    out = await core_of(request).new_voter(client_of(request))
    return json_response(out, status=201, headers=NO_STORE)
