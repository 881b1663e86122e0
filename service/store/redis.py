"""Redis store: every mutation one Lua script; changes published so every instance pushes them.

The truth lives in Redis (data model in redis_scripts.py, reasons in ADR-005). Each instance
keeps only a cache of the encoded stats of one seq, and a pub/sub subscription that turns
changes made anywhere into listener calls here. Any Redis failure becomes StoreUnavailable
(503 + Retry-After) within a bounded time; nothing is acknowledged before Redis confirmed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec
from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..schemas import Feature, FeatureCreate, FeaturePatch, Sort, Stats, Status, VoteOut, encoder
from . import redis_scripts as lua
from .base import ChangeListener, Created, CursorKey, Page, StatsView, Store, etag_for, sort_key
from .errors import FeatureClosed, IdempotencyConflict, NotFound, StoreUnavailable

DEFAULT_IDEMPOTENCY_TTL: Final = 24 * 3600.0
# The change subscription: ping after this many quiet seconds; no answer for 3x: reconnect.
PUBSUB_KEEPALIVE: Final = 5.0
RECONNECT_MIN: Final = 0.05
RECONNECT_MAX: Final = 2.0
# Failures that mean "Redis cannot serve now": the caller gets 503 and may retry.
UNAVAILABLE: Final = (
    rex.ConnectionError,  # refused, reset, closed, pool exhausted, loading, auth
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica after a failover
    rex.OutOfMemoryError,
    rex.TryAgainError,
    rex.ClusterDownError,
    TimeoutError,  # our own deadline
    OSError,
)
_MAX_KEY: Final = 10**lua.KEY_WIDTH - 1
_FIELD_COUNT: Final = 1 + len(lua.FEATURE_FIELDS)  # id + fields, per feature in a script reply
T = TypeVar("T")
log = logging.getLogger(__name__)


def encode_key(key: CursorKey) -> str:
    """A sort key as the fixed-width member bytes of the rankings (clamped: forged cursors)."""
    return "".join(
        f"{min(max(part + lua.KEY_OFFSET, 0), _MAX_KEY):0{lua.KEY_WIDTH}d}" for part in key
    )


def _feature(row: Sequence[Any]) -> Feature:
    """(id, title, description, status, created_at, up, down) from a script or HMGET."""
    up, down = int(row[5]), int(row[6])
    return Feature(
        int(row[0]),
        row[1],
        row[2],
        Status(row[3]),
        datetime.fromisoformat(row[4]),
        up,
        down,
        up - down,
    )


def _features(flat: Sequence[Any]) -> list[Feature]:
    return [_feature(flat[i : i + _FIELD_COUNT]) for i in range(0, len(flat), _FIELD_COUNT)]


class RedisStore(Store):
    """Shared truth for any number of instances; see ADR-005."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fv:",
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = prefix
        self._top_n = top_n
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock  # wall clock: idempotency expiry must agree between instances
        # Hard bound on one call: waiting for a pooled connection, connecting, the reply.
        self._deadline = socket_timeout + 2 * connect_timeout
        # No retries: a mutation re-sent after a lost reply could apply twice (a second
        # feature); the API answers 503 instead and the client retries idempotently.
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=connect_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            client_name="feature-votes",
        )
        self._redis = Redis(connection_pool=self._pool)
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("create", lua.CREATE),
                ("update", lua.UPDATE),
                ("delete", lua.DELETE),
                ("vote", lua.VOTE),
                ("list", lua.LIST),
                ("stats", lua.STATS),
                ("raise_seq", lua.RAISE_SEQ),
            )
        }
        self._channel = prefix + "changes"
        self._listeners: list[ChangeListener] = []
        self._notified = 0  # the highest seq given to listeners
        self._stats: StatsView | None = None
        self._stats_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    # --- plumbing -------------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T], deadline: float | None = None) -> T:
        """Await one Redis operation within the deadline; failures become StoreUnavailable."""
        try:
            async with asyncio.timeout(deadline or self._deadline):
                return await awaitable
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}: {exc})") from exc

    async def _script(self, name: str, *args: str | int | float) -> Any:
        return await self._call(self._scripts[name](args=(self._prefix, *args)))

    def _notify(self, seq: int, *, force: bool = False) -> None:
        """Call listeners with a newer seq (each once, in order); `force` repeats the current."""
        if seq < self._notified or (seq == self._notified and not force):
            return
        self._notified = seq
        for listener in tuple(self._listeners):  # a listener may unsubscribe itself
            try:
                listener(seq)
            except Exception:
                log.exception("a change listener failed")

    # --- features -------------------------------------------------------------------------------

    def _idempotency_name(self, owner: str, key: str) -> str:
        # Length-prefixed: owner "a:b" + key "c" never collides with owner "a" + key "b:c".
        return f"{self._prefix}idem:{len(owner)}:{owner}:{key}"

    async def create_feature(
        self, new: FeatureCreate, *, owner: str, idempotency_key: str | None = None
    ) -> Created:
        created_at = datetime.now(UTC)
        now = self._clock()
        reply = await self._script(
            "create",
            "" if idempotency_key is None else self._idempotency_name(owner, idempotency_key),
            new.title,
            new.description,
            created_at.isoformat(),
            repr(now),
            repr(now + self._idempotency_ttl),
            max(1, round(self._idempotency_ttl * 1000)),
        )
        if reply[0] == "conflict":
            raise IdempotencyConflict("Idempotency-Key was used with another body")
        if reply[0] == "replay":
            created_at = datetime.fromisoformat(reply[2])
        feature = Feature(
            int(reply[1]), new.title, new.description, Status.OPEN, created_at, 0, 0, 0
        )
        if reply[0] == "replay":
            return Created(feature, replayed=True)
        self._notify(int(reply[2]))
        return Created(feature, replayed=False)

    async def get_feature(self, feature_id: int) -> Feature:
        row = await self._call(
            self._redis.hmget(f"{self._prefix}f:{feature_id}", list(lua.FEATURE_FIELDS))
        )
        if row[0] is None:
            raise NotFound(f"feature {feature_id} does not exist")
        return _feature([feature_id, *row])

    async def list_features(
        self, *, sort: Sort, status: Status | None, limit: int, after: CursorKey | None
    ) -> Page:
        ranking = sort.value if status is None else f"{sort.value}:{status.value}"
        start = "-" if after is None else "(" + encode_key(after)
        flat = await self._script("list", ranking, start, limit + 1, sort.value)
        items = _features(flat)
        if len(items) <= limit:
            return Page(items, None)
        del items[limit:]
        last = items[-1]
        return Page(items, sort_key(sort, last.id, last.up, last.down))

    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature:
        pairs: list[str] = []
        for name in patch.__struct_fields__:
            value = getattr(patch, name)
            if value is not msgspec.UNSET:
                pairs += [name, value.value if isinstance(value, Status) else value]
        reply = await self._script("update", str(feature_id), *pairs)
        if reply[0] == "notfound":
            raise NotFound(f"feature {feature_id} does not exist")
        if reply[0] != "same":
            self._notify(int(reply[0]))
        return _feature([feature_id, *reply[1:]])

    async def delete_feature(self, feature_id: int) -> None:
        reply = await self._script("delete", str(feature_id))
        if reply[0] == "notfound":
            raise NotFound(f"feature {feature_id} does not exist")
        self._notify(int(reply[1]))

    # --- votes ----------------------------------------------------------------------------------

    async def set_vote(self, voter: str, feature_id: int, value: int) -> VoteOut:
        reply = await self._script("vote", voter, str(feature_id), value)
        if reply[0] == "notfound":
            raise NotFound(f"feature {feature_id} does not exist")
        if reply[0] == "closed":
            raise FeatureClosed(f"feature {feature_id} is {reply[1]}; voting is closed")
        up, down, seq = int(reply[1]), int(reply[2]), int(reply[3])
        if seq:
            self._notify(seq)
        return VoteOut(feature_id, value, up, down, up - down)  # type: ignore[arg-type]

    async def votes_of(self, voter: str) -> dict[int, int]:
        mine = await self._call(self._redis.hgetall(f"{self._prefix}v:{voter}"))
        return {int(k): int(v) for k, v in mine.items()}

    # --- stats ----------------------------------------------------------------------------------

    async def _current_seq(self) -> int:
        seq = int(await self._call(self._redis.get(self._prefix + "seq")) or 0)
        if seq < self._notified:
            # Redis lost data (restart without persistence, FLUSHDB), or a reply raced a newer
            # change: the script only raises seq when it really is below what we have seen.
            seq = int(await self._script("raise_seq", self._notified))
            if seq > self._notified:
                log.error("Redis seq went back below %d: data was lost; moved on", self._notified)
        return seq

    async def stats(self) -> StatsView:
        seq = await self._current_seq()
        cached = self._stats
        if cached is not None and cached.seq == seq:
            return cached
        async with self._stats_lock:  # one build per seq, however many readers wait
            cached = self._stats
            if cached is not None and cached.seq >= seq:
                return cached
            flat = await self._script("stats", self._top_n)
            seq = int(flat[0])
            stats = Stats(
                seq=seq,
                total_features=int(flat[1]),
                total_votes=int(flat[2]) + int(flat[3]),
                up=int(flat[2]),
                down=int(flat[3]),
                voters=int(flat[4]),
                top=_features(flat[5:]),
                generated_at=datetime.now(UTC),
            )
            self._stats = StatsView(seq, encoder.encode(stats), etag_for(seq))
            return self._stats

    async def ping(self) -> None:
        await self._call(self._redis.ping())
        if self._task is not None and not self._subscribed.is_set():
            raise StoreUnavailable("the Redis change subscription is reconnecting")

    # --- cross-instance changes -----------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def start(self) -> None:
        """Subscribe to changes; wait briefly for the first sync but never fail the start."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._follow(), name="redis-changes")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._deadline):
                await self._subscribed.wait()
        if not self._subscribed.is_set():
            log.warning("Redis is not reachable yet; /readyz answers 503 until it is")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()
        await self._pool.aclose()

    @contextlib.asynccontextmanager
    async def _pubsub(self) -> AsyncIterator[PubSub]:
        # Subscribe confirmations and pongs are kept: any message proves the link is alive.
        # (redis-py 8.1 with decode_responses mangles a subscribed-mode PONG into a message of
        # type "P", which ignore_subscribe_messages would hide.)
        pubsub = self._redis.pubsub()
        try:
            yield pubsub
        finally:
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._deadline):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _follow(self) -> None:
        """Forever: subscribe, resync, relay each published seq; reconnect with backoff."""
        delay = RECONNECT_MIN
        while True:
            try:
                async with self._pubsub() as pubsub:
                    await self._call(pubsub.subscribe(self._channel))
                    # Messages published while we were away are lost: push a full snapshot.
                    self._notify(await self._current_seq(), force=True)
                    self._subscribed.set()
                    log.info("following Redis changes on %s", self._channel)
                    delay = RECONNECT_MIN
                    await self._relay(pubsub)
            except (StoreUnavailable, rex.RedisError, OSError) as exc:
                log.warning("Redis change subscription lost (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _relay(self, pubsub: PubSub) -> None:
        """Hand each published seq to the listeners; ping when quiet, give up when unanswered."""
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            message = await self._call(
                pubsub.get_message(timeout=PUBSUB_KEEPALIVE), PUBSUB_KEEPALIVE + self._deadline
            )
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    self._notify(int(message["data"]))
                continue
            if now - heard > 3 * PUBSUB_KEEPALIVE:
                raise StoreUnavailable("no answer on the change subscription")
            if now - pinged >= PUBSUB_KEEPALIVE:
                await self._call(pubsub.ping())
                pinged = now
            else:  # an early None (a message redis-py swallowed): never spin
                await asyncio.sleep(RECONNECT_MIN)
