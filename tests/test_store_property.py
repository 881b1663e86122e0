"""Random operation sequences against the store, checked after every step against a plain model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from service.schemas import CLOSED_STATUSES, FeatureCreate, FeaturePatch, Sort, Status, VoteOut
from service.store import (
    FeatureClosed,
    IdempotencyConflict,
    MemoryStore,
    NotFound,
    Store,
)

T = TypeVar("T")
VOTERS: Final = ("ann", "bob", "cat", "dan")
OWNERS: Final = ("ann", "admin")
KEYS: Final = ("k1", "k2")
TITLES: Final = ("Dark mode", "Export", "SSO", "API")
TOP_N: Final = 5
EVERYTHING: Final = 10_000
MISSING_OFFSET: Final = 1_000_000  # an id no store in this test will ever hand out


@dataclass
class ModelFeature:
    title: str
    description: str
    status: Status = Status.OPEN
    votes: dict[str, int] = field(default_factory=dict)

    @property
    def up(self) -> int:
        return sum(1 for v in self.votes.values() if v > 0)

    @property
    def down(self) -> int:
        return sum(1 for v in self.votes.values() if v < 0)


def make_store() -> Store:
    """The backend under test; the clock never moves, so idempotency keys never expire here."""
    return MemoryStore(top_n=TOP_N, clock=lambda: 0.0)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = make_store()
        self.features: dict[int, ModelFeature] = {}
        self.ever: list[int] = []  # every id handed out, deleted ones included
        self.keys: dict[tuple[str, str], tuple[str, str, int]] = {}
        self.last_seq = self.seq()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def seq(self) -> int:
        return self.run(self.store.stats()).seq

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def pick(self, index: int) -> int:
        """An id that exists, existed, or never existed."""
        if index < len(self.ever):
            return self.ever[index]
        return MISSING_OFFSET + index

    def step_seq(self, *, changed: bool) -> None:
        now = self.seq()
        assert now >= self.last_seq, f"seq went back from {self.last_seq} to {now}"
        if changed:
            assert now > self.last_seq, "a change did not bump seq"
        self.last_seq = now

    # --- rules ----------------------------------------------------------------------------------

    @rule(title=st.sampled_from(TITLES), description=st.sampled_from(("", "why")),
          owner=st.sampled_from(OWNERS), key=st.none() | st.sampled_from(KEYS))
    def create(self, title: str, description: str, owner: str, key: str | None) -> None:
        seen = self.keys.get((owner, key)) if key is not None else None
        if seen is not None and seen[:2] != (title, description):
            try:
                self.run(self.store.create_feature(
                    FeatureCreate(title, description), owner=owner, idempotency_key=key))
            except IdempotencyConflict:
                pass
            else:
                raise AssertionError("reusing a key with another body must conflict")
            self.step_seq(changed=False)
            return
        created = self.run(self.store.create_feature(
            FeatureCreate(title, description), owner=owner, idempotency_key=key))
        if seen is not None:
            assert created.replayed is True
            assert created.feature.id == seen[2]
            assert (created.feature.title, created.feature.description) == (title, description)
            self.step_seq(changed=False)
            return
        assert created.replayed is False
        feature = created.feature
        assert feature.id not in self.ever, "an id was handed out twice"
        assert (feature.title, feature.description, feature.status) == (
            title, description, Status.OPEN)
        assert (feature.up, feature.down, feature.score) == (0, 0, 0)
        self.features[feature.id] = ModelFeature(title, description)
        self.ever.append(feature.id)
        if key is not None:
            self.keys[(owner, key)] = (title, description, feature.id)
        self.step_seq(changed=True)

    @rule(voter=st.sampled_from(VOTERS), index=st.integers(0, 12),
          value=st.sampled_from((1, -1, 0)))
    def vote(self, voter: str, index: int, value: int) -> None:
        fid = self.pick(index)
        model = self.features.get(fid)
        if model is None:
            try:
                self.run(self.store.set_vote(voter, fid, value))
            except NotFound:
                self.step_seq(changed=False)
                return
            raise AssertionError(f"voting on missing feature {fid} did not raise NotFound")
        if model.status in CLOSED_STATUSES:
            try:
                self.run(self.store.set_vote(voter, fid, value))
            except FeatureClosed:
                self.step_seq(changed=False)
                return
            raise AssertionError(f"voting on a {model.status} feature did not raise")
        old = model.votes.get(voter, 0)
        seq_before = self.last_seq
        if value:
            model.votes[voter] = value
        else:
            model.votes.pop(voter, None)
        out = self.run(self.store.set_vote(voter, fid, value))
        assert out == VoteOut(fid, value, model.up, model.down, model.up - model.down)  # type: ignore[arg-type]
        self.step_seq(changed=old != value)
        if old == value:
            assert self.last_seq == seq_before, "repeating a vote bumped seq"

    @rule(index=st.integers(0, 12),
          status=st.none() | st.sampled_from(list(Status)),
          title=st.none() | st.sampled_from(TITLES))
    def patch(self, index: int, status: Status | None, title: str | None) -> None:
        fid = self.pick(index)
        fields: dict[str, Any] = {}
        if status is not None:
            fields["status"] = status
        if title is not None:
            fields["title"] = title
        patch = FeaturePatch(**fields)
        model = self.features.get(fid)
        if model is None:
            try:
                self.run(self.store.update_feature(fid, patch))
            except NotFound:
                self.step_seq(changed=False)
                return
            raise AssertionError(f"patching missing feature {fid} did not raise NotFound")
        before = (model.title, model.status)
        model.status = status if status is not None else model.status
        model.title = title if title is not None else model.title
        out = self.run(self.store.update_feature(fid, patch))
        assert (out.id, out.title, out.status, out.up, out.down) == (
            fid, model.title, model.status, model.up, model.down)
        self.step_seq(changed=before != (model.title, model.status))

    @precondition(lambda self: bool(self.ever))
    @rule(index=st.integers(0, 12))
    def delete(self, index: int) -> None:
        fid = self.pick(index)
        if fid not in self.features:
            try:
                self.run(self.store.delete_feature(fid))
            except NotFound:
                self.step_seq(changed=False)
                return
            raise AssertionError(f"deleting missing feature {fid} did not raise NotFound")
        self.run(self.store.delete_feature(fid))
        del self.features[fid]
        self.step_seq(changed=True)

    # --- the model and the store agree after every step --------------------------------------

    def expected_top(self) -> list[int]:
        return sorted(
            self.features,
            key=lambda i: (-(self.features[i].up - self.features[i].down),
                           -self.features[i].up, i),
        )

    @invariant()
    def features_match(self) -> None:
        page = self.run(self.store.list_features(
            sort=Sort.TOP, status=None, limit=EVERYTHING, after=None))
        assert page.next_key is None
        assert [f.id for f in page.items] == self.expected_top()
        for feature in page.items:
            model = self.features[feature.id]
            assert (feature.title, feature.status, feature.up, feature.down, feature.score) == (
                model.title, model.status, model.up, model.down, model.up - model.down)
            assert self.run(self.store.get_feature(feature.id)) == feature
        newest = self.run(self.store.list_features(
            sort=Sort.NEW, status=None, limit=EVERYTHING, after=None))
        assert [f.id for f in newest.items] == sorted(self.features, reverse=True)

    @invariant()
    def totals_match(self) -> None:
        view = self.run(self.store.stats())
        assert view.seq >= self.last_seq
        body = json.loads(view.body)
        all_votes = [(voter, fid, v) for fid, m in self.features.items()
                     for voter, v in m.votes.items()]
        up = sum(1 for _, _, v in all_votes if v > 0)
        down = sum(1 for _, _, v in all_votes if v < 0)
        assert body["seq"] == view.seq
        assert body["total_features"] == len(self.features)
        assert (body["total_votes"], body["up"], body["down"]) == (len(all_votes), up, down)
        assert body["voters"] == len({voter for voter, _, _ in all_votes})
        assert [f["id"] for f in body["top"]] == self.expected_top()[:TOP_N]

    @invariant()
    def votes_of_match(self) -> None:
        for voter in VOTERS:
            expected = {fid: m.votes[voter] for fid, m in self.features.items()
                        if voter in m.votes}
            assert self.run(self.store.votes_of(voter)) == expected


StoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestStoreAgainstModel = StoreMachine.TestCase
