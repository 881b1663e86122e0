"""Boards are rooms of their own (issue 15): random operations on several boards at once, both
stores, each board checked against a model of its own after every step.

Three boards and main, the same voter ids on all of them; features created, voted on, retracted
and deleted, boards hidden and locked, rounds reset, a board deleted and another made. After each
step every board's every read (stats for both audiences, listings, get, votes_of, rounds,
standings, the board itself, the directory's look-ups) matches that board's model and nothing of
any other board; every board's seq moved by one if the step changed it and not at all otherwise;
each board's change listeners heard exactly its own new seq; and every stats body read is the
state the model recorded for that seq (never a state that did not exist).

On Redis a second directory over the same namespace plays a second instance: its listeners hear
changes only through Redis pub/sub (each board's own channel), and its stats reads are checked
the same way. Hypothesis runs in-process on a private event loop, as tests/test_store_property.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from redis.asyncio import Redis as AsyncRedis

from service.schemas import BoardPatch, FeatureCreate, Sort, VoteOut
from service.store import (
    Audience,
    BoardDirectory,
    BoardKept,
    BoardNotFound,
    NotFound,
    Store,
    VotingClosed,
)
from service.store.memory import MemoryBoards
from service.store.redis import RedisBoards, RedisStore

from .redis_support import (
    REDIS_URL,
    SLOW_MACHINE_TIMEOUT,
    delete_namespace,
    shared_redis_problem,
    unique_prefix,
)
from .waiting import eventually

T = TypeVar("T")
VOTERS: Final = ("ann", "bob", "cat")  # the same ids vote on every board
TOP_N: Final = 3  # below the features a board may hold, so stats' top is cut
EXTRA_BOARDS: Final = 3  # besides main
MAX_ID: Final = 7  # feature ids 1..MAX_ID: on each board some exist, some did, some never will
MAX_ROUND: Final = 6
PUBSUB_POLL: Final = 0.001  # a pub/sub round trip on loopback is well under a millisecond
EVERYTHING: Final = 1000
# (total_features, total_votes, up, down, voters, top ids, title, round, voting_open, hidden)
Snapshot = tuple[int, int, int, int, int, tuple[int, ...], str, int, bool, bool]
Predicate = Callable[[], bool | Awaitable[bool]]  # what eventually() waits on, spelled for mypy


@dataclass
class ModelFeature:
    title: str
    votes: dict[str, int] = field(default_factory=dict)

    @property
    def up(self) -> int:
        return sum(1 for v in self.votes.values() if v > 0)

    @property
    def down(self) -> int:
        return sum(1 for v in self.votes.values() if v < 0)


@dataclass
class ModelRound:
    round: int
    title: str
    total_votes: int
    voters: int
    results_hidden: bool
    standings: list[tuple[int, str, int, int]]  # (id, title, up, down) in top order


@dataclass
class ModelBoard:
    """One board as the test believes it is, and what its listeners have heard."""

    label: str  # in every title on the board: a title of another board's shows a leak
    store: Store
    peer: Store | None  # the same board on the second instance (Redis)
    slug: str
    code: str
    title: str
    seq: int
    features: dict[int, ModelFeature] = field(default_factory=dict)
    next_id: int = 1
    round: int = 1
    voting_open: bool = True
    results_hidden: bool = False
    rounds: list[ModelRound] = field(default_factory=list)
    history: dict[int, Snapshot] = field(default_factory=dict)  # every state it has been in
    heard: list[int] = field(default_factory=list)  # its listener on this instance
    heard_peer: list[int] = field(default_factory=list)  # its listener on the second instance
    checked: int = 0  # len(heard) at the last step
    checked_peer: int = 0
    unsubscribe: list[Any] = field(default_factory=list)

    def top(self) -> list[int]:
        fs = self.features
        return sorted(fs, key=lambda i: (fs[i].down - fs[i].up, -fs[i].up, i))

    def votes(self) -> list[int]:
        return [v for f in self.features.values() for v in f.votes.values()]

    def voters(self) -> int:
        return len({voter for f in self.features.values() for voter in f.votes})

    def snapshot(self) -> Snapshot:
        votes = self.votes()
        up = sum(1 for v in votes if v > 0)
        return (len(self.features), len(votes), up, len(votes) - up, self.voters(),
                tuple(self.top()[:TOP_N]), self.title, self.round, self.voting_open,
                self.results_hidden)


def snapshot_of(body: dict[str, Any]) -> Snapshot:
    """The admin stats body as a Snapshot."""
    board = body["board"]
    return (body["total_features"], body["total_votes"], body["up"], body["down"],
            body["voters"], tuple(f["id"] for f in body["top"]), board["title"], board["round"],
            board["voting_open"], board["results_hidden"])


class BoardsMachine(RuleBasedStateMachine):
    """The memory store's directory; RedisBoardsMachine swaps in Redis and a second instance."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.boards, self.peer = self.make_directories()
        self.deleted_here: list[str] = []
        self.deleted_peer: list[str] = []
        self.boards.on_deleted(self.deleted_here.append)
        if self.peer is not None:
            self.peer.on_deleted(self.deleted_peer.append)
        self.live: list[ModelBoard] = []
        self.gone: list[ModelBoard] = []
        self.made = 0
        self.run(self.watch(self.boards.main, "main"))
        for _ in range(EXTRA_BOARDS):
            self.run(self.new_board())

    # --- plumbing -------------------------------------------------------------------------------

    def make_directories(self) -> tuple[BoardDirectory, BoardDirectory | None]:
        return MemoryBoards(top_n=TOP_N, clock=lambda: 0.0), None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.close())
        finally:
            self.loop.close()

    async def close(self) -> None:
        for board in self.live + self.gone:  # on the loop: Redis unsubscribes in a task
            for unsubscribe in board.unsubscribe:
                unsubscribe()
        await self.boards.close()
        if self.peer is not None:
            await self.peer.close()

    async def followed(self, board: ModelBoard) -> None:
        """Return once both instances follow the board's changes (Redis: subscribed)."""

    async def new_board(self) -> None:
        self.made += 1
        label = f"b{self.made}"
        store = await self.boards.create(f"Board {label}")
        await self.watch(store, label)

    async def watch(self, store: Store, label: str) -> None:
        identity = store.identity
        board = await store.board()
        peer = None if self.peer is None else await self.peer.get(identity.slug)
        model = ModelBoard(label, store, peer, identity.slug, identity.join_code, board.title,
                           await store.seq())
        assert (board.slug, board.join_code) == (model.slug, model.code)
        model.history[model.seq] = model.snapshot()
        model.unsubscribe.append(store.subscribe(model.heard.append))
        if peer is not None:
            assert peer is not store
            model.unsubscribe.append(peer.subscribe(model.heard_peer.append))
        await self.followed(model)
        assert model.heard == [] and model.heard_peer == [], "a listener heard a change at start"
        self.live.append(model)

    def board(self, index: int) -> ModelBoard:
        return self.live[index % len(self.live)]

    def step(self, changed: ModelBoard | None) -> None:
        """After a step: `changed`'s seq went up by one, every other board's stayed; each
        board's listeners heard exactly that; the new state is recorded under the new seq."""
        if changed is not None:
            changed.seq += 1
            changed.history[changed.seq] = changed.snapshot()
        for board in self.live:
            assert self.run(board.store.seq()) == board.seq, f"{board.label}: seq moved wrongly"
            new = board.heard[board.checked:]
            assert new == ([board.seq] if board is changed else []), (
                f"{board.label} heard {new} (changed: {changed and changed.label})")
            board.checked = len(board.heard)
        if self.peer is None:
            return
        if changed is not None:
            self.run(eventually(lambda: changed.heard_peer[-1:] == [changed.seq], poll=PUBSUB_POLL,
                                what=f"the second instance to hear {changed.label}'s seq"))
        for board in self.live:  # every push has arrived, so a stray one would show by now
            new = board.heard_peer[board.checked_peer:]
            assert new == ([board.seq] if board is changed else []), (
                f"{board.label} heard {new} on the second instance")
            board.checked_peer = len(board.heard_peer)

    def expect_unchanged(self, outcome: type[Exception], coro: Coroutine[Any, Any, Any]) -> None:
        try:
            self.run(coro)
        except outcome:
            self.step(None)
            return
        raise AssertionError(f"expected {outcome.__name__}")

    # --- rules ----------------------------------------------------------------------------------

    @rule(index=st.integers(0, EXTRA_BOARDS), n=st.integers(0, 9))
    def create_feature(self, index: int, n: int) -> None:
        board = self.board(index)
        title = f"{board.label} feature {n}"
        created = self.run(board.store.create_feature(
            FeatureCreate(title), owner="ann", audience=Audience.ADMIN))
        feature = created.feature
        assert feature.id == board.next_id, "feature ids count from 1 in each board"
        assert (feature.title, feature.up, feature.down) == (title, 0, 0)
        board.next_id += 1
        board.features[feature.id] = ModelFeature(title)
        self.step(board)

    @rule(index=st.integers(0, EXTRA_BOARDS), voter=st.sampled_from(VOTERS),
          fid=st.integers(1, MAX_ID), value=st.sampled_from((1, -1, 0)))
    def vote(self, index: int, voter: str, fid: int, value: int) -> None:
        board = self.board(index)
        model = board.features.get(fid)
        vote = board.store.set_vote(voter, fid, value, audience=Audience.ADMIN)  # type: ignore[arg-type]
        if model is None:
            self.expect_unchanged(NotFound, vote)
            return
        if not board.voting_open:
            self.expect_unchanged(VotingClosed, vote)
            return
        old = model.votes.get(voter, 0)
        if value:
            model.votes[voter] = value
        else:
            model.votes.pop(voter, None)
        out = self.run(vote)
        assert out == VoteOut(fid, value, model.up, model.down, model.up - model.down)  # type: ignore[arg-type]
        self.step(board if old != value else None)

    @rule(index=st.integers(0, EXTRA_BOARDS), voting_open=st.none() | st.booleans(),
          results_hidden=st.none() | st.booleans(), rename=st.none() | st.integers(0, 2))
    def patch_board(self, index: int, voting_open: bool | None, results_hidden: bool | None,
                    rename: int | None) -> None:
        board = self.board(index)
        fields: dict[str, Any] = {}
        before = (board.title, board.voting_open, board.results_hidden)
        if voting_open is not None:
            fields["voting_open"] = board.voting_open = voting_open
        if results_hidden is not None:
            fields["results_hidden"] = board.results_hidden = results_hidden
        if rename is not None:
            fields["title"] = board.title = f"Board {board.label} ({rename})"
        out = self.run(board.store.update_board(BoardPatch(**fields)))
        assert (out.slug, out.title, out.voting_open, out.results_hidden, out.round) == (
            board.slug, board.title, board.voting_open, board.results_hidden, board.round)
        self.step(board if before != (board.title, board.voting_open, board.results_hidden)
                  else None)

    @rule(index=st.integers(0, EXTRA_BOARDS))
    def reset_round(self, index: int) -> None:
        board = self.board(index)
        standings = [(i, board.features[i].title, board.features[i].up, board.features[i].down)
                     for i in board.top()]
        board.rounds.insert(0, ModelRound(board.round, board.title, len(board.votes()),
                                          board.voters(), board.results_hidden, standings))
        for feature in board.features.values():
            feature.votes.clear()
        board.round += 1
        out = self.run(board.store.reset_board())
        assert (out.slug, out.round) == (board.slug, board.round)
        self.step(board)

    @rule(index=st.integers(0, EXTRA_BOARDS), fid=st.integers(1, MAX_ID))
    def delete_feature(self, index: int, fid: int) -> None:
        board = self.board(index)
        if fid not in board.features:
            self.expect_unchanged(NotFound, board.store.delete_feature(fid))
            return
        self.run(board.store.delete_feature(fid))
        del board.features[fid]
        self.step(board)

    @precondition(lambda self: len(self.live) > 1)
    @rule(index=st.integers(1, EXTRA_BOARDS))
    def delete_board(self, index: int) -> None:
        board = self.live[1 + (index - 1) % (len(self.live) - 1)]  # never main
        self.live.remove(board)
        self.gone.append(board)
        self.run(self.boards.delete(board.slug))
        gone = {b.slug for b in self.gone}
        # Deletion listeners hear of every deleted board and of nothing else. (The Redis
        # directory that deletes tells its listeners twice: once itself, once when its own
        # message comes back on the deletion channel; the only listener, the broadcaster's
        # close_board_later, is idempotent. So: sets, not lists.)
        assert set(self.deleted_here) == gone
        if self.peer is not None:
            self.run(eventually(lambda: set(self.deleted_peer) == gone, poll=PUBSUB_POLL,
                                what="the second instance to hear of the deletion"))
        self.step(None)  # no other board moved, and none of their listeners heard a thing

    @precondition(lambda self: len(self.live) <= EXTRA_BOARDS)
    @rule()
    def create_board(self) -> None:
        self.run(self.new_board())
        self.step(None)

    @precondition(lambda self: bool(self.gone))
    @rule(which=st.integers(0, 3))
    def change_a_deleted_board(self, which: int) -> None:
        """A request that looked a board up before its deletion changes nothing any more."""
        store = self.gone[-1].store
        changes: list[Coroutine[Any, Any, Any]] = [
            store.create_feature(FeatureCreate("late"), owner="ann"),
            store.set_vote("ann", 1, 1),
            store.update_board(BoardPatch(title="late")),
            store.reset_board(),
        ]
        for i, change in enumerate(changes):
            if i != which:
                change.close()  # never started
        self.expect_unchanged(BoardNotFound, changes[which])

    @rule()
    def main_cannot_be_deleted(self) -> None:
        self.expect_unchanged(BoardKept, self.boards.delete("main"))

    # --- every board matches its own model, and shows nothing of another's ------------------

    @invariant()
    def boards_match_their_models(self) -> None:
        self.run(self.check_all())

    async def check_all(self) -> None:
        for board in self.live:
            await self.check_directory(board)
            await self.check_stats(board)
            await self.check_features(board)
            await self.check_votes(board)
            await self.check_rounds(board)
        for board in self.gone:
            for directory in (self.boards, self.peer):
                if directory is None:
                    continue
                for find in (directory.get(board.slug), directory.by_code(board.code)):
                    try:
                        await find
                    except BoardNotFound:
                        continue
                    raise AssertionError(f"deleted board {board.label} is still found")
        assert await self.boards.count() == len(self.live)

    async def check_directory(self, board: ModelBoard) -> None:
        assert await self.boards.get(board.slug) is board.store
        assert await self.boards.by_code(board.code) is board.store
        if self.peer is not None:
            assert await self.peer.get(board.slug) is board.peer
            assert await self.peer.by_code(board.code) is board.peer
        got = await board.store.board()
        assert (got.slug, got.join_code, got.title, got.round, got.voting_open,
                got.results_hidden) == (board.slug, board.code, board.title, board.round,
                                        board.voting_open, board.results_hidden)

    async def check_stats(self, board: ModelBoard) -> None:
        stores = [board.store] if board.peer is None else [board.store, board.peer]
        for store in stores:
            admin = json.loads((await store.stats(Audience.ADMIN)).body)
            public = json.loads((await store.stats(Audience.PUBLIC)).body)
            assert admin["seq"] == public["seq"] == board.seq
            # The body of that seq is the state the model recorded for it, and no other.
            assert snapshot_of(admin) == board.history[admin["seq"]], board.label
            assert admin["board"]["slug"] == public["board"]["slug"] == board.slug
            for body in (admin, public):
                assert all(f["title"].startswith(board.label + " ") for f in body["top"])
            if board.results_hidden:
                assert (public["up"], public["down"]) == (None, None)
                assert [f["id"] for f in public["top"]] == sorted(board.features)[:TOP_N]
                assert all(f["up"] is None for f in public["top"])
            else:
                assert public == admin

    async def check_features(self, board: ModelBoard) -> None:
        store, features = board.store, board.features
        for audience in Audience:
            hidden = board.results_hidden and audience is Audience.PUBLIC
            top = await store.list_features(sort=Sort.TOP, status=None, limit=EVERYTHING,
                                            after=None, audience=audience)
            new = await store.list_features(sort=Sort.NEW, status=None, limit=EVERYTHING,
                                            after=None, audience=audience)
            assert top.next_key is None and new.next_key is None
            assert [f.id for f in top.items] == (sorted(features) if hidden else board.top())
            assert [f.id for f in new.items] == sorted(features, reverse=True)
            for item in top.items + new.items:
                model = features[item.id]
                assert item.title == model.title
                counts = (None, None) if hidden else (model.up, model.down)
                assert (item.up, item.down) == counts, (board.label, item)
        for fid in range(1, MAX_ID + 1):
            if fid in features:
                got = await store.get_feature(fid, audience=Audience.ADMIN)
                model = features[fid]
                assert (got.title, got.up, got.down) == (model.title, model.up, model.down)
                continue
            try:  # ids count from 1 on every board: another board's feature fid is not here
                await store.get_feature(fid)
            except NotFound:
                continue
            raise AssertionError(f"{board.label} shows a feature {fid} it does not have")

    async def check_votes(self, board: ModelBoard) -> None:
        for voter in VOTERS:
            expected = {fid: f.votes[voter] for fid, f in board.features.items()
                        if voter in f.votes}
            assert await board.store.votes_of(voter) == expected, (board.label, voter)

    async def check_rounds(self, board: ModelBoard) -> None:
        store = board.store
        rounds = await store.rounds()
        assert [(r.round, r.title, r.total_votes, r.voters, r.results_hidden) for r in rounds] == [
            (r.round, r.title, r.total_votes, r.voters, r.results_hidden) for r in board.rounds]
        current = await store.standings(audience=Audience.ADMIN)
        assert (current.round, current.title, current.closed_at, current.total_votes,
                current.voters) == (board.round, board.title, None, len(board.votes()),
                                    board.voters())
        assert [(f.id, f.title, f.up, f.down) for f in current.standings] == [
            (i, board.features[i].title, board.features[i].up, board.features[i].down)
            for i in board.top()]
        closed = {r.round: r for r in board.rounds}
        for n in range(1, MAX_ROUND + 1):
            if n == board.round:
                continue
            if n not in closed:
                try:  # another board's round n (or none) is not this board's
                    await store.standings(n, audience=Audience.ADMIN)
                except NotFound:
                    continue
                raise AssertionError(f"{board.label} shows a round {n} it never closed")
            archived = await store.standings(n, audience=Audience.ADMIN)
            assert archived.closed_at is not None and archived.title == closed[n].title
            assert [(f.id, f.title, f.up, f.down) for f in archived.standings] == (
                closed[n].standings)


# Bounded for a two-core CI host: about 2 s on memory, 15 s on Redis (real I/O, two instances).
BoardsMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None
)
TestMemoryBoardsIsolation = BoardsMachine.TestCase


class RedisBoardsMachine(BoardsMachine):
    """Two directories (instances) over one fresh Redis namespace."""

    def make_directories(self) -> tuple[BoardDirectory, BoardDirectory | None]:
        self.prefix = unique_prefix()

        def directory() -> RedisBoards:
            return RedisBoards(REDIS_URL, prefix=self.prefix, top_n=TOP_N,
                               socket_timeout=SLOW_MACHINE_TIMEOUT,
                               connect_timeout=SLOW_MACHINE_TIMEOUT)

        here, there = directory(), directory()
        self.run(here.start())
        self.run(there.start())
        return here, there

    async def followed(self, board: ModelBoard) -> None:
        assert isinstance(board.store, RedisStore)
        channel = board.store.channel
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            async def both_subscribed() -> bool:
                found = await client.pubsub_numsub(channel)
                return bool(found[0][1] == 2)

            both: Predicate = both_subscribed
            await eventually(both, poll=PUBSUB_POLL,
                             what=f"both instances on {board.label}'s channel")
        finally:
            await client.aclose()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            delete_namespace(REDIS_URL, self.prefix)


RedisBoardsMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None
)
TestRedisBoardsIsolation = pytest.mark.skipif(
    shared_redis_problem() is not None, reason=shared_redis_problem() or ""
)(RedisBoardsMachine.TestCase)
