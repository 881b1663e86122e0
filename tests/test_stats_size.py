"""Stats and every push carry what a board shows (issue 14): each top feature's description is
an excerpt, so /stats stays under ~1 kB per top feature whatever the descriptions say."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp import web

from service.app import create_app
from service.auth import Role
from service.keys import TOKENS
from service.schemas import DESCRIPTION_MAX, EXCERPT_MARK, EXCERPT_MAX
from service.store import MemoryStore, Store
from service.store.visibility import excerpt

from .conftest import AiohttpClient, Client, bearer, make_settings
from .redis_support import TestRedisStore, require_redis
from .test_ws import receive_json

TOP_N: Final = 20
PER_FEATURE: Final = 1024  # the promise: under ~1 kB per top feature
# 2,000 characters each, in one, two, three and four UTF-8 bytes, and ones where a byte cut
# would land inside a character (the Redis script cuts bytes before Python cuts characters).
ALPHABETS: Final = ("a", "é", "€", "😀", "a😀", "ab😀", "abc😀", "aé€😀")


def long_description(i: int) -> str:
    unit = ALPHABETS[i % len(ALPHABETS)]
    return (unit * DESCRIPTION_MAX)[:DESCRIPTION_MAX]


async def _memory() -> Store:
    return MemoryStore(top_n=TOP_N)


async def _redis() -> Store:
    require_redis()
    store = TestRedisStore(top_n=TOP_N)
    await store.start()
    return store


@pytest.fixture(params=["memory", "redis"])
async def board(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> AsyncIterator[tuple[Client, dict[str, str], dict[int, str]]]:
    store = await (_memory() if request.param == "memory" else _redis())
    try:
        app: web.Application = create_app(make_settings(top_n=TOP_N), store=store)
        client = await aiohttp_client(app)
        admin = bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])
        descriptions: dict[int, str] = {}
        for i in range(TOP_N):
            text = long_description(i)
            resp = await client.post(
                "/features", json={"title": f"Feature {i}", "description": text}, headers=admin
            )
            assert resp.status == 201, await resp.text()
            descriptions[(await resp.json())["id"]] = text
        yield client, admin, descriptions
    finally:
        await store.close()


def check_top(top: list[dict[str, Any]], descriptions: dict[int, str]) -> None:
    assert len(top) == TOP_N
    for item in top:
        whole = descriptions[item["id"]]
        shown = item["description"]
        assert len(shown) <= EXCERPT_MAX, len(shown)
        assert shown.endswith(EXCERPT_MARK)
        assert whole.startswith(shown.removesuffix(EXCERPT_MARK))  # a prefix, whole characters
        assert len(shown) >= EXCERPT_MAX - 1  # not cut shorter than it needs to be


async def test_stats_are_small_whatever_the_descriptions(
    board: tuple[Client, dict[str, str], dict[int, str]],
) -> None:
    client, _admin, descriptions = board
    resp = await client.get("/stats")
    body = await resp.read()
    assert len(body) < TOP_N * PER_FEATURE, len(body)  # was ~170 kB with whole descriptions
    check_top(json.loads(body)["top"], descriptions)
    # the whole text is still one GET away
    some = next(iter(descriptions))
    assert (await (await client.get(f"/features/{some}")).json())["description"] == descriptions[
        some
    ]


async def test_hidden_stats_of_both_audiences_are_small(
    board: tuple[Client, dict[str, str], dict[int, str]],
) -> None:
    client, admin, descriptions = board
    assert (await client.patch("/board", json={"results_hidden": True}, headers=admin)).ok
    for headers in ({}, admin):
        body = await (await client.get("/stats", headers=headers)).read()
        assert len(body) < TOP_N * PER_FEATURE, len(body)
        check_top(json.loads(body)["top"], descriptions)


async def test_every_push_is_small(
    board: tuple[Client, dict[str, str], dict[int, str]],
) -> None:
    client, _admin, descriptions = board
    async with client.ws_connect("/ws") as ws:
        first = await ws.receive(timeout=5)
        assert len(first.data.encode()) < TOP_N * PER_FEATURE + 100
        check_top(json.loads(first.data)["stats"]["top"], descriptions)
        voter = bearer((await (await client.post("/auth/token")).json())["token"])
        fid = next(iter(descriptions))
        assert (await client.put(f"/features/{fid}/vote", json={"value": 1}, headers=voter)).ok
        while True:
            push = await receive_json(ws)
            if push["type"] == "stats" and push["stats"]["total_votes"] == 1:
                break
        assert len(json.dumps(push, ensure_ascii=False).encode()) < TOP_N * PER_FEATURE + 100
        check_top(push["stats"]["top"], descriptions)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", ""),
        ("x" * EXCERPT_MAX, "x" * EXCERPT_MAX),  # exactly the limit: untouched
        ("x" * (EXCERPT_MAX + 1), "x" * (EXCERPT_MAX - 1) + EXCERPT_MARK),
        ("😀" * 500, "😀" * (EXCERPT_MAX - 1) + EXCERPT_MARK),
        ("word " * 100, ("word " * 20).rstrip() + EXCERPT_MARK),  # no blank before the mark
    ],
)
def test_excerpt(text: str, shown: str) -> None:
    assert excerpt(text) == shown
