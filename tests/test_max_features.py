"""max_features bounds the features of a board (issue 14): one more is a 409 problem, decided in
the same atomic step as the insert in both stores, so concurrent creates never pass it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Final

import pytest

from service.app import create_app
from service.auth import Role
from service.config import ConfigError, load_settings
from service.keys import TOKENS
from service.schemas import FeatureCreate, Sort
from service.store import MemoryStore, Store, TooManyFeatures

from .conftest import AiohttpClient, bearer, make_settings
from .redis_support import TestRedisStore, require_redis, unique_prefix

BOUND: Final = 5
RACERS: Final = 40


@pytest.fixture(params=["memory", "redis"])
async def make_stores(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[int], list[Store]]]:
    """make(n): n started stores sharing one board (Redis: n instances on one prefix)."""
    made: list[Store] = []
    shared = MemoryStore(max_features=BOUND)
    prefix = unique_prefix()

    def make(n: int) -> list[Store]:
        if request.param == "memory":
            return [shared] * n  # one process, one store
        require_redis()
        stores = [TestRedisStore(prefix=prefix, max_features=BOUND) for _ in range(n)]
        made.extend(stores)
        return stores

    yield make
    for store in made:
        await store.close()


async def started(stores: list[Store]) -> list[Store]:
    for store in stores:
        await store.start()
    return stores


async def create(store: Store, title: str, key: str | None = None) -> int:
    created = await store.create_feature(FeatureCreate(title, ""), owner="o", idempotency_key=key)
    return created.feature.id


async def test_the_bound_holds_and_frees_up_on_delete(
    make_stores: Callable[[int], list[Store]],
) -> None:
    (store,) = await started(make_stores(1))
    ids = [await create(store, f"f{i}", key=f"k{i}") for i in range(BOUND)]
    with pytest.raises(TooManyFeatures, match="max_features"):
        await create(store, "one too many")
    # a replay of an earlier create is an answer, not a new feature: it still works at the bound
    assert await create(store, "f0", key="k0") == ids[0]
    stats = await store.stats()
    assert stats.seq == BOUND
    await store.delete_feature(ids[-1])
    assert await create(store, "room again") > ids[-1]
    with pytest.raises(TooManyFeatures):
        await create(store, "full again")


async def test_concurrent_creates_at_the_bound_never_exceed_it(
    make_stores: Callable[[int], list[Store]],
) -> None:
    stores = await started(make_stores(2))
    await create(stores[0], "already there")
    results = await asyncio.gather(
        *(create(stores[i % 2], f"racer {i}") for i in range(RACERS)), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, TooManyFeatures)]
    assert len(made) == BOUND - 1, results
    assert len(refused) == RACERS - (BOUND - 1), results
    for store in stores:
        page = await store.list_features(
            sort=Sort.NEW,
            status=None,
            limit=100,
            after=None,
        )
        assert len(page.items) == BOUND


async def test_over_http_one_more_is_a_409_problem(aiohttp_client: AiohttpClient) -> None:
    app = create_app(make_settings(max_features=2))
    client = await aiohttp_client(app)
    admin = bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])
    for title in ("a", "b"):
        assert (await client.post("/features", json={"title": title}, headers=admin)).status == 201
    resp = await client.post("/features", json={"title": "c"}, headers=admin)
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == 409 and "max_features" in problem["detail"]
    stats = await (await client.get("/stats")).json()
    assert stats["total_features"] == 2
    metrics = await (await client.get("/metrics")).text()
    created = [
        line for line in metrics.splitlines() if line.startswith("fv_features_total")
        and 'action="create"' in line
    ]
    assert created and float(created[0].split()[-1]) == 2.0  # the refused one is not counted


def test_the_setting_has_a_default_and_refuses_zero() -> None:
    assert load_settings(env={}).max_features == 1000  # config/default.toml agrees
    assert load_settings(env={"FV_MAX_FEATURES": "7"}).max_features == 7
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"FV_MAX_FEATURES": "0"})
    assert refused.value.setting == "max_features"
