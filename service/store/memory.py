"""In-memory store: one asyncio.Lock, incremental counts and rankings, stats cached per seq."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Final

import msgspec
from sortedcontainers import SortedList

from ..schemas import (
    CLOSED_STATUSES,
    Feature,
    FeatureCreate,
    FeaturePatch,
    Sort,
    Stats,
    Status,
    VoteOut,
    encoder,
)
from .base import ChangeListener, Created, CursorKey, Page, StatsView, Store, etag_for, sort_key
from .errors import FeatureClosed, IdempotencyConflict, NotFound

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
        self._stats: StatsView | None = None
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

    async def create_feature(
        self, new: FeatureCreate, *, owner: str, idempotency_key: str | None = None
    ) -> Created:
        async with self._lock:
            fingerprint = (new.title, new.description)
            if idempotency_key is not None:
                self._expire_idempotency()
                seen = self._idempotency.get((owner, idempotency_key))
                if seen is not None:
                    if seen[0] != fingerprint:
                        raise IdempotencyConflict("Idempotency-Key was used with another body")
                    return Created(seen[1], replayed=True)
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
            return Created(feature, replayed=False)

    async def get_feature(self, feature_id: int) -> Feature:
        return self._record(feature_id).view()

    async def list_features(
        self, *, sort: Sort, status: Status | None, limit: int, after: CursorKey | None
    ) -> Page:
        keys = (self._all if status is None else self._by_status[status]).get(sort)
        start = 0 if after is None else keys.bisect_right(after)
        page = list(islice(keys.islice(start), limit))
        items = [self._features[key[-1] if sort is Sort.TOP else -key[0]].view() for key in page]
        more = start + len(page) < len(keys)
        return Page(items, page[-1] if more and page else None)

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

    async def set_vote(self, voter: str, feature_id: int, value: int) -> VoteOut:
        async with self._lock:
            rec = self._record(feature_id)
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
            return VoteOut(feature_id, value, rec.up, rec.down, rec.up - rec.down)  # type: ignore[arg-type]

    async def votes_of(self, voter: str) -> dict[int, int]:
        return dict(self._by_voter.get(voter, {}))

    # --- stats ------------------------------------------------------------------------------

    async def stats(self) -> StatsView:
        if self._stats is None:
            top = [self._features[key[-1]].view() for key in self._all.top.islice(0, self._top_n)]
            stats = Stats(
                seq=self._seq,
                total_features=len(self._features),
                total_votes=self._up + self._down,
                up=self._up,
                down=self._down,
                voters=len(self._by_voter),
                top=top,
                generated_at=datetime.now(UTC),
            )
            self._stats = StatsView(self._seq, encoder.encode(stats), etag_for(self._seq))
        return self._stats

    async def ping(self) -> None:
        return None

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
