"""API.md "Board: rounds and presenter controls" end to end, on the memory and the Redis store.

The real app from create_app over each store on a loopback socket; WebSocket clients are real
aiohttp clients. Redis cases skip (saying why) only when no Redis answers.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType, web

from service.app import create_app
from service.config import Settings
from service.schemas import DEFAULT_BOARD
from service.store import MemoryStore, Store

from .conftest import AiohttpClient, Client, bearer, create_feature
from .redis_support import TestRedisStore, require_redis
from .waiting import eventually

JSON: Final = "application/json"
PROBLEM: Final = "application/problem+json"
TOP_N: Final = 20
Auth = dict[str, str]
Json = dict[str, Any]


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore(top_n=TOP_N)
    else:
        require_redis()
        made = TestRedisStore(top_n=TOP_N)
        await made.start()
    yield made
    await made.close()


@pytest.fixture
def app(settings: Settings, store: Store) -> web.Application:
    return create_app(settings, store=store)


@pytest.fixture
async def client(store: Store, aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    """The store is set up first, so it closes after the server, as in production."""
    return await aiohttp_client(app)


# --- helpers ------------------------------------------------------------------------------------


async def new_voter(client: Client) -> Auth:
    resp = await client.post("/auth/token")
    assert resp.status == 201
    return bearer((await resp.json())["token"])


async def ok(resp: ClientResponse, status: int = 200) -> Any:
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text) if text else None


async def problem(resp: ClientResponse, status: int) -> Json:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM, (resp.content_type, text)
    body: Json = json.loads(text)
    assert body["status"] == status
    return body


async def patch_board(client: Client, admin: Auth, **fields: Any) -> Json:
    body: Json = await ok(await client.patch("/board", json=fields, headers=admin))
    return body


async def vote(client: Client, auth: Auth, fid: int, value: int) -> ClientResponse:
    if value == 0:
        return await client.delete(f"/features/{fid}/vote", headers=auth)
    return await client.put(f"/features/{fid}/vote", json={"value": value}, headers=auth)


async def seed(client: Client, admin: Auth) -> dict[str, int]:
    """a: +3, b: +1 -1, c: none, d: +2 -3 (ten votes from ten voters)."""
    ids = {n: (await create_feature(client, admin, f"Feature {n}"))["id"] for n in "abcd"}
    plan = [("a", 1)] * 3 + [("b", 1), ("b", -1)] + [("d", 1)] * 2 + [("d", -1)] * 3
    for name, value in plan:
        await ok(await vote(client, await new_voter(client), ids[name], value))
    return ids


async def get_json(client: Client, path: str, headers: Auth | None = None) -> Any:
    return await ok(await client.get(path, headers=headers or {}))


def counts(feature: Json) -> tuple[Any, Any, Any]:
    return feature["up"], feature["down"], feature["score"]


async def walk(client: Client, sort: str, headers: Auth | None = None) -> list[int]:
    """Every id of GET /features?sort=..., one item per page, following next_cursor."""
    seen: list[int] = []
    query = f"sort={sort}&limit=1"
    while True:
        page = await get_json(client, f"/features?{query}", headers)
        seen += [f["id"] for f in page["items"]]
        if page["next_cursor"] is None:
            return seen
        query = f"sort={sort}&limit=1&cursor={page['next_cursor']}"


def controls(board: dict[str, Any]) -> dict[str, Any]:
    """A board's JSON without what names it (slug, join code, created_at)."""
    return {k: v for k, v in board.items() if k not in ("slug", "join_code", "created_at")}


# --- GET/PATCH /board ---------------------------------------------------------------------------


async def test_get_board_defaults(client: Client) -> None:
    resp = await client.get("/board")
    assert resp.content_type == JSON
    board = await ok(resp)
    assert controls(board) == {
        "title": DEFAULT_BOARD.title,
        "round": 1,
        "voting_open": True,
        "results_hidden": False,
    }
    # What names it (ADR-012): the default board's slug, a join code, when it was made.
    assert board["slug"] == "main"
    assert re.fullmatch(r"[ABCDEFGHJKMNPQRSTUVWXYZ2-9]{6}", board["join_code"])
    assert board["created_at"].endswith("Z")


async def test_patch_board_fields_and_stats_carry_the_board(client: Client, admin: Auth) -> None:
    before = (await get_json(client, "/stats"))["seq"]
    board = await patch_board(client, admin, title="  Sprint 12  ", voting_open=False)
    assert controls(board) == {"title": "Sprint 12", "round": 1, "voting_open": False,
                               "results_hidden": False}
    assert await get_json(client, "/board") == board
    stats = await get_json(client, "/features/stats")
    assert stats["board"] == board
    assert stats["seq"] > before
    assert await patch_board(client, admin) == board  # empty patch: nothing changes
    assert (await get_json(client, "/stats"))["seq"] == stats["seq"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PATCH", "/board", {"voting_open": False}), ("POST", "/board/reset", None)],
)
async def test_admin_board_operations_refuse_others(
    client: Client, voter: Auth, method: str, path: str, body: Any
) -> None:
    resp = await client.request(method, path, json=body)
    await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await problem(await client.request(method, path, json=body, headers=bearer("forged")), 401)
    await problem(await client.request(method, path, json=body, headers=voter), 403)
    assert controls(await get_json(client, "/board")) == {
        "title": DEFAULT_BOARD.title, "round": 1, "voting_open": True, "results_hidden": False
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b'{"voting_open": "no"}', 422),
        (b'{"results_hidden": 1}', 422),
        (b'{"title": "   "}', 422),
        (b'{"title": "' + b"x" * 121 + b'"}', 422),
        (b'{"round": 5}', 422),
        (b"[]", 422),
    ],
)
async def test_bad_board_patch(client: Client, admin: Auth, body: bytes, status: int) -> None:
    resp = await client.patch("/board", data=body, headers={**admin, "Content-Type": JSON})
    await problem(resp, status)
    resp = await client.patch("/board", data=b"x", headers={**admin, "Content-Type": "text/plain"})
    await problem(resp, 415)
    assert (await get_json(client, "/board"))["round"] == 1


# --- the lock -----------------------------------------------------------------------------------


async def test_every_vote_operation_is_409_while_locked(
    client: Client, admin: Auth, voter: Auth
) -> None:
    fid = (await create_feature(client, voter))["id"]
    await ok(await vote(client, voter, fid, 1))
    await patch_board(client, admin, voting_open=False)
    for auth in (voter, admin, await new_voter(client)):
        for value in (1, -1, 0):
            body = await problem(await vote(client, auth, fid, value), 409)
            assert "closed" in body["detail"]
        resp = await client.post(f"/features/{fid}/vote", json={"value": -1}, headers=auth)
        await problem(resp, 409)
    await problem(await vote(client, voter, 999_999, 1), 404)
    feature = await get_json(client, f"/features/{fid}")
    assert counts(feature) == (1, 0, 1)
    await create_feature(client, voter, "Proposals are still welcome")
    await patch_board(client, admin, voting_open=True)
    assert (await ok(await vote(client, voter, fid, 0)))["up"] == 0


async def test_votes_racing_a_lock(client: Client, admin: Auth) -> None:
    """Every vote answered 200 is counted, every 409 is not; after the lock's answer, only 409s."""
    fids = [(await create_feature(client, admin, f"F{n}"))["id"] for n in range(4)]
    voters = await asyncio.gather(*(new_voter(client) for _ in range(160)))
    answers: dict[int, int] = {}

    async def cast(n: int) -> None:
        resp = await vote(client, voters[n], fids[n % 4], 1 if n % 3 else -1)
        answers[n] = resp.status
        await resp.read()

    first = [asyncio.create_task(cast(n)) for n in range(120)]
    await eventually(lambda: answers, what="a first vote answered")  # the lock lands mid-way
    # Answered before the lock was sent: applied before it, so each must be a 200. (Answers read
    # while the PATCH is on its way may be either: a vote behind the lock is a 409.)
    before_lock = list(answers)
    await patch_board(client, admin, voting_open=False)
    late = [asyncio.create_task(cast(n)) for n in range(120, 160)]
    await asyncio.gather(*first, *late)

    assert set(answers.values()) <= {200, 409}
    assert all(answers[n] == 409 for n in range(120, 160))  # sent after the lock answered
    accepted = [n for n, status in answers.items() if status == 200]
    assert before_lock and all(answers[n] == 200 for n in before_lock)
    stats = await get_json(client, "/stats")
    assert stats["total_votes"] == stats["voters"] == len(accepted)
    for i, fid in enumerate(fids):
        feature = await get_json(client, f"/features/{fid}")
        mine = [n for n in accepted if n % 4 == i]
        assert feature["up"] == sum(1 for n in mine if n % 3)
        assert feature["down"] == sum(1 for n in mine if not n % 3)
    for n in range(160):  # each voter's own record agrees with its answer
        votes = (await get_json(client, "/me/votes", voters[n]))["votes"]
        assert bool(votes) is (answers[n] == 200)


# --- hidden results -----------------------------------------------------------------------------


async def test_hidden_results_never_reach_a_non_admin_over_rest(
    client: Client, admin: Auth, voter: Auth
) -> None:
    ids = await seed(client, admin)
    await patch_board(client, admin, results_hidden=True)
    everyone_else: list[Auth] = [{}, voter, bearer("not-a-token")]
    id_order = sorted(ids.values())
    for who in everyone_else:
        for sort in ("top", "wilson", "controversial", "new"):
            items = (await get_json(client, f"/features?sort={sort}", who))["items"]
            assert all(counts(f) == (None, None, None) for f in items), (sort, who)
            if sort != "new":
                assert [f["id"] for f in items] == id_order
        assert counts(await get_json(client, f"/features/{ids['a']}", who)) == (None,) * 3
        stats = await get_json(client, "/features/stats", who)
        assert (stats["up"], stats["down"]) == (None, None)
        assert (stats["total_votes"], stats["voters"]) == (10, 10)
        assert [f["id"] for f in stats["top"]] == id_order
        assert all(counts(f) == (None, None, None) for f in stats["top"])
        export = await get_json(client, "/export.json", who)
        assert [f["id"] for f in export["standings"]] == id_order
        assert all(counts(f) == (None, None, None) for f in export["standings"])
        rows = list(csv.DictReader(io.StringIO(await (await client.get(
            "/export.csv", headers=who)).text())))
        assert all((r["up"], r["down"], r["score"], r["rank"]) == ("", "", "", "") for r in rows)
    # a vote's answer would give the count away too
    answer = await ok(await vote(client, await new_voter(client), ids["c"], 1))
    assert (answer["value"], *counts(answer)) == (1, None, None, None)
    created = await ok(await client.post("/features", json={"title": "New"}, headers=voter), 201)
    assert counts(created) == (None, None, None)
    # the admin sees everything
    stats = await get_json(client, "/stats", admin)
    assert (stats["up"], stats["down"]) == (7, 4)
    assert counts(await get_json(client, f"/features/{ids['a']}", admin)) == (3, 0, 3)
    top = (await get_json(client, "/features?sort=top", admin))["items"]
    assert [f["id"] for f in top][:2] == [ids["a"], ids["c"]]
    answer = await ok(await vote(client, admin, ids["a"], -1))
    assert counts(answer) == (3, 1, 2)


async def test_revealing_shows_the_numbers_to_everyone(client: Client, admin: Auth) -> None:
    ids = await seed(client, admin)
    await patch_board(client, admin, results_hidden=True)
    assert (await get_json(client, "/stats"))["up"] is None
    await patch_board(client, admin, results_hidden=False)
    stats = await get_json(client, "/stats")
    assert (stats["up"], stats["down"]) == (6, 4)
    assert counts(await get_json(client, f"/features/{ids['d']}")) == (2, 3, -1)


async def test_no_304_across_audiences(client: Client, admin: Auth, voter: Auth) -> None:
    await seed(client, admin)
    shown = await client.get("/stats")
    shown_tag = shown.headers["ETag"]
    assert "Authorization" in shown.headers["Vary"]
    await patch_board(client, admin, results_hidden=True)
    admin_resp = await client.get("/stats", headers=admin)
    admin_tag = admin_resp.headers["ETag"]
    public_resp = await client.get("/stats")
    public_tag = public_resp.headers["ETag"]
    assert admin_tag != public_tag
    assert (await admin_resp.json())["up"] == 6
    # an admin's tag (or the tag of the numbers shown before the hide) never earns a 304 on the
    # hidden view: the full, hidden body comes back instead
    for tag in (admin_tag, shown_tag, f"{admin_tag}, W/\"0\""):
        for who in ({}, voter):
            resp = await client.get("/stats", headers={**who, "If-None-Match": tag})
            assert resp.status == 200, tag
            assert resp.headers["ETag"] == public_tag
            assert (await resp.json())["up"] is None
    # each audience's own tag does
    assert (await client.get("/stats", headers={"If-None-Match": public_tag})).status == 304
    resp = await client.get("/stats", headers={**admin, "If-None-Match": admin_tag})
    assert resp.status == 304
    resp = await client.get("/stats", headers={**admin, "If-None-Match": public_tag})
    assert resp.status == 200 and (await resp.json())["up"] == 6


async def test_hidden_listing_cursor_walks_by_id(client: Client, admin: Auth) -> None:
    ids = await seed(client, admin)
    await patch_board(client, admin, results_hidden=True)
    for sort in ("top", "wilson", "controversial"):
        assert await walk(client, sort) == sorted(ids.values()), sort
        full = [f["id"] for f in (await get_json(client, f"/features?sort={sort}", admin))["items"]]
        assert await walk(client, sort, admin) == full


# --- reset, rounds, exports ---------------------------------------------------------------------


async def test_reset_archives_the_standings_and_starts_a_new_round(
    client: Client, admin: Auth
) -> None:
    ids = await seed(client, admin)
    await patch_board(client, admin, voting_open=False)
    final = (await get_json(client, "/features?sort=top&limit=200"))["items"]
    before = await get_json(client, "/stats")

    board = await ok(await client.post("/board/reset", headers=admin))

    assert controls(board) == {"title": DEFAULT_BOARD.title, "round": 2, "voting_open": False,
                     "results_hidden": False}
    stats = await get_json(client, "/stats")
    assert stats["seq"] > before["seq"] and stats["board"] == board
    assert (stats["total_votes"], stats["voters"], stats["total_features"]) == (0, 0, 4)
    listing = await get_json(client, "/rounds")
    assert len(listing["items"]) == 1
    summary = listing["items"][0]
    assert {k: summary[k] for k in ("round", "total_votes", "voters", "results_hidden")} == {
        "round": 1, "total_votes": 10, "voters": 10, "results_hidden": False
    }
    archived = await get_json(client, "/rounds/1")
    assert archived["round"] == 1
    assert archived["closed_at"] == summary["closed_at"]
    assert archived["standings"] == final  # exactly the final standings, in top order
    assert [f["id"] for f in archived["standings"]] == [ids[n] for n in "abcd"]
    for path in ("/rounds/2", "/rounds/3", "/rounds/0", "/rounds/abc", "/rounds/-1"):
        await problem(await client.get(path), 404)

    await patch_board(client, admin, voting_open=True)
    await ok(await vote(client, await new_voter(client), ids["b"], 1))
    await ok(await client.post("/board/reset", headers=admin))
    assert [r["round"] for r in (await get_json(client, "/rounds"))["items"]] == [2, 1]
    assert (await get_json(client, "/rounds/2"))["standings"][0]["id"] == ids["b"]


async def test_exports_match_the_standings(client: Client, admin: Auth) -> None:
    ids = await seed(client, admin)
    await ok(await client.patch(f"/features/{ids['c']}",
                                json={"title": "=HYPERLINK(\"x\")", "description": "a, \"b\"\nc"},
                                headers=admin))
    now = (await get_json(client, "/features?sort=top&limit=200"))["items"]

    resp = await client.get("/export.json")
    assert resp.status == 200 and resp.content_type == JSON
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="feature-votes-round-1.json"'
    )
    export = await resp.json()
    assert export["standings"] == now
    assert (export["round"], export["closed_at"], export["total_votes"]) == (1, None, 10)

    resp = await client.get("/export.csv")
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    text = await resp.text()
    assert text.startswith("rank,id,title,status,up,down,score,created_at,description\r\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in rows] == [f["id"] for f in now]
    for rank, (row, feature) in enumerate(zip(rows, now, strict=True), start=1):
        assert int(row["rank"]) == rank
        assert (int(row["up"]), int(row["down"]), int(row["score"])) == counts(feature)
        assert row["status"] == feature["status"]
        assert row["created_at"] and row["title"].lstrip("'") == feature["title"]
    odd = next(r for r in rows if int(r["id"]) == ids["c"])
    assert odd["title"] == "'=HYPERLINK(\"x\")"  # no formula in a spreadsheet
    assert odd["description"] == "a, \"b\"\nc"

    await ok(await client.post("/board/reset", headers=admin))
    archived = await get_json(client, "/rounds/1")
    old = await get_json(client, "/export.json?round=1")
    assert old["standings"] == archived["standings"] == now
    assert old["closed_at"] == archived["closed_at"]
    resp = await client.get("/export.csv?round=1")
    assert resp.headers["Content-Disposition"] == 'attachment; filename="feature-votes-round-1.csv"'
    assert await resp.text() == text
    current = await get_json(client, "/export.json?round=2")
    assert (current["round"], current["total_votes"]) == (2, 0)
    for bad, status in (("3", 404), ("99", 404), ("0", 422), ("x", 422), ("-1", 422), ("", 422)):
        for path in ("/export.json", "/export.csv"):
            await problem(await client.get(f"{path}?round={bad}"), status)


async def test_a_round_closed_hidden_is_hidden_from_non_admins(
    client: Client, admin: Auth, voter: Auth
) -> None:
    ids = await seed(client, admin)
    final = (await get_json(client, "/features", admin))["items"]
    await patch_board(client, admin, results_hidden=True)
    await ok(await client.post("/board/reset", headers=admin))
    summary = (await get_json(client, "/rounds"))["items"][0]
    assert summary["results_hidden"] is True and summary["total_votes"] == 10
    for who in ({}, voter):
        archived = await get_json(client, "/rounds/1", who)
        assert [f["id"] for f in archived["standings"]] == sorted(ids.values())
        assert all(counts(f) == (None, None, None) for f in archived["standings"])
        export = await get_json(client, "/export.json?round=1", who)
        assert all(counts(f) == (None, None, None) for f in export["standings"])
    assert (await get_json(client, "/rounds/1", admin))["standings"] == final
    assert (await get_json(client, "/export.json?round=1", admin))["standings"] == final


# --- rankings over HTTP -------------------------------------------------------------------------


async def test_ranking_choices(client: Client, admin: Auth) -> None:
    ids = await seed(client, admin)
    wilson = [f["id"] for f in (await get_json(client, "/features?sort=wilson"))["items"]]
    assert wilson == [ids[n] for n in "adbc"]  # no votes last
    contro = [f["id"] for f in (await get_json(client, "/features?sort=controversial"))["items"]]
    assert contro == [ids[n] for n in "dbac"]
    for sort, full in (("wilson", wilson), ("controversial", contro)):
        assert await walk(client, sort) == full
        other = "top" if sort == "wilson" else "wilson"
        cursor = (await get_json(client, f"/features?sort={sort}&limit=1"))["next_cursor"]
        await problem(await client.get(f"/features?sort={other}&cursor={cursor}"), 422)


# --- pushes -------------------------------------------------------------------------------------


async def next_stats(ws: ClientWebSocketResponse, accept: Any, seconds: float = 5.0) -> Json:
    """The first stats push that passes `accept`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - loop.time()))
        assert msg.type is WSMsgType.TEXT, msg
        body: Json = json.loads(msg.data)
        if body["type"] == "stats" and accept(body["stats"]):
            return body


async def test_pushes_hide_results_from_everyone_but_an_authenticated_admin(
    client: Client, admin: Auth, voter: Auth
) -> None:
    ids = await seed(client, admin)
    public = await client.ws_connect("/ws")
    voter_ws = await client.ws_connect("/ws", headers=voter)  # a token in headers changes nothing
    admin_ws = await client.ws_connect("/ws")
    for ws in (public, voter_ws, admin_ws):
        assert (await next_stats(ws, lambda s: True))["stats"]["up"] == 6

    # bad tokens are answered with an error, and the socket stays public
    await admin_ws.send_json({"type": "auth", "token": "forged"})
    await voter_ws.send_json({"type": "auth", "token": voter["Authorization"].split()[1]})
    for ws in (admin_ws, voter_ws):
        msg = await ws.receive_json(timeout=5)
        assert msg["type"] == "error" and msg["detail"].startswith("auth")

    await admin_ws.send_json({"type": "auth", "token": admin["Authorization"].split()[1]})
    assert await admin_ws.receive_json(timeout=5) == {"type": "auth", "role": "admin"}
    snapshot = await next_stats(admin_ws, lambda s: True)
    assert snapshot["stats"]["up"] == 6

    await patch_board(client, admin, results_hidden=True)
    for ws in (public, voter_ws):
        push = await next_stats(ws, lambda s: s["board"]["results_hidden"])
        stats = push["stats"]
        assert (stats["up"], stats["down"]) == (None, None)
        assert all(counts(f) == (None, None, None) for f in stats["top"])
        assert [f["id"] for f in stats["top"]] == sorted(ids.values())
    admin_push = await next_stats(admin_ws, lambda s: s["board"]["results_hidden"])
    assert admin_push["stats"]["up"] == 6
    assert admin_push["stats"]["top"][0]["id"] == ids["a"]

    await ok(await vote(client, await new_voter(client), ids["b"], 1))
    push = await next_stats(public, lambda s: s["total_votes"] == 11)
    assert push["stats"]["up"] is None
    assert (await next_stats(admin_ws, lambda s: s["total_votes"] == 11))["stats"]["up"] == 7

    # a new public socket joining while hidden gets the hidden view too
    late = await client.ws_connect("/ws")
    assert (await next_stats(late, lambda s: True))["stats"]["up"] is None

    await patch_board(client, admin, results_hidden=False)  # reveal: numbers for everyone
    for ws in (public, voter_ws, late, admin_ws):
        push = await next_stats(ws, lambda s: not s["board"]["results_hidden"])
        assert (push["stats"]["up"], push["stats"]["down"]) == (7, 4)
        assert push["stats"]["top"][0]["id"] == ids["a"]
    for ws in (public, voter_ws, late, admin_ws):
        await ws.close()


async def test_pushes_follow_lock_and_reset(client: Client, admin: Auth) -> None:
    await seed(client, admin)
    ws = await client.ws_connect("/ws")
    await next_stats(ws, lambda s: True)
    await patch_board(client, admin, voting_open=False)
    assert (await next_stats(ws, lambda s: not s["board"]["voting_open"]))["stats"]["up"] == 6
    await ok(await client.post("/board/reset", headers=admin))
    push = await next_stats(ws, lambda s: s["board"]["round"] == 2)
    assert push["stats"]["total_votes"] == 0
    await ws.close()


async def test_admin_socket_seq_never_goes_back(client: Client, admin: Auth) -> None:
    """The auth snapshot may repeat the seq the socket has (other numbers), never an older one."""
    ids = await seed(client, admin)
    await patch_board(client, admin, results_hidden=True)
    ws = await client.ws_connect("/ws")
    first = await next_stats(ws, lambda s: True)
    token = admin["Authorization"].split()[1]
    voters = [await new_voter(client) for _ in range(20)]
    burst = asyncio.gather(*(vote(client, v, ids["c"], 1) for v in voters))
    await ws.send_json({"type": "auth", "token": token})
    await burst
    seqs = [first["seq"]]
    acked = False
    while True:
        msg = await ws.receive_json(timeout=5)
        if msg["type"] == "auth":
            acked = True
            continue
        assert msg["type"] == "stats"
        assert msg["seq"] >= seqs[-1] and (msg["seq"] > seqs[-1] or acked)
        seqs.append(msg["seq"])
        if acked and msg["stats"]["total_votes"] == 30:
            assert msg["stats"]["up"] is not None
            break
    await ws.close()
