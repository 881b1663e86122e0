"""The rate limiter's own failures (issue 14): ratelimit.py imports neither the settings nor the
store, and shared counters that cannot be reached are its own LimiterUnavailable, which the
problem mapping turns into 503 + Retry-After like any store outage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.app import create_app, rate_limits_from_settings
from service.ratelimit import LimiterUnavailable, RedisLimiter, Rule
from service.store import MemoryStore

from .conftest import AiohttpClient, make_settings

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_ratelimit_imports_no_settings_and_no_store() -> None:
    code = (
        "import sys, service.ratelimit as r; "
        "print(sorted(m for m in sys.modules if m.startswith('service.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "['service.ratelimit']", loaded


async def test_an_unreachable_redis_limiter_raises_its_own_error() -> None:
    limiter = RedisLimiter(
        UNREACHABLE, prefix="t:", socket_timeout=0.5, connect_timeout=0.5, max_connections=2
    )
    try:
        with pytest.raises(LimiterUnavailable, match="rate limits unavailable"):
            await limiter.hit(Rule("token", 60, 5), "1.2.3.4")
    finally:
        await limiter.close()


def test_the_limits_follow_the_store_setting() -> None:
    assert type(rate_limits_from_settings(make_settings()).limiter).__name__ == "MemoryLimiter"
    limits = rate_limits_from_settings(make_settings(store=UNREACHABLE))
    assert isinstance(limits.limiter, RedisLimiter)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/auth/token"), ("GET", "/ws")]
)
async def test_unreachable_limits_are_a_503_with_retry_after(
    aiohttp_client: AiohttpClient, method: str, path: str
) -> None:
    # The store is a memory one; the limits are shared through a Redis that is not there.
    settings = make_settings(
        store=UNREACHABLE,
        token_rate=60.0,
        ws_connect_rate=60.0,
        redis_socket_timeout=0.5,
        redis_connect_timeout=0.5,
    )
    client = await aiohttp_client(create_app(settings, store=MemoryStore()))
    resp = await client.request(method, path)
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert resp.content_type == "application/problem+json"
    assert "rate limits unavailable" in (await resp.json())["detail"]
