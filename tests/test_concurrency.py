"""Many voters at once over real loopback sockets: every acknowledged vote is counted exactly."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any, Final

from .conftest import Client, bearer, create_feature, stats

FEATURES: Final = 10
VOTERS: Final = 200
REQUESTS_PER_VOTER: Final = 5
SEED: Final = 20240611
ACTIONS: Final = ("put+1", "put-1", "post+1", "post-1", "delete")

Plan = list[tuple[str, int]]


async def seed_features(client: Client, auth: dict[str, str]) -> list[int]:
    return [(await create_feature(client, auth, f"Feature {i}"))["id"] for i in range(FEATURES)]


async def mint_voters(client: Client, count: int) -> list[dict[str, str]]:
    async def mint() -> dict[str, str]:
        resp = await client.post("/auth/token")
        assert resp.status == 201
        return bearer((await resp.json())["token"])

    voters = await asyncio.gather(*(mint() for _ in range(count)))
    assert len({v["Authorization"] for v in voters}) == count
    return list(voters)


def make_plans(feature_ids: list[int], voters: int, rng: random.Random) -> list[Plan]:
    return [
        [(rng.choice(ACTIONS), rng.choice(feature_ids)) for _ in range(REQUESTS_PER_VOTER)]
        for _ in range(voters)
    ]


async def send(client: Client, auth: dict[str, str], action: str, fid: int) -> dict[str, Any]:
    path = f"/features/{fid}/vote"
    if action == "delete":
        resp = await client.delete(path, headers=auth)
    else:
        method = client.put if action.startswith("put") else client.post
        resp = await method(path, json={"value": 1 if action.endswith("+1") else -1},
                            headers=auth)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["feature_id"] == fid
    expected = 0 if action == "delete" else (1 if action.endswith("+1") else -1)
    assert body["value"] == expected
    assert body["score"] == body["up"] - body["down"]
    return body


async def run_voter(client: Client, auth: dict[str, str], plan: Plan) -> dict[int, int]:
    """One voter's requests in sequence; its last acknowledged value per feature."""
    last: dict[int, int] = {}
    for action, fid in plan:
        body = await send(client, auth, action, fid)
        last[fid] = body["value"]
    return last


async def test_concurrent_votes_are_counted_exactly(
    client: Client, admin: dict[str, str]
) -> None:
    feature_ids = await seed_features(client, admin)
    voters = await mint_voters(client, VOTERS)
    plans = make_plans(feature_ids, VOTERS, random.Random(SEED))
    assert sum(len(p) for p in plans) == VOTERS * REQUESTS_PER_VOTER
    before = await stats(client)

    finals = await asyncio.gather(
        *(run_voter(client, auth, plan) for auth, plan in zip(voters, plans, strict=True))
    )

    up: Counter[int] = Counter()
    down: Counter[int] = Counter()
    current = [{fid: v for fid, v in last.items() if v} for last in finals]
    for mine in current:
        for fid, value in mine.items():
            (up if value > 0 else down)[fid] += 1
    assert sum(up.values()) and sum(down.values()), "the seed must produce both kinds of vote"

    resp = await client.get("/features", params={"limit": "200"})
    assert resp.status == 200
    listed = {f["id"]: f for f in (await resp.json())["items"]}
    assert set(listed) == set(feature_ids)
    for fid in feature_ids:
        got = listed[fid]
        assert (got["up"], got["down"], got["score"]) == (
            up[fid], down[fid], up[fid] - down[fid]), f"feature {fid}"
        resp = await client.get(f"/features/{fid}")
        assert (await resp.json())["up"] == up[fid]

    after = await stats(client)
    total = sum(len(mine) for mine in current)
    assert after["total_votes"] == total
    assert (after["up"], after["down"]) == (sum(up.values()), sum(down.values()))
    assert after["voters"] == sum(1 for mine in current if mine)
    assert after["total_features"] == FEATURES
    assert after["seq"] > before["seq"]
    expected_top = sorted(feature_ids, key=lambda i: (down[i] - up[i], -up[i], i))
    assert [f["id"] for f in after["top"]] == expected_top[: len(after["top"])]

    async def my_votes(auth: dict[str, str]) -> dict[str, int]:
        resp = await client.get("/me/votes", headers=auth)
        assert resp.status == 200
        body: dict[str, int] = (await resp.json())["votes"]
        return body

    seen = await asyncio.gather(*(my_votes(auth) for auth in voters))
    for i, (got_votes, mine) in enumerate(zip(seen, current, strict=True)):
        assert got_votes == {str(fid): v for fid, v in mine.items()}, f"voter {i}"


async def test_polled_seq_never_goes_back_during_votes(
    client: Client, admin: dict[str, str]
) -> None:
    feature_ids = await seed_features(client, admin)
    voters = await mint_voters(client, VOTERS)
    plans = make_plans(feature_ids, VOTERS, random.Random(SEED + 1))
    start = (await stats(client))["seq"]

    votes = asyncio.gather(
        *(run_voter(client, auth, plan) for auth, plan in zip(voters, plans, strict=True))
    )
    polled: list[int] = []
    while not votes.done():
        resp = await client.get("/features/stats")
        assert resp.status == 200
        body = await resp.json()
        polled.append(body["seq"])
        assert str(body["seq"]) in resp.headers["ETag"]
    await votes
    polled.append((await stats(client))["seq"])

    assert len(polled) > 2
    assert all(a <= b for a, b in itertools.pairwise(polled)), polled
    assert polled[0] >= start
    assert len(set(polled)) > 1, "the polls never saw a change; they did not interleave"
    final_etag = (await client.get("/features/stats")).headers["ETag"]
    not_modified = await client.get("/features/stats", headers={"If-None-Match": final_etag})
    assert not_modified.status == 304
