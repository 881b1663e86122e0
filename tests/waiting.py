"""Waiting for a condition instead of for a fixed time: tests that hold on a busy CI host."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

T = TypeVar("T")
# Long enough for a loaded two-core CI machine; a condition that holds returns at once.
DEFAULT_TIMEOUT: Final = 10.0
POLL: Final = 0.01


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    within: float = DEFAULT_TIMEOUT,
    *,
    what: str = "the condition",
    poll: float = POLL,
) -> T:
    """The first truthy value of predicate (sync or async) within `within` seconds, or fail."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within:.1f}s (last: {value!r})")
        await asyncio.sleep(poll)


def eventually_sync(
    predicate: Callable[[], T],
    within: float = DEFAULT_TIMEOUT,
    *,
    what: str = "the condition",
    poll: float = POLL,
) -> T:
    """eventually() for code outside an event loop (subprocess start-up, files)."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within:.1f}s (last: {value!r})")
        time.sleep(poll)
