"""Choosing the Redis store, its key encoding, and real instances started from the command line."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import ConfigError, Settings, load_settings
from service.schemas import Sort, Status
from service.store import MemoryStore, sort_key
from service.store.factory import store_from_settings
from service.store.redis import RedisStore, encode_key

from .conftest import make_settings
from .redis_support import REDIS_URL, delete_namespace, require_redis, unique_prefix
from .test_main import SECRET, clean_env, http, run_cli, serving

# --- the factory --------------------------------------------------------------------------------


def from_env(env: dict[str, str]) -> Settings:
    """The settings a process started with this environment gets (no config file)."""
    return load_settings(
        env={"FV_SECRET": SECRET, "FV_STORE": "memory", **env}, use_default_file=False
    )


@pytest.mark.parametrize("env", [{}, {"WEB_CONCURRENCY": "1"}, {"WEB_CONCURRENCY": " "}])
def test_memory_store_with_one_worker(env: dict[str, str]) -> None:
    settings = from_env(env)
    assert settings.workers == 1
    assert isinstance(store_from_settings(settings), MemoryStore)


@pytest.mark.parametrize(
    ("env", "workers"),
    [
        ({"WEB_CONCURRENCY": "2"}, 2),
        ({"WEB_CONCURRENCY": "8"}, 8),
        ({"FV_WORKERS": "3"}, 3),
        ({"WEB_CONCURRENCY": "1", "FV_WORKERS": "4"}, 4),  # FV_ wins, as for PORT
    ],
)
def test_memory_store_refuses_several_workers(env: dict[str, str], workers: int) -> None:
    settings = from_env(env)
    assert settings.workers == workers  # config reads the environment, not the store factory
    with pytest.raises(ConfigError) as info:
        store_from_settings(settings)
    message = str(info.value)
    assert info.value.setting == "store"
    assert "\n" not in message
    assert f"WEB_CONCURRENCY={workers}" in message and "redis://" in message


@pytest.mark.parametrize("raw", ["many", "0", "-2"])
def test_unreadable_worker_count_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY") as info:
        from_env({"WEB_CONCURRENCY": raw})
    assert info.value.setting == "workers"


async def test_redis_url_selects_the_redis_store_without_connecting() -> None:
    settings = make_settings(
        store="redis://127.0.0.1:1/3", redis_prefix="board-7:", top_n=4, workers=4
    )
    store = store_from_settings(settings)
    assert isinstance(store, RedisStore)
    await store.close()


def test_bad_redis_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="store"):
        store_from_settings(make_settings(store="redis://127.0.0.1:port/0"))


def test_cli_refuses_memory_store_with_several_workers() -> None:
    result = run_cli(env=clean_env(FV_SECRET=SECRET, WEB_CONCURRENCY="2", FV_STORE="memory"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(r"\bstore\b", lines[0]) and "WEB_CONCURRENCY=2" in lines[0]


# --- member encoding: byte order is the contract order -----------------------------------------

votes = st.integers(0, 10**6)


@given(st.lists(st.tuples(st.integers(1, 10**9), votes, votes), min_size=2, max_size=30,
                unique_by=lambda t: t[0]))
def test_member_bytes_sort_like_the_keys(rows: list[tuple[int, int, int]]) -> None:
    for sort in Sort:
        keys = [sort_key(sort, fid, up, down) for fid, up, down in rows]
        assert sorted(keys) == sorted(keys, key=encode_key)


@given(st.tuples(st.integers(), st.integers(), st.integers()))
def test_forged_cursor_keys_encode_to_fixed_width(key: tuple[int, int, int]) -> None:
    assert re.fullmatch(r"[0-9]{48}", encode_key(key))


# --- instances started like production: python -m service with FV_STORE ------------------------


def test_two_cli_instances_share_one_redis(tmp_path: Path) -> None:
    require_redis()
    prefix = unique_prefix()
    env = clean_env(FV_SECRET=SECRET, FV_STORE=REDIS_URL, FV_REDIS_PREFIX=prefix,
                    WEB_CONCURRENCY="2")
    try:
        with serving(tmp_path, env) as a, serving(tmp_path, env) as b:
            assert http("GET", a.url + "/readyz").status == 200
            token = http("POST", a.url + "/auth/token").json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            created = http("POST", b.url + "/features", body={"title": "Shared"}, headers=auth)
            assert created.status == 201
            fid = created.json()["id"]
            assert http("PUT", a.url + f"/features/{fid}/vote", body={"value": 1},
                        headers=auth).status == 200
            on_a = http("GET", a.url + "/features/stats")
            on_b = http("GET", b.url + "/features/stats")
            assert on_a.headers["ETag"] == on_b.headers["ETag"]
            assert on_b.json()["top"][0]["up"] == 1
    finally:
        delete_namespace(REDIS_URL, prefix)


# --- cancellation ---------------------------------------------------------------------------------

CANCEL_ROUNDS = 150


async def test_a_cancelled_store_call_is_never_swallowed() -> None:
    """redis-py may finish a command whose task was cancelled and return normally; the store
    raises the CancelledError again, so e.g. the broadcaster's stop() cannot hang at shutdown."""
    require_redis()
    from .redis_support import TestRedisStore

    store = TestRedisStore()
    rng = random.Random(8)

    async def forever() -> None:
        while True:
            await store.board()

    try:
        for _ in range(CANCEL_ROUNDS):
            task = asyncio.create_task(forever())
            await asyncio.sleep(rng.random() * 0.002)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2)
            assert done, "a cancellation was swallowed: the task kept running"
            assert task.cancelled()
    finally:
        await store.close()


# --- the wilson and controversial rankings ----------------------------------------------------

COUNTS = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 3), (3, 2), (10, 1), (1, 10), (5, 5), (50, 49),
          (999, 1), (1234, 987), (100_000, 99_999), (7, 0), (0, 7)]


@pytest.mark.parametrize("sort", [Sort.TOP, Sort.WILSON, Sort.CONTROVERSIAL])
def test_lua_and_python_compute_the_same_keys(sort: Sort) -> None:
    """The Redis rankings (keys made in Lua) and the memory store's (Python) agree exactly."""
    require_redis()
    import redis

    from service.store import redis_scripts as lua
    from service.store.redis import decode_key

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    script = client.register_script(
        lua._PRELUDE + "return member(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), "
        "tonumber(ARGV[5]))"
    )
    try:
        for feature_id, (up, down) in enumerate(COUNTS, start=1):
            member = script(args=["unused:", sort.value, feature_id, up, down])
            assert decode_key(member) == sort_key(sort, feature_id, up, down), (up, down)
            assert member == encode_key(sort_key(sort, feature_id, up, down))
    finally:
        client.close()


async def test_a_board_stored_before_the_new_rankings_gets_them_at_start() -> None:
    """MIGRATE: a board whose Redis keys predate sort=wilson|controversial is indexed once."""
    require_redis()
    import redis

    from service.schemas import FeatureCreate
    from service.store import Audience
    from service.store.redis import board_prefix

    from .redis_support import TestRedisStore

    store = TestRedisStore()
    await store.start()
    try:
        ids = [(await store.create_feature(FeatureCreate(f"F{n}", ""), owner="o")).feature.id
               for n in range(4)]
        for n, fid in enumerate(ids):
            for v in range(n + 1):
                await store.set_vote(f"v{v}", fid, 1 if v % 2 else -1)
        expected = {
            sort: [f.id for f in (await store.list_features(
                sort=sort, status=None, limit=50, after=None, audience=Audience.ADMIN)).items]
            for sort in (Sort.WILSON, Sort.CONTROVERSIAL)
        }
        client = redis.Redis.from_url(store.url)
        keys = board_prefix(store.prefix, "main")  # the default board's keys (ADR-012)
        old = [k for k in client.scan_iter(match=store.prefix + "*")
               if k.decode().removeprefix(keys).split(":")[0]
               in ("wilson", "controversial", "layout")]
        assert old
        client.delete(*old)  # as the keys were before this version
        client.close()

        upgraded = TestRedisStore(prefix=store.prefix)  # an instance of this version starts
        await upgraded.start()
        try:
            for sort, order in expected.items():
                for status in (None, Status.OPEN):
                    page = await upgraded.list_features(
                        sort=sort, status=status, limit=50, after=None, audience=Audience.ADMIN
                    )
                    assert [f.id for f in page.items] == order
        finally:
            await super(TestRedisStore, upgraded).close()  # the namespace goes with `store`
    finally:
        await store.close()


async def test_data_stored_before_boards_becomes_the_default_boards() -> None:
    """ADR-012: keys right under the prefix (ADR-005's layout) move under {b:main} at start."""
    require_redis()
    import redis

    from service.schemas import FeatureCreate
    from service.store.factory import boards_around
    from service.store.redis import board_prefix

    from .redis_support import TestRedisStore

    store = TestRedisStore()
    await store.start()
    try:
        fid = (await store.create_feature(FeatureCreate("Old feature", ""), owner="o")).feature.id
        await store.set_vote("v1", fid, 1)
        client = redis.Redis.from_url(store.url, decode_responses=True)
        tagged = board_prefix(store.prefix, "main")
        for key in list(client.scan_iter(match=store.prefix + "*")):  # as before boards
            client.rename(key, store.prefix + key.removeprefix(tagged))
        client.set(store.prefix + "rl:vote:someone", "1")  # a rate-limit key stays put
        assert not client.exists(tagged + "seq") and client.exists(store.prefix + "seq")
        client.close()

        upgraded = TestRedisStore(prefix=store.prefix)  # this version starts on that data
        boards = boards_around(upgraded, Settings())
        await boards.start()
        try:
            main = boards.main
            assert (await main.get_feature(fid)).up == 1
            assert await main.votes_of("v1") == {fid: 1}
            assert (await main.stats()).seq >= 2
            client = redis.Redis.from_url(store.url, decode_responses=True)
            assert client.exists(store.prefix + "rl:vote:someone")
            assert not client.exists(store.prefix + "seq")
            client.close()
        finally:
            await boards.close()
    finally:
        await store.close()
