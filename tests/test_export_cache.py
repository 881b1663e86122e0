"""Exports are rendered once per change (issue 14): /export.* is O(features), so the rendered
file is kept per format, audience and round until seq moves, in a bounded cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from service.app import create_app
from service.auth import Role
from service.keys import TOKENS
from service.schemas import Standings
from service.store import Audience, MemoryStore, Store

from .conftest import AiohttpClient, Client, bearer, make_settings
from .redis_support import TestRedisStore, require_redis, unique_prefix


class CountingMemoryStore(MemoryStore):
    """A real memory store that counts the standings reads an export costs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads = 0

    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        self.reads += 1
        return await super().standings(round_no, audience=audience)


class CountingRedisStore(TestRedisStore):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads = 0

    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        self.reads += 1
        return await super().standings(round_no, audience=audience)


Counting = CountingMemoryStore | CountingRedisStore


async def make_store(kind: str, **kwargs: Any) -> Counting:
    if kind == "memory":
        return CountingMemoryStore()
    require_redis()
    store = CountingRedisStore(**kwargs)
    await store.start()
    return store


class Board:
    def __init__(self, client: Client, store: Counting) -> None:
        self.client = client
        self.store = store
        self.admin = bearer(client.app[TOKENS].issue(Role.ADMIN, "admin")[0])

    async def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        resp = await self.client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.read()

    async def vote(self, fid: int, value: int) -> None:
        token = (await (await self.client.post("/auth/token")).json())["token"]
        resp = await self.client.put(
            f"/features/{fid}/vote", json={"value": value}, headers=bearer(token)
        )
        assert resp.status == 200


async def open_board(aiohttp_client: AiohttpClient, store: Store, **settings: Any) -> Client:
    app: web.Application = create_app(make_settings(**settings), store=store)
    return await aiohttp_client(app)


@pytest.fixture(params=["memory", "redis"])
async def board(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> AsyncIterator[Board]:
    store = await make_store(request.param)
    try:
        b = Board(await open_board(aiohttp_client, store, export_cache_size=8), store)
        for title in ("Dark mode", "Export", "Offline"):
            resp = await b.client.post("/features", json={"title": title}, headers=b.admin)
            assert resp.status == 201
        yield b
    finally:
        await store.close()


async def test_a_second_download_at_the_same_seq_is_served_from_the_cache(board: Board) -> None:
    first = await board.get("/export.json")
    assert board.store.reads == 1
    assert await board.get("/export.json") == first
    assert board.store.reads == 1  # not read again
    csv_first = await board.get("/export.csv")
    assert board.store.reads == 2  # another format is another file
    assert await board.get("/export.csv") == csv_first
    assert board.store.reads == 2


async def test_a_vote_changes_the_export(board: Board) -> None:
    before = await board.get("/export.json")
    await board.vote(2, 1)
    after = await board.get("/export.json")
    assert board.store.reads == 2
    assert after != before
    assert b'"up":1' in after.replace(b" ", b"")
    csv = (await board.get("/export.csv")).decode()
    assert csv.splitlines()[1].startswith("1,2,Export,open,1,0,1,")  # rank 1 now


async def test_audiences_and_rounds_are_cached_apart(board: Board) -> None:
    await board.vote(1, 1)
    assert (
        await board.client.patch("/board", json={"results_hidden": True}, headers=board.admin)
    ).status == 200
    public = await board.get("/export.csv")
    admin = await board.get("/export.csv", headers=board.admin)
    assert public != admin  # the public file has empty counts
    assert board.store.reads == 2
    assert await board.get("/export.csv") == public
    assert await board.get("/export.csv", headers=board.admin) == admin
    assert board.store.reads == 2
    assert (await board.client.post("/board/reset", headers=board.admin)).status == 200
    closed = await board.get("/export.json?round=1", headers=board.admin)
    assert await board.get("/export.json?round=1", headers=board.admin) == closed
    assert board.store.reads == 3


async def test_the_cache_is_bounded(aiohttp_client: AiohttpClient) -> None:
    store = CountingMemoryStore()
    b = Board(await open_board(aiohttp_client, store, export_cache_size=2), store)
    for path in ("/export.json", "/export.csv", "/export.json?round=1"):  # three keys, room for 2
        await b.get(path)
    assert store.reads == 3
    await b.get("/export.json?round=1")  # the newest: kept
    assert store.reads == 3
    await b.get("/export.json")  # the oldest: gone
    assert store.reads == 4


async def test_size_zero_turns_the_cache_off(aiohttp_client: AiohttpClient) -> None:
    store = CountingMemoryStore()
    b = Board(await open_board(aiohttp_client, store, export_cache_size=0), store)
    await b.get("/export.json")
    await b.get("/export.json")
    assert store.reads == 2


async def test_a_change_on_another_instance_invalidates_the_cache(
    aiohttp_client: AiohttpClient,
) -> None:
    """Two instances on one Redis board: the cache is keyed by the store's seq, not by what
    this instance did."""
    prefix = unique_prefix()
    one = await make_store("redis", prefix=prefix)
    other = await make_store("redis", prefix=prefix)
    try:
        a = Board(await open_board(aiohttp_client, one, export_cache_size=8), one)
        b = Board(await open_board(aiohttp_client, other, export_cache_size=8), other)
        assert (await a.client.post("/features", json={"title": "X"}, headers=a.admin)).ok
        before = await a.get("/export.json")
        assert await a.get("/export.json") == before and one.reads == 1
        await b.vote(1, 1)  # through the other instance
        after = await a.get("/export.json")
        assert one.reads == 2 and after != before
    finally:
        await one.close()
        await other.close()
