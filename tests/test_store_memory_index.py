"""The memory store's top index: packed int keys in one sorted list per status, merged for the
whole board. Checked against a brute-force sort of the features on large mixed-status boards."""

from __future__ import annotations

import itertools
import json
import random
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.schemas import CLOSED_STATUSES, Feature, FeatureCreate, FeaturePatch, Sort, Status
from service.store import CursorKey, MemoryStore
from service.store.base import Audience, sort_key
from service.store.memory import _ID_MASK, _NEG_UP_MAX, _NEG_UP_MIN, _top_bound, _top_int

EVERYTHING: Final = 100_000
TOP_N: Final = 20
OPEN_STATUSES: Final = [s for s in Status if s not in CLOSED_STATUSES]


def top_key(f: Feature) -> CursorKey:
    assert f.up is not None and f.down is not None
    return sort_key(Sort.TOP, f.id, f.up, f.down)


async def everything(store: MemoryStore) -> list[Feature]:
    """Every feature with its counts, in no particular order (sort=new is not ranked)."""
    page = await store.list_features(
        sort=Sort.NEW, status=None, limit=EVERYTHING, after=None, audience=Audience.ADMIN
    )
    return page.items


async def brute_force(
    store: MemoryStore, status: Status | None, after: CursorKey | None = None
) -> list[Feature]:
    """The top order of a scope from just after a cursor key, by sorting every feature."""
    found = [f for f in await everything(store) if status is None or f.status is status]
    return [f for f in sorted(found, key=top_key) if after is None or top_key(f) > after]


async def board(n: int, seed: int) -> tuple[MemoryStore, random.Random]:
    """n features with random votes, most of them open; planned is rare, in_progress empty."""
    store, rng = MemoryStore(top_n=TOP_N, max_features=n), random.Random(seed)
    for i in range(n):
        await store.create_feature(FeatureCreate(f"Feature {i}", ""), owner="owner")
    for j in range(n // 2):
        await store.set_vote(f"v{j % 40}", rng.randint(1, n), rng.choice((1, -1)))
    # Closed features keep their votes: set statuses after voting.
    for feature_id in rng.sample(range(1, n + 1), n // 3):
        status = rng.choice((Status.DONE, Status.DONE, Status.DECLINED))
        await store.update_feature(feature_id, FeaturePatch(status=status))
    for feature_id in rng.sample(range(1, n + 1), 3):
        await store.update_feature(feature_id, FeaturePatch(status=Status.PLANNED))
    return store, rng


async def walk(store: MemoryStore, status: Status | None, limit: int) -> list[Feature]:
    seen: list[Feature] = []
    after: CursorKey | None = None
    while True:
        page = await store.list_features(sort=Sort.TOP, status=status, limit=limit, after=after)
        seen += page.items
        if page.next_key is None:
            return seen
        assert page.items and page.next_key == top_key(page.items[-1])
        after = page.next_key


# --- the packed key ---------------------------------------------------------------------------

VALID: Final = st.tuples(
    st.integers(1, _ID_MASK), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)
)  # (id, up, down)


@given(a=VALID, b=VALID)
def test_packed_keys_keep_the_tuple_order(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    ka, kb = sort_key(Sort.TOP, *a), sort_key(Sort.TOP, *b)
    assert (ka < kb) == (_top_int(*a) < _top_int(*b))
    assert _top_int(*a) & _ID_MASK == a[0]


def near(part: int, span: int) -> list[int]:
    """Values at and next to a key part, and ones out of the packed range of that part."""
    return [part + d for d in (-1, 0, 1)] + [part + d * span for d in (-2, -1, 1, 2)]


@given(key=VALID, other=st.tuples(st.integers(), st.integers(), st.integers()))
def test_a_cursor_of_any_ints_bounds_like_the_tuple(
    key: tuple[int, int, int], other: tuple[int, int, int]
) -> None:
    """A cursor may hold any ints (a client can make one): the position after it must be the
    tuple order's, also where its leading parts equal the key's (or are one off) so that the
    later, out-of-range parts decide."""
    score, neg_up, feature_id = tuple_key = sort_key(Sort.TOP, *key)
    packed = _top_int(*key)
    parts = (
        [*near(score, 1), other[0]],
        [
            *near(neg_up, 2**64),
            _NEG_UP_MIN - 1,
            _NEG_UP_MIN,
            _NEG_UP_MAX,
            _NEG_UP_MAX + 1,
            other[1],
        ],
        [*near(feature_id, 2**64), -1, 0, _ID_MASK, _ID_MASK + 1, other[2]],
    )
    for cursor in itertools.product(*parts):
        assert (tuple_key > cursor) == (packed > _top_bound(cursor)), cursor


# --- listings, stats and standings against a brute-force sort ---------------------------------


@pytest.mark.parametrize("limit", [1, 7, 100])
async def test_top_pages_of_every_scope_match_a_sort(limit: int) -> None:
    store, _ = await board(3000, seed=limit)
    for status in (None, *Status):
        expected = await brute_force(store, status)
        if status is Status.PLANNED:
            assert len(expected) == 3  # rare
        if status is Status.IN_PROGRESS:
            assert expected == []
        assert await walk(store, status, limit) == expected


async def test_pages_follow_changes_between_them() -> None:
    """Each page is the current order after the cursor, whatever changed since the last one."""
    store, rng = await board(1500, seed=7)
    for status in (None, Status.OPEN, Status.DONE, Status.PLANNED):
        after: CursorKey | None = None
        for step in range(200):
            page = await store.list_features(sort=Sort.TOP, status=status, limit=25, after=after)
            expected = await brute_force(store, status, after)
            assert page.items == expected[:25]
            assert page.next_key == (top_key(expected[24]) if len(expected) > 25 else None)
            if page.next_key is None:
                break
            after = page.next_key
            features = await everything(store)
            for _ in range(30):  # votes on open ones, a status change, a delete, a new feature
                f = rng.choice(features)
                if f.status not in CLOSED_STATUSES:
                    await store.set_vote(f"w{rng.randrange(60)}", f.id, rng.choice((1, -1, 0)))
            f = rng.choice(features)
            await store.update_feature(f.id, FeaturePatch(status=rng.choice(list(Status))))
            await store.delete_feature(rng.choice(features).id)
            await store.create_feature(FeatureCreate(f"New {step}", ""), owner="owner")
        else:
            pytest.fail("the pages never ended")


async def test_cursors_of_any_ints_continue_like_the_tuple_order() -> None:
    store, rng = await board(500, seed=3)
    features = await brute_force(store, None)
    cursors: list[CursorKey] = [
        (-(2**70), 0, 0),
        (2**70, 0, 0),
        (0, 2**64, -5),
        (0, -(2**64), 2**70),
        (-1, -1, -1),
        (0, 0, _ID_MASK + 1),
        (0, -(2**63) - 1, 10),
        (0, 2**63, 10),
    ]
    for f in rng.sample(features, 20):
        a, b, c = top_key(f)
        cursors += [(a, b, c - 1), (a, b, -1), (a, b + 1, -(2**65)), (a, b - 1, 2**65), (a, b, c)]
    for status in (None, Status.OPEN, Status.DONE, Status.DECLINED):
        for cursor in cursors:
            page = await store.list_features(
                sort=Sort.TOP, status=status, limit=EVERYTHING, after=cursor
            )
            assert page.items == await brute_force(store, status, cursor), cursor


async def test_a_hidden_cursor_goes_on_after_that_feature_in_its_scope() -> None:
    store, _ = await board(400, seed=5)
    expected = await brute_force(store, Status.DONE)
    middle = expected[len(expected) // 2]
    page = await store.list_features(
        sort=Sort.TOP, status=Status.DONE, limit=EVERYTHING, after=(middle.id,)
    )
    assert page.items == expected[len(expected) // 2 + 1 :]


async def test_stats_top_and_standings_are_the_merged_ranking() -> None:
    store, _ = await board(2000, seed=11)
    expected = await brute_force(store, None)
    body = json.loads((await store.stats()).body)
    assert [f["id"] for f in body["top"]] == [f.id for f in expected[:TOP_N]]
    assert (await store.standings()).standings == expected
    await store.reset_board()
    assert (await store.standings(1)).standings == expected  # archived as it was
    now = await brute_force(store, None)
    assert [f.id for f in now] == sorted(f.id for f in expected)  # no votes: id order
    assert all(f.up == f.down == 0 for f in now)
    for status in Status:
        assert await walk(store, status, 50) == await brute_force(store, status)


async def test_votes_never_build_a_positional_index_in_the_top_lists() -> None:
    """The cost design: listings, stats and standings only iterate the top lists, so a vote's
    remove + add never also updates SortedList's positional index (built on first index use)."""
    store, rng = await board(3000, seed=13)
    for status in (None, *Status):
        await walk(store, status, 10)
        await store.list_features(sort=Sort.TOP, status=status, limit=10, after=(0, 0, 0))
    await store.stats()
    await store.standings()
    votable = [f.id for f in await everything(store) if f.status not in CLOSED_STATUSES]
    for feature_id in rng.sample(votable, 100):
        await store.set_vote("x", feature_id, 1)
    assert all(not top._index for top in store._top.values())
    assert sum(len(top) for top in store._top.values()) == 3000
    for status in OPEN_STATUSES:
        assert all(store._features[k & _ID_MASK].status is status for k in store._top[status])
