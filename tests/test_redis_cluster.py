"""Two instances on one Redis answer the same (issue 5): tokens, features, stats and live push.

Each instance is the real app from create_app with its own RedisStore object (its own
connections and change subscription) in one shared key namespace, served on its own socket.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp import ClientWebSocketResponse

from service.app import create_app
from service.auth import Role
from service.keys import TOKENS

from .conftest import AiohttpClient, Client, bearer, create_feature, make_settings, stats
from .redis_support import TestRedisStore, require_redis, unique_prefix
from .test_ws import receive_json, receive_until, without_generated_at

Auth = dict[str, str]
# A hang guard, not a speed bound (speed is bench/'s): B hears of A's change only through
# Redis pub/sub (there is no polling), so without it the push never comes at all.
PUSH_DEADLINE: Final = 10.0


@pytest.fixture
async def stores() -> AsyncIterator[tuple[TestRedisStore, TestRedisStore]]:
    require_redis()
    prefix = unique_prefix()
    a, b = TestRedisStore(prefix=prefix), TestRedisStore(prefix=prefix)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


@pytest.fixture
async def pair(
    stores: tuple[TestRedisStore, TestRedisStore], aiohttp_client: AiohttpClient
) -> tuple[Client, Client]:
    """Instances A and B: one settings (one secret), two stores, two servers."""
    settings = make_settings()
    a = await aiohttp_client(create_app(settings, store=stores[0]))
    b = await aiohttp_client(create_app(settings, store=stores[1]))
    return a, b


def admin_of(client: Client) -> Auth:
    return bearer(client.app[TOKENS].issue(Role.ADMIN, "admin")[0])


def voter_of(client: Client) -> Auth:
    return bearer(client.app[TOKENS].issue(Role.VOTER)[0])


async def vote(client: Client, auth: Auth, fid: int, value: int) -> dict[str, Any]:
    if value:
        resp = await client.put(f"/features/{fid}/vote", json={"value": value}, headers=auth)
    else:
        resp = await client.delete(f"/features/{fid}/vote", headers=auth)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_token_minted_on_a_works_on_b(pair: tuple[Client, Client]) -> None:
    a, b = pair
    resp = await a.post("/auth/token")
    assert resp.status == 201
    auth = bearer((await resp.json())["token"])
    feature = await create_feature(b, auth, "Proposed on B with A's token")
    await vote(b, auth, feature["id"], 1)
    resp = await a.get("/me/votes", headers=auth)
    assert resp.status == 200
    assert await resp.json() == {"votes": {str(feature["id"]): 1}}


async def test_feature_created_on_a_is_read_and_changed_on_b(pair: tuple[Client, Client]) -> None:
    a, b = pair
    created = await create_feature(a, voter_of(a), "Dark mode", "for projectors")
    resp = await b.get(f"/features/{created['id']}")
    assert resp.status == 200
    assert await resp.json() == created
    resp = await b.get("/features", params={"sort": "new"})
    assert [f["id"] for f in (await resp.json())["items"]] == [created["id"]]

    resp = await b.patch(f"/features/{created['id']}", json={"status": "planned"},
                         headers=admin_of(b))
    assert resp.status == 200
    resp = await a.get(f"/features/{created['id']}")
    assert (await resp.json())["status"] == "planned"
    resp = await a.get("/features", params={"status": "planned"})
    assert [f["id"] for f in (await resp.json())["items"]] == [created["id"]]

    resp = await a.delete(f"/features/{created['id']}", headers=admin_of(a))
    assert resp.status == 204
    assert (await b.get(f"/features/{created['id']}")).status == 404


async def test_idempotency_key_replays_across_instances(pair: tuple[Client, Client]) -> None:
    a, b = pair
    auth = voter_of(a)
    headers = {**auth, "Idempotency-Key": "same-request"}
    body = {"title": "Export", "description": ""}
    first = await a.post("/features", json=body, headers=headers)
    again = await b.post("/features", json=body, headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert await again.json() == await first.json()
    assert (await stats(b))["total_features"] == 1


async def test_vote_on_a_reaches_websocket_clients_on_b(pair: tuple[Client, Client]) -> None:
    a, b = pair
    fid = (await create_feature(a, admin_of(a), "Pushed across"))["id"]
    sockets: list[ClientWebSocketResponse] = [await b.ws_connect("/ws") for _ in range(3)]
    try:
        for ws in sockets:
            first = await receive_json(ws)
            assert first["type"] == "stats"
        started = time.monotonic()
        await vote(a, voter_of(a), fid, 1)
        seq = (await stats(a))["seq"]
        for ws in sockets:
            pushed = await receive_until(
                ws, lambda m: m.get("type") == "stats" and m["seq"] >= seq, PUSH_DEADLINE
            )
            assert pushed["stats"]["top"][0]["id"] == fid
            assert pushed["stats"]["top"][0]["up"] == 1
        assert time.monotonic() - started < PUSH_DEADLINE
    finally:
        for ws in sockets:
            await ws.close()


async def test_stats_identical_on_a_and_b(pair: tuple[Client, Client]) -> None:
    a, b = pair
    fids = [(await create_feature(a if i % 2 else b, admin_of(a), f"f{i}"))["id"]
            for i in range(5)]
    for i, fid in enumerate(fids):
        for j in range(i):
            await vote(b if j % 2 else a, voter_of(a), fid, 1 if j % 3 else -1)
    on_a, on_b = await a.get("/features/stats"), await b.get("/features/stats")
    assert on_a.headers["ETag"] == on_b.headers["ETag"]
    body_a, body_b = await on_a.json(), await on_b.json()
    assert without_generated_at(body_a) == without_generated_at(body_b)
    assert body_a["total_features"] == 5
    assert body_a["total_votes"] == sum(range(5))
    # A's ETag is good on B too: the seq is shared.
    resp = await b.get("/features/stats", headers={"If-None-Match": on_a.headers["ETag"]})
    assert resp.status == 304
    listing_a = await (await a.get("/features")).json()
    listing_b = await (await b.get("/features")).json()
    assert listing_a == listing_b


FEATURES: Final = 10
VOTERS: Final = 1000
OPS_PER_VOTER: Final = 5  # 5,000 votes in all


async def test_5000_concurrent_votes_across_a_and_b_give_exact_counts(
    pair: tuple[Client, Client],
) -> None:
    """Voters act at once on both instances; each voter's own ops run in order (like a phone)."""
    a, b = pair
    fids = [(await create_feature(a, admin_of(a), f"f{i}"))["id"] for i in range(FEATURES)]
    rng = random.Random(5)
    plans = [
        (voter_of(a), [(rng.choice(fids), rng.choice((1, 1, -1, 0))) for _ in range(OPS_PER_VOTER)])
        for _ in range(VOTERS)
    ]
    model: dict[tuple[int, int], int] = {}  # (voter index, feature) -> acknowledged value

    async def act(index: int, auth: Auth, ops: list[tuple[int, int]]) -> None:
        for step, (fid, value) in enumerate(ops):
            out = await vote(a if (index + step) % 2 else b, auth, fid, value)
            assert out["value"] == value
            model[(index, fid)] = value

    await asyncio.gather(*(act(i, auth, ops) for i, (auth, ops) in enumerate(plans)))
    assert len(model) > 0

    up = {fid: 0 for fid in fids}
    down = {fid: 0 for fid in fids}
    for (_, fid), value in model.items():
        up[fid] += value > 0
        down[fid] += value < 0
    voters = len({index for (index, _), value in model.items() if value})
    for client in (a, b):
        body = await stats(client)
        assert body["up"] == sum(up.values())
        assert body["down"] == sum(down.values())
        assert body["total_votes"] == body["up"] + body["down"]
        assert body["voters"] == voters
        listing = await (await client.get("/features", params={"limit": "200"})).json()
        assert {f["id"]: (f["up"], f["down"]) for f in listing["items"]} == {
            fid: (up[fid], down[fid]) for fid in fids
        }
        expected_order = sorted(fids, key=lambda f: (down[f] - up[f], -up[f], f))
        assert [f["id"] for f in listing["items"]] == expected_order
    for index in rng.sample(range(VOTERS), 20):
        auth = plans[index][0]
        mine = await (await b.get("/me/votes", headers=auth)).json()
        assert mine["votes"] == {
            str(fid): value for (i, fid), value in model.items() if i == index and value
        }
