"""Redis store: every mutation one Lua script; changes published so every instance pushes them.

The truth lives in Redis (data model in redis_scripts.py, reasons in ADR-005). Each instance
keeps only a cache of the encoded stats of one seq, and a pub/sub subscription that turns
changes made anywhere into listener calls here. Any Redis failure becomes StoreUnavailable
(503 + Retry-After) within a bounded time; nothing is acknowledged before Redis confirmed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec
from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..schemas import (
    DEFAULT_BOARD,
    Board,
    BoardPatch,
    CastVote,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Stats,
    Status,
    VoteOut,
    VoteValue,
)
from . import redis_scripts as lua
from .base import (
    DEFAULT_MAX_BOARDS,
    DEFAULT_MAX_FEATURES,
    KEY_LENGTH,
    MAIN,
    Audience,
    BoardDirectory,
    BoardPage,
    ChangeListener,
    Created,
    CursorKey,
    Identity,
    Page,
    StatsView,
    Store,
    full_board,
    new_join_code,
    new_slug,
    sort_key,
)
from .errors import (
    BoardKept,
    BoardNotFound,
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    TooManyBoards,
    TooManyFeatures,
    VotingClosed,
)
from .visibility import stats_views, visible

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


def decode_key(member: str) -> CursorKey:
    """A ranking member back to its sort key: the cursor is exactly what Redis ordered by."""
    width = lua.KEY_WIDTH
    return tuple(int(member[i : i + width]) - lua.KEY_OFFSET for i in range(0, len(member), width))


def _board(
    identity: Identity, title: Any, round_no: Any, voting_open: Any, results_hidden: Any
) -> Board:
    """The board from its hash fields (str, or None when unset: the default)."""
    return Board(
        title or DEFAULT_BOARD.title,
        int(round_no or DEFAULT_BOARD.round),
        voting_open != "0",
        results_hidden == "1",
        *identity,
    )


_summary_decoder: Final = msgspec.json.Decoder(tuple[str, str, str, str, str, bool])
_rows_decoder: Final = msgspec.json.Decoder(list[list[str]] | dict[str, str])


def _summary(raw: str) -> RoundSummary:
    round_no, title, closed_at, total_votes, voters, hidden = _summary_decoder.decode(raw)
    return RoundSummary(
        int(round_no),
        title,
        datetime.fromisoformat(closed_at),
        int(total_votes),
        int(voters),
        hidden,
    )


def _archived_rows(raw: str) -> list[Feature]:
    rows = _rows_decoder.decode(raw)
    return [_feature(row) for row in rows] if isinstance(rows, list) else []


SCRIPTS: Final = {
    "create": lua.CREATE,
    "update": lua.UPDATE,
    "delete": lua.DELETE,
    "vote": lua.VOTE,
    "list": lua.LIST,
    "get": lua.GET,
    "migrate": lua.MIGRATE,
    "stats": lua.STATS,
    "update_board": lua.UPDATE_BOARD,
    "reset": lua.RESET,
    "standings": lua.STANDINGS,
    "raise_seq": lua.RAISE_SEQ,
    "init_board": lua.INIT_BOARD,
    "mark_gone": lua.MARK_GONE,
    "register_board": lua.REGISTER_BOARD,
    "unregister_board": lua.UNREGISTER_BOARD,
}


def board_prefix(prefix: str, slug: str) -> str:
    """Every key of a board starts with this: the hash tag keeps them in one cluster slot."""
    return f"{prefix}{{b:{slug}}}:"


class RedisLink:
    """One instance's connections to one Redis, shared by every board it serves: a command
    pool, the scripts, and one subscription connection that carries the change channel of each
    board this instance follows (subscribed on its first listener, unsubscribed after its last)
    and the directory's deletion channel."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fv:",
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
    ) -> None:
        self.prefix = prefix
        # Hard bound on one call: waiting for a pooled connection, connecting, the reply.
        self.deadline = socket_timeout + 2 * connect_timeout
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
        self.redis = Redis(connection_pool=self._pool)
        self._scripts = {name: self.redis.register_script(src) for name, src in SCRIPTS.items()}
        self.deleted_channel = prefix + "boards:deleted"
        self._watched: dict[str, RedisStore] = {}  # change channel -> the board's store
        self._fresh: set[str] = set()  # channels newly watched on the live subscription
        self._deletion_listeners: list[Callable[[str], None]] = []
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._pubsub: PubSub | None = None  # the live subscription, while there is one
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()

    @property
    def following(self) -> bool:
        return self._task is not None

    async def call(self, awaitable: Awaitable[T], deadline: float | None = None) -> T:
        """Await one Redis operation within the deadline; failures become StoreUnavailable."""
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(deadline or self.deadline):
                result = await awaitable
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}: {exc})") from exc
        if task is not None and task.cancelling() > cancelling:
            # redis-py 8.1 may finish a command whose task was cancelled meanwhile and return
            # normally, dropping the CancelledError; the canceller (e.g. the broadcaster's
            # stop() at shutdown) would then wait forever. Cancellation wins.
            raise asyncio.CancelledError
        return result

    async def script(self, name: str, prefix: str, *args: str | int | float) -> Any:
        """Run a script on the keys under `prefix` (one board's, or the directory's); the first
        key names the slot, so a cluster client routes it to the node that owns them."""
        return await self.call(self._scripts[name](keys=[prefix], args=(prefix, *args)))

    # --- the subscription ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def watch(self, store: RedisStore) -> None:
        """Follow a board's changes (its first listener)."""
        self._watched[store.channel] = store
        if self._pubsub is not None:
            self._fresh.add(store.channel)
            self._spawn(self._send(self._pubsub.subscribe, store.channel))

    def unwatch(self, store: RedisStore) -> None:
        """Stop following a board (its last listener left)."""
        if self._watched.get(store.channel) is store:
            del self._watched[store.channel]
            if self._pubsub is not None:
                self._spawn(self._send(self._pubsub.unsubscribe, store.channel))

    async def _send(self, command: Callable[[str], Awaitable[Any]], channel: str) -> None:
        # Only sent here; the confirmation arrives in _relay (which resyncs a new channel). A
        # failure here is the connection's: _follow notices it, reconnects and subscribes all.
        with contextlib.suppress(StoreUnavailable, rex.RedisError, OSError, AttributeError):
            # (AttributeError: redis-py's PubSub whose connection is already gone)
            await self.call(command(channel))

    def on_deleted(self, listener: Callable[[str], None]) -> None:
        self._deletion_listeners.append(listener)

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Called after each (re)subscription: messages published meanwhile were lost."""
        self._reconnect_listeners.append(listener)

    async def start(self) -> None:
        """Subscribe; wait briefly for the first sync but never fail the start."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._follow(), name="redis-changes")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.deadline):
                await self.subscribed.wait()
        if not self.subscribed.is_set():
            log.warning("Redis is not reachable yet; /readyz answers 503 until it is")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._side_tasks):
            task.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        await self.redis.aclose()
        await self._pool.aclose()

    @contextlib.asynccontextmanager
    async def _subscription(self) -> AsyncIterator[PubSub]:
        """A subscription on a connection of its own that redis-py never reconnects by itself."""
        # redis-py's PubSub runs its retry's failure handler even with zero retries, and that
        # handler reconnects and re-subscribes; the store would then close that connection in
        # its own cleanup, and a change published in between is delivered but its resync is
        # skipped (subscribers 0 -> 1 -> 0). A Retry that supports no error never calls the
        # handler: a failure surfaces here and _follow alone reconnects, always with a resync.
        pool = ConnectionPool(
            connection_class=self._pool.connection_class,
            max_connections=1,
            **{
                **self._pool.connection_kwargs,
                "retry": Retry(NoBackoff(), 0, supported_errors=()),
            },
        )
        # Subscribe confirmations and pongs are kept: any message proves the link is alive.
        # (redis-py 8.1 with decode_responses mangles a subscribed-mode PONG into a message of
        # type "P", which ignore_subscribe_messages would hide.)
        pubsub = PubSub(pool)
        try:
            yield pubsub
        finally:
            self._pubsub = None
            self._fresh.clear()
            self.subscribed.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.deadline):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await pool.aclose()

    async def _follow(self) -> None:
        """Forever: subscribe, resync, relay each published seq; reconnect with backoff."""
        delay = RECONNECT_MIN
        while True:
            try:
                async with self._subscription() as pubsub:
                    await self.call(pubsub.subscribe(self.deleted_channel, *self._watched))
                    self._pubsub = pubsub
                    for listener in tuple(self._reconnect_listeners):
                        listener()
                    self.subscribed.set()
                    log.info("following Redis changes under %s", self.prefix)
                    delay = RECONNECT_MIN
                    await self._relay(pubsub)
            except (StoreUnavailable, rex.RedisError, OSError) as exc:
                log.warning("Redis change subscription lost (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message.get("channel")
        if kind == "message":
            if channel == self.deleted_channel:
                for listener in tuple(self._deletion_listeners):
                    listener(str(message["data"]))
                return
            store = self._watched.get(channel)  # type: ignore[arg-type]
            if store is not None:
                store.notify(int(message["data"]))
        elif kind == "subscribe":
            store = self._watched.get(channel)  # type: ignore[arg-type]
            if store is not None:
                # Messages published before this confirmation never reached us: listeners get
                # the current seq if it is newer; after a reconnect, even if it is not (what
                # they built from may be stale).
                fresh = channel in self._fresh
                self._fresh.discard(channel)
                self._spawn(store.resync(force=not fresh))

    async def _relay(self, pubsub: PubSub) -> None:
        """Hand each published seq to its board; ping when quiet, give up when unanswered."""
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            message = await self.call(
                pubsub.get_message(timeout=PUBSUB_KEEPALIVE), PUBSUB_KEEPALIVE + self.deadline
            )
            now = loop.time()
            if message is not None:
                heard = now
                self._dispatch(message)
                continue
            if now - heard > 3 * PUBSUB_KEEPALIVE:
                raise StoreUnavailable("no answer on the change subscription")
            if now - pinged >= PUBSUB_KEEPALIVE:
                await self.call(pubsub.ping())
                pinged = now
            else:  # an early None (a message redis-py swallowed): never spin
                await asyncio.sleep(RECONNECT_MIN)


class RedisStore(Store):
    """One board's shared truth for any number of instances; see ADR-005 and ADR-012.

    Made on its own (a URL), it is the default board over a link of its own; a RedisBoards
    directory makes one per board over the link they all share."""

    def __init__(
        self,
        url: str | None = None,
        *,
        link: RedisLink | None = None,
        identity: Identity = MAIN,
        prefix: str = "fv:",
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_features: int = DEFAULT_MAX_FEATURES,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.deleted = False  # set when this instance hears of the board's deletion
        self._owns_link = link is None
        if link is None:
            if url is None:
                raise ValueError("a RedisStore needs a URL or a link")
            link = RedisLink(
                url,
                prefix=prefix,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                max_connections=max_connections,
            )
        self.link = link
        self._prefix = board_prefix(link.prefix, identity.slug)
        self._top_n = top_n
        self._max_features = max_features
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock  # wall clock: idempotency expiry must agree between instances
        self._redis = link.redis
        self.channel = self._prefix + "changes"
        self._listeners: list[ChangeListener] = []
        self._notified = 0  # the highest seq given to listeners
        self._stats: tuple[StatsView, StatsView] | None = None  # (public, admin) of one seq
        self._stats_lock = asyncio.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T], deadline: float | None = None) -> T:
        return await self.link.call(awaitable, deadline)

    async def _script(self, name: str, *args: str | int | float) -> Any:
        reply = await self.link.script(name, self._prefix, *args)
        if isinstance(reply, list) and reply[:1] == ["noboard"]:
            raise BoardNotFound(f"board {self.identity.slug!r} was deleted")
        return reply

    def notify(self, seq: int) -> None:
        """A seq published on this board's channel (by any instance)."""
        self._notify(seq)

    async def resync(self, *, force: bool = True) -> None:
        """After (re)subscribing: tell listeners the current seq (`force`: even if they have
        it)."""
        delay = RECONNECT_MIN
        while True:
            try:
                self._notify(await self._current_seq(), force=force)
                return
            except StoreUnavailable as exc:  # e.g. a pooled connection Redis closed meanwhile
                if not self.link.subscribed.is_set():
                    return  # the link reconnects, and resyncs again then
                log.warning("could not resync board %s yet: %s", self.identity.slug, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

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
        self,
        new: FeatureCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        audience: Audience = Audience.PUBLIC,
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
            self._max_features,
        )
        if reply[0] == "full":
            raise TooManyFeatures(full_board(self._max_features))
        if reply[0] == "conflict":
            raise IdempotencyConflict("Idempotency-Key was used with another body")
        if reply[0] == "replay":
            created_at = datetime.fromisoformat(reply[2])
        feature = Feature(
            int(reply[1]), new.title, new.description, Status.OPEN, created_at, 0, 0, 0
        )
        feature = visible(feature, reply[3] == 1, audience)
        if reply[0] == "replay":
            return Created(feature, replayed=True)
        self._notify(int(reply[2]))
        return Created(feature, replayed=False)

    async def get_feature(
        self, feature_id: int, *, audience: Audience = Audience.PUBLIC
    ) -> Feature:
        row = await self._script("get", str(feature_id))
        if row[1] is None:
            raise NotFound(f"feature {feature_id} does not exist")
        feature = _feature([feature_id, *row[1:]])
        return visible(feature, row[0] == 1, audience)

    async def list_features(
        self,
        *,
        sort: Sort,
        status: Status | None,
        limit: int,
        after: CursorKey | None,
        audience: Audience = Audience.PUBLIC,
    ) -> Page:
        scope = "" if status is None else f":{status.value}"
        if sort is not Sort.NEW and after is not None and len(after) != KEY_LENGTH[sort]:
            # A cursor made while results were hidden, i.e. (id,): go on after that feature's
            # place now, or from the start if it is gone (a live ranking moves anyway).
            try:
                current = await self.get_feature(after[-1], audience=Audience.ADMIN)
                after = sort_key(sort, current.id, current.up or 0, current.down or 0)
            except NotFound:
                after = None
        start = "-" if after is None else "(" + encode_key(after)
        by_id = "+" if after is None else "(" + encode_key((-after[-1],))
        flat = await self._script(
            "list",
            sort.value + scope,
            start,
            limit + 1,
            sort.value,
            "1" if audience is Audience.PUBLIC else "0",
            "new" + scope,
            by_id,
        )
        hidden, in_id_order = flat[0] == 1, flat[1] == 1
        stride = 1 + _FIELD_COUNT
        rows = [flat[i : i + stride] for i in range(2, len(flat), stride)]
        more = len(rows) > limit
        del rows[limit:]
        items = visible([_feature(row[1:]) for row in rows], hidden, audience)
        if not more or not rows:
            return Page(items, None)
        last = decode_key(rows[-1][0])
        return Page(items, (-last[0],) if in_id_order else last)

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

    async def set_vote(
        self,
        voter: str,
        feature_id: int,
        value: VoteValue,
        *,
        audience: Audience = Audience.PUBLIC,
    ) -> VoteOut:
        reply = await self._script("vote", voter, str(feature_id), value)
        if reply[0] == "notfound":
            raise NotFound(f"feature {feature_id} does not exist")
        if reply[0] == "locked":
            raise VotingClosed("voting is closed; the presenter has locked the board")
        if reply[0] == "closed":
            raise FeatureClosed(f"feature {feature_id} is {reply[1]}; voting is closed")
        up, down, seq = int(reply[1]), int(reply[2]), int(reply[3])
        if seq:
            self._notify(seq)
        out = VoteOut(feature_id, value, up, down, up - down)
        return visible(out, reply[4] == 1, audience)

    async def votes_of(self, voter: str) -> dict[int, CastVote]:
        mine = await self._call(self._redis.hgetall(f"{self._prefix}v:{voter}"))
        return {int(k): 1 if int(v) > 0 else -1 for k, v in mine.items()}  # stored "1" / "-1"

    # --- stats ----------------------------------------------------------------------------------

    async def _current_seq(self) -> int:
        seq = int(await self._call(self._redis.get(self._prefix + "seq")) or 0)
        floor = self._notified
        if seq < floor:
            # Redis lost data (restart without persistence, FLUSHDB), or this reply raced a newer
            # change: the script raises seq only when it really is below what we have seen, and
            # says whether it did, so a mere race is not reported as data loss.
            seq, raised = (int(x) for x in await self._script("raise_seq", floor))
            if raised:
                log.error("Redis seq went back below %d: data was lost; moved on", floor)
        return seq

    async def seq(self) -> int:
        return await self._current_seq()

    async def stats(self, audience: Audience = Audience.PUBLIC) -> StatsView:
        return (await self._stats_views())[audience is Audience.ADMIN]

    async def stats_by_audience(self) -> dict[Audience, StatsView]:
        public, admin = await self._stats_views()
        return {Audience.PUBLIC: public, Audience.ADMIN: admin}

    async def _stats_views(self) -> tuple[StatsView, StatsView]:
        cached = self._stats
        if cached is not None and cached[0].seq < self._notified:
            # A change we were told of (ours or another instance's) is newer than the cache, as
            # for every push: build at once, without first asking Redis for its seq. A reply
            # below the notified seq (Redis lost data) takes the checked path below.
            async with self._stats_lock:
                cached = self._stats
                if cached is not None and cached[0].seq >= self._notified:
                    return cached
                built = self._build_stats(
                    await self._script("stats", self._top_n, secrets.token_hex(8))
                )
                if built[0].seq >= self._notified:
                    self._stats = built
                    return built
        seq = await self._current_seq()
        cached = self._stats
        if cached is not None and cached[0].seq == seq:
            return cached
        async with self._stats_lock:  # one build per seq, however many readers wait
            cached = self._stats
            if cached is not None and cached[0].seq >= seq:
                return cached
            flat = await self._script("stats", self._top_n, secrets.token_hex(8))
            self._stats = self._build_stats(flat)
            return self._stats

    def _build_stats(self, flat: Sequence[Any]) -> tuple[StatsView, StatsView]:
        """Both audiences' views from one STATS reply; one shared view unless results are hidden."""
        epoch, flat = str(flat[0]), flat[1:]
        seq = int(flat[0])
        board = _board(self.identity, *flat[5:9])
        top_end = 10 + int(flat[9]) * _FIELD_COUNT
        stats = Stats(
            seq=seq,
            total_features=int(flat[1]),
            total_votes=int(flat[2]) + int(flat[3]),
            up=int(flat[2]),
            down=int(flat[3]),
            voters=int(flat[4]),
            top=_features(flat[10:top_end]),
            generated_at=datetime.now(UTC),
            board=board,
            epoch=epoch,
        )
        return stats_views(stats, _features(flat[top_end:]))

    # --- the board ------------------------------------------------------------------------------

    async def board(self) -> Board:
        row = await self._call(
            self._redis.hmget(
                self._prefix + "board", ["title", "round", "voting_open", "results_hidden"]
            )
        )
        return _board(self.identity, *row)

    async def update_board(self, patch: BoardPatch) -> Board:
        pairs: list[str] = []
        for name in patch.__struct_fields__:
            value = getattr(patch, name)
            if value is not msgspec.UNSET:
                pairs += [name, ("1" if value else "0") if isinstance(value, bool) else value]
        reply = await self._script("update_board", DEFAULT_BOARD.title, *pairs)
        if reply[0] != "same":
            self._notify(int(reply[0]))
        return _board(self.identity, *reply[1:5])

    async def reset_board(self) -> Board:
        closed_at = datetime.now(UTC).isoformat()
        reply = await self._script("reset", closed_at, DEFAULT_BOARD.title)
        self._notify(int(reply[0]))
        return _board(self.identity, *reply[1:5])

    async def rounds(self) -> list[RoundSummary]:
        found = await self._call(self._redis.hgetall(self._prefix + "rounds"))
        return sorted((_summary(str(raw)) for raw in found.values()), key=lambda r: -r.round)

    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        reply = await self._script("standings", "" if round_no is None else str(round_no))
        if reply[0] == "notfound":
            raise NotFound(f"round {round_no} does not exist")
        if reply[0] == "archived":
            summary = _summary(reply[1])
            closed = Standings(
                round=summary.round,
                title=summary.title,
                closed_at=summary.closed_at,
                results_hidden=summary.results_hidden,
                total_votes=summary.total_votes,
                voters=summary.voters,
                standings=_archived_rows(reply[2]),
            )
            return visible(closed, summary.results_hidden, audience)
        board = _board(self.identity, *reply[1:5])
        current = Standings(
            round=board.round,
            title=board.title,
            closed_at=None,
            results_hidden=board.results_hidden,
            total_votes=int(reply[5]) + int(reply[6]),
            voters=int(reply[7]),
            standings=_features(reply[8:]),
        )
        return visible(current, board.results_hidden, audience)

    async def ping(self) -> None:
        await self._call(self._redis.ping())
        if self.link.following and not self.link.subscribed.is_set():
            raise StoreUnavailable("the Redis change subscription is reconnecting")

    # --- cross-instance changes -----------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        if not self._listeners:
            self.link.watch(self)
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
                if not self._listeners:
                    self.link.unwatch(self)

        return unsubscribe

    async def start(self) -> None:
        """A store made on its own starts its link and brings old data to today's layout."""
        if self._owns_link:
            await self.link.start()
            await self.prepare()

    async def prepare(self) -> None:
        """Build the wilson and controversial rankings of data stored before they existed."""
        with contextlib.suppress(StoreUnavailable):
            if await self._script("migrate"):
                log.info("built the wilson and controversial rankings of %s", self._prefix)

    async def close(self) -> None:
        if self._owns_link:
            await self.link.close()


_info_decoder: Final = msgspec.json.Decoder(tuple[str, str, str])
# How long a deleted board's `gone` mark outlives it: far longer than any request that looked
# the board up before the delete (slugs are never made twice).
GONE_GRACE: Final = 7 * 24 * 3600
UNLINK_BATCH: Final = 500
GONE_REMEMBERED: Final = 10_000  # deleted slugs an instance remembers (never made twice)


class RedisBoards(BoardDirectory):
    """Every board of a deployment in one Redis: a directory (its own slot, `{boards}`) and a
    RedisStore per board, all over one RedisLink. Stores of boards this instance has seen are
    kept; a deletion anywhere reaches every instance on the directory's deletion channel."""

    def __init__(
        self,
        url: str | None = None,
        *,
        main: RedisStore | None = None,
        max_boards: int = DEFAULT_MAX_BOARDS,
        prefix: str = "fv:",
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_features: int = DEFAULT_MAX_FEATURES,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if main is None:
            if url is None:
                raise ValueError("RedisBoards needs a URL or a main store")
            main = RedisStore(
                url,
                prefix=prefix,
                top_n=top_n,
                idempotency_ttl=idempotency_ttl,
                max_features=max_features,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                max_connections=max_connections,
                clock=clock,
            )
        self._main = main
        self.link = main.link
        self._make = functools.partial(
            RedisStore,
            link=self.link,
            top_n=top_n,
            idempotency_ttl=idempotency_ttl,
            max_features=max_features,
            clock=clock,
        )
        self._max_boards = max_boards
        self._clock = clock
        self._dir = f"{self.link.prefix}{{boards}}:"
        self._boards: dict[str, RedisStore] = {}
        self._gone: dict[str, None] = {}  # slugs deleted lately (insertion-ordered, bounded)
        self.link.on_deleted(self._deleted)
        self.link.on_reconnect(self._recheck_soon)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def main(self) -> RedisStore:
        return self._main

    async def start(self) -> None:
        await self.link.start()
        await self.prepare()

    async def prepare(self) -> None:
        """main's directory entry and join code, and old data in today's layout."""
        with contextlib.suppress(StoreUnavailable):
            await self._move_untagged_main()
            await self._register_main()
        await self._main.prepare()

    async def _move_untagged_main(self) -> None:
        """Data stored before boards (ADR-005's keys right under the prefix: `fv:seq`,
        `fv:f:1`, ...) is the default board's: its keys move under `fv:{b:main}:` once. Rate
        limit keys (`fv:rl:...`) and every tagged key stay where they are."""
        redis, prefix = self.link.redis, self.link.prefix
        main = board_prefix(prefix, MAIN.slug)
        found: int = await self.link.call(redis.exists(prefix + "seq"))
        if not found:
            return
        found = await self.link.call(redis.exists(main + "seq"))
        if found:
            return
        # One instance moves them; another starting meanwhile finds the keys gone (no error).
        if not await self.link.call(redis.set(prefix + "moving", "1", nx=True, ex=60)):
            return
        moved = 0
        async for key in redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            rest = str(key)[len(prefix) :]
            if rest.startswith(("{", "rl:", "boards:")) or rest == "moving":
                continue
            with contextlib.suppress(rex.ResponseError):  # moved by someone else meanwhile
                await self.link.call(redis.renamenx(key, main + rest))
                moved += 1
        await self.link.call(redis.delete(prefix + "moving"))
        log.info("moved %d keys of the board stored before boards under %s", moved, main)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register_main(self) -> None:
        """main gets a directory entry (and a join code) once, by whichever instance is first."""
        if self._main.identity.join_code:
            return
        while True:
            found = await self._info(MAIN.slug)
            if found is not None:
                self._main.identity = found
                return
            now = datetime.now(UTC)
            await self._register(Identity(MAIN.slug, new_join_code(), now))

    async def _register(self, identity: Identity) -> str:
        slug, code, created = identity
        return str(
            await self.link.script(
                "register_board",
                self._dir,
                slug,
                code,
                created.isoformat(),
                int(created.timestamp() * 1000),
                self._max_boards,
                int(self._clock()),
            )
        )

    async def _info(self, slug: str) -> Identity | None:
        raw = await self.link.call(self.link.redis.hget(self._dir + "info", slug))
        if raw is None:
            return None
        code, created_at, _ = _info_decoder.decode(raw)
        return Identity(slug, code, datetime.fromisoformat(created_at))

    def _store(self, identity: Identity) -> RedisStore:
        store = self._boards.get(identity.slug)
        if store is None:
            store = self._boards[identity.slug] = self._make(identity=identity)
        return store

    async def get(self, slug: str) -> RedisStore:
        if slug == MAIN.slug:
            if not self._main.identity.join_code:  # Redis was down at start: try again
                with contextlib.suppress(StoreUnavailable):
                    await self._register_main()
            return self._main
        store = self._boards.get(slug)
        if store is not None:
            return store
        identity = await self._info(slug)
        if identity is None or slug in self._gone:
            raise BoardNotFound(f"board {slug!r} does not exist")
        return self._store(identity)

    async def by_code(self, code: str) -> RedisStore:
        slug = await self.link.call(self.link.redis.hget(self._dir + "codes", code))
        if slug is None:
            raise BoardNotFound(f"no board has the join code {code!r}")
        return await self.get(str(slug))

    async def create(self, title: str) -> RedisStore:
        identity = Identity(new_slug(), new_join_code(), datetime.now(UTC))
        prefix = board_prefix(self.link.prefix, identity.slug)
        await self.link.script("init_board", prefix, title)
        while True:
            answer = await self._register(identity)
            if answer == "ok":
                return self._store(identity)
            if answer == "full":
                self._spawn(self._unlink(prefix))
                raise TooManyBoards(
                    f"this deployment holds {self._max_boards} boards, its max_boards"
                )
            identity = identity._replace(join_code=new_join_code())  # 'taken'

    async def delete(self, slug: str) -> None:
        if slug == MAIN.slug:
            raise BoardKept("the default board (main) cannot be deleted")
        if await self._info(slug) is None:
            raise BoardNotFound(f"board {slug!r} does not exist")
        prefix = board_prefix(self.link.prefix, slug)
        # First no change applies (the mark), then nobody finds it (the directory, whose script
        # publishes the slug to every instance), then its keys go in the background.
        await self.link.script("mark_gone", prefix, GONE_GRACE)
        if not await self.link.script(
            "unregister_board", self._dir, slug, self.link.deleted_channel
        ):
            raise BoardNotFound(f"board {slug!r} does not exist")
        self._deleted(slug)
        self._spawn(self._unlink(prefix))

    async def _unlink(self, prefix: str) -> None:
        """Every key of a deleted board but its `gone` mark, a batch at a time."""
        redis, keep = self.link.redis, prefix + "gone"
        try:
            batch: list[str] = []
            async for key in redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                if key != keep:
                    batch.append(key)
                if len(batch) >= UNLINK_BATCH:
                    await self.link.call(redis.unlink(*batch))
                    batch = []
            if batch:
                await self.link.call(redis.unlink(*batch))
        except (StoreUnavailable, rex.RedisError, OSError) as exc:
            log.warning("keys of a deleted board under %s stay for now: %s", prefix, exc)

    def _deleted(self, slug: str) -> None:
        """A board was deleted (here, or on another instance: the deletion channel)."""
        # Remembered even when not cached here: a look-up in flight (its directory read sent
        # before the delete) must not cache the board after this.
        self._gone[slug] = None
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.pop(next(iter(self._gone)))
        store = self._boards.pop(slug, None)
        if store is None:  # not seen here (no socket here watches it), or announced already
            return
        store.deleted = True
        try:
            self._announce_deleted(slug)
        except Exception:
            log.exception("a board deletion listener failed")

    def _recheck_soon(self) -> None:
        if self._boards:
            self._spawn(self._recheck())

    async def _recheck(self) -> None:
        """After a reconnect (deletions meanwhile were not heard): forget boards that are gone."""
        slugs = list(self._boards)
        try:
            found = await self.link.call(self.link.redis.hmget(self._dir + "info", slugs))
        except StoreUnavailable:
            return
        for slug, raw in zip(slugs, found, strict=True):
            if raw is None:
                self._deleted(slug)

    async def listing(self, *, limit: int, after: str | None) -> BoardPage:
        start = "-" if after is None else "(" + after
        members = await self.link.call(
            self.link.redis.zrange(
                self._dir + "all", start, "+", bylex=True, offset=0, num=limit + 1
            )
        )
        more = len(members) > limit
        del members[limit:]
        stores = []
        for member in members:
            with contextlib.suppress(BoardNotFound):
                stores.append(await self.get(str(member).split(":", 1)[1]))
        items = list(await asyncio.gather(*(store.board() for store in stores)))
        return BoardPage(items, str(members[-1]) if more and members else None)

    async def count(self) -> int:
        return int(await self.link.call(self.link.redis.zcard(self._dir + "all")))

    async def expire_idle(self, idle_for: float) -> list[str]:
        now = self._clock()
        cutoff = now - idle_for
        redis = self.link.redis
        candidates = await self.link.call(
            redis.zrangebyscore(self._dir + "touched", "-inf", cutoff, start=0, num=1000)
        )
        removed = []
        for slug in map(str, candidates):
            if slug == MAIN.slug:
                continue
            prefix = board_prefix(self.link.prefix, slug)
            raw = await self.link.call(self._get(prefix + "touched"))
            touched = float(raw) if raw else 0.0
            if touched > cutoff:  # changed since the directory last looked: look again later
                await self.link.call(redis.zadd(self._dir + "touched", {slug: touched}, xx=True))
                continue
            with contextlib.suppress(BoardNotFound):
                await self.delete(slug)
                removed.append(slug)
        return removed

    async def _get(self, key: str) -> str | None:
        value = await self.link.redis.get(key)
        return None if value is None else str(value)


def _glob_escape(text: str) -> str:
    """`text` as a literal SCAN pattern (its *, ?, [ and \\ escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
