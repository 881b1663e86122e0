"""The default per-address budgets: a room of 1,000 behind one NAT joins within 30 s.

Voter tokens (POST /auth/token) and new WebSockets (/ws): every open page holds one socket.

Modelled on the limiter itself (service/ratelimit.py MemoryLimiter) with a clock the test
moves, and the token rule exactly as the app builds it from the code's defaults (ADR-011).
"""

from __future__ import annotations

import heapq
import math
import random
import re
from dataclasses import replace
from typing import Final

import pytest

from service.app import create_app, rate_limits_from_settings
from service.config import Settings
from service.ratelimit import MemoryLimiter, RateLimited, Rule

from .browser import ROOT
from .conftest import AiohttpClient, make_settings

ROOM = 1_000
JOIN_WITHIN = 30.0  # seconds
ADDRESS = "203.0.113.7"  # the conference's one NAT address
UPGRADE: Final = {
    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


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


# --- /ws: the same room's screens -------------------------------------------------------------

LIVE_JS: Final = ROOT / "web" / "static" / "js" / "live.js"


def live_js_backoff() -> tuple[float, float]:
    """(base, ceiling) of the page's reconnect backoff in seconds, read from live.js itself."""
    source = LIVE_JS.read_text(encoding="utf-8")

    def constant(name: str) -> float:
        found = re.search(rf"const {name} = ([\d_]+);", source)
        assert found, f"{name} not found in {LIVE_JS}"
        return int(found.group(1).replace("_", "")) / 1000

    return constant("BASE_DELAY_MS"), constant("MAX_DELAY_MS")


def next_attempt_after(attempt: int, rng: random.Random) -> float:
    """live.js's scheduleReconnect: min(ceiling, base * 2^attempt), "equal jitter" below it."""
    base, ceiling = live_js_backoff()
    top = min(ceiling, base * 2**attempt)
    return top / 2 + rng.random() * (top / 2)


def default_ws_rule() -> Rule:
    """The /ws connect rule of an app started with the defaults."""
    return rate_limits_from_settings(Settings()).ws_connect


def test_the_ws_defaults_cover_the_room_by_the_time_the_backoff_tops_out() -> None:
    """A refused upgrade gives the browser no Retry-After: it retries on live.js's backoff,
    which reaches its ceiling (15 s) after five retries and then waits up to 15 s more. The
    room must fit before that last wait, or its last screens connect past 30 s."""
    rule = default_ws_rule()
    _, ceiling = live_js_backoff()
    assert rule.enabled
    assert ceiling <= JOIN_WITHIN / 2
    assert rule.burst + rule.per_minute / 60 * ceiling >= ROOM
    assert rule.per_minute >= default_token_rule().per_minute  # a page holding a token has a socket


async def test_a_thousand_screens_arriving_over_thirty_seconds_all_connect() -> None:
    clock = Clock()
    limiter, rule = MemoryLimiter(clock=clock), default_ws_rule()
    refused = []
    for i in range(ROOM):
        clock.now = i * JOIN_WITHIN / ROOM
        if await granted(limiter, rule):
            refused.append(i)
    assert refused == []


@pytest.mark.parametrize("seed", range(20))
async def test_a_thousand_screens_at_once_on_the_pages_backoff_connect_within_thirty_seconds(
    seed: int,
) -> None:
    """The room opens the page together (or a restart drops every socket at once); each
    refused page retries when live.js would (jitter drawn from a seeded generator)."""
    rng = random.Random(seed)
    clock = Clock()
    limiter, rule = MemoryLimiter(clock=clock), default_ws_rule()
    waiting = [(0.0, screen, 0) for screen in range(ROOM)]  # (next try, who, failed attempts)
    heapq.heapify(waiting)
    connected_at: list[float] = []
    while waiting:
        clock.now, screen, attempt = heapq.heappop(waiting)
        if await granted(limiter, rule):
            retry_at = clock.now + next_attempt_after(attempt, rng)
            heapq.heappush(waiting, (retry_at, screen, attempt + 1))
        else:
            connected_at.append(clock.now)
    assert len(connected_at) == ROOM
    last = max(connected_at)
    assert last <= JOIN_WITHIN, f"seed {seed}: the last screen connected at {last:.1f} s"
    assert sum(1 for t in connected_at if t == 0.0) == rule.burst  # the rest were refused first


async def test_a_thousand_upgrades_from_one_address_through_the_ws_handler(
    aiohttp_client: AiohttpClient,
) -> None:
    """The real /ws handler with the default rule, its limiter on a test clock: one address's
    1,000 upgrades spread over 30 s all get 101; another address's 201st at one instant gets 429."""
    defaults = Settings()
    settings = make_settings(
        ws_connect_rate=defaults.ws_connect_rate,
        ws_connect_burst=defaults.ws_connect_burst,
        trusted_proxies=("127.0.0.1",),  # so X-Forwarded-For names the client address
    )
    clock = Clock()
    limits = replace(rate_limits_from_settings(settings), limiter=MemoryLimiter(clock=clock))
    app = create_app(settings, rate_limits=limits)
    client = await aiohttp_client(app)

    async def upgrade(address: str) -> int:
        resp = await client.get("/ws", headers={**UPGRADE, "X-Forwarded-For": address})
        status = resp.status
        resp.close()
        return status

    statuses = []
    for i in range(ROOM):
        clock.now = i * JOIN_WITHIN / ROOM
        statuses.append(await upgrade(ADDRESS))
    assert statuses == [101] * ROOM
    at_once = [await upgrade("198.51.100.1") for _ in range(defaults.ws_connect_burst + 1)]
    assert at_once == [101] * defaults.ws_connect_burst + [429]
