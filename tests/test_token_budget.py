"""The default voter-token budget per address: a room of 1,000 behind one NAT joins within 30 s.

Modelled on the limiter itself (service/ratelimit.py MemoryLimiter) with a clock the test
moves, and the token rule exactly as the app builds it from the code's defaults (ADR-011).
"""

from __future__ import annotations

import math

import pytest

from service.app import rate_limits_from_settings
from service.config import Settings
from service.ratelimit import MemoryLimiter, RateLimited, Rule

ROOM = 1_000
JOIN_WITHIN = 30.0  # seconds
ADDRESS = "203.0.113.7"  # the conference's one NAT address


class Clock:
    """A clock the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def default_token_rule() -> Rule:
    """The token rule of an app started with the defaults."""
    return rate_limits_from_settings(Settings()).token


async def granted(limiter: MemoryLimiter, rule: Rule, address: str = ADDRESS) -> float:
    """0 when a token request is granted now, else the Retry-After it would get (seconds)."""
    try:
        await limiter.hit(rule, address)
    except RateLimited as exc:
        return exc.retry_after
    return 0.0


async def granted_to(limiter: MemoryLimiter, rule: Rule, address: str) -> bool:
    return await granted(limiter, rule, address) == 0.0


def test_the_defaults_cover_a_room_of_a_thousand_in_thirty_seconds() -> None:
    rule = default_token_rule()
    assert rule.enabled
    assert rule.burst + rule.per_minute / 60 * JOIN_WITHIN >= ROOM


async def test_a_thousand_arrivals_spread_over_thirty_seconds_are_all_granted() -> None:
    clock = Clock()
    limiter, rule = MemoryLimiter(clock=clock), default_token_rule()
    refused = []
    for i in range(ROOM):
        clock.now = i * JOIN_WITHIN / ROOM
        if await granted(limiter, rule):
            refused.append(i)
    assert refused == []


async def test_a_thousand_at_once_all_have_a_token_within_thirty_seconds() -> None:
    """Everyone opens the page the moment the link is shown; whoever gets 429 retries after
    the Retry-After it was given (rounded up to whole seconds, as the header says)."""
    clock = Clock()
    limiter, rule = MemoryLimiter(clock=clock), default_token_rule()
    waiting = [0.0] * ROOM  # when each one tries next
    joined_at: list[float] = []
    while waiting:
        waiting.sort()
        clock.now = waiting.pop(0)
        retry_after = await granted(limiter, rule)
        if retry_after:
            waiting.append(clock.now + math.ceil(retry_after))
        else:
            joined_at.append(clock.now)
    assert len(joined_at) == ROOM
    assert max(joined_at) <= JOIN_WITHIN
    assert sum(1 for t in joined_at if t == 0.0) == rule.burst  # the rest waited their turn


async def test_beyond_the_budget_one_address_gets_429() -> None:
    """In 30 s one address gets burst + rate x 30 s tokens, not one more: the 1,000 of the room
    and about a hundred to spare, then 429 with a Retry-After."""
    clock = Clock()
    limiter, rule = MemoryLimiter(clock=clock), default_token_rule()
    for i in range(ROOM):
        clock.now = i * JOIN_WITHIN / ROOM
        assert await granted(limiter, rule) == 0.0
    clock.now = JOIN_WITHIN
    extra = 0
    while await granted(limiter, rule) == 0.0:
        extra += 1
        assert extra <= rule.burst  # bounded: the budget is finite
    budget = rule.burst + rule.per_minute / 60 * JOIN_WITHIN
    assert ROOM + extra == pytest.approx(budget, abs=1)
    retry_after = await granted(limiter, rule)
    assert 0 < retry_after <= 60 / rule.per_minute  # the next one in 1/30 s
    assert await granted_to(limiter, rule, "198.51.100.1")  # another address: its own budget
