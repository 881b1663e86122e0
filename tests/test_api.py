"""The public REST contract of API.md (everything but /ws, board and pages), end to end.

Every test runs against the real app from create_app on a loopback socket; no mocks.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from aiohttp import ClientResponse

from service.app import create_app
from service.auth import Tokens

from .conftest import AiohttpClient, Client, bearer, create_feature, make_settings, stats

JSON = "application/json"
PROBLEM = "application/problem+json"
FEATURE_KEYS = {"id", "title", "description", "status", "created_at", "up", "down", "score"}
STATUSES = ["open", "planned", "in_progress", "done", "declined"]
Auth = dict[str, str]


# --- helpers ------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no offset (RFC 3339 needs one)"
    return parsed


async def new_voter(client: Client) -> Auth:
    resp = await client.post("/auth/token")
    assert resp.status == 201
    return bearer((await resp.json())["token"])


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer of this status and return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM, (resp.content_type, text)
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    return body


async def cast(
    client: Client, auth: Auth, fid: int, value: int, method: str = "PUT"
) -> dict[str, Any]:
    """Vote (value 1/-1) or retract (value 0, DELETE); assert 200 and return the body."""
    if value == 0:
        resp = await client.delete(f"/features/{fid}/vote", headers=auth)
    else:
        resp = await client.request(
            method, f"/features/{fid}/vote", json={"value": value}, headers=auth
        )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def listing(client: Client, **params: str) -> dict[str, Any]:
    resp = await client.get("/features", params=params)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == JSON
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"items", "next_cursor"}
    return body


def without_time(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "generated_at"}


async def my_votes(client: Client, auth: Auth) -> dict[str, int]:
    resp = await client.get("/me/votes", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"votes"}
    votes: dict[str, int] = body["votes"]
    return votes


async def patch(client: Client, admin: Auth, fid: int, **fields: Any) -> dict[str, Any]:
    resp = await client.patch(f"/features/{fid}", json=fields, headers=admin)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


# A leaderboard with ties on score and on up: feature n gets these votes, one per voter.
BOARD_VOTES: dict[int, list[int]] = {
    1: [1, -1],
    2: [],
    3: [1, 1],
    4: [1, 1, -1],
    5: [1],
    6: [1, 1, 1, -1, -1],
    7: [],
    8: [-1],
}
BOARD_STATUS = {3: "planned", 5: "planned", 8: "declined"}  # set after the votes
TOP_ORDER = [3, 6, 4, 5, 1, 2, 7, 8]  # score desc, up desc, id asc
NEW_ORDER = [8, 7, 6, 5, 4, 3, 2, 1]


@pytest.fixture
async def board(client: Client, admin: Auth) -> dict[int, int]:
    """Eight features with BOARD_VOTES and BOARD_STATUS; maps board number -> feature id."""
    ids = {n: (await create_feature(client, admin, f"Feature {n}"))["id"] for n in BOARD_VOTES}
    voters = [await new_voter(client) for _ in range(5)]
    for n, values in BOARD_VOTES.items():
        for auth, value in zip(voters, values, strict=False):
            await cast(client, auth, ids[n], value)
    for n, status in BOARD_STATUS.items():
        await patch(client, admin, ids[n], status=status)
    return ids


# --- identity -----------------------------------------------------------------------------------


async def test_issue_token_shape(client: Client, tokens: Tokens) -> None:
    first = await client.post("/auth/token")
    second = await client.post("/auth/token")
    assert first.status == second.status == 201
    assert first.content_type == JSON
    a, b = await first.json(), await second.json()
    assert set(a) == {"token", "voter_id", "expires_at"}
    assert isinstance(a["token"], str) and isinstance(a["voter_id"], str)
    assert parse_time(a["expires_at"]) > datetime.now(UTC)
    assert a["voter_id"] != b["voter_id"] and len(a["voter_id"]) >= 16
    claims = tokens.verify(a["token"])
    assert claims.sub == a["voter_id"] and claims.role == "voter"
    assert await my_votes(client, bearer(a["token"])) == {}


# --- operations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == JSON


async def test_metrics_use_route_templates(client: Client, voter: Auth) -> None:
    feature = await create_feature(client, voter)
    await cast(client, voter, feature["id"], 1)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    vote_lines = [
        line
        for line in text.splitlines()
        if line.startswith("fv_http_requests_total{") and 'route="/features/{id}/vote"' in line
    ]
    assert any('method="PUT"' in line and 'status="200"' in line for line in vote_lines), text
    assert f'/features/{feature["id"]}/vote"' not in text


@pytest.mark.parametrize(
    "path", ["/nope", "/features/1/votes", "/feature", "/me", "/features/1/vote/extra"]
)
async def test_unknown_path_is_problem_404(client: Client, path: str) -> None:
    await problem(await client.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/features", {"GET", "POST"}),
        ("DELETE", "/features", {"GET", "POST"}),
        ("POST", "/features/1", {"GET", "PATCH", "DELETE"}),
        ("PATCH", "/features/1/vote", {"PUT", "POST", "DELETE"}),
        ("GET", "/features/1/vote", {"PUT", "POST", "DELETE"}),
        ("POST", "/stats", {"GET"}),
        ("PUT", "/features/stats", {"GET"}),
        ("GET", "/auth/token", {"POST"}),
        ("DELETE", "/me/votes", {"GET"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
async def test_wrong_method_is_problem_405(
    client: Client, method: str, path: str, allowed: set[str]
) -> None:
    resp = await client.request(method, path)
    await problem(resp, 405)
    allow = {m.strip() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
    assert allowed <= allow, allow
    assert method not in allow


# --- creating and reading features ---------------------------------------------------------------


@pytest.mark.parametrize("who", ["voter", "admin"])
async def test_create_feature(client: Client, voter: Auth, admin: Auth, who: str) -> None:
    auth = voter if who == "voter" else admin
    before = await stats(client)
    resp = await client.post(
        "/features", json={"title": "  Dark mode  ", "description": "Please"}, headers=auth
    )
    assert resp.status == 201
    assert resp.content_type == JSON
    body = await resp.json()
    assert set(body) == FEATURE_KEYS
    assert isinstance(body["id"], int) and body["id"] >= 1
    assert (body["title"], body["description"], body["status"]) == ("Dark mode", "Please", "open")
    assert (body["up"], body["down"], body["score"]) == (0, 0, 0)
    assert abs((parse_time(body["created_at"]) - datetime.now(UTC)).total_seconds()) < 60
    assert resp.headers["Location"] == f"/features/{body['id']}"
    again = await client.get(resp.headers["Location"])
    assert again.status == 200 and await again.json() == body
    after = await stats(client)
    assert after["total_features"] == before["total_features"] + 1
    assert after["seq"] > before["seq"]


async def test_create_feature_description_defaults_to_empty(client: Client, voter: Auth) -> None:
    resp = await client.post("/features", json={"title": "Only a title"}, headers=voter)
    assert resp.status == 201
    assert (await resp.json())["description"] == ""


async def test_create_feature_needs_a_token(client: Client) -> None:
    resp = await client.post("/features", json={"title": "Anonymous"})
    await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await listing(client))["items"] == []


async def test_idempotency_key_replays(client: Client, voter: Auth) -> None:
    headers = {**voter, "Idempotency-Key": "create-1"}
    body = {"title": "Exports", "description": "CSV"}
    first = await client.post("/features", json=body, headers=headers)
    seq = (await stats(client))["seq"]
    second = await client.post("/features", json=body, headers=headers)
    assert first.status == second.status == 201
    assert await second.json() == await first.json()
    assert second.headers["Location"] == first.headers["Location"]
    after = await stats(client)
    assert after["total_features"] == 1
    assert after["seq"] == seq
    assert len((await listing(client))["items"]) == 1


async def test_idempotency_key_with_another_body_is_422(client: Client, voter: Auth) -> None:
    headers = {**voter, "Idempotency-Key": "create-2"}
    first = await client.post("/features", json={"title": "One"}, headers=headers)
    assert first.status == 201
    other = await client.post("/features", json={"title": "Two"}, headers=headers)
    await problem(other, 422)
    items = (await listing(client))["items"]
    assert [i["title"] for i in items] == ["One"]


async def test_idempotency_keys_are_per_voter(client: Client, voter: Auth) -> None:
    other = await new_voter(client)
    body = {"title": "Same"}
    a = await client.post("/features", json=body, headers={**voter, "Idempotency-Key": "k"})
    b = await client.post("/features", json=body, headers={**other, "Idempotency-Key": "k"})
    assert a.status == b.status == 201
    assert (await a.json())["id"] != (await b.json())["id"]
    assert (await stats(client))["total_features"] == 2


async def test_get_feature(client: Client, voter: Auth) -> None:
    created = await create_feature(client, voter, "Keyboard shortcuts", "vim keys")
    resp = await client.get(f"/features/{created['id']}")
    assert resp.status == 200
    assert await resp.json() == created


@pytest.mark.parametrize(
    "path", ["/features/999", "/features/0", "/features/abc", "/features/-1", "/features/1.5"]
)
async def test_get_unknown_feature_is_404(client: Client, voter: Auth, path: str) -> None:
    await create_feature(client, voter)
    await problem(await client.get(path), 404)


# --- listing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, TOP_ORDER),
        ({"sort": "top"}, TOP_ORDER),
        ({"sort": "new"}, NEW_ORDER),
        ({"status": "planned"}, [3, 5]),
        ({"status": "planned", "sort": "new"}, [5, 3]),
        ({"status": "open"}, [6, 4, 1, 2, 7]),
        ({"status": "open", "sort": "new"}, [7, 6, 4, 2, 1]),
        ({"status": "declined"}, [8]),
        ({"status": "done"}, []),
        ({"status": "in_progress"}, []),
        ({"limit": "3"}, TOP_ORDER[:3]),
        ({"sort": "new", "limit": "1"}, NEW_ORDER[:1]),
        ({"limit": "8"}, TOP_ORDER),
        ({"limit": "200"}, TOP_ORDER),
    ],
)
async def test_list_order_and_filter(
    client: Client, board: dict[int, int], params: dict[str, str], expected: list[int]
) -> None:
    body = await listing(client, **params)
    number = {fid: n for n, fid in board.items()}
    assert [number[item["id"]] for item in body["items"]] == expected
    for item in body["items"]:
        n = number[item["id"]]
        assert set(item) == FEATURE_KEYS
        assert item["up"] == BOARD_VOTES[n].count(1)
        assert item["down"] == BOARD_VOTES[n].count(-1)
        assert item["score"] == item["up"] - item["down"]
        assert item["status"] == BOARD_STATUS.get(n, "open")
        if "status" in params:
            assert item["status"] == params["status"]
    matching = [
        n
        for n in NEW_ORDER
        if "status" not in params or BOARD_STATUS.get(n, "open") == params["status"]
    ]
    assert (body["next_cursor"] is None) == (len(matching) <= int(params.get("limit", "50")))


async def test_top_order_matches_the_rule(client: Client, board: dict[int, int]) -> None:
    items = (await listing(client, sort="top"))["items"]
    assert items == sorted(items, key=lambda f: (-f["score"], -f["up"], f["id"]))
    new = (await listing(client, sort="new"))["items"]
    assert [f["id"] for f in new] == sorted((f["id"] for f in new), reverse=True)


async def test_default_limit_is_50_and_max_is_200(client: Client, voter: Auth) -> None:
    for i in range(51):
        await create_feature(client, voter, f"Feature {i}")
    default = await listing(client)
    assert len(default["items"]) == 50
    assert default["next_cursor"] is not None
    rest = await listing(client, cursor=default["next_cursor"])
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    everything = await listing(client, limit="200")
    assert len(everything["items"]) == 51 and everything["next_cursor"] is None


@pytest.mark.parametrize("sort", ["top", "new"])
@pytest.mark.parametrize("status", [None, "open"])
@pytest.mark.parametrize("limit", [1, 3, 200])
async def test_cursor_walks_every_feature_once(
    client: Client, board: dict[int, int], sort: str, status: str | None, limit: int
) -> None:
    base = {"sort": sort, **({"status": status} if status else {})}
    full = [f["id"] for f in (await listing(client, **base, limit="200"))["items"]]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {**base, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = await listing(client, **params)
        pages += 1
        assert 1 <= len(page["items"]) <= limit
        seen.extend(f["id"] for f in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert len(page["items"]) == limit
        assert pages <= len(full)
    assert seen == full
    assert len(seen) == len(set(seen))
    expected = len(board) if status is None else 5
    assert len(seen) == expected


@pytest.mark.parametrize(
    "query",
    [
        "sort=hot",
        "sort=TOP",
        "sort=",
        "sort=wilsonish",
        "status=closed",
        "status=",
        "status=OPEN",
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=1e3",
        "limit=1.5",
        "limit=",
        "cursor=garbage",
        "cursor=!!!",
        "cursor=e30",
    ],
)
async def test_bad_list_query_is_422(client: Client, board: dict[int, int], query: str) -> None:
    await problem(await client.get(f"/features?{query}"), 422)


@pytest.mark.parametrize(
    ("made_with", "used_with"),
    [
        ({"sort": "new"}, {"sort": "top"}),
        ({"sort": "top"}, {"sort": "new"}),
        ({"sort": "top", "status": "open"}, {"sort": "top"}),
        ({"sort": "top"}, {"sort": "top", "status": "open"}),
        ({"sort": "new", "status": "open"}, {"sort": "new", "status": "planned"}),
    ],
)
async def test_cursor_from_another_listing_is_422(
    client: Client, board: dict[int, int], made_with: dict[str, str], used_with: dict[str, str]
) -> None:
    cursor = (await listing(client, **made_with, limit="1"))["next_cursor"]
    assert cursor is not None
    resp = await client.get("/features", params={**used_with, "limit": "1", "cursor": cursor})
    await problem(resp, 422)


# --- patch and delete ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"title": "Renamed"}, {"title": "Renamed"}),
        ({"title": "  Padded  "}, {"title": "Padded"}),
        ({"description": "More words"}, {"description": "More words"}),
        ({"description": ""}, {"description": ""}),
        *[({"status": s}, {"status": s}) for s in STATUSES],
        (
            {"title": "T", "description": "D", "status": "done"},
            {"title": "T", "description": "D", "status": "done"},
        ),
        ({}, {}),
    ],
)
async def test_admin_patch_keeps_other_fields(
    client: Client, admin: Auth, voter: Auth, fields: dict[str, str], expected: dict[str, str]
) -> None:
    original = await create_feature(client, voter, "Original", "Described")
    await cast(client, voter, original["id"], 1)
    original = {**original, "up": 1, "score": 1}
    resp = await client.patch(f"/features/{original['id']}", json=fields, headers=admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body == {**original, **expected}
    fetched = await client.get(f"/features/{original['id']}")
    assert await fetched.json() == body


async def test_patch_changes_stats(client: Client, admin: Auth, voter: Auth) -> None:
    feature = await create_feature(client, voter, "Before")
    before = await stats(client)
    await patch(client, admin, feature["id"], title="After")
    after = await stats(client)
    assert after["seq"] > before["seq"]
    assert after["top"][0]["title"] == "After"


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"status": "declined"}), ("DELETE", None)])
@pytest.mark.parametrize("who", ["voter", "nobody"])
async def test_admin_operations_refuse_others(
    client: Client, voter: Auth, method: str, body: dict[str, str] | None, who: str
) -> None:
    feature = await create_feature(client, voter)
    headers = voter if who == "voter" else {}
    resp = await client.request(method, f"/features/{feature['id']}", json=body, headers=headers)
    if who == "voter":
        await problem(resp, 403)
    else:
        await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    still = await client.get(f"/features/{feature['id']}")
    assert still.status == 200 and await still.json() == feature


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"title": "x"}), ("DELETE", None)])
@pytest.mark.parametrize("fid", ["999", "0", "abc"])
async def test_admin_operations_on_unknown_feature_are_404(
    client: Client, admin: Auth, voter: Auth, method: str, body: dict[str, str] | None, fid: str
) -> None:
    await create_feature(client, voter)
    before = await stats(client)
    await problem(await client.request(method, f"/features/{fid}", json=body, headers=admin), 404)
    assert without_time(await stats(client)) == without_time(before)


async def test_delete_feature_takes_its_votes(client: Client, admin: Auth, voter: Auth) -> None:
    doomed = await create_feature(client, voter, "Doomed")
    kept = await create_feature(client, voter, "Kept")
    other = await new_voter(client)
    await cast(client, voter, doomed["id"], 1)
    await cast(client, other, doomed["id"], -1)
    await cast(client, voter, kept["id"], 1)
    before = await stats(client)
    assert (before["total_votes"], before["up"], before["down"], before["voters"]) == (3, 2, 1, 2)

    resp = await client.delete(f"/features/{doomed['id']}", headers=admin)
    assert resp.status == 204
    assert await resp.read() == b""

    after = await stats(client)
    assert after["seq"] > before["seq"]
    assert after["total_features"] == 1
    assert (after["total_votes"], after["up"], after["down"], after["voters"]) == (1, 1, 0, 1)
    assert [f["id"] for f in after["top"]] == [kept["id"]]
    assert await my_votes(client, voter) == {str(kept["id"]): 1}
    assert await my_votes(client, other) == {}
    await problem(await client.get(f"/features/{doomed['id']}"), 404)
    assert [f["id"] for f in (await listing(client))["items"]] == [kept["id"]]
    await problem(await client.delete(f"/features/{doomed['id']}", headers=admin), 404)
    await problem(
        await client.put(f"/features/{doomed['id']}/vote", json={"value": 1}, headers=voter), 404
    )


# --- votes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_vote_lifecycle(client: Client, voter: Auth, method: str) -> None:
    fid = (await create_feature(client, voter))["id"]
    s0 = await stats(client)

    up = await cast(client, voter, fid, 1, method)
    assert up == {"feature_id": fid, "value": 1, "up": 1, "down": 0, "score": 1}
    s1 = await stats(client)
    assert s1["seq"] > s0["seq"]

    again = await cast(client, voter, fid, 1, method)
    assert again == up
    s2 = await stats(client)
    assert without_time(s2) == without_time(s1)

    down = await cast(client, voter, fid, -1, method)
    assert down == {"feature_id": fid, "value": -1, "up": 0, "down": 1, "score": -1}
    s3 = await stats(client)
    assert s3["seq"] > s2["seq"]
    assert (s3["total_votes"], s3["up"], s3["down"], s3["voters"]) == (1, 0, 1, 1)
    assert await my_votes(client, voter) == {str(fid): -1}

    gone = await cast(client, voter, fid, 0)
    assert gone == {"feature_id": fid, "value": 0, "up": 0, "down": 0, "score": 0}
    s4 = await stats(client)
    assert s4["seq"] > s3["seq"]
    assert (s4["total_votes"], s4["up"], s4["down"], s4["voters"]) == (0, 0, 0, 0)
    assert await my_votes(client, voter) == {}

    nothing = await cast(client, voter, fid, 0)
    assert nothing == gone
    assert without_time(await stats(client)) == without_time(s4)


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_votes_of_voters_add_up(client: Client, voter: Auth, method: str) -> None:
    fid = (await create_feature(client, voter))["id"]
    others = [await new_voter(client) for _ in range(3)]
    await cast(client, voter, fid, 1, method)
    await cast(client, others[0], fid, 1, method)
    await cast(client, others[1], fid, -1, method)
    last = await cast(client, others[2], fid, 1, method)
    assert last == {"feature_id": fid, "value": 1, "up": 3, "down": 1, "score": 2}
    feature = await (await client.get(f"/features/{fid}")).json()
    assert (feature["up"], feature["down"], feature["score"]) == (3, 1, 2)


@pytest.mark.parametrize("closed", ["done", "declined"])
@pytest.mark.parametrize(
    ("method", "body"), [("PUT", {"value": 1}), ("POST", {"value": -1}), ("DELETE", None)]
)
async def test_vote_on_closed_feature_is_409(
    client: Client,
    admin: Auth,
    voter: Auth,
    closed: str,
    method: str,
    body: dict[str, int] | None,
) -> None:
    fid = (await create_feature(client, voter))["id"]
    await cast(client, voter, fid, -1 if method == "PUT" else 1)
    await patch(client, admin, fid, status=closed)
    before = await stats(client)
    resp = await client.request(method, f"/features/{fid}/vote", json=body, headers=voter)
    await problem(resp, 409)
    assert without_time(await stats(client)) == without_time(before)
    assert await my_votes(client, voter) == {str(fid): -1 if method == "PUT" else 1}


@pytest.mark.parametrize("status", ["open", "planned", "in_progress"])
async def test_vote_on_unclosed_status_is_allowed(
    client: Client, admin: Auth, voter: Auth, status: str
) -> None:
    fid = (await create_feature(client, voter))["id"]
    await patch(client, admin, fid, status=status)
    assert (await cast(client, voter, fid, 1))["up"] == 1


@pytest.mark.parametrize(
    ("method", "body"), [("PUT", {"value": 1}), ("POST", {"value": 1}), ("DELETE", None)]
)
@pytest.mark.parametrize("fid", ["999", "0", "abc"])
async def test_vote_on_unknown_feature_is_404(
    client: Client, voter: Auth, method: str, body: dict[str, int] | None, fid: str
) -> None:
    await create_feature(client, voter)
    before = await stats(client)
    resp = await client.request(method, f"/features/{fid}/vote", json=body, headers=voter)
    await problem(resp, 404)
    assert without_time(await stats(client)) == without_time(before)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/features/{fid}/vote", {"value": 1}),
        ("POST", "/features/{fid}/vote", {"value": 1}),
        ("DELETE", "/features/{fid}/vote", None),
        ("GET", "/me/votes", None),
    ],
)
async def test_voter_operations_need_a_token(
    client: Client, voter: Auth, method: str, path: str, body: dict[str, int] | None
) -> None:
    fid = (await create_feature(client, voter))["id"]
    before = await stats(client)
    resp = await client.request(method, path.format(fid=fid), json=body)
    await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert without_time(await stats(client)) == without_time(before)


async def test_admin_can_vote_too(client: Client, admin: Auth, voter: Auth) -> None:
    fid = (await create_feature(client, voter))["id"]
    assert (await cast(client, admin, fid, 1))["up"] == 1
    assert await my_votes(client, admin) == {str(fid): 1}


async def test_me_votes(client: Client, voter: Auth) -> None:
    other = await new_voter(client)
    a, b, c = [(await create_feature(client, voter, t))["id"] for t in ("A", "B", "C")]
    assert await my_votes(client, voter) == {}
    await cast(client, voter, a, 1)
    await cast(client, voter, b, -1)
    await cast(client, other, c, 1)
    assert await my_votes(client, voter) == {str(a): 1, str(b): -1}
    assert await my_votes(client, other) == {str(c): 1}
    await cast(client, voter, a, 0)
    assert await my_votes(client, voter) == {str(b): -1}


# --- stats --------------------------------------------------------------------------------------


async def test_stats_and_alias_agree(client: Client, board: dict[int, int]) -> None:
    a = await client.get("/features/stats")
    b = await client.get("/stats")
    assert a.status == b.status == 200
    assert a.content_type == b.content_type == JSON
    body_a, body_b = await a.json(), await b.json()
    assert set(body_a) == {
        "seq",
        "total_features",
        "total_votes",
        "up",
        "down",
        "voters",
        "top",
        "generated_at",
        "board",
        "epoch",
    }
    assert without_time(body_a) == without_time(body_b)
    parse_time(body_a["generated_at"])
    assert a.headers["ETag"] == b.headers["ETag"] == f'W/"{body_a["epoch"]}.{body_a["seq"]}"'
    up = sum(v.count(1) for v in BOARD_VOTES.values())
    down = sum(v.count(-1) for v in BOARD_VOTES.values())
    assert (body_a["total_features"], body_a["up"], body_a["down"]) == (8, up, down)
    assert body_a["total_votes"] == up + down
    assert body_a["voters"] == 5
    number = {fid: n for n, fid in board.items()}
    assert [number[f["id"]] for f in body_a["top"]] == TOP_ORDER
    assert body_a["top"] == (await listing(client, limit="20"))["items"]


@pytest.mark.parametrize("path", ["/features/stats", "/stats"])
@pytest.mark.parametrize(
    ("if_none_match", "fresh"),
    [
        ("{etag}", True),
        ('"{epoch}.{seq}"', True),
        ('W/"999", {etag}', True),
        ("*", True),
        ('W/"{epoch}.{stale}"', False),
        ('"{epoch}.{stale}"', False),
        ('W/"{seq}"', False),  # a seq of another epoch confirms nothing
        ("garbage", False),
        ("", False),
    ],
)
async def test_stats_conditional_get(
    client: Client, voter: Auth, path: str, if_none_match: str, fresh: bool
) -> None:
    fid = (await create_feature(client, voter))["id"]
    stale = (await stats(client))["seq"]
    await cast(client, voter, fid, 1)
    first = await client.get(path)
    etag = first.headers["ETag"]
    seq, epoch = (await first.json())["seq"], (await first.json())["epoch"]
    assert seq > stale
    assert etag == f'W/"{epoch}.{seq}"'
    header = if_none_match.format(etag=etag, seq=seq, stale=stale, epoch=epoch)
    resp = await client.get(path, headers={"If-None-Match": header})
    body = await resp.read()
    if fresh:
        assert resp.status == 304
        assert body == b""
        assert resp.headers["ETag"] == etag
    else:
        assert resp.status == 200
        assert resp.headers["ETag"] == etag
        assert without_time(await resp.json()) == without_time(await first.json())


async def test_seq_grows_on_every_change(client: Client, admin: Auth, voter: Auth) -> None:
    seqs = [(await stats(client))["seq"]]

    async def record() -> None:
        resp = await client.get("/features/stats")
        body = await resp.json()
        assert resp.headers["ETag"] == f'W/"{body["epoch"]}.{body["seq"]}"'
        seqs.append(body["seq"])

    fid = (await create_feature(client, voter))["id"]
    await record()
    other = (await create_feature(client, voter, "Other"))["id"]
    await record()
    await cast(client, voter, fid, 1)
    await record()
    await cast(client, voter, fid, -1, "POST")
    await record()
    await cast(client, voter, fid, 0)
    await record()
    await patch(client, admin, other, status="planned")
    await record()
    await patch(client, admin, other, description="now described")
    await record()
    await cast(client, voter, other, 1)
    await record()
    resp = await client.delete(f"/features/{other}", headers=admin)
    assert resp.status == 204
    await record()
    assert all(b > a for a, b in pairwise(seqs)), seqs


async def test_total_votes_and_voters(client: Client, voter: Auth) -> None:
    other = await new_voter(client)
    idle = await new_voter(client)
    f1 = (await create_feature(client, voter, "F1"))["id"]
    f2 = (await create_feature(client, voter, "F2"))["id"]
    await cast(client, voter, f1, 1)
    await cast(client, voter, f2, -1)
    await cast(client, other, f1, 1)
    await cast(client, voter, f1, -1)  # a changed vote is still one vote
    await cast(client, voter, f1, -1)
    s = await stats(client)
    assert (s["total_votes"], s["up"], s["down"], s["voters"]) == (3, 1, 2, 2)
    await cast(client, idle, f1, 0)  # retracting nothing does not make a voter
    await cast(client, voter, f1, 0)
    s = await stats(client)
    assert (s["total_votes"], s["up"], s["down"], s["voters"]) == (2, 1, 1, 2)
    await cast(client, voter, f2, 0)
    s = await stats(client)
    assert (s["total_votes"], s["up"], s["down"], s["voters"]) == (1, 1, 0, 1)


@pytest.mark.parametrize(("top_n", "features", "expected"), [(3, 5, 3), (3, 2, 2), (1, 4, 1)])
async def test_top_is_capped_by_top_n(
    aiohttp_client: AiohttpClient, top_n: int, features: int, expected: int
) -> None:
    app = create_app(make_settings(top_n=top_n))
    client = await aiohttp_client(app)
    voter = await new_voter(client)
    ids = [(await create_feature(client, voter, f"F{i}"))["id"] for i in range(features)]
    await cast(client, voter, ids[-1], 1)  # the newest leads the board
    body = await stats(client)
    assert len(body["top"]) == expected
    assert body["total_features"] == features
    assert body["top"][0]["id"] == ids[-1]
    assert body["top"] == (await listing(client, limit=str(expected)))["items"]


async def test_top_defaults_to_20(client: Client, voter: Auth) -> None:
    for i in range(21):
        await create_feature(client, voter, f"F{i}")
    body = await stats(client)
    assert len(body["top"]) == 20
    assert body["total_features"] == 21


async def test_stats_etag_is_consistent_with_304_after_change(client: Client, voter: Auth) -> None:
    first = await client.get("/stats")
    etag = first.headers["ETag"]
    assert re.fullmatch(r'W/"[0-9a-f]{16}\.\d+"', etag)
    await create_feature(client, voter)
    resp = await client.get("/stats", headers={"If-None-Match": etag})
    assert resp.status == 200
    assert resp.headers["ETag"] != etag
