"""The store interface every backend fills, so handlers never know which one runs."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Final, NamedTuple

from ..schemas import Feature, FeatureCreate, FeaturePatch, Sort, Status, VoteOut

# A position in a listing: the sort key of the last item returned.
CursorKey = tuple[int, ...]
ChangeListener = Callable[[int], None]
KEY_LENGTH: Final = {Sort.TOP: 3, Sort.NEW: 1}


def sort_key(sort: Sort, feature_id: int, up: int, down: int) -> CursorKey:
    """Ascending key of the contract's orders: top = score desc, up desc, id asc; new = id desc."""
    if sort is Sort.TOP:
        return (down - up, -up, feature_id)
    return (-feature_id,)


class Page(NamedTuple):
    items: list[Feature]
    next_key: CursorKey | None


class Created(NamedTuple):
    feature: Feature
    replayed: bool  # True when an Idempotency-Key matched an earlier identical request


class StatsView(NamedTuple):
    """Stats of one seq, encoded once and shared by every reader until the next change."""

    seq: int
    body: bytes
    etag: str


def etag_for(seq: int) -> str:
    # Weak: instances sharing a store agree on seq but not on generated_at.
    return f'W/"{seq}"'


class Store(abc.ABC):
    """Features, one vote per (voter, feature), and cached stats; every mutation atomic."""

    @abc.abstractmethod
    async def create_feature(
        self, new: FeatureCreate, *, owner: str, idempotency_key: str | None = None
    ) -> Created: ...

    @abc.abstractmethod
    async def get_feature(self, feature_id: int) -> Feature: ...

    @abc.abstractmethod
    async def list_features(
        self, *, sort: Sort, status: Status | None, limit: int, after: CursorKey | None
    ) -> Page: ...

    @abc.abstractmethod
    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature: ...

    @abc.abstractmethod
    async def delete_feature(self, feature_id: int) -> None: ...

    @abc.abstractmethod
    async def set_vote(self, voter: str, feature_id: int, value: int) -> VoteOut:
        """Set the voter's vote to +1/-1, or retract it with 0; repeating is a no-op."""

    @abc.abstractmethod
    async def votes_of(self, voter: str) -> dict[int, int]: ...

    @abc.abstractmethod
    async def stats(self) -> StatsView: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot answer."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work (e.g. a change subscription); default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections and stop background work; the default has none."""

    @abc.abstractmethod
    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call listener(seq) after every change; returns the unsubscribe function."""
