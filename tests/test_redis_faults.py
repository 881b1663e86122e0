"""Redis failures (issue 5): fail fast with 503, lose no acknowledged vote, recover by itself.

Every test here runs its own redis-server on a free port in a temporary directory and kills it
(SIGKILL: no shutdown, no save) or freezes it (SIGSTOP) while the app is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientWebSocketResponse, WSCloseCode, WSMsgType
from redis import asyncio as aioredis

from service.app import create_app
from service.auth import Role
from service.keys import TOKENS
from service.store import redis as redis_store

from .conftest import AiohttpClient, Client, bearer, create_feature, make_settings, stats
from .redis_support import PrivateRedis, TestRedisStore, private_redis
from .test_ws import receive_json, receive_until
from .waiting import eventually

PROBLEM: Final = "application/problem+json"
# A request to a dead or frozen Redis is answered within this: a few times the store's own
# timeouts below (0.5 + 0.25 s), far below "hangs until the client gives up" (the bug it
# catches), and loose enough for a busy host.
FAIL_FAST: Final = 5.0
RECOVERY: Final = 10.0  # the instance is ready again within this after Redis returns
SOCKET_TIMEOUT: Final = 0.5
CONNECT_TIMEOUT: Final = 0.25
Auth = dict[str, str]


def fault_store(url: str) -> TestRedisStore:
    return TestRedisStore(url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)


@contextlib.asynccontextmanager
async def instance(
    aiohttp_client: AiohttpClient, url: str
) -> AsyncIterator[tuple[Client, TestRedisStore]]:
    store = fault_store(url)
    await store.start()
    try:
        client = await aiohttp_client(create_app(make_settings(), store=store))
        yield client, store
        await client.close()
    finally:
        await store.close()


def voter(client: Client) -> Auth:
    return bearer(client.app[TOKENS].issue(Role.VOTER)[0])


def admin(client: Client) -> Auth:
    return bearer(client.app[TOKENS].issue(Role.ADMIN, "admin")[0])


async def readyz(client: Client) -> int:
    resp = await client.get("/readyz")
    await resp.read()
    return resp.status


async def wait_ready(client: Client, seconds: float = RECOVERY) -> float:
    """Seconds until /readyz answers 200."""
    started = time.monotonic()
    while await readyz(client) != 200:
        assert time.monotonic() - started < seconds, "the instance did not recover by itself"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def assert_unavailable(resp_coro: Any) -> None:
    started = time.monotonic()
    resp = await resp_coro
    elapsed = time.monotonic() - started
    assert resp.status == 503, await resp.text()
    assert resp.content_type == PROBLEM
    assert resp.headers["Retry-After"].isdigit()
    body = await resp.json()
    assert body["status"] == 503 and "Redis" in body["detail"]
    assert elapsed < FAIL_FAST, f"503 took {elapsed:.2f}s"


# --- killed in the middle of a load ----------------------------------------------------------


@dataclass
class Load:
    """Votes by fresh voters, each remembered with its outcome."""

    client: Client
    fids: list[int]
    acknowledged: list[tuple[Auth, int]] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # seconds each 503 took
    other: list[int] = field(default_factory=list)
    running: bool = True

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            auth, fid = voter(self.client), rng.choice(self.fids)
            started = time.monotonic()
            resp = await self.client.put(f"/features/{fid}/vote", json={"value": 1},
                                         headers=auth)
            await resp.read()
            if resp.status == 200:
                self.acknowledged.append((auth, fid))
            elif resp.status == 503:
                assert resp.headers.get("Retry-After"), "503 without Retry-After"
                self.refused.append(time.monotonic() - started)
                await asyncio.sleep(0.01)
            else:
                self.other.append(resp.status)


async def test_kill_mid_load_then_restart(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    with private_redis(tmp_path, persistent=True) as server:
        async with instance(aiohttp_client, server.url) as (client, _store):
            fids = [(await create_feature(client, admin(client), f"f{i}"))["id"]
                    for i in range(3)]
            ws = await client.ws_connect("/ws")
            await receive_json(ws)
            load = Load(client, fids)
            workers = [asyncio.create_task(load.worker(i)) for i in range(8)]
            try:
                await eventually(lambda: len(load.acknowledged) > 20, what="votes before the kill")
                server.kill()
                await eventually(lambda: load.refused, what="a vote to meet the dead Redis")
                assert await readyz(client) == 503
                await assert_unavailable(
                    client.put(f"/features/{fids[0]}/vote", json={"value": 1},
                               headers=voter(client)))
                await assert_unavailable(client.get("/features/stats"))
                server.start()
                recovered_in = await wait_ready(client)
                after_recovery = len(load.acknowledged)
                await eventually(lambda: len(load.acknowledged) >= after_recovery + 10,
                                 what="votes after the recovery")
            finally:
                load.running = False
                await asyncio.gather(*workers)
            assert recovered_in < RECOVERY
            assert not load.other, f"unexpected statuses {set(load.other)}"
            assert load.refused, "no vote met the dead Redis"
            assert max(load.refused) < FAIL_FAST
            assert len(load.acknowledged) > 20

            # Every acknowledged vote is in the final counts; a 503 may or may not have landed
            # (its reply was lost), so the counts lie between the two.
            body = await stats(client)
            assert len(load.acknowledged) <= body["up"] <= (
                len(load.acknowledged) + len(load.refused))
            for auth, fid in load.acknowledged:
                resp = await client.get("/me/votes", headers=auth)
                assert (await resp.json())["votes"] == {str(fid): 1}

            # Pushes resume: a vote after the recovery reaches the socket opened before the kill.
            await vote_and_expect_push(client, ws, fids[1])
            await ws.close()


async def vote_and_expect_push(client: Client, ws: ClientWebSocketResponse, fid: int) -> None:
    resp = await client.put(f"/features/{fid}/vote", json={"value": -1}, headers=voter(client))
    assert resp.status == 200, await resp.text()
    seq = (await stats(client))["seq"]
    pushed = await receive_until(ws, lambda m: m.get("type") == "stats" and m["seq"] >= seq, 5)
    assert pushed["stats"]["down"] >= 1


# --- data lost: the snapshot is fresh and seq still moves forward ------------------------------


async def test_restart_without_data_pushes_a_fresh_snapshot(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    with private_redis(tmp_path, persistent=False) as server:
        async with instance(aiohttp_client, server.url) as (client, _store):
            for i in range(3):
                fid = (await create_feature(client, admin(client), f"f{i}"))["id"]
                resp = await client.put(f"/features/{fid}/vote", json={"value": 1},
                                        headers=voter(client))
                assert resp.status == 200
            before = await stats(client)
            ws = await client.ws_connect("/ws")
            assert (await receive_json(ws))["seq"] == before["seq"]

            server.kill()
            server.start()  # empty: no persistence
            await wait_ready(client)
            pushed = await receive_until(
                ws, lambda m: m.get("type") == "stats" and m["seq"] > before["seq"], 5)
            assert pushed["stats"]["total_features"] == 0
            after = await stats(client)
            assert after["seq"] > before["seq"], "seq went back after Redis lost its data"
            assert after["total_features"] == 0
            await ws.close()


# --- messages missed while unsubscribed ----------------------------------------------------------


async def test_change_missed_by_the_subscription_is_pushed_after_resync(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pub/sub drops what is published while a subscriber is away; the resync covers it."""
    # The store waits this long before it subscribes again. redis-py never re-subscribes
    # beneath it (no 0 -> 1 -> 0 blip), so the count only goes back up after this wait:
    # "no subscriber after the vote" then proves the vote was published to nobody.
    monkeypatch.setattr(redis_store, "RECONNECT_MIN", 5.0)
    with private_redis(tmp_path, persistent=False) as server:
        async with instance(aiohttp_client, server.url) as (client, store_a):
            other = TestRedisStore(server.url, prefix=store_a.prefix)  # "instance B"
            admin_redis = aioredis.Redis(port=server.port)
            channel = store_a.channel  # the default board's change channel

            async def subscribers() -> int:
                found = await admin_redis.pubsub_numsub(channel)
                return int(found[0][1])

            async def unsubscribed() -> bool:
                return await subscribers() == 0

            # Only a published message or the resync tells store A of B's changes (a stats read
            # does not notify), so A's listener hearing of B's vote proves the resync ran.
            heard: list[int] = []
            store_a.subscribe(heard.append)
            try:
                fid = (await create_feature(client, admin(client), "f"))["id"]
                ws = await client.ws_connect("/ws")
                await receive_json(ws)
                assert await subscribers() == 1
                await admin_redis.client_kill_filter(_type="pubsub")
                await eventually(unsubscribed, 5, what="the killed subscription to be gone")
                await other.set_vote("someone", fid, 1)  # published to nobody
                assert await subscribers() == 0, "the store subscribed again before its wait"
                seq = (await other.stats()).seq
                assert max(heard) < seq, "store A heard of a change published to nobody"
                await eventually(lambda: heard[-1] >= seq, 20, what="the resync after subscribing")
                assert await subscribers() == 1
                pushed = await receive_until(
                    ws, lambda m: m.get("type") == "stats" and m["seq"] >= seq, 10)
                assert pushed["stats"]["up"] == 1
                await ws.close()
            finally:
                await admin_redis.aclose()
                await other.close()


# --- frozen: connections open but nothing answers -----------------------------------------------


async def test_frozen_redis_fails_fast_and_recovers(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    with private_redis(tmp_path) as server:
        async with instance(aiohttp_client, server.url) as (client, _store):
            fid = (await create_feature(client, admin(client), "f"))["id"]
            server.pause()
            try:
                await assert_unavailable(
                    client.put(f"/features/{fid}/vote", json={"value": 1},
                               headers=voter(client)))
                started = time.monotonic()
                assert await readyz(client) == 503
                assert time.monotonic() - started < FAIL_FAST
            finally:
                server.resume()
            await wait_ready(client)
            resp = await client.put(f"/features/{fid}/vote", json={"value": 1},
                                    headers=voter(client))
            assert resp.status == 200


# --- started before Redis ----------------------------------------------------------------------


async def test_instance_started_before_redis_becomes_ready(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    server = PrivateRedis(tmp_path, persistent=False)
    async with instance(aiohttp_client, server.url) as (client, _store):
        assert await readyz(client) == 503
        await assert_unavailable(client.get("/features"))
        try:
            server.start(pinned=True)  # the instance has its URL already
            await wait_ready(client)
            await create_feature(client, admin(client), "works now")
        finally:
            server.kill()


async def test_websocket_opened_while_redis_is_down_is_closed_cleanly(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    server = PrivateRedis(tmp_path, persistent=False)  # never started
    async with instance(aiohttp_client, server.url) as (client, _store):
        ws = await client.ws_connect("/ws")
        msg = await ws.receive(timeout=FAIL_FAST)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, WSCloseCode.TRY_AGAIN_LATER)
