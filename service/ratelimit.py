"""Rate limits by GCRA: in memory for one process, or one atomic Redis script shared by all.

This module knows no settings and no store: app.py builds the limits from the settings, and a
Redis that cannot be reached is this module's own LimiterUnavailable (503 in errors.py)."""

from __future__ import annotations

import abc
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

SECONDS_PER_MINUTE: Final = 60.0
MEMORY_MAX_KEYS: Final = 200_000

# GCRA: keep a "theoretical arrival time" per key; a request may come once now >= TAT - burst*T.
# Time is the Redis server's clock, so every instance agrees on it.
GCRA_LUA: Final = """
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local count = ARGV[3] ~= '0'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + emission
local allow_at = next_tat - burst * emission
if now < allow_at then return allow_at - now end
if not count then return 0 end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now))
return 0
"""


class LimiterUnavailable(Exception):
    """The shared counters cannot be reached; the caller may retry later (503)."""


class RateLimited(Exception):
    """Too many requests; try again after `retry_after` seconds."""

    def __init__(self, rule: str, retry_after: float) -> None:
        super().__init__(f"too many {rule} requests; try again in {math.ceil(retry_after)} s")
        self.rule = rule
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Rule:
    """`per_minute` requests a minute on average, up to `burst` at once; 0 turns it off."""

    name: str
    per_minute: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0 and self.burst > 0

    @property
    def emission(self) -> float:
        """Seconds between requests at the average rate."""
        return SECONDS_PER_MINUTE / self.per_minute


class Limiter(abc.ABC):
    """Counts hits per (rule, key); raises RateLimited when a key goes over its rule."""

    async def hit(self, rule: Rule, key: str) -> None:
        if rule.enabled:
            wait = await self._wait(rule, key)
            if wait > 0:
                raise RateLimited(rule.name, wait)

    async def blocked(self, rule: Rule, key: str) -> float:
        """Seconds until a hit would be allowed, without counting one (0.0: allowed now)."""
        return await self._wait(rule, key, count=False) if rule.enabled else 0.0

    @abc.abstractmethod
    async def _wait(self, rule: Rule, key: str, count: bool = True) -> float:
        """Seconds until this hit would be allowed (0: allowed, and counted if `count`)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryLimiter(Limiter):
    """One process's counters; least recently used keys go first when there are too many."""

    def __init__(
        self, max_keys: int = MEMORY_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tat: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    async def _wait(self, rule: Rule, key: str, count: bool = True) -> float:
        now = self._clock()
        slot = (rule.name, key)
        tat = max(self._tat.get(slot, now), now)
        next_tat = tat + rule.emission
        # (tat + emission) - burst x emission, without the round trip through the sum: with a
        # large clock value that sum rounds, and a first hit under a burst of 1 was refused.
        allow_at = tat - (rule.burst - 1) * rule.emission
        if now < allow_at:
            return allow_at - now
        if not count:
            return 0.0
        self._tat[slot] = next_tat
        self._tat.move_to_end(slot)
        if len(self._tat) > self._max_keys:
            self._tat.popitem(last=False)
        return 0.0


class RedisLimiter(Limiter):
    """Counters in Redis, so a limit holds across every instance; one script per hit."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        from redis.asyncio import Redis

        self._redis: Any = Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            retry_on_timeout=False,
        )
        self._prefix = f"{prefix}rl:"
        self._script = self._redis.register_script(GCRA_LUA)

    async def _wait(self, rule: Rule, key: str, count: bool = True) -> float:
        from redis.exceptions import RedisError

        try:
            ms = await self._script(
                keys=[f"{self._prefix}{rule.name}:{key}"],
                args=[rule.emission * 1000, rule.burst, int(count)],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"rate limits unavailable: {type(exc).__name__}") from None
        return float(ms) / 1000

    async def close(self) -> None:
        await self._redis.aclose()


def trusted_networks(
    entries: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(hop: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(hop)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(
    remote: str | None,
    forwarded_for: str | None,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> str:
    """The socket's peer; behind trusted proxies, the nearest X-Forwarded-For hop not trusted.

    Hops are read from the right: everything left of the first untrusted hop was written by
    the client and may be forged.
    """
    address = remote or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else address


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The instance's limiter and its rules."""

    limiter: Limiter
    token: Rule
    vote: Rule
    create: Rule
    ws_connect: Rule
    auth_failure: Rule = Rule("auth_failure", 0.0, 0)  # failed token verifications per address
    board_create: Rule = Rule("board_create", 0.0, 0)  # new boards per address
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def address(self, remote: str | None, forwarded_for: str | None) -> str:
        return client_address(remote, forwarded_for, self.trusted)

    async def check(self, rule: Rule, key: str) -> None:
        await self.limiter.hit(rule, key)

    async def blocked(self, rule: Rule, key: str) -> float:
        """Seconds `key` must wait before `rule` allows it again, without counting (0.0: now)."""
        return await self.limiter.blocked(rule, key)
