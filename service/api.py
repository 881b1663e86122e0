"""Thin REST handlers: parse, authorise, call the store, encode. No state between requests."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from . import keys
from .auth import (
    Claims,
    Role,
    TokenInvalid,
    TokenMissing,
    Tokens,
    bearer_token,
    require_role,
)
from .errors import ApiError, invalid_input
from .logs import VOTER_KEY
from .schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    RANKED_SORTS,
    Feature,
    FeatureList,
    MyVotes,
    ProblemItem,
    Sort,
    Status,
    TokenOut,
    VoteOut,
    encoder,
    feature_create_decoder,
    feature_patch_decoder,
    vote_decoder,
)
from .store import Audience, CursorKey, StatsView
from .store.base import HIDDEN_KEY_LENGTH, KEY_LENGTH

JSON: Final = "application/json"
# Answers whose numbers depend on who asks (hidden results): caches must key on the token.
VARY_AUTH: Final = {"Vary": "Authorization"}
NO_STORE: Final = {"Cache-Control": "no-store"}  # a new token is nobody else's
_FEATURE_ID: Final = re.compile(r"^[1-9][0-9]{0,17}$")
_IDEMPOTENCY_KEY: Final = re.compile(rf"^[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}$")
_LIMIT: Final = re.compile(r"^[0-9]{1,3}$")
_CURSOR: Final = re.compile(CURSOR_PATTERN)
_cursor_decoder: Final = msgspec.json.Decoder(list[str | int])
ID_ORDER: Final = "id"  # cursor marker: the key is (id,) of a listing in id order
T = TypeVar("T")

routes = web.RouteTableDef()


def json_response(
    obj: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=encoder.encode(obj), status=status, content_type=JSON, headers=headers)


def _query_error(name: str, msg: str) -> ApiError:
    return ApiError(422, f"{name}: {msg}", errors=[ProblemItem(loc=f"query.{name}", msg=msg)])


def claims_of(request: web.Request, role: Role = Role.VOTER) -> Claims:
    """Verified claims of the request's bearer token (401/403 through the domain errors)."""
    claims = request.app[keys.TOKENS].verify(bearer_token(request.headers.get("Authorization")))
    request[VOTER_KEY] = claims.sub  # for the access log, which writes only a hash of it
    return require_role(claims, role)


def voter_claims(tokens: Tokens, authorization: str) -> Claims:
    """claims_of for a caller without an aiohttp request."""
    return require_role(tokens.verify(bearer_token(authorization)), Role.VOTER)


def client_of(request: web.Request) -> str:
    """The client's address for per-address limits (X-Forwarded-For only from trusted proxies)."""
    return request.app[keys.RATE_LIMITS].address(
        request.remote, request.headers.get("X-Forwarded-For")
    )


def audience_of(request: web.Request) -> Audience:
    """ADMIN for a valid admin token; anyone else (no, bad or voter token) reads as PUBLIC."""
    return audience_from(request.app[keys.TOKENS], request.headers.get("Authorization"))


def audience_from(tokens: Tokens, authorization: str | None) -> Audience:
    """audience_of an Authorization header.

    Public reads never fail on a token: one that is not a valid admin token just gets the view
    everyone gets (with hidden results: no numbers).
    """
    if not authorization:
        return Audience.PUBLIC
    try:
        claims = tokens.verify(bearer_token(authorization))
    except (TokenMissing, TokenInvalid):
        return Audience.PUBLIC
    return audience_for(claims)


def audience_for(claims: Claims) -> Audience:
    return Audience.ADMIN if claims.role is Role.ADMIN else Audience.PUBLIC


def feature_id(request: web.Request) -> int:
    return parse_feature_id(request.match_info["id"])


def parse_feature_id(raw: str) -> int:
    if not _FEATURE_ID.match(raw):
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


@routes.get("/features/stats")
@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    view, headers = await stats_view(request.app, request.headers.get("Authorization"))
    if etag_matches(request.headers.get("If-None-Match"), view.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=view.body, content_type=JSON, headers=headers)


async def stats_view(
    app: web.Application, authorization: str | None
) -> tuple[StatsView, dict[str, str]]:
    """The stats the caller may see and the headers of their answer
    service/votelane.py alike)."""
    view = await app[keys.STORE].stats(audience_from(app[keys.TOKENS], authorization))
    # The ETag names the audience whenever the audiences' bodies differ, so an admin's tag never
    # earns a public reader a 304 (etag_for).
    return view, {"ETag": view.etag, "Cache-Control": "no-cache", **VARY_AUTH}


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


@routes.get("/features")
async def list_features(request: web.Request) -> web.Response:
    sort = Sort(_enum_query(request, "sort", Sort) or Sort.TOP)
    raw_status = _enum_query(request, "status", Status)
    status = Status(raw_status) if raw_status else None
    raw_limit = request.query.get("limit", str(PAGE_DEFAULT))
    if not (_LIMIT.match(raw_limit) and 1 <= int(raw_limit) <= PAGE_MAX):
        raise _query_error("limit", f"must be an integer from 1 to {PAGE_MAX}")
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, sort, status) if cursor else None
    page = await request.app[keys.STORE].list_features(
        sort=sort, status=status, limit=int(raw_limit), after=after, audience=audience_of(request)
    )
    next_cursor = encode_cursor(sort, status, page.next_key) if page.next_key else None
    return json_response(FeatureList(items=page.items, next_cursor=next_cursor), headers=VARY_AUTH)


def _created(feature: Feature, replayed: bool) -> web.Response:
    headers = {"Location": f"/features/{feature.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(feature, status=201, headers=headers)


@routes.post("/features")
async def create_feature(request: web.Request) -> web.Response:
    claims = claims_of(request)
    limits = request.app[keys.RATE_LIMITS]
    await limits.check(limits.create, claims.sub)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(
            422,
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters",
            errors=[ProblemItem(loc="header.Idempotency-Key", msg="invalid")],
        )
    new = await read_body(request, feature_create_decoder)
    created = await request.app[keys.STORE].create_feature(
        new, owner=claims.sub, idempotency_key=key, audience=audience_for(claims)
    )
    if not created.replayed:
        request.app[keys.METRICS].features.labels("create").inc()
    return _created(created.feature, created.replayed)


# Digits only, so /features/stats keeps its own methods: PATCH or DELETE on it is a 405 (with
# Allow), not an admin operation on a feature called "stats".
FEATURE_PATH: Final = "/features/{id:[0-9]+}"


@routes.get(FEATURE_PATH)
async def get_feature(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    feature = await store.get_feature(feature_id(request), audience=audience_of(request))
    return json_response(feature, headers=VARY_AUTH)


@routes.patch(FEATURE_PATH)
async def patch_feature(request: web.Request) -> web.Response:
    claims_of(request, Role.ADMIN)
    fid = feature_id(request)
    patch = await read_body(request, feature_patch_decoder)
    feature = await request.app[keys.STORE].update_feature(fid, patch)
    request.app[keys.METRICS].features.labels("update").inc()
    return json_response(feature)


@routes.delete(FEATURE_PATH)
async def delete_feature(request: web.Request) -> web.Response:
    claims_of(request, Role.ADMIN)
    await request.app[keys.STORE].delete_feature(feature_id(request))
    request.app[keys.METRICS].features.labels("delete").inc()
    return web.Response(status=204)


# --- votes --------------------------------------------------------------------------------------


@routes.put("/features/{id}/vote")
@routes.post("/features/{id}/vote")
async def put_vote(request: web.Request) -> web.Response:
    result = await cast_vote(
        request.app,
        claims_of(request),
        request.match_info["id"],
        request.content_type,
        functools.partial(read_raw, request),
    )
    return json_response(result)


async def cast_vote(
    app: web.Application,
    claims: Claims,
    raw_id: str,
    content_type: str,
    read: Callable[[], Awaitable[bytes]],
) -> VoteOut:
    """A voter's vote, after the token: rate limit, feature id, body, store, metric — in that
    order, so either HTTP path (this module's handler or service/votelane.py) fails alike."""
    limits = app[keys.RATE_LIMITS]
    await limits.check(limits.vote, claims.sub)
    fid = parse_feature_id(raw_id)
    check_media_type(content_type)
    vote = decode_json(await read(), vote_decoder)
    result = await app[keys.STORE].set_vote(
        claims.sub, fid, vote.value, audience=audience_for(claims)
    )
    app[keys.METRICS].votes_set.inc()
    return result


@routes.delete("/features/{id}/vote")
async def retract_vote(request: web.Request) -> web.Response:
    return json_response(await retract(request.app, claims_of(request), request.match_info["id"]))


async def retract(app: web.Application, claims: Claims, raw_id: str) -> VoteOut:
    """A voter takes their vote back (value 0), after the token: rate limit, feature id, store,
    metric (this module's handler and service/votelane.py alike)."""
    limits = app[keys.RATE_LIMITS]
    await limits.check(limits.vote, claims.sub)
    result = await app[keys.STORE].set_vote(
        claims.sub, parse_feature_id(raw_id), 0, audience=audience_for(claims)
    )
    app[keys.METRICS].votes_retracted.inc()
    return result


@routes.get("/me/votes")
async def my_votes(request: web.Request) -> web.Response:
    claims = claims_of(request)
    votes = await request.app[keys.STORE].votes_of(claims.sub)
    return json_response(MyVotes(votes={str(k): v for k, v in votes.items()}))  # type: ignore[misc]


@routes.post("/auth/token")
async def issue_token(request: web.Request) -> web.Response:
    out = await new_voter(request.app, request.remote, request.headers.get("X-Forwarded-For"))
    return json_response(out, status=201, headers=NO_STORE)


async def new_voter(
    app: web.Application, remote: str | None, forwarded_for: str | None
) -> TokenOut:
    """A new anonymous voter's token, within the per-address rate
    service/votelane.py alike)."""
    limits = app[keys.RATE_LIMITS]
    await limits.check(limits.token, limits.address(remote, forwarded_for))
    token, claims = app[keys.TOKENS].issue(Role.VOTER)
    return TokenOut(token=token, voter_id=claims.sub, expires_at=_utc(claims.exp))


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
