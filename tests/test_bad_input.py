"""No input, however malformed, yields a 5xx or a half-applied change (API.md, "All bodies").

One table: every row is sent to the real app over a loopback socket after a feature and a vote
have been seeded; each must get a 4xx problem+json answer and leave stats and listings as they were.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.auth import Role, Tokens, key_id
from service.config import Secret, Settings

from .conftest import TEST_SECRET, Client, bearer, create_feature

JSON = "application/json"
PROBLEM = "application/problem+json"
OTHER_SECRET = "another-secret-nobody-here-knows-0002"
HUGE = b'{"title": "' + b"a" * (10 * 1024 * 1024) + b'"}'  # 10 MB
VOTE = "/features/{fid}/vote"
FEATURE = "/features/{fid}"
UNCHANGING_VOTE = json.dumps({"value": -1}).encode()  # the seeded vote is +1: this would move it
# Content-Encoding rows close their connection, so a server that gives up on one cannot spill
# into the snapshot requests that follow.
GZIP = {"Content-Encoding": "gzip", "Connection": "close"}
DEFLATE = {"Content-Encoding": "deflate", "Connection": "close"}


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cursor(parts: Any) -> str:
    return b64url(json.dumps(parts).encode())


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # "{fid}" becomes the seeded feature's id
    status: int | tuple[int, ...]
    body: bytes | None = None
    content_type: str | None = JSON
    auth: str = "voter"  # a key of token_header()
    headers: dict[str, str] = field(default_factory=dict)


def case(
    id_: str,
    method: str,
    path: str,
    status: int | tuple[int, ...],
    body: bytes | None = None,
    **kw: Any,
) -> Any:
    return pytest.param(Case(method, path, status, body, **kw), id=id_)


CASES = [
    # --- vote bodies -------------------------------------------------------------------------
    case("vote-malformed-json", "PUT", VOTE, 400, b'{"value": -1'),
    case("vote-unquoted-key", "PUT", VOTE, 400, b"{value: -1}"),
    case("vote-trailing-garbage", "PUT", VOTE, 400, b'{"value": -1} x'),
    case("vote-nul-after-json", "PUT", VOTE, 400, b'{"value": -1}\x00'),
    case("vote-empty-body", "PUT", VOTE, 400, b""),
    case("vote-invalid-utf8", "PUT", VOTE, 400, b"\xff\xfe\xfd"),
    case("vote-invalid-utf8-in-string", "PUT", VOTE, (400, 422), b'{"value": "\xff"}'),
    case("vote-value-0", "PUT", VOTE, 422, js({"value": 0})),
    case("vote-value-2", "PUT", VOTE, 422, js({"value": 2})),
    case("vote-value--2", "POST", VOTE, 422, js({"value": -2})),
    case("vote-value-string", "PUT", VOTE, 422, js({"value": "-1"})),
    case("vote-value-float", "PUT", VOTE, 422, b'{"value": -1.0}'),
    case("vote-value-true", "PUT", VOTE, 422, js({"value": True})),
    case("vote-value-null", "PUT", VOTE, 422, js({"value": None})),
    case("vote-value-huge", "PUT", VOTE, 422, js({"value": 10**30})),
    case("vote-value-huge-negative", "POST", VOTE, 422, js({"value": -(10**30)})),
    case("vote-value-1e400", "PUT", VOTE, 422, b'{"value": -1e400}'),
    case("vote-value-list", "PUT", VOTE, 422, js({"value": [-1]})),
    case("vote-value-missing", "PUT", VOTE, 422, js({})),
    case("vote-extra-field", "PUT", VOTE, 422, js({"value": -1, "feature_id": 1})),
    case("vote-wrong-key", "POST", VOTE, 422, js({"vote": -1})),
    case("vote-array", "PUT", VOTE, 422, js([])),
    case("vote-string", "PUT", VOTE, 422, js("x")),
    case("vote-number", "PUT", VOTE, 422, js(1)),
    case("vote-null", "PUT", VOTE, 422, b"null"),
    case("vote-text-plain", "PUT", VOTE, 415, UNCHANGING_VOTE, content_type="text/plain"),
    case(
        "vote-form", "PUT", VOTE, 415, b"value=-1", content_type="application/x-www-form-urlencoded"
    ),
    case("vote-no-content-type", "PUT", VOTE, 415, UNCHANGING_VOTE, content_type=None),
    case("vote-invalid-utf8-in-key", "PUT", VOTE, 400, b'{"\xff": -1}'),
    case("vote-10mb", "PUT", VOTE, 413, HUGE),
    case("vote-deflate-garbage", "PUT", VOTE, 400, b"not deflate data", headers=DEFLATE),
    # --- feature bodies ----------------------------------------------------------------------
    case("create-malformed-json", "POST", "/features", 400, b'{"title": "x"'),
    case("create-empty-body", "POST", "/features", 400, b""),
    case("create-invalid-utf8", "POST", "/features", 400, b"\xc3\x28"),
    case("create-invalid-utf8-in-title", "POST", "/features", 400, b'{"title": "ab\xff\xfe"}'),
    case("create-invalid-utf8-in-key", "POST", "/features", 400, b'{"title": "ok", "\xc0": 1}'),
    case("create-gzip-garbage", "POST", "/features", 400, b"not gzip data", headers=GZIP),
    case(
        "create-gzip-bad-utf8",
        "POST",
        "/features",
        400,
        gzip.compress(b'{"title": "\xff"}'),
        headers=GZIP,
    ),
    case("create-gzip-bomb", "POST", "/features", 413, gzip.compress(HUGE), headers=GZIP),
    case(
        "create-deep-nesting",
        "POST",
        "/features",
        422,
        b'{"title": "ok", "description": ' + b"[" * 30_000 + b"}",
    ),
    case("create-surrogate-escape", "POST", "/features", (400, 422), b'{"title": "\\ud800"}'),
    case("create-title-empty", "POST", "/features", 422, js({"title": ""})),
    case("create-title-whitespace", "POST", "/features", 422, js({"title": " \t\n  "})),
    case("create-title-121", "POST", "/features", 422, js({"title": "x" * 121})),
    case("create-title-10k", "POST", "/features", 422, js({"title": "x" * 10_000})),
    case(
        "create-description-2001",
        "POST",
        "/features",
        422,
        js({"title": "ok", "description": "d" * 2001}),
    ),
    case("create-title-nul", "POST", "/features", 422, js({"title": "bad\x00title"})),
    case("create-title-escape", "POST", "/features", 422, js({"title": "\x1b[31mred"})),
    case("create-title-del", "POST", "/features", 422, js({"title": "a\x7fb"})),
    case(
        "create-description-bell",
        "POST",
        "/features",
        422,
        js({"title": "ok", "description": "ding\x07"}),
    ),
    case("create-title-number", "POST", "/features", 422, js({"title": 123})),
    case("create-title-null", "POST", "/features", 422, js({"title": None})),
    case("create-title-object", "POST", "/features", 422, js({"title": {"x": 1}})),
    case(
        "create-description-list", "POST", "/features", 422, js({"title": "ok", "description": []})
    ),
    case("create-title-missing", "POST", "/features", 422, js({"description": "no title"})),
    case("create-extra-field", "POST", "/features", 422, js({"title": "ok", "status": "done"})),
    case("create-extra-id", "POST", "/features", 422, js({"title": "ok", "id": 1})),
    case("create-array", "POST", "/features", 422, js([])),
    case("create-string", "POST", "/features", 422, js("x")),
    case("create-number", "POST", "/features", 422, js(1)),
    case(
        "create-text-plain",
        "POST",
        "/features",
        415,
        js({"title": "ok"}),
        content_type="text/plain",
    ),
    case("create-10mb", "POST", "/features", 413, HUGE),
    case(
        "create-idem-key-too-long",
        "POST",
        "/features",
        422,
        js({"title": "ok"}),
        headers={"Idempotency-Key": "k" * 256},
    ),
    case(
        "create-idem-key-space",
        "POST",
        "/features",
        422,
        js({"title": "ok"}),
        headers={"Idempotency-Key": "a b"},
    ),
    case(
        "create-idem-key-non-ascii",
        "POST",
        "/features",
        422,
        js({"title": "ok"}),
        headers={"Idempotency-Key": "ключ"},
    ),
    case(
        "create-idem-key-empty",
        "POST",
        "/features",
        422,
        js({"title": "ok"}),
        headers={"Idempotency-Key": ""},
    ),
    case(
        "create-idem-key-tab",
        "POST",
        "/features",
        422,
        js({"title": "ok"}),
        headers={"Idempotency-Key": "a\tb"},
    ),
    # --- patch bodies (admin) ----------------------------------------------------------------
    case("patch-status-unknown", "PATCH", FEATURE, 422, js({"status": "closed"}), auth="admin"),
    case("patch-status-empty", "PATCH", FEATURE, 422, js({"status": ""}), auth="admin"),
    case("patch-status-upper", "PATCH", FEATURE, 422, js({"status": "DONE"}), auth="admin"),
    case("patch-status-number", "PATCH", FEATURE, 422, js({"status": 3}), auth="admin"),
    case("patch-title-empty", "PATCH", FEATURE, 422, js({"title": ""}), auth="admin"),
    case("patch-title-whitespace", "PATCH", FEATURE, 422, js({"title": "   "}), auth="admin"),
    case("patch-title-121", "PATCH", FEATURE, 422, js({"title": "t" * 121}), auth="admin"),
    case("patch-title-null", "PATCH", FEATURE, 422, js({"title": None}), auth="admin"),
    case("patch-title-control", "PATCH", FEATURE, 422, js({"title": "a\x01"}), auth="admin"),
    case(
        "patch-description-2001",
        "PATCH",
        FEATURE,
        422,
        js({"description": "d" * 2001}),
        auth="admin",
    ),
    case("patch-score", "PATCH", FEATURE, 422, js({"score": 100}), auth="admin"),
    case(
        "patch-valid-and-unknown",
        "PATCH",
        FEATURE,
        422,
        js({"title": "New", "up": 9}),
        auth="admin",
    ),
    case("patch-array", "PATCH", FEATURE, 422, js([{"title": "New"}]), auth="admin"),
    case("patch-malformed", "PATCH", FEATURE, 400, b'{"title": ', auth="admin"),
    case(
        "patch-invalid-utf8-in-title",
        "PATCH",
        FEATURE,
        400,
        b'{"title": "\xed\xa0\x80"}',
        auth="admin",
    ),
    case(
        "patch-text-plain",
        "PATCH",
        FEATURE,
        415,
        js({"title": "New"}),
        auth="admin",
        content_type="text/plain",
    ),
    case("patch-10mb", "PATCH", FEATURE, 413, HUGE, auth="admin"),
    # --- ids ---------------------------------------------------------------------------------
    case("id-0-vote", "PUT", "/features/0/vote", 404, UNCHANGING_VOTE),
    case("id-negative-vote", "PUT", "/features/-1/vote", 404, UNCHANGING_VOTE),
    case("id-huge-vote", "PUT", "/features/99999999999999999999999/vote", 404, UNCHANGING_VOTE),
    case("id-abc-vote", "POST", "/features/abc/vote", 404, UNCHANGING_VOTE),
    case("id-float-vote", "PUT", "/features/1.5/vote", 404, UNCHANGING_VOTE),
    case("id-5000-digits-vote", "PUT", "/features/" + "9" * 5000 + "/vote", 404, UNCHANGING_VOTE),
    case("id-leading-zero-vote", "PUT", "/features/01/vote", 404, UNCHANGING_VOTE),
    case("id-fullwidth-digit-vote", "PUT", "/features/%EF%BC%91/vote", 404, UNCHANGING_VOTE),
    case("id-space-vote", "PUT", "/features/%201/vote", 404, UNCHANGING_VOTE),
    case("id-percent-ff-vote", "PUT", "/features/%FF/vote", 404, UNCHANGING_VOTE),
    case("id-abc-retract", "DELETE", "/features/abc/vote", 404),
    case("id-5000-digits-retract", "DELETE", "/features/" + "1" * 5000 + "/vote", 404),
    case("id-0-get", "GET", "/features/0", 404),
    case("id-5000-digits-get", "GET", "/features/" + "7" * 5000, 404),
    case("id-huge-delete", "DELETE", "/features/99999999999999999999999", 404, auth="admin"),
    case("id-negative-delete", "DELETE", "/features/-1", 404, auth="admin"),
    case("id-float-patch", "PATCH", "/features/1.5", 404, js({"title": "x"}), auth="admin"),
    case(
        "id-5000-digits-patch",
        "PATCH",
        "/features/" + "3" * 5000,
        404,
        js({"title": "x"}),
        auth="admin",
    ),
    # --- listing queries ---------------------------------------------------------------------
    case("cursor-garbage", "GET", "/features?cursor=garbage", 422),
    case("cursor-punctuation", "GET", "/features?cursor=!!!", 422),
    case("cursor-non-ascii", "GET", "/features?cursor=%C3%A9t%C3%A9", 422),
    case("cursor-percent-ff", "GET", "/features?cursor=%FF%FE", 422),
    case("cursor-object", "GET", "/features?cursor=" + cursor({"sort": "top"}), 422),
    case("cursor-too-short", "GET", "/features?cursor=" + cursor(["top", "", 1]), 422),
    case("cursor-too-long", "GET", "/features?cursor=" + cursor(["top", "", 1, 2, 3, 4]), 422),
    case("cursor-bools", "GET", "/features?cursor=" + cursor(["top", "", True, False, 1]), 422),
    case("cursor-strings", "GET", "/features?cursor=" + cursor(["top", "", "a", "b", "c"]), 422),
    case("cursor-floats", "GET", "/features?cursor=" + cursor(["top", "", 1.5, 2.5, 3.5]), 422),
    case("cursor-other-sort", "GET", "/features?cursor=" + cursor(["new", "", -1]), 422),
    case(
        "cursor-other-status",
        "GET",
        "/features?sort=new&cursor=" + cursor(["new", "open", -1]),
        422,
    ),
    case("cursor-5000-chars", "GET", "/features?cursor=" + "A" * 5000, 422),
    case("limit-0", "GET", "/features?limit=0", 422),
    case("limit-201", "GET", "/features?limit=201", 422),
    case("limit--1", "GET", "/features?limit=-1", 422),
    case("limit-abc", "GET", "/features?limit=abc", 422),
    case("limit-1e3", "GET", "/features?limit=1e3", 422),
    case("limit-empty", "GET", "/features?limit=", 422),
    case("limit-huge", "GET", "/features?limit=" + "9" * 5000, 422),
    case("limit-fullwidth", "GET", "/features?limit=%EF%BC%95", 422),
    case("sort-unknown", "GET", "/features?sort=random", 422),
    case("status-unknown", "GET", "/features?status=closed", 422),
    case("status-percent-ff", "GET", "/features?status=%FF", 422),
    # --- tokens (each on an operation that would change something if accepted) ----------------
    case("token-missing", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="none"),
    case("token-forged-signature", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="forged_signature"),
    case("token-forged-payload", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="forged_payload"),
    case("token-expired", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="expired"),
    case("token-expired-admin", "DELETE", FEATURE, 401, auth="expired_admin"),
    case("token-alg-none", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="alg_none"),
    case("token-alg-none-admin", "DELETE", FEATURE, 401, auth="alg_none_admin"),
    case("token-garbage", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="garbage"),
    case("token-three-dots", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="dots"),
    case("token-with-spaces", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="spaces"),
    case("token-basic-scheme", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="basic"),
    case("token-bearer-empty", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="bearer_empty"),
    case("token-too-long", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="too_long"),
    case("token-unknown-secret", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="unknown_secret"),
    case("token-unknown-secret-our-kid", "DELETE", FEATURE, 401, auth="unknown_secret_our_kid"),
    case("token-hs512-right-secret", "DELETE", FEATURE, 401, auth="hs512"),
    case("token-no-kid", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="no_kid"),
    case("token-header-not-object", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="header_list"),
    case("token-missing-sub", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="no_sub"),
    case("token-missing-role", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="no_role"),
    case("token-missing-exp", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="no_exp"),
    case("token-role-root", "DELETE", FEATURE, 401, auth="role_root"),
    case("token-sub-number", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="sub_number"),
    case("token-exp-string", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="exp_string"),
    case("token-payload-list", "PUT", VOTE, 401, UNCHANGING_VOTE, auth="payload_list"),
    case("token-voter-on-admin-op", "DELETE", FEATURE, 403, auth="voter"),
    case("token-voter-on-patch", "PATCH", FEATURE, 403, js({"status": "done"}), auth="voter"),
    # --- routing -----------------------------------------------------------------------------
    case("unknown-path", "POST", "/features/1/votes", 404, UNCHANGING_VOTE),
    case("wrong-method", "PATCH", VOTE, 405, UNCHANGING_VOTE),
]


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "mallory", "role": "voter", "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(
    payload: Any, key: str = TEST_SECRET, alg: str = "HS256", kid: str | None = "ours"
) -> str:
    """A JWT signed by hand-picked key and algorithm; kid "ours" is the server's key id."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = key_id(TEST_SECRET) if kid == "ours" else kid
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64url(sig)}"


def unsigned(payload: dict[str, Any]) -> str:
    head = b64url(json.dumps({"alg": "none", "kid": key_id(TEST_SECRET)}).encode())
    return f"{head}.{b64url(json.dumps(payload).encode())}."


def token_header(kind: str, tokens: Tokens, settings: Settings) -> dict[str, str]:
    """The Authorization header of one table row."""
    good = tokens.issue(Role.VOTER)[0]
    head, payload, _ = good.split(".")
    past = Tokens(settings.secret, voter_ttl=1, admin_ttl=1, cache_size=10, clock=lambda: 1000.0)
    stranger = Tokens(Secret((OTHER_SECRET,)), voter_ttl=3600, admin_ttl=3600, cache_size=10)
    raw: dict[str, str] = {
        "voter": good,
        "admin": tokens.issue(Role.ADMIN, "admin")[0],
        "forged_signature": f"{head}.{payload}.{b64url(b'x' * 32)}",
        "forged_payload": f"{head}.{b64url(json.dumps(claims(role='admin')).encode())}."
        + good.split(".")[2],
        "expired": past.issue(Role.VOTER)[0],
        "expired_admin": past.issue(Role.ADMIN, "admin")[0],
        "alg_none": unsigned(claims()),
        "alg_none_admin": unsigned(claims(role="admin")),
        "garbage": "this-is-not-a-token",
        "dots": "..",
        "spaces": f"{head} {payload} sig",
        "too_long": good + "A" * 3000,
        "unknown_secret": stranger.issue(Role.VOTER)[0],
        "unknown_secret_our_kid": signed(claims(role="admin"), key=OTHER_SECRET),
        "hs512": signed(claims(role="admin"), alg="HS512"),
        "no_kid": signed(claims(), kid=None),
        "header_list": f"{b64url(b'[1, 2]')}.{payload}.{good.split('.')[2]}",
        "no_sub": signed(claims(sub=None)),
        "no_role": signed(claims(role=None)),
        "no_exp": signed(claims(exp=None)),
        "role_root": signed(claims(role="root")),
        "sub_number": signed(claims(sub=12345)),
        "exp_string": signed(claims(exp="tomorrow")),
        "payload_list": signed([1, 2, 3]),
    }
    if kind == "none":
        return {}
    if kind == "basic":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if kind == "bearer_empty":
        return {"Authorization": "Bearer "}
    return bearer(raw[kind])


async def snapshot(client: Client, auth: dict[str, str]) -> dict[str, Any]:
    """Everything a change could show up in: stats (but its clock), both listings, my votes."""
    resp = await client.get("/features/stats")
    assert resp.status == 200
    stats = await resp.json()
    del stats["generated_at"]
    state: dict[str, Any] = {"stats": stats, "etag": resp.headers["ETag"]}
    for sort in ("top", "new"):
        listed = await client.get("/features", params={"sort": sort})
        assert listed.status == 200
        state[sort] = await listed.json()
    mine = await client.get("/me/votes", headers=auth)
    assert mine.status == 200
    state["mine"] = await mine.json()
    return state


@pytest.fixture
async def seeded(client: Client, voter: dict[str, str]) -> int:
    """One feature with one up vote by `voter`."""
    fid = (await create_feature(client, voter, "Seeded", "has one vote"))["id"]
    resp = await client.put(f"/features/{fid}/vote", json={"value": 1}, headers=voter)
    assert resp.status == 200
    return int(fid)


async def test_hand_signed_tokens_are_built_right(client: Client, seeded: int) -> None:
    """Control for the token rows: the same signer with sound claims is accepted, so each bad
    row is refused for the one thing it changes."""
    mine = await client.get("/me/votes", headers=bearer(signed(claims())))
    assert mine.status == 200
    resp = await client.delete(f"/features/{seeded}", headers=bearer(signed(claims(role="admin"))))
    assert resp.status == 204


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("bad", CASES)
async def test_bad_input_is_refused_cleanly(
    client: Client,
    voter: dict[str, str],
    tokens: Tokens,
    settings: Settings,
    seeded: int,
    bad: Case,
) -> None:
    before = await snapshot(client, voter)
    assert before["stats"]["total_votes"] == 1 and before["stats"]["total_features"] == 1

    headers = dict(bad.headers)
    headers.update(voter if bad.auth == "voter" else token_header(bad.auth, tokens, settings))
    if bad.content_type is not None:
        headers["Content-Type"] = bad.content_type
    resp = await client.request(
        bad.method, bad.path.format(fid=seeded), data=bad.body, headers=headers
    )
    text = await resp.text(errors="replace")

    expected = bad.status if isinstance(bad.status, tuple) else (bad.status,)
    assert 400 <= resp.status < 500, (resp.status, text[:500])
    assert resp.status in expected, (resp.status, text[:500])
    assert resp.content_type == PROBLEM, (resp.content_type, text[:500])
    body = json.loads(text)
    assert body["status"] == resp.status
    assert isinstance(body["title"], str) and body["title"]
    if resp.status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if resp.status == 405:
        assert resp.headers.get("Allow")

    assert await snapshot(client, voter) == before
