"""Stateless identity: HS256 tokens, key rotation, expiry, the verified-token LRU, and HTTP."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import jwt
import pytest

from service.auth import (
    ALGORITHM,
    MAX_TOKEN_LENGTH,
    Claims,
    Role,
    TokenInvalid,
    TokenMissing,
    Tokens,
    bearer_token,
    key_id,
)
from service.config import Secret, Settings

from .conftest import TEST_SECRET, Client, bearer, create_feature

KEY_A = "key-a-key-a-key-a-key-a-key-a-key-a-0001"
KEY_B = "key-b-key-b-key-b-key-b-key-b-key-b-0002"
VOTER_TTL = 3600
ADMIN_TTL = 600


class Clock:
    """A settable clock that starts at the real time (PyJWT checks exp against the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_tokens(
    *keys: str, cache_size: int = 100, clock: Clock | None = None
) -> Tokens:
    return Tokens(
        Secret(keys or (KEY_A,)),
        voter_ttl=VOTER_TTL,
        admin_ttl=ADMIN_TTL,
        cache_size=cache_size,
        clock=clock or time.time,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_json(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unb64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- issue and verify ---------------------------------------------------------------------------


def test_issue_verify_roundtrip_voter() -> None:
    clock = Clock()
    tokens = make_tokens(KEY_A, clock=clock)
    token, claims = tokens.issue(Role.VOTER)
    assert isinstance(token, str)
    assert claims.role is Role.VOTER
    assert claims.iat == int(clock.now)
    assert claims.exp == claims.iat + VOTER_TTL
    assert tokens.verify(token) == claims

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == key_id(KEY_A)
    payload = jwt.decode(token, KEY_A, algorithms=["HS256"])
    assert set(payload) == {"sub", "role", "iat", "exp"}
    assert payload == {"sub": claims.sub, "role": "voter", "iat": claims.iat, "exp": claims.exp}


def test_issue_verify_roundtrip_admin() -> None:
    tokens = make_tokens(KEY_A)
    token, claims = tokens.issue(Role.ADMIN, "admin")
    verified = tokens.verify(token)
    assert verified == Claims(sub="admin", role=Role.ADMIN, iat=claims.iat, exp=claims.exp)
    assert verified.exp - verified.iat == ADMIN_TTL


def test_verified_by_another_instance_sharing_the_secret() -> None:
    token, claims = make_tokens(KEY_A).issue(Role.VOTER)
    assert make_tokens(KEY_A).verify(token) == claims


def test_key_id_is_public_and_stable() -> None:
    assert key_id(KEY_A) == key_id(KEY_A)
    assert key_id(KEY_A) != key_id(KEY_B)
    assert KEY_A not in key_id(KEY_A)
    assert len(key_id(KEY_A)) >= 8


def test_voter_ids_are_random_and_long() -> None:
    tokens = make_tokens(KEY_A)
    subs = {tokens.issue(Role.VOTER)[1].sub for _ in range(50)}
    assert len(subs) == 50
    assert all(len(s) >= 16 for s in subs)


# --- rotation -----------------------------------------------------------------------------------


def test_rotation_old_key_still_verifies() -> None:
    token, claims = make_tokens(KEY_A).issue(Role.VOTER)
    assert make_tokens(KEY_B, KEY_A).verify(token) == claims


def test_rotation_dropped_key_rejected() -> None:
    token, _ = make_tokens(KEY_A).issue(Role.VOTER)
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_B).verify(token)


def test_rotation_first_key_signs() -> None:
    token, claims = make_tokens(KEY_B, KEY_A).issue(Role.ADMIN, "admin")
    assert jwt.get_unverified_header(token)["kid"] == key_id(KEY_B)
    assert jwt.decode(token, KEY_B, algorithms=["HS256"])["sub"] == "admin"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, KEY_A, algorithms=["HS256"])
    # Once A is retired, tokens signed by the new first key still verify.
    assert make_tokens(KEY_B).verify(token) == claims


def test_kid_naming_a_known_key_but_signed_by_another() -> None:
    """A token claiming kid(B) but signed with A is rejected even though A is also known."""
    token = jwt.encode(_claims_payload(), KEY_A, algorithm="HS256", headers={"kid": key_id(KEY_B)})
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_B, KEY_A).verify(token)


# --- expiry -------------------------------------------------------------------------------------


def test_expired_on_first_verify() -> None:
    clock = Clock()
    issuer = make_tokens(KEY_A, clock=clock)
    token, claims = issuer.issue(Role.VOTER)
    clock.advance(VOTER_TTL + 1)
    verifier = make_tokens(KEY_A, clock=clock)
    with pytest.raises(TokenInvalid):
        verifier.verify(token)
    # Exactly at exp is expired too (exp is the first instant it is no longer valid).
    clock.now = claims.exp
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A, clock=clock).verify(token)


def test_expired_long_ago_on_first_verify() -> None:
    """A token whose exp is in the real past (PyJWT's own check) is also TokenInvalid."""
    past = Clock()
    past.advance(-10 * VOTER_TTL)
    token, _ = make_tokens(KEY_A, clock=past).issue(Role.VOTER)
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(token)


def test_expired_after_being_cached() -> None:
    clock = Clock()
    tokens = make_tokens(KEY_A, clock=clock)
    token, claims = tokens.issue(Role.ADMIN, "admin")
    assert tokens.verify(token) == claims  # now cached
    clock.advance(ADMIN_TTL - 1)
    assert tokens.verify(token) == claims  # still valid, from the cache
    clock.advance(2)
    with pytest.raises(TokenInvalid):
        tokens.verify(token)
    # and it stays rejected
    with pytest.raises(TokenInvalid):
        tokens.verify(token)


# --- the verified-token cache -------------------------------------------------------------------


def test_cache_is_bounded_lru() -> None:
    tokens = make_tokens(KEY_A, cache_size=3)
    issued = [tokens.issue(Role.VOTER)[0] for _ in range(10)]
    for token in issued:
        tokens.verify(token)
        assert len(tokens._cache) <= 3
    assert list(tokens._cache) == issued[-3:]
    # Using the oldest cached token makes it the most recent; the next new one evicts another.
    t7, t8, t9 = issued[-3:]
    tokens.verify(t7)
    tokens.verify(issued[0])
    assert list(tokens._cache) == [t9, t7, issued[0]]
    assert t8 not in tokens._cache


def test_evicted_tokens_still_verify() -> None:
    tokens = make_tokens(KEY_A, cache_size=1)
    issued = [tokens.issue(Role.VOTER) for _ in range(5)]
    for _ in range(2):
        for token, claims in issued:
            assert tokens.verify(token) == claims
    assert len(tokens._cache) == 1


def test_rejected_tokens_are_not_cached() -> None:
    tokens = make_tokens(KEY_A, cache_size=10)
    with pytest.raises(TokenInvalid):
        tokens.verify("garbage")
    assert len(tokens._cache) == 0


# --- forged and malformed tokens ----------------------------------------------------------------


def _claims_payload(role: str = "admin") -> dict[str, object]:
    now = int(time.time())
    return {"sub": "attacker-attacker", "role": role, "iat": now, "exp": now + 600}


def test_alg_none_rejected() -> None:
    header = b64url_json({"alg": "none", "typ": "JWT", "kid": key_id(KEY_A)})
    for token in (
        f"{header}.{b64url_json(_claims_payload())}.",
        f"{header}.{b64url_json(_claims_payload())}",
    ):
        with pytest.raises(TokenInvalid):
            make_tokens(KEY_A).verify(token)


def test_hs512_rejected_even_with_the_right_key() -> None:
    key = KEY_A + KEY_B  # long enough for HS512, so PyJWT does not warn
    token = jwt.encode(_claims_payload(), key, algorithm="HS512", headers={"kid": key_id(key)})
    with pytest.raises(TokenInvalid):
        make_tokens(key).verify(token)
    assert ALGORITHM == "HS256"


def test_tampered_payload_rejected() -> None:
    tokens = make_tokens(KEY_A)
    token, claims = tokens.issue(Role.VOTER)
    header, payload, signature = token.split(".")
    body = json.loads(unb64url(payload))
    body["role"] = "admin"
    forged = f"{header}.{b64url_json(body)}.{signature}"
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(forged)
    # and on the instance that already verified (cached) the genuine token
    assert tokens.verify(token) == claims
    with pytest.raises(TokenInvalid):
        tokens.verify(forged)


def test_tampered_signature_rejected() -> None:
    token, _ = make_tokens(KEY_A).issue(Role.VOTER)
    header, payload, signature = token.split(".")
    raw = bytearray(unb64url(signature))
    raw[0] ^= 0x01
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(f"{header}.{payload}.{b64url(bytes(raw))}")


def test_signed_with_unknown_key_rejected() -> None:
    token = jwt.encode(_claims_payload(), KEY_B, algorithm="HS256", headers={"kid": key_id(KEY_A)})
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "..",
        "a.b",
        "\x00\x01\x02",
        "ünïcode.tøken.x",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        b64url_json([1, 2]) + "." + b64url_json({}) + ".x",
    ],
)
def test_garbage_rejected(token: str) -> None:
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(token)


@pytest.mark.parametrize(
    "payload",
    [
        {"role": "voter", "iat": 1, "exp": 4_000_000_000},  # no sub
        {"sub": "someone-someone", "iat": 1, "exp": 4_000_000_000},  # no role
        {"sub": "someone-someone", "role": "voter", "iat": 1},  # no exp
        {"sub": "someone-someone", "role": "voter", "exp": 4_000_000_000},  # no iat
        {"sub": "someone-someone", "role": "root", "iat": 1, "exp": 4_000_000_000},
        {"sub": 42, "role": "voter", "iat": 1, "exp": 4_000_000_000},
        {"sub": "someone-someone", "role": "voter", "iat": 1, "exp": "never"},
    ],
    ids=["no-sub", "no-role", "no-exp", "no-iat", "bad-role", "int-sub", "str-exp"],
)
def test_incomplete_or_wrong_claims_rejected(payload: dict[str, object]) -> None:
    token = jwt.encode(payload, KEY_A, algorithm="HS256", headers={"kid": key_id(KEY_A)})
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(token)


def test_missing_kid_rejected() -> None:
    token = jwt.encode(_claims_payload("voter"), KEY_A, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        make_tokens(KEY_A).verify(token)


def test_overlong_token_rejected() -> None:
    tokens = make_tokens(KEY_A)
    token, _ = tokens.issue(Role.VOTER, "x" * MAX_TOKEN_LENGTH)
    assert len(token) > MAX_TOKEN_LENGTH
    assert jwt.decode(token, KEY_A, algorithms=["HS256"])  # genuinely signed, only too long
    with pytest.raises(TokenInvalid):
        tokens.verify(token)
    with pytest.raises(TokenInvalid):
        tokens.verify("a" * 100_000)


# --- bearer_token -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
    ],
)
def test_bearer_token_parses(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, ""])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(TokenMissing):
        bearer_token(header)


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc", "abc"]
)
def test_bearer_token_malformed(header: str) -> None:
    with pytest.raises(TokenInvalid):
        bearer_token(header)


# --- over HTTP ----------------------------------------------------------------------------------


async def test_voter_token_over_http(client: Client) -> None:
    resp = await client.post("/auth/token")
    assert resp.status == 201
    body = await resp.json()
    assert set(body) >= {"token", "voter_id", "expires_at"}
    # Any instance with the secret and the same lifetimes verifies it.
    claims = Tokens(
        Secret((TEST_SECRET,)),
        voter_ttl=Settings().voter_token_ttl,
        admin_ttl=Settings().admin_token_ttl,
        cache_size=10,
    ).verify(body["token"])
    assert claims.sub == body["voter_id"]
    assert claims.role is Role.VOTER
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None
    assert int(expires.timestamp()) == claims.exp
    assert expires > datetime.now(UTC)


async def test_voter_ids_over_http_are_random(client: Client) -> None:
    ids = []
    for _ in range(2):
        resp = await client.post("/auth/token")
        assert resp.status == 201
        ids.append((await resp.json())["voter_id"])
    assert ids[0] != ids[1]
    assert all(isinstance(v, str) and len(v) >= 16 for v in ids)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/features"),
        ("PATCH", "/features/1"),
        ("DELETE", "/features/1"),
        ("PUT", "/features/1/vote"),
        ("POST", "/features/1/vote"),
        ("DELETE", "/features/1/vote"),
        ("GET", "/me/votes"),
    ],
)
async def test_missing_token_is_401(client: Client, method: str, path: str) -> None:
    resp = await client.request(method, path, json={"title": "x", "value": 1})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 401


def _expired_token() -> str:
    past = Clock()
    past.advance(-10 * VOTER_TTL)
    return make_tokens(TEST_SECRET, clock=past).issue(Role.ADMIN, "admin")[0]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer a.b.c",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer " + "a" * 5000,
        "Bearer " + make_tokens(KEY_B).issue(Role.ADMIN, "admin")[0],
        "Bearer " + _expired_token(),
    ],
    ids=["garbage", "dots", "basic", "no-token", "huge", "other-secret", "expired"],
)
async def test_bad_token_is_401(client: Client, authorization: str) -> None:
    for method, path in (("POST", "/features"), ("PATCH", "/features/1"), ("GET", "/me/votes")):
        resp = await client.request(
            method, path, json={"title": "x"}, headers={"Authorization": authorization}
        )
        assert resp.status == 401, (method, path, await resp.text())
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.content_type == "application/problem+json"


async def test_voter_token_on_admin_operations_is_403(
    client: Client, voter: dict[str, str]
) -> None:
    feature = await create_feature(client, voter)
    path = f"/features/{feature['id']}"
    resp = await client.patch(path, json={"status": "planned"}, headers=voter)
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    resp = await client.delete(path, headers=voter)
    assert resp.status == 403
    # Nothing changed.
    resp = await client.get(path)
    assert resp.status == 200
    assert (await resp.json())["status"] == "open"


async def test_admin_token_works(
    client: Client, voter: dict[str, str], admin: dict[str, str]
) -> None:
    feature = await create_feature(client, voter)
    path = f"/features/{feature['id']}"
    resp = await client.patch(path, json={"status": "planned"}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "planned"
    resp = await client.delete(path, headers=admin)
    assert resp.status == 204
    assert (await client.get(path)).status == 404


async def test_admin_token_from_another_instance_works(
    client: Client, voter: dict[str, str]
) -> None:
    """Stateless: an admin token minted by a separate Tokens with the same secret is accepted."""
    admin = bearer(make_tokens(TEST_SECRET).issue(Role.ADMIN, "admin")[0])
    feature = await create_feature(client, voter)
    resp = await client.patch(
        f"/features/{feature['id']}", json={"title": "Renamed"}, headers=admin
    )
    assert resp.status == 200
    assert (await resp.json())["title"] == "Renamed"


async def test_admin_may_do_what_voters_do(client: Client, admin: dict[str, str]) -> None:
    feature = await create_feature(client, admin)
    resp = await client.put(f"/features/{feature['id']}/vote", json={"value": 1}, headers=admin)
    assert resp.status == 200
    assert (await resp.json())["up"] == 1


async def test_forged_admin_role_is_401_not_admin(client: Client, voter: dict[str, str]) -> None:
    feature = await create_feature(client, voter)
    header, payload, signature = voter["Authorization"].removeprefix("Bearer ").split(".")
    body = json.loads(unb64url(payload))
    body["role"] = "admin"
    forged = bearer(f"{header}.{b64url_json(body)}.{signature}")
    resp = await client.delete(f"/features/{feature['id']}", headers=forged)
    assert resp.status == 401
    assert (await client.get(f"/features/{feature['id']}")).status == 200


# --- lifetimes beyond the role's ttl ------------------------------------------------------------


def _signed(payload: dict[str, object], key: str = KEY_A) -> str:
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": key_id(key)})


@pytest.mark.parametrize(("role", "ttl"), [("admin", ADMIN_TTL), ("voter", VOTER_TTL)])
def test_lifetime_beyond_the_roles_ttl_is_refused(role: str, ttl: int) -> None:
    now = int(time.time())
    tokens = make_tokens()
    long_lived = _signed(
        {"sub": "someone-someone", "role": role, "iat": now, "exp": now + 10 * ttl}
    )
    with pytest.raises(TokenInvalid, match="lifetime"):
        tokens.verify(long_lived)
    one_over = _signed({"sub": "someone-someone", "role": role, "iat": now, "exp": now + ttl + 1})
    with pytest.raises(TokenInvalid, match="lifetime"):
        tokens.verify(one_over)
    exact = _signed({"sub": "someone-someone", "role": role, "iat": now, "exp": now + ttl})
    assert tokens.verify(exact).exp == now + ttl


def test_backdated_iat_does_not_stretch_the_lifetime() -> None:
    now = int(time.time())
    payload = {"sub": "someone-someone", "role": "admin", "iat": now - 5 * ADMIN_TTL,
               "exp": now + ADMIN_TTL}
    with pytest.raises(TokenInvalid, match="lifetime"):
        make_tokens().verify(_signed(payload))


async def test_long_lived_admin_token_is_401_over_http(client: Client) -> None:
    now = int(time.time())
    ttl = 12 * 3600  # the default admin_token_ttl of the test settings
    token = _signed(
        {"sub": "admin", "role": "admin", "iat": now, "exp": now + 10 * ttl}, key=TEST_SECRET
    )
    resp = await client.post("/features", json={"title": "x"}, headers=bearer(token))
    assert resp.status == 401, await resp.text()
    assert resp.content_type == "application/problem+json"
