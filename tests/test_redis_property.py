"""The store property test's model, run against the Redis store (fewer examples: real I/O)."""

from __future__ import annotations

import pytest
from hypothesis import settings

from .redis_support import TestRedisStore, shared_redis_problem
from .test_store_property import TOP_N, StoreMachine

pytestmark = pytest.mark.skipif(
    shared_redis_problem() is not None, reason=shared_redis_problem() or ""
)


class RedisStoreMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.run(self.store.close())  # the parent's memory store
        self.store = TestRedisStore(top_n=TOP_N, clock=lambda: 0.0)
        self.run(self.store.start())
        self.last_seq = self.seq()


RedisStoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestRedisStoreAgainstModel = RedisStoreMachine.TestCase
