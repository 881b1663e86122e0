"""Boards across two instances on one Redis (issue 15): a board made on A is found, voted on and
watched through B; deleting it through B closes its screens on both; each instance subscribes
only to the change channels of the boards its own sockets watch.

Each instance is the real app from create_app over its own RedisStore (its own connections and
subscription) in one shared key namespace and one secret, served on its own loopback socket; the
screens are real WebSocket clients. Skips only when no Redis answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from redis.asyncio import Redis as AsyncRedis

from service.app import create_app
from service.keys import BOARDS
from service.store.redis import RedisStore

from .conftest import AiohttpClient, Client, bearer, make_settings
from .redis_support import REDIS_URL, TestRedisStore, require_redis, unique_prefix
from .test_ws import receive_json, receive_until, wait_closed, without_generated_at
from .waiting import eventually

Auth = dict[str, str]
Json = dict[str, Any]
Predicate = Callable[[], bool | Awaitable[bool]]  # what eventually() waits on, spelled for mypy
# Hang guards, not speed bounds: B hears of A's changes only through Redis pub/sub.
PUSH_DEADLINE: Final = 10.0
GOING_AWAY: Final = 1001


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


@pytest.fixture
async def pubsub_client() -> AsyncIterator[AsyncRedis]:
    """A plain client of the shared Redis, for PUBSUB NUMSUB."""
    require_redis()
    client = AsyncRedis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else None


async def new_board(client: Client, title: str) -> tuple[Json, Auth]:
    body = await ok(await client.post("/boards", json={"title": title}), 201)
    return body["board"], bearer(body["admin_token"])


async def new_voter(client: Client) -> Auth:
    body = await ok(await client.post("/auth/token"), 201)
    return bearer(body["token"])


async def channel_of(client: Client, slug: str) -> str:
    store = await client.app[BOARDS].get(slug)
    assert isinstance(store, RedisStore)
    return store.channel


async def subscribers(redis: AsyncRedis, channel: str) -> int:
    found = await redis.pubsub_numsub(channel)
    return int(found[0][1])


async def screen(client: Client, slug: str) -> tuple[ClientWebSocketResponse, Json]:
    """A board's screen: the socket and the stats frame it gets first."""
    ws = await client.ws_connect(f"/boards/{slug}/ws")
    first = await receive_json(ws)
    assert first["type"] == "stats" and first["stats"]["board"]["slug"] == slug
    return ws, first


async def still_open(ws: ClientWebSocketResponse) -> None:
    """The socket answers a ping (skipping any stats push before the pong)."""
    assert not ws.closed
    await ws.send_json({"type": "ping"})
    await receive_until(ws, lambda m: m.get("type") == "pong", PUSH_DEADLINE)


async def test_a_board_made_on_a_is_found_voted_on_and_watched_through_b(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    board, admin = await new_board(a, "Made on A")
    slug, code = board["slug"], board["join_code"]
    base = f"/boards/{slug}"
    # B finds it by slug and by its join code (typed in lower case, as from a screen).
    assert await ok(await b.get(base)) == board
    assert await ok(await b.get(f"/boards/by-code/{code.lower()}")) == board
    assert await ok(await a.get(f"/boards/by-code/{code}")) == board
    ws_a, first_a = await screen(a, slug)
    ws_b, first_b = await screen(b, slug)
    try:
        assert first_a["seq"] == first_b["seq"]
        voters = [await new_voter(b) for _ in range(3)]
        fids = [(await ok(await b.post(f"{base}/features", json={"title": t},
                                       headers=voters[0]), 201))["id"]
                for t in ("Dark mode", "Export", "SSO")]
        assert fids == [1, 2, 3]
        plan = [(0, 1, 1), (1, 1, 1), (2, 1, -1), (0, 2, -1), (1, 3, 1), (2, 3, 1), (0, 1, 0)]
        for voter, fid, value in plan:
            path = f"{base}/features/{fid}/vote"
            if value:
                await ok(await b.put(path, json={"value": value}, headers=voters[voter]))
            else:
                await ok(await b.delete(path, headers=voters[voter]))
        # One change through A too: its presenter hides nothing but renames the board.
        await ok(await a.patch(base, json={"title": "Made on A, voted on B"}, headers=admin))
        final = await ok(await b.get(f"{base}/stats"))
        assert without_generated_at(await ok(await a.get(f"{base}/stats"))) == (
            without_generated_at(final))
        totals = (final["up"], final["down"], final["voters"], final["total_features"])
        assert totals == (3, 2, 3, 3)
        assert final["board"]["title"] == "Made on A, voted on B"
        # Both screens converge on that seq and those counts.
        pushed = [
            await receive_until(ws, lambda m: m.get("type") == "stats" and m["seq"] >= final["seq"],
                                PUSH_DEADLINE)
            for ws in (ws_a, ws_b)
        ]
        for frame in pushed:
            assert frame["seq"] == final["seq"]
            assert without_generated_at(frame["stats"]) == without_generated_at(final)
        assert {f["id"]: (f["up"], f["down"]) for f in final["top"]} == {
            1: (1, 1), 2: (0, 1), 3: (2, 0)}
        # The voter's ballot on this board reads the same on both; main saw none of it.
        for client in (a, b):
            mine = await ok(await client.get(f"{base}/me/votes", headers=voters[0]))
            assert mine == {"votes": {"2": -1}}
            assert (await ok(await client.get("/stats")))["total_votes"] == 0
    finally:
        await ws_a.close()
        await ws_b.close()


async def test_deleting_a_board_through_b_closes_its_sockets_on_both(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    doomed, admin = await new_board(a, "Doomed")
    other, _ = await new_board(a, "Stays")
    voter = await new_voter(a)
    await ok(await a.post(f"/boards/{doomed['slug']}/features", json={"title": "F"},
                          headers=voter), 201)
    doomed_a, _ = await screen(a, doomed["slug"])
    doomed_b, _ = await screen(b, doomed["slug"])
    other_a, _ = await screen(a, other["slug"])
    other_b, _ = await screen(b, other["slug"])
    try:
        # A has the board cached (its socket looked it up): only the deletion channel tells it.
        await ok(await b.delete(f"/boards/{doomed['slug']}", headers=admin), 204)
        for ws in (doomed_b, doomed_a):
            closing = await wait_closed(ws, PUSH_DEADLINE)
            # The server's Close frame says 1001 (the client's own close_code may read 1006:
            # aiohttp's server ends the connection right after a Close another task began).
            assert closing.type is WSMsgType.CLOSE and closing.data == GOING_AWAY, closing

        async def gone_on_a() -> bool:
            resp = await a.get(f"/boards/{doomed['slug']}")
            await resp.read()
            return resp.status == 404

        gone: Predicate = gone_on_a
        await eventually(gone, what="A to answer 404 for the deleted board")
        for client in (a, b):
            for path in (f"/boards/{doomed['slug']}", f"/boards/{doomed['slug']}/features/1",
                         f"/boards/by-code/{doomed['join_code']}"):
                resp = await client.get(path)
                assert resp.status == 404, (path, await resp.text())
            resp = await client.post(f"/boards/{doomed['slug']}/features", json={"title": "x"},
                                     headers=voter)
            assert resp.status == 404, await resp.text()
            resp = await client.get(f"/boards/{doomed['slug']}/ws")
            assert resp.status == 404
        # The other board's screens on both instances stay open and keep getting its pushes.
        for ws in (other_a, other_b):
            await still_open(ws)
        await ok(await b.post(f"/boards/{other['slug']}/features", json={"title": "G"},
                              headers=voter), 201)
        seq = (await ok(await a.get(f"/boards/{other['slug']}/stats")))["seq"]
        for ws in (other_a, other_b):
            frame = await receive_until(
                ws, lambda m: m.get("type") == "stats" and m["seq"] >= seq, PUSH_DEADLINE)
            assert frame["stats"]["board"]["slug"] == other["slug"]
            assert frame["stats"]["total_features"] == 1
    finally:
        for ws in (doomed_a, doomed_b, other_a, other_b):
            await ws.close()


async def test_an_instance_subscribes_only_to_the_boards_its_sockets_watch(
    pair: tuple[Client, Client], pubsub_client: AsyncRedis
) -> None:
    a, b = pair
    board, _ = await new_board(a, "Watched")
    slug = board["slug"]
    base = f"/boards/{slug}"
    channel = await channel_of(a, slug)
    assert channel == await channel_of(b, slug)
    # Requests on it, through both, subscribe nobody: only a socket does.
    voter = await new_voter(b)
    await ok(await b.post(f"{base}/features", json={"title": "F"}, headers=voter), 201)
    await ok(await a.put(f"{base}/features/1/vote", json={"value": 1}, headers=voter))
    for client in (a, b):
        await ok(await client.get(f"{base}/stats"))
    assert await subscribers(pubsub_client, channel) == 0

    def count(n: int) -> Predicate:
        async def holds() -> bool:
            return await subscribers(pubsub_client, channel) == n

        return holds

    ws, _ = await screen(a, slug)
    try:
        await eventually(count(1), what="A to subscribe on its first socket")
        # A second socket on A shares A's subscription; B still has none of its own.
        second, _ = await screen(a, slug)
        await ok(await b.put(f"{base}/features/1/vote", json={"value": -1}, headers=voter))
        seq = (await ok(await b.get(f"{base}/stats")))["seq"]
        for socket in (ws, second):  # B's change reached A's sockets through A's subscription
            frame = await receive_until(
                socket, lambda m: m.get("type") == "stats" and m["seq"] >= seq, PUSH_DEADLINE)
            assert frame["stats"]["down"] == 1
        assert await subscribers(pubsub_client, channel) == 1
        await second.close()
        await still_open(ws)
        assert await subscribers(pubsub_client, channel) == 1  # A keeps it for its last socket
    finally:
        await ws.close()
    await eventually(count(0), what="A to unsubscribe after its last socket")
    # The same on B.
    ws, _ = await screen(b, slug)
    try:
        await eventually(count(1), what="B to subscribe on its first socket")
    finally:
        await ws.close()
    await eventually(count(0), what="B to unsubscribe after its last socket")
