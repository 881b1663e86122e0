"""ADR-003: instances keep no per-client state, so any instance over a shared store answers alike.

Two apps from create_app(settings, store=shared) over one MemoryStore and one secret, each on its
own loopback server, must behave exactly like one app: tokens cross over, a scripted session
spread over both gives the bodies that the same session gives on one instance, and a third app
built afterwards answers every reader exactly as the first two do.
"""

from __future__ import annotations

import asyncio
import gc
import random
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import pytest
from aiohttp import web

from service.app import create_app
from service.auth import Role
from service.config import Settings
from service.keys import STORE, TOKENS
from service.store import MemoryStore, Store

from .conftest import AiohttpClient, Client, bearer, make_settings

VOTERS: Final = ("v0", "v1", "v2")
TOKEN_CACHE_SIZE: Final = 2  # below the number of voters, so the cache must evict
SCAN_LIMIT: Final = 2_000_000
ECHOED_HEADERS: Final = ("Location", "Idempotent-Replayed", "ETag", "WWW-Authenticate")
EPOCH_IN_TAG: Final = re.compile(r'"[0-9a-f]{16}\.')  # W/"<epoch>.<seq>": the epoch differs


@pytest.fixture
def settings() -> Settings:
    return make_settings(token_cache_size=TOKEN_CACHE_SIZE)


# --- the script -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    method: str
    path: str
    actor: str | None = None  # a voter name, "admin", or None for anonymous
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


SCRIPT: Final = (
    Step("POST", "/features", "v0", {"title": "Dark mode"}, {"Idempotency-Key": "dm-1"}),
    Step("POST", "/features", "v0", {"title": "Dark mode"}, {"Idempotency-Key": "dm-1"}),
    Step("POST", "/features", "v1", {"title": "Export CSV", "description": "for finance"}),
    Step("POST", "/features", "admin", {"title": "SSO"}),
    Step("PUT", "/features/{F0}/vote", "v0", {"value": 1}),
    Step("PUT", "/features/{F0}/vote", "v1", {"value": 1}),
    Step("POST", "/features/{F1}/vote", "v2", {"value": -1}),
    Step("PUT", "/features/{F0}/vote", "v0", {"value": -1}),
    Step("PUT", "/features/{F0}/vote", "v0", {"value": -1}),
    Step("DELETE", "/features/{F0}/vote", "v1"),
    Step("DELETE", "/features/{F2}/vote", "v1"),
    Step("PUT", "/features/{F2}/vote", "v1", {"value": 1}),
    Step("POST", "/features/{F2}/vote", "v2", {"value": 1}),
    Step("PUT", "/features/{F1}/vote", "v0", {"value": 1}),
    Step("GET", "/features"),
    Step("GET", "/features?sort=new"),
    Step("GET", "/features?limit=1"),
    Step("GET", "/features?limit=1&cursor={CURSOR}"),
    Step("GET", "/features?limit=1&cursor={CURSOR}"),
    Step("GET", "/features/stats"),
    Step("GET", "/stats", headers={"If-None-Match": "{ETAG}"}),
    Step("GET", "/me/votes", "v0"),
    Step("GET", "/me/votes", "v1"),
    Step("GET", "/me/votes", "v2"),
    Step("PATCH", "/features/{F1}", "admin", {"status": "declined"}),
    Step("PUT", "/features/{F1}/vote", "v1", {"value": 1}),
    Step("DELETE", "/features/{F1}/vote", "v2"),
    Step("PATCH", "/features/{F2}", "v0", {"status": "done"}),
    Step("PATCH", "/features/{F2}", "admin", {"title": "Single sign-on", "status": "planned"}),
    Step("GET", "/features?status=declined"),
    Step("GET", "/features/stats"),
    Step("DELETE", "/features/{F0}", "admin"),
    Step("GET", "/features/{F0}"),
    Step("PUT", "/features/{F0}/vote", "v0", {"value": 1}),
    Step("DELETE", "/features/{F0}", "v2"),
    Step("GET", "/me/votes", "v0"),
    Step("GET", "/me/votes", "v2"),
    Step("POST", "/features", "v0", {"title": "Other"}, {"Idempotency-Key": "dm-1"}),
    Step("POST", "/features", "v0", {"title": "Dark mode"}, {"Idempotency-Key": "dm-1"}),
    Step("PUT", "/features/{F2}/vote", None, {"value": 1}),
    Step("GET", "/features/{F2}"),
    Step("GET", "/features/stats"),
    Step("GET", "/features/stats", headers={"If-None-Match": "{ETAG}"}),
)


@dataclass
class Session:
    """What a client remembers between steps: its tokens, created ids, last cursor and ETag."""

    auth: dict[str, dict[str, str]]
    ids: list[int] = field(default_factory=list)
    cursor: str = ""
    etag: str = ""

    def fill(self, text: str) -> str:
        for i, fid in enumerate(self.ids):
            text = text.replace(f"{{F{i}}}", str(fid))
        return text.replace("{CURSOR}", self.cursor).replace("{ETAG}", self.etag)


Answer = tuple[int, Any, dict[str, str]]


def normalise(value: Any) -> Any:
    """Drop what legitimately differs between runs: generated_at, created_at's instant, and the
    join code each deployment gives its default board."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "generated_at":
                continue
            if key == "join_code":
                assert len(item) == 6, item
                item = "<join_code>"
            if key == "epoch":  # each deployment's data has its own
                assert re.fullmatch(r"[0-9a-f]{16}", item), item
                item = "<epoch>"
            if key == "created_at":
                datetime.fromisoformat(item)  # still must be RFC 3339
                item = "<created_at>"
            out[key] = normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


async def call(client: Client, step: Step, session: Session) -> Answer:
    headers = {k: session.fill(v) for k, v in step.headers.items()}
    if step.actor is not None:
        headers.update(session.auth[step.actor])
    kwargs: dict[str, Any] = {"headers": headers}
    if step.body is not None:
        kwargs["json"] = step.body
    resp = await client.request(step.method, session.fill(step.path), **kwargs)
    raw = await resp.read()
    body: Any = normalise(await resp.json(content_type=None)) if raw else None
    echoed = {
        h: EPOCH_IN_TAG.sub('"<epoch>.', resp.headers[h])
        for h in ECHOED_HEADERS
        if h in resp.headers
    }
    created = step.method == "POST" and step.path == "/features" and resp.status == 201
    if created and body["id"] not in session.ids:
        session.ids.append(body["id"])
    if isinstance(body, dict) and "next_cursor" in body:
        session.cursor = body["next_cursor"] or ""
    if "ETag" in resp.headers:
        session.etag = resp.headers["ETag"]
    return resp.status, body, echoed


async def mint(client: Client) -> dict[str, str]:
    resp = await client.post("/auth/token")
    assert resp.status == 201
    return bearer((await resp.json())["token"])


async def run_script(route: Callable[[int], Client], admin: dict[str, str]) -> list[Answer]:
    auth = {"admin": admin}
    for i, name in enumerate(VOTERS):
        auth[name] = await mint(route(i))
    session = Session(auth)
    return [await call(route(i), step, session) for i, step in enumerate(SCRIPT)]


def admin_of(app: web.Application) -> dict[str, str]:
    return bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])


@dataclass
class Pair:
    shared: Store
    a: web.Application
    b: web.Application
    client_a: Client
    client_b: Client


@pytest.fixture
async def pair(aiohttp_client: AiohttpClient, settings: Settings) -> Pair:
    shared = MemoryStore(top_n=settings.top_n)
    a = create_app(settings, store=shared)
    b = create_app(settings, store=shared)
    client_a, client_b = await aiohttp_client(a), await aiohttp_client(b)
    assert client_a.port != client_b.port
    assert a[STORE] is b[STORE] is shared
    return Pair(shared, a, b, client_a, client_b)


async def reference_answers(aiohttp_client: AiohttpClient, settings: Settings) -> list[Answer]:
    """The same session, all on one instance over a fresh store."""
    alone = create_app(settings, store=MemoryStore(top_n=settings.top_n))
    client = await aiohttp_client(alone)
    return await run_script(lambda _: client, admin_of(alone))


# --- tokens and seq cross instances ------------------------------------------------------------


async def test_a_token_minted_on_one_instance_works_on_the_other(pair: Pair) -> None:
    voter = await mint(pair.client_a)
    created = await pair.client_b.post("/features", json={"title": "Dark mode"}, headers=voter)
    assert created.status == 201
    fid = (await created.json())["id"]
    voted = await pair.client_b.put(f"/features/{fid}/vote", json={"value": 1}, headers=voter)
    assert voted.status == 200
    mine = await pair.client_a.get("/me/votes", headers=voter)
    assert (await mine.json()) == {"votes": {str(fid): 1}}

    admin_from_b = admin_of(pair.b)
    patched = await pair.client_a.patch(f"/features/{fid}", json={"status": "planned"},
                                        headers=admin_from_b)
    assert patched.status == 200
    assert (await patched.json())["status"] == "planned"

    voter_from_b = await mint(pair.client_b)
    forbidden = await pair.client_a.delete(f"/features/{fid}", headers=voter_from_b)
    assert forbidden.status == 403
    forged = {"Authorization": voter["Authorization"][:-2] + "xx"}
    refused = await pair.client_b.get("/me/votes", headers=forged)
    assert refused.status == 401


async def test_instances_agree_on_seq_and_etag(pair: Pair) -> None:
    voter = await mint(pair.client_a)
    created = await pair.client_a.post("/features", json={"title": "Dark mode"}, headers=voter)
    fid = (await created.json())["id"]
    for writer, reader in [(pair.client_a, pair.client_b), (pair.client_b, pair.client_a)]:
        before = await (await reader.get("/features/stats")).json()
        value = 1 if writer is pair.client_a else -1
        await writer.put(f"/features/{fid}/vote", json={"value": value}, headers=voter)
        on_writer = await writer.get("/features/stats")
        on_reader = await reader.get("/features/stats")
        body_w, body_r = await on_writer.json(), await on_reader.json()
        assert body_r["seq"] == body_w["seq"] > before["seq"]
        assert on_reader.headers["ETag"] == on_writer.headers["ETag"]
        assert normalise(body_r) == normalise(body_w)
        cached = await reader.get("/stats", headers={"If-None-Match": on_writer.headers["ETag"]})
        assert cached.status == 304


# --- the scripted session ------------------------------------------------------------------------


@pytest.mark.parametrize("routing", ["alternate", "random-1", "random-2", "random-3", "all-b"])
async def test_a_session_spread_over_instances_matches_one_instance(
    pair: Pair, aiohttp_client: AiohttpClient, settings: Settings, routing: str
) -> None:
    clients = (pair.client_a, pair.client_b)
    if routing == "alternate":
        choices = [i % 2 for i in range(len(SCRIPT) + len(VOTERS))]
    elif routing == "all-b":
        choices = [1] * (len(SCRIPT) + len(VOTERS))
    else:
        rng = random.Random(routing)
        choices = [rng.randrange(2) for _ in range(len(SCRIPT) + len(VOTERS))]
    spread = await run_script(lambda i: clients[choices[i]], admin_of(pair.a))
    expected = await reference_answers(aiohttp_client, settings)

    assert [a[0] for a in spread] == [e[0] for e in expected]
    for i, (got, want) in enumerate(zip(spread, expected, strict=True)):
        assert got == want, f"step {i}: {SCRIPT[i]}"
    # The script exercises what it claims to: replays, conflicts, 304s, closed features, auth.
    statuses = [a[0] for a in expected]
    assert {200, 201, 204, 304, 401, 403, 404, 409, 422} <= set(statuses)
    assert expected[1][2].get("Idempotent-Replayed") == "true"


# --- no per-client state ---------------------------------------------------------------------


async def reader_view(client: Client, auth: dict[str, dict[str, str]]) -> list[Any]:
    """Everything a reader can see, for every caller."""
    seen: list[Any] = []
    for path in ("/features", "/features?sort=new", "/features?status=open", "/features/stats"):
        resp = await client.get(path)
        seen.append((path, resp.status, normalise(await resp.json())))
    for fid in range(1, 6):
        resp = await client.get(f"/features/{fid}")
        seen.append((fid, resp.status, normalise(await resp.json())))
    for name, headers in sorted(auth.items()):
        resp = await client.get("/me/votes", headers=headers)
        seen.append((name, resp.status, await resp.json()))
    return seen


def strings_reachable(root: object, skip: set[int]) -> Iterator[str]:
    """Every str (or bytes) reachable from root by reference, not through modules or globals."""
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip:
            continue
        seen.add(id(obj))
        assert len(seen) < SCAN_LIMIT, "the scan escaped the application"
        if isinstance(obj, str):
            yield obj
            continue
        if isinstance(obj, bytes | bytearray):
            yield bytes(obj).decode("latin-1")  # cached bodies count too
            continue
        if isinstance(obj, dict):
            stack.extend(obj)  # the gc does not visit str keys; a per-voter map keys by them
        if isinstance(obj, types.ModuleType | type | asyncio.AbstractEventLoop | types.FrameType):
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ()
                         if cell.cell_contents is not None)
            stack.extend(obj.__defaults__ or ())
            continue
        stack.extend(gc.get_referents(obj))


async def test_instances_hold_no_per_client_state(
    pair: Pair, aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    auth = {"admin": admin_of(pair.a)}
    voter_ids: list[str] = []
    for i, name in enumerate(VOTERS):
        resp = await (pair.client_a, pair.client_b)[i % 2].post("/auth/token")
        token = await resp.json()
        auth[name] = bearer(token["token"])
        voter_ids.append(token["voter_id"])
    session = Session(auth)
    clients = (pair.client_a, pair.client_b)
    for i, step in enumerate(SCRIPT):
        await call(clients[i % 2], step, session)

    fresh = create_app(settings, store=pair.shared)
    client_c = await aiohttp_client(fresh)
    view_a = await reader_view(pair.client_a, auth)
    assert view_a == await reader_view(pair.client_b, auth)
    assert view_a == await reader_view(client_c, auth), "a fresh instance answers differently"
    assert any(votes["votes"] for name, _, votes in view_a[-4:] if name != "admin")

    tokens = {h["Authorization"].removeprefix("Bearer ") for h in auth.values()}
    secrets = set(voter_ids) | tokens
    for app in (pair.a, pair.b):
        token_cache = app[TOKENS]
        outside = {s for s in strings_reachable(app, {id(pair.shared), id(token_cache)})
                   if any(secret in s for secret in secrets)}
        assert not outside, f"per-client data held outside the token cache: {outside}"
        in_cache = {s for s in strings_reachable(token_cache, set()) if s in voter_ids}
        assert len(in_cache) <= TOKEN_CACHE_SIZE, "the verified-token cache is not bounded"
