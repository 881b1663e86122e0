"""In-memory store: one asyncio.Lock, incremental counts and rankings, stats cached per seq."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Final

import msgspec
from sortedcontainers import SortedList

from ..schemas import (
    CLOSED_STATUSES,
    DEFAULT_BOARD,
    Board,
    BoardPatch,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Stats,
    Status,
    VoteOut,
    encoder,
)
from .base import (
    KEY_LENGTH,
    Audience,
    ChangeListener,
    Created,
    CursorKey,
    Page,
    StatsView,
    Store,
    etag_for,
    hides,
    hides_order,
    masked,
    masked_vote,
    public_standings,
    sort_key,
)
from .errors import FeatureClosed, IdempotencyConflict, NotFound, VotingClosed

DEFAULT_IDEMPOTENCY_TTL: Final = 24 * 3600.0


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


class _Index:
    """Both orders of one scope (all features, or one status) as sorted keys."""

    __slots__ = ("new", "top")

    def __init__(self) -> None:
        self.top: SortedList[CursorKey] = SortedList()
        self.new: SortedList[CursorKey] = SortedList()

    def add(self, rec: _Record) -> None:
        self.top.add(sort_key(Sort.TOP, rec.id, rec.up, rec.down))
        self.new.add(sort_key(Sort.NEW, rec.id, rec.up, rec.down))

    def discard(self, rec: _Record) -> None:
        self.top.remove(sort_key(Sort.TOP, rec.id, rec.up, rec.down))
        self.new.remove(sort_key(Sort.NEW, rec.id, rec.up, rec.down))

    def get(self, sort: Sort) -> SortedList[CursorKey]:
        return self.top if sort is Sort.TOP else self.new


class MemoryStore(Store):
    """One process's truth; lost on restart, not shared between instances (see ADR-002)."""

    def __init__(
        self,
        *,
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = asyncio.Lock()
        self._top_n = top_n
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock
        self._features: dict[int, _Record] = {}
        self._all = _Index()
        self._by_status = {status: _Index() for status in Status}
        self._by_feature: dict[int, dict[str, int]] = {}
        self._by_voter: dict[str, dict[int, int]] = {}
        self._idempotency: OrderedDict[tuple[str, str], tuple[tuple[str, str], Feature, float]]
        self._idempotency = OrderedDict()
        self._next_id = 1
        self._seq = 0
        self._up = 0
        self._down = 0
        self._stats: tuple[StatsView, StatsView] | None = None  # (public, admin) of this seq
        # sort=wilson|controversial: sorted keys per (sort, status), computed once per seq.
        self._orders: dict[tuple[Sort, Status | None], list[CursorKey]] = {}
        self._board = DEFAULT_BOARD
        self._rounds: dict[int, tuple[RoundSummary, list[Feature]]] = {}
        self._listeners: list[ChangeListener] = []

    # --- helpers; all synchronous so a change is applied with no await in between ------------

    def _record(self, feature_id: int) -> _Record:
        rec = self._features.get(feature_id)
        if rec is None:
            raise NotFound(f"feature {feature_id} does not exist")
        return rec

    def _unindex(self, rec: _Record) -> None:
        self._all.discard(rec)
        self._by_status[rec.status].discard(rec)

    def _index(self, rec: _Record) -> None:
        self._all.add(rec)
        self._by_status[rec.status].add(rec)

    def _changed(self) -> None:
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
        return masked(feature) if hides(self._board.results_hidden, audience) else feature

    async def create_feature(
        self,
        new: FeatureCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        audience: Audience = Audience.PUBLIC,
    ) -> Created:
        async with self._lock:
            fingerprint = (new.title, new.description)
            if idempotency_key is not None:
                self._expire_idempotency()
                seen = self._idempotency.get((owner, idempotency_key))
                if seen is not None:
                    if seen[0] != fingerprint:
                        raise IdempotencyConflict("Idempotency-Key was used with another body")
                    return Created(self._shown(seen[1], audience), replayed=True)
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
        index = self._all if status is None else self._by_status[status]
        if hides_order(sort, self._board.results_hidden, audience):
            return self._page_by_id(index, limit, after)
        keys: Sequence[CursorKey]
        keys = index.get(sort) if sort in (Sort.TOP, Sort.NEW) else self._ranked(sort, status)
        if after is not None and len(after) != KEY_LENGTH[sort]:
            # A cursor made while results were hidden, i.e. (id,): go on after that feature's
            # place now, or from the start if it is gone (a live ranking moves anyway).
            rec = self._features.get(after[-1])
            after = None if rec is None else sort_key(sort, rec.id, rec.up, rec.down)
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

    def _page_by_id(self, index: _Index, limit: int, after: CursorKey | None) -> Page:
        """Id ascending with counts null: a ranked listing as a non-admin sees it while hidden."""
        keys = index.new  # (-id,) ascending: id descending, read backwards here
        stop = len(keys) if after is None else keys.bisect_left((-after[-1],))
        start = max(0, stop - limit)
        page = list(keys.islice(start, stop, reverse=True))
        items = [masked(self._features[-key[0]].view()) for key in page]
        return Page(items, (-page[-1][0],) if start > 0 and page else None)

    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature:
        async with self._lock:
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
        self, voter: str, feature_id: int, value: int, *, audience: Audience = Audience.PUBLIC
    ) -> VoteOut:
        async with self._lock:
            rec = self._record(feature_id)
            if not self._board.voting_open:
                raise VotingClosed("voting is closed; the presenter has locked the board")
            if rec.status in CLOSED_STATUSES:
                raise FeatureClosed(f"feature {feature_id} is {rec.status}; voting is closed")
            votes = self._by_feature[feature_id]
            old = votes.get(voter, 0)
            if old != value:
                # Only the top order depends on counts: move one key in two sorted lists.
                old_key = sort_key(Sort.TOP, rec.id, rec.up, rec.down)
                up_delta = (value > 0) - (old > 0)
                down_delta = (value < 0) - (old < 0)
                rec.up += up_delta
                rec.down += down_delta
                self._up += up_delta
                self._down += down_delta
                new_key = sort_key(Sort.TOP, rec.id, rec.up, rec.down)
                for top in (self._all.top, self._by_status[rec.status].top):
                    top.remove(old_key)
                    top.add(new_key)
                if value:
                    votes[voter] = value
                    self._by_voter.setdefault(voter, {})[feature_id] = value
                else:
                    del votes[voter]
                    self._forget_voter_vote(voter, feature_id)
                self._changed()
            out = VoteOut(feature_id, value, rec.up, rec.down, rec.up - rec.down)  # type: ignore[arg-type]
            return masked_vote(out) if hides(self._board.results_hidden, audience) else out

    async def votes_of(self, voter: str) -> dict[int, int]:
        return dict(self._by_voter.get(voter, {}))

    # --- stats ------------------------------------------------------------------------------

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
        top = [self._features[key[-1]].view() for key in self._all.top.islice(0, self._top_n)]
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
        )
        if not board.results_hidden:
            view = StatsView(seq, encoder.encode(stats), etag_for(seq))
            return view, view
        new = self._all.new  # the first top_n by id ascending: the end of the id-desc order
        first = new.islice(max(0, len(new) - self._top_n), len(new), reverse=True)
        hidden = msgspec.structs.replace(
            stats, up=None, down=None, top=[masked(self._features[-k[0]].view()) for k in first]
        )
        return (
            StatsView(seq, encoder.encode(hidden), etag_for(seq, Audience.PUBLIC)),
            StatsView(seq, encoder.encode(stats), etag_for(seq, Audience.ADMIN)),
        )

    # --- the board ----------------------------------------------------------------------------

    async def board(self) -> Board:
        return self._board

    async def update_board(self, patch: BoardPatch) -> Board:
        async with self._lock:
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
            board = self._board
            standings = [self._features[key[-1]].view() for key in self._all.top]
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
            features = [self._features[key[-1]].view() for key in self._all.top]
            if hides(board.results_hidden, audience):
                features = public_standings(features)
            return Standings(
                round=board.round,
                title=board.title,
                closed_at=None,
                results_hidden=board.results_hidden,
                total_votes=self._up + self._down,
                voters=len(self._by_voter),
                standings=features,
            )
        archived = self._rounds.get(round_no)
        if archived is None:
            raise NotFound(f"round {round_no} does not exist")
        summary, features = archived
        if hides(summary.results_hidden, audience):
            features = public_standings(features)
        return Standings(
            round=summary.round,
            title=summary.title,
            closed_at=summary.closed_at,
            results_hidden=summary.results_hidden,
            total_votes=summary.total_votes,
            voters=summary.voters,
            standings=list(features),
        )

    async def ping(self) -> None:
        return None

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
