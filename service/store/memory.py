"""In-memory store: one asyncio.Lock, incremental counts and rankings, stats cached per seq."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import secrets
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, islice
from typing import Final

import msgspec
from sortedcontainers import SortedList

from ..schemas import (
    CLOSED_STATUSES,
    DEFAULT_BOARD,
    Board,
    BoardPatch,
    CastVote,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Stats,
    Status,
    VoteOut,
    VoteValue,
)
from .base import (
    DEFAULT_MAX_BOARDS,
    DEFAULT_MAX_FEATURES,
    KEY_LENGTH,
    MAIN,
    Audience,
    BoardDirectory,
    BoardPage,
    ChangeListener,
    Created,
    CursorKey,
    Identity,
    Page,
    StatsView,
    Store,
    full_board,
    new_join_code,
    new_slug,
    sort_key,
)
from .errors import (
    BoardKept,
    BoardNotFound,
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    TooManyBoards,
    TooManyFeatures,
    VotingClosed,
)
from .visibility import hides_order, masked, stats_views, visible

DEFAULT_IDEMPOTENCY_TTL: Final = 24 * 3600.0

# The top order's index holds each key (down - up, -up, id) packed into one int,
# (down - up) * 2^128 + (-up) * 2^64 + id, so a vote's remove + add in the sorted list compares
# ints, not tuples. With -up in [-2^63, 2^63) and id in [0, 2^64) (far beyond any board) the int
# order is the tuple order. Cursors keep the tuple form (sort_key, the API's contract):
# _top_bound translates one into the index, _top_key makes one from a feature.
_ID_MASK: Final = (1 << 64) - 1
_NEG_UP_MIN: Final = -(1 << 63)
_NEG_UP_MAX: Final = (1 << 63) - 1


def _top_int(feature_id: int, up: int, down: int) -> int:
    """sort_key(Sort.TOP, ...) packed into one int of the same order."""
    return ((down - up) << 128) + ((-up) << 64) + feature_id


def _top_bound(key: CursorKey) -> int:
    """The packed form of the greatest valid key <= a top cursor key, whatever ints it holds:
    the index's keys above it are exactly those whose tuple key is above the cursor."""
    score, neg_up, feature_id = key
    if feature_id < 0:
        neg_up, feature_id = neg_up - 1, _ID_MASK
    elif feature_id > _ID_MASK:
        feature_id = _ID_MASK
    if neg_up < _NEG_UP_MIN:
        score, neg_up, feature_id = score - 1, _NEG_UP_MAX, _ID_MASK
    elif neg_up > _NEG_UP_MAX:
        neg_up, feature_id = _NEG_UP_MAX, _ID_MASK
    return (score << 128) + (neg_up << 64) + feature_id


# What a status with no feature yet reads from (never written: _index makes a status's own).
_NO_TOP: SortedList[int] = SortedList()
_NO_NEW: SortedList[CursorKey] = SortedList()


@dataclass(slots=True)
class _Record:
    id: int
    title: str
    description: str
    status: Status
    created_at: datetime
    up: int = 0
    down: int = 0

    def view(self) -> Feature:
        return Feature(
            self.id,
            self.title,
            self.description,
            self.status,
            self.created_at,
            self.up,
            self.down,
            self.up - self.down,
        )


class MemoryStore(Store):
    """One process's truth; lost on restart, not shared between instances (see ADR-002)."""

    def __init__(
        self,
        *,
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_features: int = DEFAULT_MAX_FEATURES,
        clock: Callable[[], float] = time.monotonic,
        identity: Identity = MAIN,
        title: str = DEFAULT_BOARD.title,
        epoch: str | None = None,
    ) -> None:
        self.identity = identity
        # This process's data: nothing survives it, so every start is a new epoch.
        self.epoch = epoch or secrets.token_hex(8)
        self._lock = asyncio.Lock()
        self._top_n = top_n
        self._max_features = max_features
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock
        self._features: dict[int, _Record] = {}
        # sort=top: one sorted list of packed keys (_top_int) per status, each feature in its
        # status's list only, so a vote moves one key in one list. A status's ranking is its
        # list; the whole board's is the (at most five) lists merged from the cursor on, reading
        # at most a page from each: O(log n + page) either way, never a walk past features of
        # other statuses. These lists are only iterated (iter, irange), never indexed by
        # position, so SortedList never builds its positional index, which every add and
        # remove (every vote) would then have to update.
        # A status's lists are made when its first feature is indexed (_index; reads use .get):
        # an empty SortedList is ~300 bytes, and a new board has no feature in any status.
        self._top: defaultdict[Status, SortedList[int]] = defaultdict(SortedList)
        # sort=new (no vote moves it): (-id,) keys of the whole board and of each status.
        self._new: SortedList[CursorKey] = SortedList()
        self._new_by_status: defaultdict[Status, SortedList[CursorKey]] = defaultdict(SortedList)
        self._by_feature: dict[int, dict[str, CastVote]] = {}
        self._by_voter: dict[str, dict[int, CastVote]] = {}
        self._idempotency: OrderedDict[tuple[str, str], tuple[tuple[str, str], Feature, float]]
        self._idempotency = OrderedDict()
        self._next_id = 1
        self._seq = 0
        self._up = 0
        self._down = 0
        self._stats: tuple[StatsView, StatsView] | None = None  # (public, admin) of this seq
        # sort=wilson|controversial: sorted keys per (sort, status), computed once per seq.
        self._orders: dict[tuple[Sort, Status | None], list[CursorKey]] = {}
        self._board = msgspec.structs.replace(DEFAULT_BOARD, title=title, **identity._asdict())
        self.touched = clock()  # the clock at the last change (board_idle_ttl)
        self.deleted = False  # set by the directory under the lock: no change applies after it
        self._rounds: dict[int, tuple[RoundSummary, list[Feature]]] = {}
        self._listeners: list[ChangeListener] = []

    # --- helpers; all synchronous so a change is applied with no await in between ------------

    def _record(self, feature_id: int) -> _Record:
        rec = self._features.get(feature_id)
        if rec is None:
            raise NotFound(f"feature {feature_id} does not exist")
        return rec

    def _unindex(self, rec: _Record) -> None:
        self._top[rec.status].remove(_top_int(rec.id, rec.up, rec.down))
        self._new.remove((-rec.id,))
        self._new_by_status[rec.status].remove((-rec.id,))

    def _index(self, rec: _Record) -> None:
        self._top[rec.status].add(_top_int(rec.id, rec.up, rec.down))
        self._new.add((-rec.id,))
        self._new_by_status[rec.status].add((-rec.id,))

    def _top_keys(
        self, status: Status | None, after: CursorKey | None, count: int | None
    ) -> list[int]:
        """The first `count` (None: all) packed top keys of a scope after a cursor key, in order.

        The whole board: the first `count` of each status's list, sorted together (the lists
        are sorted runs, which sorted() merges in C, faster than heapq.merge in Python).
        """
        if status is not None:
            lists = [self._top.get(status, _NO_TOP)]
        else:
            lists = [t for t in self._top.values() if t]
        bound = None if after is None else _top_bound(after)
        runs = [
            iter(t) if bound is None else t.irange(minimum=bound, inclusive=(False, True))
            for t in lists
        ]
        if len(runs) == 1:
            return list(islice(runs[0], count))
        return sorted(chain.from_iterable(islice(run, count) for run in runs))[:count]

    def _top_key(self, rec: _Record) -> CursorKey:
        return sort_key(Sort.TOP, rec.id, rec.up, rec.down)

    def _ranking(self) -> list[Feature]:
        """The whole board in top order."""
        return [self._features[key & _ID_MASK].view() for key in self._top_keys(None, None, None)]

    def rename(self, identity: Identity) -> None:
        """Give a store made on its own (a test's, or main) the identity its directory chose."""
        self.identity = identity
        self._board = msgspec.structs.replace(self._board, **identity._asdict())

    async def mark_deleted(self) -> None:
        """The directory deletes this board: after this step no change applies to it."""
        async with self._lock:
            self.deleted = True

    @property
    def current_board(self) -> Board:
        return self._board

    def _live(self) -> None:
        """Under the lock, before any change: a deleted board takes none (a request that looked
        it up before the delete may still hold it)."""
        if self.deleted:
            raise BoardNotFound(f"board {self.identity.slug!r} was deleted")

    def _changed(self) -> None:
        self.touched = self._clock()
        self._seq += 1
        self._stats = None
        self._orders.clear()
        for listener in tuple(self._listeners):  # a listener may unsubscribe itself
            listener(self._seq)

    def _expire_idempotency(self) -> None:
        now = self._clock()
        while self._idempotency:
            _, (_, _, expires) = next(iter(self._idempotency.items()))
            if expires > now:
                break
            self._idempotency.popitem(last=False)

    # --- features ---------------------------------------------------------------------------

    def _shown(self, feature: Feature, audience: Audience) -> Feature:
        return visible(feature, self._board.results_hidden, audience)

    async def create_feature(
        self,
        new: FeatureCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        audience: Audience = Audience.PUBLIC,
    ) -> Created:
        async with self._lock:
            self._live()
            fingerprint = (new.title, new.description)
            if idempotency_key is not None:
                self._expire_idempotency()
                seen = self._idempotency.get((owner, idempotency_key))
                if seen is not None:
                    if seen[0] != fingerprint:
                        raise IdempotencyConflict("Idempotency-Key was used with another body")
                    return Created(self._shown(seen[1], audience), replayed=True)
            if len(self._features) >= self._max_features:
                raise TooManyFeatures(full_board(self._max_features))
            rec = _Record(self._next_id, new.title, new.description, Status.OPEN, datetime.now(UTC))
            self._next_id += 1
            self._features[rec.id] = rec
            self._index(rec)
            self._by_feature[rec.id] = {}
            feature = rec.view()
            if idempotency_key is not None:
                expires = self._clock() + self._idempotency_ttl
                self._idempotency[(owner, idempotency_key)] = (fingerprint, feature, expires)
            self._changed()
            return Created(self._shown(feature, audience), replayed=False)

    async def get_feature(
        self, feature_id: int, *, audience: Audience = Audience.PUBLIC
    ) -> Feature:
        return self._shown(self._record(feature_id).view(), audience)

    async def list_features(
        self,
        *,
        sort: Sort,
        status: Status | None,
        limit: int,
        after: CursorKey | None,
        audience: Audience = Audience.PUBLIC,
    ) -> Page:
        new = self._new if status is None else self._new_by_status.get(status, _NO_NEW)
        if hides_order(sort, self._board.results_hidden, audience):
            return self._page_by_id(new, limit, after)
        if after is not None and len(after) != KEY_LENGTH[sort]:
            # A cursor made while results were hidden, i.e. (id,): go on after that feature's
            # place now, or from the start if it is gone (a live ranking moves anyway).
            rec = self._features.get(after[-1])
            after = None if rec is None else sort_key(sort, rec.id, rec.up, rec.down)
        if sort is Sort.TOP:
            found = self._top_keys(status, after, limit + 1)
            recs = [self._features[key & _ID_MASK] for key in found[:limit]]
            shown = [self._shown(r.view(), audience) for r in recs]
            return Page(shown, self._top_key(recs[-1]) if len(found) > limit and recs else None)
        keys: Sequence[CursorKey] = new if sort is Sort.NEW else self._ranked(sort, status)
        start = 0 if after is None else bisect.bisect_right(keys, after)
        page = list(islice(keys, start, start + limit))
        items = [self._features[-key[0] if sort is Sort.NEW else key[-1]].view() for key in page]
        items = [self._shown(f, audience) for f in items]  # sort=new is not hidden, its counts are
        more = start + len(page) < len(keys)
        return Page(items, page[-1] if more and page else None)

    def _ranked(self, sort: Sort, status: Status | None) -> list[CursorKey]:
        """wilson/controversial keys of one scope, sorted once per seq (O(n log n))."""
        keys = self._orders.get((sort, status))
        if keys is None:
            recs = self._features.values()
            keys = sorted(
                sort_key(sort, r.id, r.up, r.down)
                for r in recs
                if status is None or r.status is status
            )
            self._orders[(sort, status)] = keys
        return keys

    def _page_by_id(self, keys: SortedList[CursorKey], limit: int, after: CursorKey | None) -> Page:
        """Id ascending with counts null: a ranked listing as a non-admin sees it while hidden.

        keys: the scope's sort=new keys, (-id,) ascending: id descending, read backwards here.
        """
        stop = len(keys) if after is None else keys.bisect_left((-after[-1],))
        start = max(0, stop - limit)
        page = list(keys.islice(start, stop, reverse=True))
        items = [masked(self._features[-key[0]].view()) for key in page]
        return Page(items, (-page[-1][0],) if start > 0 and page else None)

    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature:
        async with self._lock:
            self._live()
            rec = self._record(feature_id)
            changes = {
                name: getattr(patch, name)
                for name in patch.__struct_fields__
                if getattr(patch, name) is not msgspec.UNSET
            }
            if not changes or all(getattr(rec, k) == v for k, v in changes.items()):
                return rec.view()
            self._unindex(rec)
            for name, value in changes.items():
                setattr(rec, name, value)
            self._index(rec)
            self._changed()
            return rec.view()

    async def delete_feature(self, feature_id: int) -> None:
        async with self._lock:
            self._live()
            rec = self._record(feature_id)
            self._unindex(rec)
            del self._features[feature_id]
            for voter, value in self._by_feature.pop(feature_id).items():
                self._forget_voter_vote(voter, feature_id)
                if value > 0:
                    self._up -= 1
                else:
                    self._down -= 1
            self._changed()

    # --- votes ------------------------------------------------------------------------------

    def _forget_voter_vote(self, voter: str, feature_id: int) -> None:
        mine = self._by_voter[voter]
        del mine[feature_id]
        if not mine:
            del self._by_voter[voter]

    async def set_vote(
        self,
        voter: str,
        feature_id: int,
        value: VoteValue,
        *,
        audience: Audience = Audience.PUBLIC,
    ) -> VoteOut:
        async with self._lock:
            self._live()
            rec = self._record(feature_id)
            if not self._board.voting_open:
                raise VotingClosed("voting is closed; the presenter has locked the board")
            if rec.status in CLOSED_STATUSES:
                raise FeatureClosed(f"feature {feature_id} is {rec.status}; voting is closed")
            votes = self._by_feature[feature_id]
            old = votes.get(voter, 0)
            if old != value:
                # Only the top order depends on counts: move one key in one sorted list.
                old_key = _top_int(rec.id, rec.up, rec.down)
                up_delta = (value > 0) - (old > 0)
                down_delta = (value < 0) - (old < 0)
                rec.up += up_delta
                rec.down += down_delta
                self._up += up_delta
                self._down += down_delta
                top = self._top[rec.status]
                top.remove(old_key)
                top.add(_top_int(rec.id, rec.up, rec.down))
                if value:
                    votes[voter] = value
                    self._by_voter.setdefault(voter, {})[feature_id] = value
                else:
                    del votes[voter]
                    self._forget_voter_vote(voter, feature_id)
                self._changed()
            out = VoteOut(feature_id, value, rec.up, rec.down, rec.up - rec.down)
            return visible(out, self._board.results_hidden, audience)

    async def votes_of(self, voter: str) -> dict[int, CastVote]:
        return dict(self._by_voter.get(voter, {}))

    # --- stats ------------------------------------------------------------------------------

    async def seq(self) -> int:
        return self._seq

    async def stats(self, audience: Audience = Audience.PUBLIC) -> StatsView:
        if self._stats is None:
            self._stats = self._build_stats()
        return self._stats[audience is Audience.ADMIN]

    async def stats_by_audience(self) -> dict[Audience, StatsView]:
        if self._stats is None:
            self._stats = self._build_stats()
        return {Audience.PUBLIC: self._stats[0], Audience.ADMIN: self._stats[1]}

    def _build_stats(self) -> tuple[StatsView, StatsView]:
        """Both audiences' views of this seq; one shared view unless results are hidden."""
        seq, board = self._seq, self._board
        first = self._top_keys(None, None, self._top_n)
        top = [self._features[key & _ID_MASK].view() for key in first]
        stats = Stats(
            seq=seq,
            total_features=len(self._features),
            total_votes=self._up + self._down,
            up=self._up,
            down=self._down,
            voters=len(self._by_voter),
            top=top,
            generated_at=datetime.now(UTC),
            board=board,
            epoch=self.epoch,
        )
        new = self._new  # the first top_n by id ascending: the end of the id-desc order
        by_id = new.islice(max(0, len(new) - self._top_n), len(new), reverse=True)
        return stats_views(stats, (self._features[-k[0]].view() for k in by_id))

    # --- the board ----------------------------------------------------------------------------

    async def board(self) -> Board:
        return self._board

    async def update_board(self, patch: BoardPatch) -> Board:
        async with self._lock:
            self._live()
            changes = {
                name: getattr(patch, name)
                for name in patch.__struct_fields__
                if getattr(patch, name) is not msgspec.UNSET
            }
            board = msgspec.structs.replace(self._board, **changes)
            if board != self._board:
                self._board = board
                self._changed()
            return self._board

    async def reset_board(self) -> Board:
        async with self._lock:
            self._live()
            board = self._board
            standings = self._ranking()
            summary = RoundSummary(
                round=board.round,
                title=board.title,
                closed_at=datetime.now(UTC),
                total_votes=self._up + self._down,
                voters=len(self._by_voter),
                results_hidden=board.results_hidden,
            )
            self._rounds[board.round] = (summary, standings)
            for rec in self._features.values():
                if rec.up or rec.down:
                    self._unindex(rec)
                    rec.up = rec.down = 0
                    self._index(rec)
            self._by_feature = {feature_id: {} for feature_id in self._features}
            self._by_voter = {}
            self._up = self._down = 0
            self._board = msgspec.structs.replace(board, round=board.round + 1)
            self._changed()
            return self._board

    async def rounds(self) -> list[RoundSummary]:
        return [self._rounds[n][0] for n in sorted(self._rounds, reverse=True)]

    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        board = self._board
        if round_no is None or round_no == board.round:
            current = Standings(
                round=board.round,
                title=board.title,
                closed_at=None,
                results_hidden=board.results_hidden,
                total_votes=self._up + self._down,
                voters=len(self._by_voter),
                standings=self._ranking(),
            )
            return visible(current, board.results_hidden, audience)
        archived = self._rounds.get(round_no)
        if archived is None:
            raise NotFound(f"round {round_no} does not exist")
        summary, features = archived
        closed = Standings(
            round=summary.round,
            title=summary.title,
            closed_at=summary.closed_at,
            results_hidden=summary.results_hidden,
            total_votes=summary.total_votes,
            voters=summary.voters,
            standings=list(features),
        )
        return visible(closed, summary.results_hidden, audience)

    async def ping(self) -> None:
        return None

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe


class MemoryBoards(BoardDirectory):
    """Every board of this process: a MemoryStore each, found by slug or join code."""

    def __init__(
        self,
        main: MemoryStore | None = None,
        *,
        max_boards: int = DEFAULT_MAX_BOARDS,
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_features: int = DEFAULT_MAX_FEATURES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._make = functools.partial(
            MemoryStore,
            top_n=top_n,
            idempotency_ttl=idempotency_ttl,
            max_features=max_features,
            clock=clock,
        )
        self._clock = clock
        self._max_boards = max_boards
        if main is None:
            main = self._make(identity=Identity(MAIN.slug, new_join_code(), datetime.now(UTC)))
        elif not main.identity.join_code:  # a store made on its own: give it a code
            main.rename(Identity(MAIN.slug, new_join_code(), datetime.now(UTC)))
        self._main = main
        self.epoch = main.epoch  # every board of this process shares its epoch
        self._make = functools.partial(self._make, epoch=self.epoch)
        self._boards: dict[str, MemoryStore] = {main.slug: main}  # in the order made
        self._codes: dict[str, str] = {main.identity.join_code: main.slug}
        self._made: dict[str, int] = {main.slug: 0}  # slug -> its position in the order made
        self._next_position = 1

    @property
    def main(self) -> MemoryStore:
        return self._main

    async def get(self, slug: str) -> MemoryStore:
        store = self._boards.get(slug)
        if store is None:
            raise BoardNotFound(f"board {slug!r} does not exist")
        return store

    async def by_code(self, code: str) -> MemoryStore:
        slug = self._codes.get(code)
        if slug is None:
            raise BoardNotFound(f"no board has the join code {code!r}")
        return self._boards[slug]

    async def create(self, title: str) -> MemoryStore:
        # No await between the checks and the insert: one step on the event loop.
        if len(self._boards) >= self._max_boards:
            raise TooManyBoards(f"this deployment holds {self._max_boards} boards, its max_boards")
        slug, code = new_slug(), new_join_code()
        while slug in self._boards:  # 80 random bits: never in practice
            slug = new_slug()
        while code in self._codes:
            code = new_join_code()
        identity = Identity(slug, code, datetime.now(UTC))
        store = self._make(identity=identity, title=title)
        self._boards[slug] = store
        self._codes[code] = slug
        self._made[slug] = self._next_position
        self._next_position += 1
        return store

    async def delete(self, slug: str) -> None:
        if slug == MAIN.slug:
            raise BoardKept("the default board (main) cannot be deleted")
        store = await self.get(slug)
        await store.mark_deleted()
        self._forget(store)

    def _forget(self, store: MemoryStore) -> None:
        """A deleted board leaves the directory: nobody finds it, its sockets are told."""
        if self._boards.pop(store.slug, None) is None:  # another delete won meanwhile
            return
        self._made.pop(store.slug, None)
        self._codes.pop(store.identity.join_code, None)
        self._announce_deleted(store.slug)

    async def listing(self, *, limit: int, after: str | None) -> BoardPage:
        """In the order made; the cursor is the position the last one was made at, so a page
        goes on after it even when that board was deleted meanwhile."""
        slugs = list(self._boards)  # insertion order: positions ascending
        start = 0
        if after is not None:
            try:
                position = int(after)
            except ValueError:
                position = len(self._made) + 1 << 62  # not ours: nothing after it
            start = bisect.bisect_right([self._made[s] for s in slugs], position)
        page = slugs[start : start + limit]
        items = [self._boards[s].current_board for s in page]
        more = start + limit < len(slugs)
        return BoardPage(items, str(self._made[page[-1]]) if more and page else None)

    def position_of(self, slug: str) -> int:
        """Where a board comes in the order boards were made (main: 0)."""
        return self._made[slug]

    async def count(self) -> int:
        return len(self._boards)

    async def expire_idle(self, idle_for: float) -> list[str]:
        cutoff = self._clock() - idle_for
        idle = [s for s, b in self._boards.items() if s != MAIN.slug and b.touched <= cutoff]
        for slug in idle:
            with contextlib.suppress(BoardNotFound):
                await self.delete(slug)
        return idle
