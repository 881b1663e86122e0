"""API.md "Boards: many rooms on one deployment", end to end on the memory and the Redis store.

The real app from create_app over each store's board directory on a loopback socket; WebSocket
clients are real aiohttp clients. Redis cases skip (saying why) only when no Redis answers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import WSMsgType, web

from service.app import create_app
from service.auth import Role, Tokens
from service.config import Settings
from service.schemas import JOIN_CODE_ALPHABET
from service.store import MemoryStore, Store
from service.store.sqlite import SqliteBoards

from .conftest import AiohttpClient, Client, bearer, make_settings
from .redis_support import TestRedisStore, require_redis
from .waiting import eventually

Auth = dict[str, str]
Json = dict[str, Any]
SLUG: Final = re.compile(r"[a-z2-7]{16}")
CODE: Final = re.compile(f"[{JOIN_CODE_ALPHABET}]{{6}}")


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        boards = SqliteBoards(f"sqlite:///{tmp_path}/boards.sqlite3")
        yield boards.main
        await boards.close()
        return
    else:
        require_redis()
        made = TestRedisStore()
        await made.start()
    yield made
    await made.close()


@pytest.fixture
def app(settings: Settings, store: Store) -> web.Application:
    return create_app(settings, store=store)


@pytest.fixture
async def client(store: Store, aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    return await aiohttp_client(app)


@pytest.fixture
def site_admin(app: web.Application) -> Auth:
    return bearer(app_tokens(app).issue(Role.ADMIN, "admin")[0])


def app_tokens(app: web.Application) -> Tokens:
    from service.keys import TOKENS

    return app[TOKENS]


async def new_voter(client: Client) -> Auth:
    resp = await client.post("/auth/token")
    assert resp.status == 201
    return bearer((await resp.json())["token"])


async def new_board(client: Client, title: str = "Retro") -> tuple[Json, Auth]:
    resp = await client.post("/boards", json={"title": title})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert resp.headers["Location"] == f"/boards/{body['board']['slug']}"
    return body["board"], bearer(body["admin_token"])


async def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else None


async def problem(resp: Any, status: int) -> Json:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: Json = await resp.json()
    return body


async def propose(client: Client, base: str, auth: Auth, title: str) -> Json:
    body: Json = await ok(
        await client.post(f"{base}/features", json={"title": title}, headers=auth), 201
    )
    return body


# --- creating and finding boards ----------------------------------------------------------------


async def test_a_new_board_has_a_slug_a_join_code_and_its_own_admin_token(
    client: Client,
) -> None:
    board, admin = await new_board(client, "  Team retro  ")
    assert SLUG.fullmatch(board["slug"]) and CODE.fullmatch(board["join_code"])
    assert board["title"] == "Team retro"
    assert (board["round"], board["voting_open"], board["results_hidden"]) == (1, True, False)
    base = f"/boards/{board['slug']}"
    assert await ok(await client.get(base)) == board
    assert await ok(await client.get(f"/boards/by-code/{board['join_code']}")) == board
    # Codes are typed from a screen: any case, spaces and a dash are fine.
    typed = board["join_code"].lower()
    assert await ok(await client.get(f"/boards/by-code/{typed[:3]}-{typed[3:]}")) == board
    # Its token administers it...
    patched = await ok(await client.patch(base, json={"voting_open": False}, headers=admin))
    assert patched["voting_open"] is False
    # ...and no other board: main stays open, and its admin operations are 403.
    await problem(await client.patch("/board", json={"voting_open": False}, headers=admin), 403)
    await problem(await client.post("/board/reset", headers=admin), 403)
    assert (await ok(await client.get("/board")))["voting_open"] is True


async def test_unknown_boards_and_codes_are_404(client: Client) -> None:
    for path in ("/boards/aaaaaaaaaaaaaaaa", "/boards/aaaaaaaaaaaaaaaa/features",
                 "/boards/NotASlug/stats", "/boards/aaaaaaaaaaaaaaaa/ws",
                 "/boards/by-code/ZZZZZZ", "/boards/by-code/0O1IL0", "/boards/by-code/x"):
        await problem(await client.get(path), 404)


async def test_main_answers_under_boards_main_too(client: Client, site_admin: Auth) -> None:
    voter = await new_voter(client)
    feature = await propose(client, "", voter, "Dark mode")
    assert await ok(await client.get(f"/boards/main/features/{feature['id']}")) == feature
    await ok(await client.put(f"/boards/main/features/{feature['id']}/vote",
                              json={"value": 1}, headers=voter))
    assert (await ok(await client.get("/stats")))["up"] == 1
    assert (await ok(await client.get("/boards/main/stats")))["up"] == 1
    main = await ok(await client.get("/board"))
    assert main["slug"] == "main" and await ok(await client.get("/boards/main")) == main
    await problem(await client.delete("/boards/main", headers=site_admin), 409)


async def test_board_titles_are_bounded_and_bodies_checked(client: Client) -> None:
    for body in ({"title": ""}, {"title": "   "}, {"title": "x" * 121}, {}, {"title": 5},
                 {"title": "ok", "extra": 1}):
        await problem(await client.post("/boards", json=body), 422)
    await problem(await client.post("/boards", data=b"{", headers={
        "Content-Type": "application/json"}), 400)


# --- isolation ------------------------------------------------------------------------------------


async def test_boards_are_rooms_of_their_own(client: Client) -> None:
    a, admin_a = await new_board(client, "A")
    b, _ = await new_board(client, "B")
    base_a, base_b = f"/boards/{a['slug']}", f"/boards/{b['slug']}"
    voter = await new_voter(client)  # one voter token votes on every board
    fa = await propose(client, base_a, voter, "Only on A")
    fb = await propose(client, base_b, voter, "Only on B")
    assert fa["id"] == fb["id"] == 1  # ids count from 1 in each board
    assert (await client.post(
        f"{base_a}/features", json={"title": "x"}, headers=voter)).headers["Location"] == (
        f"{base_a}/features/2")
    await ok(await client.put(f"{base_a}/features/1/vote", json={"value": 1}, headers=voter))
    await ok(await client.put(f"{base_b}/features/1/vote", json={"value": -1}, headers=voter))
    stats_a = await ok(await client.get(f"{base_a}/stats"))
    stats_b = await ok(await client.get(f"{base_b}/features/stats"))
    assert (stats_a["up"], stats_a["down"], stats_a["total_features"]) == (1, 0, 2)
    assert (stats_b["up"], stats_b["down"], stats_b["total_features"]) == (0, 1, 1)
    assert stats_a["board"]["slug"] == a["slug"] and stats_b["board"]["slug"] == b["slug"]
    assert (await ok(await client.get("/stats")))["total_features"] == 0
    mine_a = await ok(await client.get(f"{base_a}/me/votes", headers=voter))
    mine_b = await ok(await client.get(f"{base_b}/me/votes", headers=voter))
    assert (mine_a, mine_b) == ({"votes": {"1": 1}}, {"votes": {"1": -1}})
    # A round closes on one board only.
    await ok(await client.post(f"{base_a}/reset", headers=admin_a))
    assert (await ok(await client.get(f"{base_a}/rounds")))["items"][0]["total_votes"] == 1
    assert (await ok(await client.get(f"{base_b}/rounds")))["items"] == []
    assert (await ok(await client.get(f"{base_b}/stats")))["down"] == 1
    export = await client.get(f"{base_a}/export.csv?round=1")
    assert export.status == 200
    assert f'feature-votes-{a["slug"]}-round-1.csv' in export.headers["Content-Disposition"]


async def test_hidden_results_are_per_board(client: Client) -> None:
    a, admin_a = await new_board(client, "A")
    b, admin_b = await new_board(client, "B")
    voter = await new_voter(client)
    for board in (a, b):
        base = f"/boards/{board['slug']}"
        await propose(client, base, voter, "F")
        await ok(await client.put(f"{base}/features/1/vote", json={"value": 1}, headers=voter))
    await ok(await client.patch(f"/boards/{a['slug']}", json={"results_hidden": True},
                                headers=admin_a))
    hidden = await ok(await client.get(f"/boards/{a['slug']}/features/1"))
    shown = await ok(await client.get(f"/boards/{b['slug']}/features/1"))
    assert (hidden["up"], shown["up"]) == (None, 1)
    # A's admin sees A's numbers; B's admin token is nobody special on A.
    assert (await ok(await client.get(f"/boards/{a['slug']}/features/1",
                                      headers=admin_a)))["up"] == 1
    assert (await ok(await client.get(f"/boards/{a['slug']}/features/1",
                                      headers=admin_b)))["up"] is None


# --- tokens -------------------------------------------------------------------------------------


async def test_board_admin_tokens_hold_on_their_board_only(
    client: Client, app: web.Application, site_admin: Auth
) -> None:
    a, admin_a = await new_board(client, "A")
    b, _ = await new_board(client, "B")
    voter = await new_voter(client)
    feature_b = await propose(client, f"/boards/{b['slug']}", voter, "F")
    base_b = f"/boards/{b['slug']}"
    for method, path, body in (
        ("PATCH", base_b, {"title": "taken over"}),
        ("POST", f"{base_b}/reset", None),
        ("PATCH", f"{base_b}/features/{feature_b['id']}", {"status": "done"}),
        ("DELETE", f"{base_b}/features/{feature_b['id']}", None),
        ("DELETE", base_b, None),
        ("GET", "/boards", None),
    ):
        await problem(await client.request(method, path, json=body, headers=admin_a), 403)
        await problem(await client.request(method, path, json=body, headers=voter), 403)
        resp = await client.request(method, path, json=body, headers=bearer("forged"))
        await problem(resp, 401)
    expired = app_tokens(app)
    token, _ = expired.issue(Role.ADMIN, board=a["slug"])
    late = Tokens(
        make_settings().secret, voter_ttl=60, admin_ttl=60, board_admin_ttl=60, cache_size=10,
        clock=lambda: 0.0,
    ).issue(Role.ADMIN, board=a["slug"])[0]
    await problem(await client.patch(f"/boards/{a['slug']}", json={"title": "x"},
                                     headers=bearer(late)), 401)
    await ok(await client.patch(f"/boards/{a['slug']}", json={"title": "own"},
                                headers=bearer(token)))
    # A site admin administers every board.
    await ok(await client.patch(base_b, json={"title": "by the site admin"}, headers=site_admin))
    await ok(await client.delete(f"{base_b}/features/{feature_b['id']}", headers=site_admin),
             204)
    listing = await ok(await client.get("/boards", headers=site_admin))
    assert [x["slug"] for x in listing["items"]] == ["main", a["slug"], b["slug"]]


async def test_board_admin_token_lifetime_is_its_own_setting() -> None:
    tokens = Tokens(make_settings().secret, voter_ttl=10, admin_ttl=20, board_admin_ttl=300,
                    cache_size=10, clock=lambda: 1000.0)
    _, board_claims = tokens.issue(Role.ADMIN, board="aaaaaaaaaaaaaaaa")
    _, site_claims = tokens.issue(Role.ADMIN)
    assert board_claims.exp - board_claims.iat == 300
    assert site_claims.exp - site_claims.iat == 20
    assert board_claims.admin_of("aaaaaaaaaaaaaaaa") and not board_claims.admin_of("main")
    assert site_claims.admin_of("main") and site_claims.admin_of("aaaaaaaaaaaaaaaa")
    with pytest.raises(ValueError):
        tokens.issue(Role.VOTER, board="aaaaaaaaaaaaaaaa")


async def test_listing_boards_pages_with_a_cursor(client: Client, site_admin: Auth) -> None:
    made = [(await new_board(client, f"B{n}"))[0]["slug"] for n in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await ok(await client.get("/boards" + query, headers=site_admin))
        seen += [b["slug"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["main", *made]
    # A page goes on after its cursor's board even when that board was deleted meanwhile.
    page = await ok(await client.get("/boards?limit=2", headers=site_admin))
    await ok(await client.delete(f"/boards/{made[0]}", headers=site_admin), 204)
    rest = await ok(await client.get(f"/boards?cursor={page['next_cursor']}", headers=site_admin))
    assert [b["slug"] for b in rest["items"]] == made[1:]
    await problem(await client.get("/boards?cursor=!!", headers=site_admin), 422)
    await problem(await client.get("/boards?limit=0", headers=site_admin), 422)


# --- deleting -------------------------------------------------------------------------------------


async def test_deleting_a_board_removes_it_and_closes_its_sockets(client: Client) -> None:
    a, admin_a = await new_board(client, "A")
    b, _ = await new_board(client, "B")
    voter = await new_voter(client)
    await propose(client, f"/boards/{a['slug']}", voter, "F")
    ws_a = await client.ws_connect(f"/boards/{a['slug']}/ws")
    ws_b = await client.ws_connect(f"/boards/{b['slug']}/ws")
    first_a, first_b = await ws_a.receive_json(), await ws_b.receive_json()
    assert first_a["stats"]["board"]["slug"] == a["slug"]
    assert first_b["stats"]["board"]["slug"] == b["slug"]
    await ok(await client.delete(f"/boards/{a['slug']}", headers=admin_a), 204)
    message = await ws_a.receive(timeout=5)
    while message.type is WSMsgType.TEXT:  # a last push may still be on its way
        message = await ws_a.receive(timeout=5)
    # The server's Close frame says 1001. (The client's own close_code may read 1006: aiohttp's
    # server ends the connection right after a Close begun by another task, without waiting
    # for the answer, and the client's answer then fails.)
    assert message.type is WSMsgType.CLOSE and message.data == 1001, message
    await problem(await client.get(f"/boards/{a['slug']}"), 404)
    await problem(await client.get(f"/boards/{a['slug']}/features/1"), 404)
    await problem(await client.get(f"/boards/by-code/{a['join_code']}"), 404)
    await problem(await client.post(f"/boards/{a['slug']}/features", json={"title": "x"},
                                    headers=voter), 404)
    await problem(await client.delete(f"/boards/{a['slug']}", headers=admin_a), 404)
    assert not ws_b.closed  # the other board's socket stays
    await ws_b.close()


async def test_a_push_reaches_only_its_own_boards_sockets(client: Client) -> None:
    a, _ = await new_board(client, "A")
    b, _ = await new_board(client, "B")
    voter = await new_voter(client)
    await propose(client, f"/boards/{a['slug']}", voter, "F")
    ws_a = await client.ws_connect(f"/boards/{a['slug']}/ws")
    ws_b = await client.ws_connect(f"/boards/{b['slug']}/ws")
    ws_main = await client.ws_connect("/ws")
    seq_a = (await ws_a.receive_json())["seq"]
    seq_b, seq_main = (await ws_b.receive_json())["seq"], (await ws_main.receive_json())["seq"]
    await ok(await client.put(f"/boards/{a['slug']}/features/1/vote", json={"value": 1},
                              headers=voter))
    pushed = await ws_a.receive_json(timeout=5)
    assert pushed["seq"] > seq_a and pushed["stats"]["up"] == 1
    # The others saw nothing: the next thing each gets is the pong to its ping.
    for ws in (ws_b, ws_main):
        await ws.send_json({"type": "ping"})
        assert await ws.receive_json(timeout=5) == {"type": "pong"}
    assert (await ok(await client.get(f"/boards/{b['slug']}/stats")))["seq"] == seq_b
    assert (await ok(await client.get("/stats")))["seq"] == seq_main
    for ws in (ws_a, ws_b, ws_main):
        await ws.close()


async def test_an_admin_socket_of_one_board_is_public_on_another(client: Client) -> None:
    a, admin_a = await new_board(client, "A")
    b, _ = await new_board(client, "B")
    ws = await client.ws_connect(f"/boards/{b['slug']}/ws")
    await ws.receive_json()
    await ws.send_json({"type": "auth", "token": admin_a["Authorization"].split()[1]})
    answer = await ws.receive_json(timeout=5)
    assert answer["type"] == "error" and "this board" in answer["detail"]
    await ws.close()
    ws = await client.ws_connect(f"/boards/{a['slug']}/ws")
    await ws.receive_json()
    await ws.send_json({"type": "auth", "token": admin_a["Authorization"].split()[1]})
    assert await ws.receive_json(timeout=5) == {"type": "auth", "role": "admin"}
    await ws.close()


# --- limits -------------------------------------------------------------------------------------


async def test_max_boards_bounds_the_deployment(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(make_settings(max_boards=3)))
    await new_board(client)
    await new_board(client)  # main + 2 = 3
    body = await problem(await client.post("/boards", json={"title": "one more"}), 409)
    assert "max_boards" in body["detail"]


async def test_board_creation_can_be_for_site_admins_only(aiohttp_client: AiohttpClient) -> None:
    app = create_app(make_settings(board_creation="admin"))
    client = await aiohttp_client(app)
    await problem(await client.post("/boards", json={"title": "x"}), 401)
    voter = await new_voter(client)
    await problem(await client.post("/boards", json={"title": "x"}, headers=voter), 403)
    site = bearer(app_tokens(app).issue(Role.ADMIN, "admin")[0])
    created = await ok(await client.post("/boards", json={"title": "x"}, headers=site), 201)
    board_admin = bearer(created["admin_token"])
    await problem(await client.post("/boards", json={"title": "y"}, headers=board_admin), 403)


async def test_board_creation_is_rate_limited_per_address(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(
        create_app(make_settings(board_create_rate=1.0, board_create_burst=2))
    )
    await new_board(client)
    await new_board(client)
    resp = await client.post("/boards", json={"title": "third"})
    await problem(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1


async def test_idle_boards_are_removed_when_asked(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(make_settings(board_idle_ttl=1.0)))
    idle, _ = await new_board(client, "idle")
    busy, admin = await new_board(client, "busy")

    async def gone() -> bool:
        return (await client.get(f"/boards/{idle['slug']}")).status == 404

    async def keep_busy() -> None:
        for n in range(40):
            await client.patch(f"/boards/{busy['slug']}", json={"title": f"busy {n}"},
                               headers=admin)
            await asyncio.sleep(0.1)

    keeper = asyncio.create_task(keep_busy())
    try:
        await eventually(gone, 10, what="the idle board to be removed")
    finally:
        keeper.cancel()
    assert (await client.get(f"/boards/{busy['slug']}")).status == 200
    assert (await client.get("/board")).status == 200  # main is never removed


async def test_metrics_count_boards_without_a_label_per_board(client: Client) -> None:
    a, _ = await new_board(client, "A")
    ws = await client.ws_connect(f"/boards/{a['slug']}/ws")
    await ws.receive_json()
    text = await (await client.get("/metrics")).text()
    assert "fv_boards 2.0" in text
    assert 'fv_ws_board_sockets_bucket{le="1"} 1.0' in text
    assert a["slug"] not in text
    await ws.close()
