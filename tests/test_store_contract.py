"""The Store contract, written against the abstract interface so every backend runs it.

Add a backend by adding one entry to STORE_FACTORIES; every test then runs against it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import pytest

from service.schemas import FeatureCreate, FeaturePatch, Sort, Status, VoteOut
from service.store import (
    Created,
    CursorKey,
    FeatureClosed,
    IdempotencyConflict,
    MemoryStore,
    NotFound,
    Store,
    etag_for,
)
from service.store.sqlite import SqliteBoards

from .redis_support import TestRedisStore, require_redis

TOP_N: Final = 3
IDEMPOTENCY_TTL: Final = 10.0
LISTENER_TIMEOUT: Final = 2.0
EVERYTHING: Final = 10_000  # a limit larger than any listing in these tests


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[int, float, FakeClock], Awaitable[Store]]


async def _memory(top_n: int, idempotency_ttl: float, clock: FakeClock) -> Store:
    return MemoryStore(top_n=top_n, idempotency_ttl=idempotency_ttl, clock=clock)


async def _redis(top_n: int, idempotency_ttl: float, clock: FakeClock) -> Store:
    """A started RedisStore in a key namespace of its own, deleted again on close."""
    require_redis()
    store = TestRedisStore(top_n=top_n, idempotency_ttl=idempotency_ttl, clock=clock)
    await store.start()
    return store


# A SQLite store's directory (and file) by its default board, closed with it (close_store).
_SQLITE_DIRECTORIES: dict[int, tuple[SqliteBoards, str]] = {}


async def _sqlite(top_n: int, idempotency_ttl: float, clock: FakeClock) -> Store:
    """The default board of a SqliteBoards on a file of its own (removed on close)."""
    folder = tempfile.mkdtemp(prefix="fv-contract-")
    boards = SqliteBoards(
        f"sqlite:///{folder}/store.sqlite3",
        top_n=top_n,
        idempotency_ttl=idempotency_ttl,
        clock=clock,
    )
    _SQLITE_DIRECTORIES[id(boards.main)] = (boards, folder)
    return boards.main


async def close_store(store: Store) -> None:
    """Close a store a factory made (a SQLite one with its directory and file)."""
    found = _SQLITE_DIRECTORIES.pop(id(store), None)
    if found is None:
        await store.close()
        return
    boards, folder = found
    await boards.close()
    shutil.rmtree(folder, ignore_errors=True)


# The one place to register a backend.
STORE_FACTORIES: Final[dict[str, StoreFactory]] = {
    "memory": _memory,
    "redis": _redis,
    "sqlite": _sqlite,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Store]:
    made = await STORE_FACTORIES[request.param](TOP_N, IDEMPOTENCY_TTL, clock)
    yield made
    await close_store(made)


# --- helpers ------------------------------------------------------------------------------------


async def new(store: Store, title: str = "Dark mode", description: str = "") -> int:
    created = await store.create_feature(FeatureCreate(title, description), owner="owner")
    assert created.replayed is False
    return created.feature.id


async def seq(store: Store) -> int:
    return (await store.stats()).seq


async def stats_body(store: Store) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((await store.stats()).body)
    return body


async def ids(store: Store, sort: Sort = Sort.TOP, status: Status | None = None) -> list[int]:
    page = await store.list_features(sort=sort, status=status, limit=EVERYTHING, after=None)
    assert page.next_key is None
    return [f.id for f in page.items]


async def vote_many(store: Store, feature_id: int, up: int, down: int, prefix: str) -> None:
    for i in range(up):
        await store.set_vote(f"{prefix}-up-{i}", feature_id, 1)
    for i in range(down):
        await store.set_vote(f"{prefix}-down-{i}", feature_id, -1)


class Recorder:
    """A listener that remembers every seq it is given and wakes whoever waits for more."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.changed = asyncio.Event()

    def __call__(self, seq_: int) -> None:
        self.seqs.append(seq_)
        self.changed.set()

    async def wait_for(self, count: int) -> list[int]:
        """The seqs once there are `count` of them; a backend may call listeners later."""
        async with asyncio.timeout(LISTENER_TIMEOUT):
            while len(self.seqs) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.seqs


# --- create / get / update / delete -------------------------------------------------------------


async def test_create_returns_open_feature_without_votes(store: Store) -> None:
    before = await seq(store)
    created = await store.create_feature(
        FeatureCreate("  Dark mode  ", "Easier on the eyes"), owner="alice"
    )
    assert isinstance(created, Created)
    assert created.replayed is False
    feature = created.feature
    assert (feature.title, feature.description, feature.status) == (
        "Dark mode",
        "Easier on the eyes",
        Status.OPEN,
    )
    assert (feature.up, feature.down, feature.score) == (0, 0, 0)
    assert feature.created_at.tzinfo is not None
    assert await seq(store) > before
    assert await store.get_feature(feature.id) == feature


async def test_ids_are_unique_and_increasing(store: Store) -> None:
    made = [await new(store, f"f{i}") for i in range(5)]
    assert made == sorted(made)
    assert len(set(made)) == 5
    assert (await stats_body(store))["total_features"] == 5


async def test_update_changes_only_given_fields(store: Store) -> None:
    fid = await new(store, "Old title", "old text")
    before = await seq(store)
    updated = await store.update_feature(fid, FeaturePatch(title="New title"))
    assert (updated.title, updated.description, updated.status) == (
        "New title",
        "old text",
        Status.OPEN,
    )
    assert await seq(store) > before
    updated = await store.update_feature(
        fid, FeaturePatch(description="new text", status=Status.PLANNED)
    )
    assert (updated.title, updated.description, updated.status) == (
        "New title",
        "new text",
        Status.PLANNED,
    )
    assert await store.get_feature(fid) == updated


async def test_empty_patch_changes_nothing(store: Store) -> None:
    fid = await new(store)
    original = await store.get_feature(fid)
    assert await store.update_feature(fid, FeaturePatch()) == original
    assert await store.get_feature(fid) == original


async def test_update_keeps_votes(store: Store) -> None:
    fid = await new(store)
    await vote_many(store, fid, up=2, down=1, prefix="v")
    updated = await store.update_feature(fid, FeaturePatch(status=Status.IN_PROGRESS))
    assert (updated.up, updated.down, updated.score) == (2, 1, 1)


async def test_delete_removes_feature(store: Store) -> None:
    keep, gone = await new(store, "keep"), await new(store, "gone")
    before = await seq(store)
    await store.delete_feature(gone)
    assert await seq(store) > before
    with pytest.raises(NotFound):
        await store.get_feature(gone)
    assert await ids(store) == [keep]
    assert await ids(store, Sort.NEW) == [keep]
    assert await ids(store, Sort.TOP, Status.OPEN) == [keep]
    assert (await stats_body(store))["total_features"] == 1
    with pytest.raises(NotFound):
        await store.delete_feature(gone)


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s, i: s.get_feature(i), id="get"),
        pytest.param(lambda s, i: s.update_feature(i, FeaturePatch(title="x")), id="update"),
        pytest.param(
            lambda s, i: s.update_feature(i, FeaturePatch(status=Status.DONE)), id="close"
        ),
        pytest.param(lambda s, i: s.delete_feature(i), id="delete"),
        pytest.param(lambda s, i: s.set_vote("v", i, 1), id="vote-up"),
        pytest.param(lambda s, i: s.set_vote("v", i, -1), id="vote-down"),
        pytest.param(lambda s, i: s.set_vote("v", i, 0), id="retract"),
    ],
)
@pytest.mark.parametrize("missing", ["never-made", "deleted"])
async def test_unknown_feature_is_not_found_and_changes_nothing(
    store: Store, operation: Callable[[Store, int], Awaitable[object]], missing: str
) -> None:
    existing = await new(store)
    fid = existing + 1000
    if missing == "deleted":
        fid = await new(store, "doomed")
        await store.delete_feature(fid)
    before = await store.stats()
    with pytest.raises(NotFound):
        await operation(store, fid)
    after = await store.stats()
    assert after.seq == before.seq
    assert json.loads(after.body)["total_features"] == 1
    assert await store.votes_of("v") == {}


# --- listing ------------------------------------------------------------------------------------


async def test_top_order_is_score_then_up_then_id(store: Store) -> None:
    plain_a = await new(store, "0/0 first")
    two_zero = await new(store, "+2 -0")
    plain_b = await new(store, "0/0 second")
    three_one = await new(store, "+3 -1")
    one_one = await new(store, "+1 -1")
    zero_one = await new(store, "+0 -1")
    await vote_many(store, two_zero, 2, 0, "a")
    await vote_many(store, three_one, 3, 1, "b")
    await vote_many(store, one_one, 1, 1, "c")
    await vote_many(store, zero_one, 0, 1, "d")
    # score 2: +3-1 before +2-0 (more up); score 0: +1-1 before the two 0/0 (id asc); then -1.
    expected = [three_one, two_zero, one_one, plain_a, plain_b, zero_one]
    assert await ids(store) == expected
    page = await store.list_features(sort=Sort.TOP, status=None, limit=EVERYTHING, after=None)
    scores = [(f.up, f.down, f.score) for f in page.items]
    assert scores == [(3, 1, 2), (2, 0, 2), (1, 1, 0), (0, 0, 0), (0, 0, 0), (0, 1, -1)]


async def test_top_order_follows_vote_changes(store: Store) -> None:
    first, second = await new(store, "first"), await new(store, "second")
    assert await ids(store) == [first, second]
    await store.set_vote("v", second, 1)
    assert await ids(store) == [second, first]
    await store.set_vote("v", second, -1)
    assert await ids(store) == [first, second]
    await store.set_vote("v", second, 0)
    assert await ids(store) == [first, second]
    await store.set_vote("w", first, -1)
    assert await ids(store) == [second, first]


async def test_new_order_is_id_descending(store: Store) -> None:
    made = [await new(store, f"f{i}") for i in range(4)]
    await vote_many(store, made[0], 3, 0, "x")
    assert await ids(store, Sort.NEW) == sorted(made, reverse=True)


@pytest.mark.parametrize("sort", list(Sort))
async def test_status_filter(store: Store, sort: Sort) -> None:
    made = [await new(store, f"f{i}") for i in range(6)]
    statuses = [Status.OPEN, Status.PLANNED, Status.DONE, Status.PLANNED, Status.DECLINED]
    for fid, status in zip(made[1:], statuses, strict=True):
        await store.update_feature(fid, FeaturePatch(status=status))
    everything = await ids(store, sort)
    assert sorted(everything) == made
    for status in Status:
        wanted = {fid for fid in made if (await store.get_feature(fid)).status is status}
        listed = await ids(store, sort, status)
        assert listed == [fid for fid in everything if fid in wanted], status
    page = await store.list_features(sort=sort, status=Status.PLANNED, limit=50, after=None)
    assert all(f.status is Status.PLANNED for f in page.items)
    assert {f.id for f in page.items} == {made[2], made[4]}


async def walk(
    store: Store, sort: Sort, status: Status | None, limit: int
) -> tuple[list[int], int]:
    """Every id of a listing, page by page; and the number of pages."""
    seen: list[int] = []
    after: CursorKey | None = None
    pages = 0
    while True:
        page = await store.list_features(sort=sort, status=status, limit=limit, after=after)
        pages += 1
        assert len(page.items) <= limit
        if page.next_key is None:
            seen += [f.id for f in page.items]
            return seen, pages
        assert len(page.items) == limit, "a page before the last must be full"
        seen += [f.id for f in page.items]
        after = page.next_key
        assert pages < 100, "pagination does not end"


@pytest.mark.parametrize("sort", list(Sort))
@pytest.mark.parametrize("status", [None, Status.OPEN])
@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8, 50])
async def test_pagination_covers_every_item_once(
    store: Store, sort: Sort, status: Status | None, limit: int
) -> None:
    made = [await new(store, f"f{i}") for i in range(9)]
    for i, fid in enumerate(made):
        await vote_many(store, fid, i % 3, i % 2, f"p{i}")
    await store.update_feature(made[4], FeaturePatch(status=Status.PLANNED))
    expected = await ids(store, sort, status)
    seen, pages = await walk(store, sort, status, limit)
    assert seen == expected
    assert len(set(seen)) == len(seen)
    assert pages == max(1, -(-len(expected) // limit))


async def test_pagination_of_an_empty_store(store: Store) -> None:
    for sort in Sort:
        page = await store.list_features(sort=sort, status=None, limit=5, after=None)
        assert page.items == []
        assert page.next_key is None


async def test_pagination_survives_deleting_the_cursor_item(store: Store) -> None:
    made = [await new(store, f"f{i}") for i in range(6)]
    first = await store.list_features(sort=Sort.NEW, status=None, limit=2, after=None)
    assert [f.id for f in first.items] == [made[5], made[4]]
    assert first.next_key is not None
    await store.delete_feature(made[4])
    rest, _ = await walk_from(store, Sort.NEW, first.next_key, limit=2)
    assert rest == [made[3], made[2], made[1], made[0]]


async def walk_from(
    store: Store, sort: Sort, after: CursorKey, limit: int
) -> tuple[list[int], int]:
    seen: list[int] = []
    pages = 0
    cursor: CursorKey | None = after
    while cursor is not None:
        page = await store.list_features(sort=sort, status=None, limit=limit, after=cursor)
        seen += [f.id for f in page.items]
        cursor = page.next_key
        pages += 1
        assert pages < 100
    return seen, pages


# --- votes --------------------------------------------------------------------------------------


async def test_vote_set_change_retract_and_repeat(store: Store) -> None:
    fid = await new(store)
    s0 = await seq(store)

    assert await store.set_vote("alice", fid, 1) == VoteOut(fid, 1, 1, 0, 1)
    s1 = await seq(store)
    assert s1 > s0
    assert await store.votes_of("alice") == {fid: 1}

    assert await store.set_vote("alice", fid, 1) == VoteOut(fid, 1, 1, 0, 1)
    assert await seq(store) == s1, "repeating a vote must not bump seq"

    assert await store.set_vote("alice", fid, -1) == VoteOut(fid, -1, 0, 1, -1)
    s2 = await seq(store)
    assert s2 > s1
    assert await store.votes_of("alice") == {fid: -1}
    body = await stats_body(store)
    assert (body["total_votes"], body["up"], body["down"], body["voters"]) == (1, 0, 1, 1)

    assert await store.set_vote("alice", fid, -1) == VoteOut(fid, -1, 0, 1, -1)
    assert await seq(store) == s2

    assert await store.set_vote("alice", fid, 0) == VoteOut(fid, 0, 0, 0, 0)
    s3 = await seq(store)
    assert s3 > s2
    assert await store.votes_of("alice") == {}
    body = await stats_body(store)
    assert (body["total_votes"], body["up"], body["down"], body["voters"]) == (0, 0, 0, 0)

    assert await store.set_vote("alice", fid, 0) == VoteOut(fid, 0, 0, 0, 0)
    assert await seq(store) == s3, "retracting a missing vote changes nothing"
    feature = await store.get_feature(fid)
    assert (feature.up, feature.down, feature.score) == (0, 0, 0)


async def test_votes_count_per_voter_and_feature(store: Store) -> None:
    f1, f2 = await new(store, "one"), await new(store, "two")
    await store.set_vote("alice", f1, 1)
    await store.set_vote("alice", f2, -1)
    await store.set_vote("bob", f1, 1)
    await store.set_vote("carol", f1, -1)
    out = await store.set_vote("bob", f2, -1)
    assert out == VoteOut(f2, -1, 0, 2, -2)
    feature = await store.get_feature(f1)
    assert (feature.up, feature.down, feature.score) == (2, 1, 1)
    assert await store.votes_of("alice") == {f1: 1, f2: -1}
    assert await store.votes_of("bob") == {f1: 1, f2: -1}
    assert await store.votes_of("carol") == {f1: -1}
    assert await store.votes_of("nobody") == {}
    body = await stats_body(store)
    assert (body["total_votes"], body["up"], body["down"], body["voters"]) == (5, 2, 3, 3)


async def test_votes_of_returns_a_copy(store: Store) -> None:
    fid = await new(store)
    await store.set_vote("alice", fid, 1)
    mine = await store.votes_of("alice")
    mine[fid] = -1
    mine[fid + 1] = 1
    assert await store.votes_of("alice") == {fid: 1}


async def test_concurrent_votes_are_all_counted(store: Store) -> None:
    fid = await new(store)
    await asyncio.gather(*(store.set_vote(f"v{i}", fid, 1 if i % 3 else -1) for i in range(60)))
    feature = await store.get_feature(fid)
    assert (feature.up, feature.down) == (40, 20)
    body = await stats_body(store)
    assert (body["total_votes"], body["voters"]) == (60, 60)


@pytest.mark.parametrize("closed", [Status.DONE, Status.DECLINED])
@pytest.mark.parametrize("value", [1, -1, 0])
async def test_closed_feature_refuses_votes_and_keeps_them(
    store: Store, closed: Status, value: int
) -> None:
    fid = await new(store)
    await store.set_vote("alice", fid, 1)
    await store.set_vote("bob", fid, -1)
    await store.update_feature(fid, FeaturePatch(status=closed))
    before = await store.stats()
    for voter in ("alice", "bob", "carol"):
        with pytest.raises(FeatureClosed):
            await store.set_vote(voter, fid, value)
    after = await store.stats()
    assert after.seq == before.seq
    assert after.body == before.body
    feature = await store.get_feature(fid)
    assert (feature.up, feature.down, feature.score) == (1, 1, 0)
    assert await store.votes_of("alice") == {fid: 1}
    assert await store.votes_of("carol") == {}

    await store.update_feature(fid, FeaturePatch(status=Status.OPEN))
    assert await store.set_vote("carol", fid, 1) == VoteOut(fid, 1, 2, 1, 1)


@pytest.mark.parametrize("status", [Status.OPEN, Status.PLANNED, Status.IN_PROGRESS])
async def test_open_statuses_accept_votes(store: Store, status: Status) -> None:
    fid = await new(store)
    await store.update_feature(fid, FeaturePatch(status=status))
    assert await store.set_vote("alice", fid, -1) == VoteOut(fid, -1, 0, 1, -1)


async def test_delete_takes_its_votes_along(store: Store) -> None:
    doomed, kept = await new(store, "doomed"), await new(store, "kept")
    await store.set_vote("only-doomed", doomed, 1)
    await store.set_vote("both", doomed, -1)
    await store.set_vote("both", kept, 1)
    await store.set_vote("other", kept, -1)
    body = await stats_body(store)
    assert (body["total_votes"], body["up"], body["down"], body["voters"]) == (4, 2, 2, 3)

    await store.delete_feature(doomed)
    body = await stats_body(store)
    assert (body["total_votes"], body["up"], body["down"], body["voters"]) == (2, 1, 1, 2)
    assert body["total_features"] == 1
    assert await store.votes_of("only-doomed") == {}
    assert await store.votes_of("both") == {kept: 1}
    assert [f["id"] for f in body["top"]] == [kept]


# --- idempotency --------------------------------------------------------------------------------


async def test_idempotent_replay_returns_the_same_feature(store: Store) -> None:
    first = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    assert first.replayed is False
    before = await store.stats()
    again = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    assert again.replayed is True
    assert again.feature == first.feature
    after = await store.stats()
    assert after.seq == before.seq
    assert json.loads(after.body)["total_features"] == 1
    assert await ids(store) == [first.feature.id]


async def test_idempotency_compares_the_normalised_body(store: Store) -> None:
    first = await store.create_feature(
        FeatureCreate("Dark mode", "x"), owner="alice", idempotency_key="k1"
    )
    again = await store.create_feature(
        FeatureCreate("  Dark mode ", " x "), owner="alice", idempotency_key="k1"
    )
    assert again == Created(first.feature, True)


@pytest.mark.parametrize(
    "other",
    [FeatureCreate("Light mode"), FeatureCreate("Dark mode", "with a description")],
    ids=["title", "description"],
)
async def test_idempotency_conflict_on_another_body(store: Store, other: FeatureCreate) -> None:
    await store.create_feature(FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1")
    before = await store.stats()
    with pytest.raises(IdempotencyConflict):
        await store.create_feature(other, owner="alice", idempotency_key="k1")
    after = await store.stats()
    assert after.seq == before.seq
    assert json.loads(after.body)["total_features"] == 1


async def test_idempotency_keys_belong_to_their_owner(store: Store) -> None:
    mine = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    theirs = await store.create_feature(
        FeatureCreate("Dark mode"), owner="bob", idempotency_key="k1"
    )
    assert theirs.replayed is False
    assert theirs.feature.id != mine.feature.id
    conflicting_body = await store.create_feature(
        FeatureCreate("Other"), owner="carol", idempotency_key="k1"
    )
    assert conflicting_body.replayed is False


async def test_without_a_key_every_create_is_new(store: Store) -> None:
    a = await store.create_feature(FeatureCreate("Dark mode"), owner="alice")
    b = await store.create_feature(FeatureCreate("Dark mode"), owner="alice")
    assert (a.replayed, b.replayed) == (False, False)
    assert a.feature.id != b.feature.id


async def test_idempotency_expires_after_the_ttl(store: Store, clock: FakeClock) -> None:
    first = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    clock.advance(IDEMPOTENCY_TTL - 0.5)
    replay = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    assert replay == Created(first.feature, True)
    clock.advance(1.0)
    fresh = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    assert fresh.replayed is False
    assert fresh.feature.id != first.feature.id
    # The key now names the new feature, and another body conflicts again.
    replay = await store.create_feature(
        FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1"
    )
    assert replay == Created(fresh.feature, True)
    with pytest.raises(IdempotencyConflict):
        await store.create_feature(FeatureCreate("Other"), owner="alice", idempotency_key="k1")


async def test_expired_key_may_carry_another_body(store: Store, clock: FakeClock) -> None:
    await store.create_feature(FeatureCreate("Dark mode"), owner="alice", idempotency_key="k1")
    clock.advance(IDEMPOTENCY_TTL + 1)
    other = await store.create_feature(FeatureCreate("Other"), owner="alice", idempotency_key="k1")
    assert other.replayed is False
    assert other.feature.title == "Other"


# --- stats --------------------------------------------------------------------------------------


async def test_stats_body_matches_the_store(store: Store) -> None:
    f1, f2 = await new(store, "one"), await new(store, "two")
    await store.set_vote("alice", f2, 1)
    await store.set_vote("bob", f1, -1)
    view = await store.stats()
    body = json.loads(view.body)
    assert body["seq"] == view.seq
    assert view.etag == etag_for(view.seq, epoch=json.loads(view.body)["epoch"])
    assert set(body) >= {
        "seq",
        "total_features",
        "total_votes",
        "up",
        "down",
        "voters",
        "top",
        "generated_at",
    }
    assert (
        body["total_features"],
        body["total_votes"],
        body["up"],
        body["down"],
        body["voters"],
    ) == (2, 2, 1, 1, 2)
    assert [(f["id"], f["up"], f["down"], f["score"]) for f in body["top"]] == [
        (f2, 1, 0, 1),
        (f1, 0, 1, -1),
    ]


async def test_stats_are_cached_until_a_change(store: Store) -> None:
    fid = await new(store)
    await store.set_vote("alice", fid, 1)
    first = await store.stats()
    again = await store.stats()
    assert again is first, "stats of one seq are encoded once and shared"
    assert again.body == first.body

    await store.set_vote("alice", fid, 1)  # a repeat is not a change
    await store.update_feature(fid, FeaturePatch())  # nor is an empty patch
    assert await store.stats() is first

    await store.set_vote("bob", fid, -1)
    changed = await store.stats()
    assert changed.seq > first.seq
    assert changed.body != first.body
    assert changed.etag != first.etag
    assert json.loads(changed.body)["seq"] == changed.seq
    assert await store.stats() is changed


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda s, f: s.create_feature(FeatureCreate("another"), owner="o"), id="create"
        ),
        pytest.param(lambda s, f: s.update_feature(f, FeaturePatch(title="renamed")), id="update"),
        pytest.param(
            lambda s, f: s.update_feature(f, FeaturePatch(status=Status.DONE)), id="close"
        ),
        pytest.param(lambda s, f: s.delete_feature(f), id="delete"),
        pytest.param(lambda s, f: s.set_vote("bob", f, 1), id="vote"),
        pytest.param(lambda s, f: s.set_vote("alice", f, -1), id="change-vote"),
        pytest.param(lambda s, f: s.set_vote("alice", f, 0), id="retract"),
    ],
)
async def test_every_change_gives_new_seq_and_bytes(
    store: Store, change: Callable[[Store, int], Awaitable[object]]
) -> None:
    fid = await new(store)
    await store.set_vote("alice", fid, 1)
    before = await store.stats()
    await change(store, fid)
    after = await store.stats()
    assert after.seq > before.seq
    assert after.body != before.body
    assert after.etag == etag_for(after.seq, epoch=json.loads(after.body)["epoch"]) != before.etag


async def test_top_is_capped_at_top_n(store: Store) -> None:
    made = [await new(store, f"f{i}") for i in range(TOP_N - 1)]
    assert [f["id"] for f in (await stats_body(store))["top"]] == made
    made += [await new(store, f"g{i}") for i in range(TOP_N + 2)]
    await vote_many(store, made[-1], 2, 0, "last")
    await vote_many(store, made[0], 0, 1, "first")
    top = (await stats_body(store))["top"]
    assert len(top) == TOP_N
    assert [f["id"] for f in top] == (await ids(store))[:TOP_N]
    assert top[0]["id"] == made[-1]


async def test_top_n_comes_from_the_store_settings(clock: FakeClock) -> None:
    for name, factory in STORE_FACTORIES.items():
        one = await factory(1, IDEMPOTENCY_TTL, clock)
        try:
            for i in range(3):
                await new(one, f"f{i}")
            assert len((await stats_body(one))["top"]) == 1, name
        finally:
            await one.close()


# --- change listeners ---------------------------------------------------------------------------


async def test_listener_gets_every_seq_in_order(store: Store) -> None:
    received = Recorder()
    unsubscribe = store.subscribe(received)
    expected: list[int] = []
    fid = await new(store)
    expected.append(await seq(store))
    for voter, value in [("a", 1), ("b", -1), ("a", -1), ("a", 0)]:
        await store.set_vote(voter, fid, value)
        expected.append(await seq(store))
    await store.set_vote("b", fid, -1)  # no change, no seq
    await store.update_feature(fid, FeaturePatch(status=Status.PLANNED))
    expected.append(await seq(store))
    await store.delete_feature(fid)
    expected.append(await seq(store))
    assert await received.wait_for(len(expected)) == expected
    assert expected == sorted(set(expected))

    unsubscribe()
    control = Recorder()  # still subscribed: once it has the change, every listener had its turn
    store.subscribe(control)
    await new(store, "after unsubscribe")
    await control.wait_for(1)
    assert received.seqs == expected


async def test_each_listener_is_called_independently(store: Store) -> None:
    first, second = Recorder(), Recorder()
    stop_first = store.subscribe(first)
    store.subscribe(second)
    await new(store, "one")
    s1 = await seq(store)
    await first.wait_for(1)
    stop_first()
    await new(store, "two")
    s2 = await seq(store)
    assert await second.wait_for(2) == [s1, s2]  # one dispatch calls every listener of s2
    assert first.seqs == [s1]


async def test_listener_may_unsubscribe_itself_without_hiding_others(store: Store) -> None:
    """A one-shot waiter that unsubscribes inside its callback must not starve later listeners."""
    once = Recorder()
    others = Recorder()
    unsubscribe_once: list[Callable[[], None]] = []

    def one_shot(seq_: int) -> None:
        once(seq_)
        unsubscribe_once.pop()()

    unsubscribe_once.append(store.subscribe(one_shot))
    store.subscribe(others)
    await new(store, "one")
    s1 = await seq(store)
    await new(store, "two")
    s2 = await seq(store)
    assert await once.wait_for(1) == [s1]
    with contextlib.suppress(TimeoutError):
        await others.wait_for(2)
    assert others.seqs == [s1, s2], "a listener missed a change because another unsubscribed"
