"""The board part of the Store contract (ADR-007), on every backend of STORE_FACTORIES.

Lock, hide, reset, rounds, standings and the wilson/controversial orders, written against the
abstract interface so the memory and the Redis store run the same table.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

from service.schemas import DEFAULT_BOARD, Board, BoardPatch, FeaturePatch, Sort, Status
from service.store import (
    Audience,
    CursorKey,
    FeatureClosed,
    NotFound,
    Store,
    VotingClosed,
    etag_for,
    sort_key,
)
from service.store.base import controversy, wilson_lower_bound

from .test_store_contract import (
    IDEMPOTENCY_TTL,
    STORE_FACTORIES,
    TOP_N,
    FakeClock,
    Recorder,
    close_store,
    new,
    seq,
    vote_many,
)

EVERYTHING: Final = 10_000
ADMIN: Final = Audience.ADMIN
PUBLIC: Final = Audience.PUBLIC
RANKED: Final = (Sort.TOP, Sort.WILSON, Sort.CONTROVERSIAL)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Store]:
    made = await STORE_FACTORIES[request.param](TOP_N, IDEMPOTENCY_TTL, clock)
    yield made
    await close_store(made)


async def listing(
    store: Store,
    sort: Sort = Sort.TOP,
    audience: Audience = PUBLIC,
    status: Status | None = None,
) -> list[Any]:
    page = await store.list_features(
        sort=sort, status=status, limit=EVERYTHING, after=None, audience=audience
    )
    assert page.next_key is None
    return page.items


async def walk(
    store: Store, sort: Sort, limit: int, audience: Audience = PUBLIC, status: Status | None = None
) -> list[int]:
    """Every id of a listing, page by page."""
    seen: list[int] = []
    after: CursorKey | None = None
    while True:
        page = await store.list_features(
            sort=sort, status=status, limit=limit, after=after, audience=audience
        )
        seen += [f.id for f in page.items]
        if page.next_key is None:
            return seen
        after = page.next_key


async def stats_of(store: Store, audience: Audience = PUBLIC) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((await store.stats(audience)).body)
    return body


async def seeded(store: Store) -> dict[str, int]:
    """Four features with distinct counts: a (3 up), b (1 up 1 down), c (0), d (2 up 3 down)."""
    ids = {name: await new(store, f"Feature {name}") for name in "abcd"}
    await vote_many(store, ids["a"], 3, 0, "a")
    await vote_many(store, ids["b"], 1, 1, "b")
    await vote_many(store, ids["d"], 2, 3, "d")
    return ids


# --- the board itself ---------------------------------------------------------------------------


async def test_a_new_board_has_the_defaults(store: Store) -> None:
    assert _board_dict(await store.board()) == _board_dict(DEFAULT_BOARD)
    assert Board(DEFAULT_BOARD.title, 1, voting_open=True, results_hidden=False) == DEFAULT_BOARD
    assert _controls((await stats_of(store))["board"]) == {
        "title": DEFAULT_BOARD.title,
        "round": 1,
        "voting_open": True,
        "results_hidden": False,
    }
    assert (await store.board()).slug == "main"
    assert await store.rounds() == []


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (BoardPatch(title="Sprint 12"), {"title": "Sprint 12"}),
        (BoardPatch(voting_open=False), {"voting_open": False}),
        (BoardPatch(results_hidden=True), {"results_hidden": True}),
        (
            BoardPatch(title="Retro", voting_open=False, results_hidden=True),
            {"title": "Retro", "voting_open": False, "results_hidden": True},
        ),
    ],
)
async def test_update_board_changes_given_fields(
    store: Store, patch: BoardPatch, expected: dict[str, Any]
) -> None:
    recorder = Recorder()
    store.subscribe(recorder)
    before = await seq(store)
    board = await store.update_board(patch)
    want = {**json.loads(json.dumps(_board_dict(DEFAULT_BOARD))), **expected}
    assert _board_dict(board) == want
    assert _board_dict(await store.board()) == want
    assert _controls((await stats_of(store))["board"]) == want
    assert await seq(store) > before
    assert (await recorder.wait_for(1))[-1] == await seq(store)


def _controls(board: dict[str, Any]) -> dict[str, Any]:
    """A board's JSON without what names it (slug, join code, created_at)."""
    return {k: v for k, v in board.items() if k not in ("slug", "join_code", "created_at")}


def _board_dict(board: Board) -> dict[str, Any]:
    return {
        "title": board.title,
        "round": board.round,
        "voting_open": board.voting_open,
        "results_hidden": board.results_hidden,
    }


@pytest.mark.parametrize(
    "patch", [BoardPatch(), BoardPatch(voting_open=True), BoardPatch(results_hidden=False)]
)
async def test_a_patch_that_changes_nothing_keeps_seq(store: Store, patch: BoardPatch) -> None:
    await new(store)
    before = await store.stats()
    assert _board_dict(await store.update_board(patch)) == _board_dict(DEFAULT_BOARD)
    assert await store.stats() == before  # the same cached view: no new seq


# --- the lock -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, -1, 0])
async def test_locked_board_refuses_every_vote_and_keeps_counts(store: Store, value: int) -> None:
    fid = await new(store)
    await store.set_vote("ann", fid, 1)
    await store.update_board(BoardPatch(voting_open=False))
    before = await store.stats()
    for audience in Audience:
        with pytest.raises(VotingClosed):
            await store.set_vote("ann", fid, value, audience=audience)
        with pytest.raises(VotingClosed):
            await store.set_vote("bob", fid, value, audience=audience)
    assert await store.stats() == before
    assert await store.votes_of("ann") == {fid: 1}
    await store.update_board(BoardPatch(voting_open=True))
    assert (await store.set_vote("bob", fid, 1)).up == 2


async def test_lock_checks_the_feature_first(store: Store) -> None:
    fid = await new(store)
    await store.update_feature(fid, FeaturePatch(status=Status.DONE))
    await store.update_board(BoardPatch(voting_open=False))
    with pytest.raises(NotFound):
        await store.set_vote("ann", 999_999, 1)
    with pytest.raises(VotingClosed):  # the board's lock before the feature's status
        await store.set_vote("ann", fid, 1)
    await store.update_board(BoardPatch(voting_open=True))
    with pytest.raises(FeatureClosed):
        await store.set_vote("ann", fid, 1)


async def test_votes_racing_a_lock_are_counted_before_it_or_refused(store: Store) -> None:
    """Every acknowledged vote is counted; none is counted once the lock has returned."""
    fid = await new(store)
    acknowledged: list[str] = []
    refused: list[str] = []

    async def vote(n: int) -> None:
        try:
            await store.set_vote(f"v{n}", fid, 1)
        except VotingClosed:
            refused.append(f"v{n}")
        else:
            acknowledged.append(f"v{n}")

    tasks = [asyncio.create_task(vote(n)) for n in range(300)]
    await asyncio.sleep(0)
    await store.update_board(BoardPatch(voting_open=False))
    after_lock = [asyncio.create_task(vote(n)) for n in range(300, 350)]
    await asyncio.gather(*tasks, *after_lock)
    assert len(acknowledged) + len(refused) == 350
    assert all(int(v[1:]) < 300 for v in acknowledged)  # nothing sent after the lock got in
    feature = await store.get_feature(fid, audience=ADMIN)
    assert feature.up == len(acknowledged)
    for voter in acknowledged:
        assert await store.votes_of(voter) == {fid: 1}
    for voter in refused:
        assert await store.votes_of(voter) == {}


# --- hidden results -----------------------------------------------------------------------------


async def test_hidden_results_reach_only_admins(store: Store) -> None:
    ids = await seeded(store)
    real_top = [f.id for f in await listing(store, Sort.TOP, ADMIN)]
    await store.update_board(BoardPatch(results_hidden=True))

    for sort in Sort:
        public = await listing(store, sort, PUBLIC)
        assert all((f.up, f.down, f.score) == (None, None, None) for f in public), sort
        admin = await listing(store, sort, ADMIN)
        assert all(f.up is not None and f.score is not None for f in admin), sort
        if sort in RANKED:  # the order would give the counts away: by id instead
            assert [f.id for f in public] == sorted(ids.values())
    assert [f.id for f in await listing(store, Sort.NEW, PUBLIC)] == sorted(
        ids.values(), reverse=True
    )
    await store.update_feature(ids["b"], FeaturePatch(status=Status.PLANNED))
    for sort in RANKED:
        opened = await listing(store, sort, PUBLIC, Status.OPEN)
        assert [f.id for f in opened] == [ids["a"], ids["c"], ids["d"]], sort
        assert all(f.score is None for f in opened)
    await store.update_feature(ids["b"], FeaturePatch(status=Status.OPEN))
    assert [f.id for f in await listing(store, Sort.TOP, ADMIN)] == real_top

    one = await store.get_feature(ids["a"])
    assert (one.up, one.down, one.score) == (None, None, None)
    assert (await store.get_feature(ids["a"], audience=ADMIN)).up == 3

    vote = await store.set_vote("eve", ids["b"], 1)
    assert (vote.value, vote.up, vote.down, vote.score) == (1, None, None, None)
    vote = await store.set_vote("eve", ids["c"], -1, audience=ADMIN)
    assert (vote.up, vote.down, vote.score) == (0, 1, -1)

    public_stats = await stats_of(store)
    admin_stats = await stats_of(store, ADMIN)
    assert (public_stats["up"], public_stats["down"]) == (None, None)
    assert public_stats["total_votes"] == admin_stats["total_votes"] == 12
    assert public_stats["voters"] == admin_stats["voters"]
    assert [f["id"] for f in public_stats["top"]] == sorted(ids.values())[:TOP_N]
    assert all(f["up"] is None and f["score"] is None for f in public_stats["top"])
    assert (admin_stats["up"], admin_stats["down"]) == (7, 5)
    real_top = [f.id for f in await listing(store, Sort.TOP, ADMIN)]  # eve moved c below d
    assert [f["id"] for f in admin_stats["top"]] == real_top[:TOP_N]
    assert public_stats["board"]["results_hidden"] is admin_stats["board"]["results_hidden"]


async def test_hidden_stats_have_one_etag_per_audience(store: Store) -> None:
    await seeded(store)
    shared = await store.stats()
    assert await store.stats(ADMIN) == shared  # not hidden: one view for everyone
    assert shared.etag == etag_for(shared.seq, epoch=json.loads(shared.body)["epoch"])
    await store.update_board(BoardPatch(results_hidden=True))
    public, admin = await store.stats(PUBLIC), await store.stats(ADMIN)
    assert public.seq == admin.seq > shared.seq
    assert public.etag != admin.etag
    assert public.etag == etag_for(public.seq, PUBLIC, json.loads(public.body)["epoch"])
    assert admin.etag == etag_for(admin.seq, ADMIN, json.loads(admin.body)["epoch"])
    assert public.body != admin.body
    assert await store.stats(PUBLIC) is public  # cached per audience
    assert await store.stats(ADMIN) is admin
    views = await store.stats_by_audience()
    assert views == {PUBLIC: public, ADMIN: admin}
    await store.update_board(BoardPatch(results_hidden=False))  # reveal: one view again
    revealed = await store.stats()
    assert revealed.seq > public.seq
    assert await store.stats(ADMIN) == revealed
    assert json.loads(revealed.body)["up"] == 6


async def test_hidden_create_shows_no_counts(store: Store) -> None:
    await store.update_board(BoardPatch(results_hidden=True))
    from service.schemas import FeatureCreate

    created = await store.create_feature(FeatureCreate("Secret", ""), owner="ann")
    assert (created.feature.up, created.feature.score) == (None, None)
    created = await store.create_feature(FeatureCreate("Open", ""), owner="x", audience=ADMIN)
    assert (created.feature.up, created.feature.score) == (0, 0)


@pytest.mark.parametrize("sort", RANKED)
@pytest.mark.parametrize("limit", [1, 2, 3, 50])
async def test_hidden_listing_pages_by_id(store: Store, sort: Sort, limit: int) -> None:
    ids = await seeded(store)
    await store.update_board(BoardPatch(results_hidden=True))
    assert await walk(store, sort, limit) == sorted(ids.values())
    assert await walk(store, sort, limit, ADMIN) == [
        f.id for f in await listing(store, sort, ADMIN)
    ]


async def test_a_hidden_cursor_still_works_after_the_reveal(store: Store) -> None:
    ids = await seeded(store)
    await store.update_board(BoardPatch(results_hidden=True))
    page = await store.list_features(sort=Sort.TOP, status=None, limit=1, after=None)
    assert page.next_key == (ids["a"],)
    await store.update_board(BoardPatch(results_hidden=False))
    rest = await store.list_features(sort=Sort.TOP, status=None, limit=50, after=page.next_key)
    order = [f.id for f in await listing(store, Sort.TOP, ADMIN)]
    assert [f.id for f in rest.items] == order[order.index(ids["a"]) + 1 :]


# --- reset and rounds ---------------------------------------------------------------------------


async def test_reset_archives_the_final_standings_and_clears_votes(store: Store) -> None:
    ids = await seeded(store)
    await store.update_feature(ids["d"], FeaturePatch(status=Status.DECLINED))
    await store.update_board(BoardPatch(title="Sprint 12"))
    final = await listing(store, Sort.TOP, ADMIN)
    before = await stats_of(store, ADMIN)
    recorder = Recorder()
    store.subscribe(recorder)

    board = await store.reset_board()

    assert _board_dict(board) == _board_dict(
        Board("Sprint 12", 2, voting_open=True, results_hidden=False)
    )
    assert await store.board() == board
    assert (await recorder.wait_for(1))[-1] == await seq(store)
    [summary] = await store.rounds()
    assert (summary.round, summary.title, summary.total_votes, summary.voters) == (
        1,
        "Sprint 12",
        before["total_votes"],
        before["voters"],
    )
    assert summary.results_hidden is False
    archived = await store.standings(1)
    assert archived.closed_at == summary.closed_at
    assert archived.standings == final  # every feature, top order, counts as they were
    assert (archived.total_votes, archived.voters) == (10, before["voters"])

    after = await stats_of(store, ADMIN)
    assert (after["total_votes"], after["up"], after["down"], after["voters"]) == (0, 0, 0, 0)
    assert after["total_features"] == 4  # features stay, statuses too
    assert all((f.up, f.down, f.score) == (0, 0, 0) for f in await listing(store, Sort.NEW))
    assert (await store.get_feature(ids["d"])).status is Status.DECLINED
    for voter in ("a-up-0", "b-down-0", "d-up-1"):
        assert await store.votes_of(voter) == {}
    assert [f.id for f in await listing(store)] == sorted(ids.values())  # all tied: by id
    # a new round counts from zero, and a voter of the last round may vote again
    assert (await store.set_vote("a-up-0", ids["a"], -1)).down == 1
    assert (await stats_of(store))["voters"] == 1


async def test_rounds_are_newest_first_and_unknown_ones_are_not_found(store: Store) -> None:
    fid = await new(store)
    for n in range(3):
        await vote_many(store, fid, n + 1, 0, f"r{n}")
        await store.reset_board()
    rounds = await store.rounds()
    assert [r.round for r in rounds] == [3, 2, 1]
    assert [r.total_votes for r in rounds] == [3, 2, 1]
    assert rounds[0].closed_at >= rounds[-1].closed_at
    for missing in (0, 5, 10**17):
        with pytest.raises(NotFound):
            await store.standings(missing)
    current = await store.standings()
    assert (current.round, current.closed_at, current.total_votes) == (4, None, 0)
    assert await store.standings(4) == current


async def test_a_round_closed_hidden_stays_hidden_to_non_admins(store: Store) -> None:
    ids = await seeded(store)
    final = await listing(store, Sort.TOP, ADMIN)
    await store.update_board(BoardPatch(results_hidden=True))
    current = await store.standings()
    assert [f.id for f in current.standings] == sorted(ids.values())
    assert all(f.score is None for f in current.standings)
    assert (await store.standings(audience=ADMIN)).standings == final

    board = await store.reset_board()
    assert board.results_hidden is True and board.round == 2  # the flags carry over
    [summary] = await store.rounds()
    assert summary.results_hidden is True
    public = await store.standings(1)
    assert [f.id for f in public.standings] == sorted(ids.values())
    assert all((f.up, f.down, f.score) == (None, None, None) for f in public.standings)
    assert public.total_votes == 10  # totals stay visible, as in the stats
    assert (await store.standings(1, audience=ADMIN)).standings == final


async def test_reset_of_an_empty_board(store: Store) -> None:
    board = await store.reset_board()
    assert board.round == 2
    archived = await store.standings(1)
    assert (archived.standings, archived.total_votes, archived.voters) == ([], 0, 0)


# --- wilson and controversial -------------------------------------------------------------------


def test_wilson_lower_bound_matches_the_formula() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    z = 1.959963984540054
    for up, down in [(1, 0), (5, 5), (10, 1), (100, 3), (0, 4)]:
        n = up + down
        p = up / n
        expected = (p + z * z / (2 * n) - z * math.sqrt((p * (1 - p) + z * z / (4 * n)) / n)) / (
            1 + z * z / n
        )
        assert wilson_lower_bound(up, down) == pytest.approx(max(0.0, expected), abs=1e-12)
    assert wilson_lower_bound(1, 0) == pytest.approx(0.2065, abs=1e-4)  # a known value
    assert wilson_lower_bound(100, 3) > wilson_lower_bound(10, 0) > wilson_lower_bound(1, 0)


def test_controversy_prefers_many_votes_evenly_split() -> None:
    assert controversy(0, 0) == controversy(10, 0) == controversy(0, 10) == 0.0
    assert controversy(5, 5) == 10.0
    assert controversy(50, 50) > controversy(5, 5) > controversy(10, 1) > 0
    assert controversy(3, 7) == controversy(7, 3)


BOARD: Final = {  # name: (up, down)
    "tie-a": (5, 5),
    "tie-b": (5, 5),
    "sure": (20, 1),
    "lucky": (2, 0),
    "hated": (0, 6),
    "empty": (0, 0),
    "split": (30, 28),
}


@pytest.mark.parametrize("sort", [Sort.WILSON, Sort.CONTROVERSIAL])
async def test_ranked_orders_follow_their_keys(store: Store, sort: Sort) -> None:
    ids = {name: await new(store, name) for name in BOARD}
    for name, (up, down) in BOARD.items():
        await vote_many(store, ids[name], up, down, name)
    got = [f.id for f in await listing(store, sort, ADMIN)]
    expected = sorted(ids.values(), key=lambda i: sort_key(sort, i, *BOARD[_name(ids, i)]))
    assert got == expected
    names = [_name(ids, i) for i in got]
    if sort is Sort.WILSON:
        assert names[:2] == ["sure", "split"] and names[-1] == "empty"
        assert names.index("tie-a") + 1 == names.index("tie-b")  # same counts: id order
    else:
        assert names[:3] == ["split", "tie-a", "tie-b"]
        assert names.index("sure") < names.index("hated") < names.index("lucky")
        assert names[-1] == "empty"  # one-sided features by votes, then the unvoted


def _name(ids: dict[str, int], feature_id: int) -> str:
    return next(name for name, i in ids.items() if i == feature_id)


@pytest.mark.parametrize("sort", [Sort.WILSON, Sort.CONTROVERSIAL])
@pytest.mark.parametrize("status", [None, Status.OPEN])
@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
async def test_ranked_orders_paginate(
    store: Store, sort: Sort, status: Status | None, limit: int
) -> None:
    ids = {name: await new(store, name) for name in BOARD}
    for name, (up, down) in BOARD.items():
        await vote_many(store, ids[name], up, down, name)
    await store.update_feature(ids["lucky"], FeaturePatch(status=Status.PLANNED))
    full = [f.id for f in await listing(store, sort, ADMIN, status)]
    assert await walk(store, sort, limit, ADMIN, status) == full
    assert (ids["lucky"] in full) is (status is None)


async def test_ranked_orders_follow_votes(store: Store) -> None:
    a, b = await new(store, "a"), await new(store, "b")
    await vote_many(store, a, 3, 0, "a")
    assert [f.id for f in await listing(store, Sort.WILSON)] == [a, b]
    await vote_many(store, b, 9, 0, "b")  # the cached order of the old seq must not be served
    assert [f.id for f in await listing(store, Sort.WILSON)] == [b, a]
    await vote_many(store, a, 0, 3, "a2")
    assert [f.id for f in await listing(store, Sort.CONTROVERSIAL)] == [a, b]
