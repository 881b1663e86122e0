"""One broadcaster per instance: coalesce changes, encode each push once per audience, never wait
on a client. While results are hidden, admin sockets get the real numbers and everyone else the
hidden view: one frame per audience per push, written to each client as shared bytes (through
`frames.RawSocket`, which writes nothing once a socket is closing). An admin socket's role ends
with its token: when the token's `exp` passes, the socket is told so and gets the public frames
again (one heap of expiries, looked at on every push and sweep; no timer per socket).

It also keeps the sockets alive: one sweep per `heartbeat` writes the same PING frame to every
client and closes those that sent nothing (no message, no pong) for `idle_timeout`. One timer for
all sockets instead of aiohttp's per-socket heartbeat timers saves ~2 KiB per idle connection."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import WSCloseCode

from .frames import (
    AUTH_ADMIN_FRAME,
    AUTH_PUBLIC_FRAME,
    PING_FRAME,
    LiveSocket,
    RawSocket,
    text_frame,
)
from .metrics import Metrics
from .store import Audience, StatsView, Store

# Close code for a client that stayed too far behind (RFC 6455: 1013 "try again later").
CLOSE_TOO_SLOW: Final = WSCloseCode.TRY_AGAIN_LATER
NEVER: Final = float("inf")
log = logging.getLogger(__name__)


def stats_message(seq: int, stats_body: bytes) -> bytes:
    """{"type":"stats","seq":N,"stats":{...}} around the store's cached stats bytes."""
    return b'{"type":"stats","seq":%d,"stats":%s}' % (seq, stats_body)


@dataclass(eq=False, slots=True)
class Client:
    """One socket's delivery state: the last seq written, since when it is behind, when the
    peer last sent anything (a message or a pong), and until when (wall clock) it is an admin's."""

    ws: LiveSocket
    sock: RawSocket
    seen: float
    board: str = ""  # the slug of the board it watches
    seq: int = -1
    behind_since: float | None = None
    audience: Audience = Audience.PUBLIC
    admin_until: float = NEVER

    @property
    def transport(self) -> asyncio.Transport:
        return self.sock.transport


@dataclass(slots=True)
class _Frame:
    seq: int = -1
    data: bytes = b""
    etag: str = ""  # of the stats view it carries: audiences sharing a view share the frame


def _frame(view: StatsView) -> _Frame:
    return _Frame(view.seq, text_frame(stats_message(view.seq, view.body)), view.etag)


def _empty_frames() -> dict[Audience, _Frame]:
    return {audience: _Frame() for audience in Audience}


@dataclass
class Limits:
    push_interval: float
    buffer_limit: int
    slow_client_timeout: float
    close_timeout: float
    heartbeat: float = 0.0  # seconds between ping sweeps; 0: no pings
    idle_timeout: float = 0.0  # close a socket silent for this long; 0: never


class Broadcaster:
    """Pushes the latest stats to every socket of this instance; latest wins under bursts."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._wall = wall  # token expiries are wall-clock seconds, as in the tokens
        self._expiries: list[tuple[float, int, Client]] = []  # heap of admin roles' ends
        self._order = itertools.count()  # ties in the heap never compare clients
        self._clients: set[Client] = set()
        self._behind: set[Client] = set()
        self._frames = _empty_frames()  # the last pushed frame of each audience
        self._snapshots = _empty_frames()  # newer frames built for joining clients between pushes
        self._changed_at: float | None = None  # when the oldest change not yet pushed happened
        self._wake = asyncio.Event()
        self._dirty = True  # the first frame is built at start
        self._closing: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self._store.subscribe(self._on_change)
        self._tasks.append(asyncio.create_task(self._run(), name="broadcaster"))
        if self._limits.heartbeat > 0:
            self._tasks.append(asyncio.create_task(self._keep_alive(), name="ws-heartbeat"))
        self._wake.set()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.close_all(WSCloseCode.GOING_AWAY, b"server shutdown")

    async def close_all(self, code: int, message: bytes) -> None:
        """Close every socket with `code` (1001 on shutdown), aborting those that do not answer."""
        clients = list(self._clients)
        self._clients.clear()
        self._behind.clear()
        await asyncio.gather(*(self._close(c, code, message) for c in clients))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- clients ------------------------------------------------------------------------------

    async def _current(self, audience: Audience) -> _Frame:
        """The newest frame of an audience: the last push, or a newer snapshot between pushes."""
        view = await self._store.stats(audience)
        frame = self._frames[audience]
        if view.seq > frame.seq:  # a change waits for the next push: don't send stale stats
            frame = self._snapshots[audience]
            if view.seq != frame.seq:
                frame = self._snapshots[audience] = _frame(view)
        return frame

    async def add(self, ws: LiveSocket, transport: asyncio.Transport) -> Client:
        """Register a socket and write the current stats to it first, even mid-interval."""
        snapshot = await self._current(Audience.PUBLIC)
        client = Client(ws, RawSocket(ws, transport), seen=self._clock(), board=self._store.slug)
        self._clients.add(client)
        self._metrics.ws_clients.inc()
        self._write(client, snapshot, self._clock())
        return client

    async def promote(self, client: Client, until: float = NEVER) -> None:
        """Give a socket the admin's frames until `until` (the token's exp, wall clock): an
        ack, then the current admin stats at once.

        The admin frame may carry the seq the client already has (other numbers, same change),
        so the ack tells the client to accept it; after that seq only grows again.
        """
        frame = await self._current(Audience.ADMIN)
        if client not in self._clients or not client.sock.open:
            return
        pushed = self._frames[Audience.ADMIN]  # a push may have passed during the await
        if pushed.seq > frame.seq:
            frame = pushed
        client.audience = Audience.ADMIN
        client.admin_until = until
        if until != NEVER:
            heapq.heappush(self._expiries, (until, next(self._order), client))
        client.sock.write(AUTH_ADMIN_FRAME)
        self._write(client, frame, self._clock())

    def _expire_admins(self) -> None:
        """Sockets whose admin token expired go back to the public frames, and are told so."""
        heap, now = self._expiries, self._wall()
        while heap and heap[0][0] <= now:
            until, _, client = heapq.heappop(heap)
            # Stale entries (the socket left, or re-authenticated with a newer token) are skipped.
            if client.admin_until != until or client not in self._clients:
                continue
            client.audience = Audience.PUBLIC
            client.admin_until = NEVER
            log.debug("an admin socket's token expired: it gets the public frames now")
            frame = self._frames[Audience.PUBLIC]
            # The ack makes the client accept this frame even if its seq is not newer.
            if client.sock.write(AUTH_PUBLIC_FRAME) and frame.seq >= 0:
                client.seq = -1
                self._write(client, frame, self._clock())

    def heard(self, client: Client) -> None:
        """The peer sent something (a message or a pong): it is alive."""
        client.seen = self._clock()

    def remove(self, client: Client) -> None:
        if client in self._clients:
            self._clients.discard(client)
            self._behind.discard(client)
        self._metrics.ws_clients.dec()

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def store(self) -> Store:
        return self._store

    def sockets(self) -> list[Client]:
        return list(self._clients)

    # --- pushing ------------------------------------------------------------------------------

    def _on_change(self, seq: int) -> None:
        if not self._dirty:
            self._dirty = True
            self._changed_at = self._clock()
        self._wake.set()

    async def _run(self) -> None:
        next_push = 0.0  # the clock before which no push starts (push_interval after the last)
        while True:
            if self._behind:
                # Someone is behind: look again soon even when nothing changes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._limits.push_interval * 5)
            else:
                await self._wake.wait()
            # Leading edge: a change after a quiet spell is pushed at once; one within the
            # interval waits out its rest (and changes meanwhile ride along). Waiting here, not
            # after each push, spares a timer and a wake-up per change when changes are sparse.
            delay = next_push - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            started = self._clock()
            next_push = started + self._limits.push_interval
            try:
                await self._push()
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # stop() cancelled us while a store call turned that into its own error
                    # (seen with redis-py at shutdown): stop, or stop() would wait forever.
                    raise asyncio.CancelledError from None
                log.exception("push failed; retrying on the next change")
                self._dirty = True

    async def _push(self) -> None:
        if self._dirty:
            self._dirty = False
            changed_at, self._changed_at = self._changed_at, None
            views = await self._store.stats_by_audience()
            built: dict[str, _Frame] = {}  # audiences that see the same view share its frame
            for audience, view in views.items():
                if view.seq > self._frames[audience].seq:
                    frame = built.get(view.etag)
                    if frame is None:
                        frame = built[view.etag] = _frame(view)
                    self._frames[audience] = frame
            if built:
                self._metrics.ws_pushes.inc()
                self._deliver(changed_at)
                return
        if self._behind:
            self._deliver(None)

    def _deliver(self, changed_at: float | None) -> None:
        if self._expiries and self._expiries[0][0] <= self._wall():
            self._expire_admins()  # before the push: no admin frame reaches an expired role
        now = self._clock()
        frames, limit = self._frames, self._limits.buffer_limit
        sent = 0
        for client in list(self._clients):
            frame = frames[client.audience]
            if client.seq >= frame.seq:
                continue
            # What _write does for a client that keeps up, inline: this runs once per client
            # per push, and the call cost a sixth of the instructions per client (callgrind).
            if client.behind_since is None and client.sock.write_within(frame.data, limit):
                client.seq = frame.seq
                sent += 1
            else:
                sent += self._write(client, frame, now)
        self._metrics.ws_frames.inc(sent)
        if changed_at is not None:
            self._metrics.ws_lag.observe(self._clock() - changed_at)

    def _write(self, client: Client, frame: _Frame, now: float) -> int:
        """Write a frame without waiting; track and drop clients that stay behind."""
        sock = client.sock
        if not sock.open:
            return 0
        if sock.buffered > self._limits.buffer_limit:
            if client.behind_since is None:
                client.behind_since = now
                self._behind.add(client)
            elif now - client.behind_since > self._limits.slow_client_timeout:
                self._drop(client)
            return 0
        if client.behind_since is not None:
            client.behind_since = None
            self._behind.discard(client)
        sock.write(frame.data)
        client.seq = frame.seq
        return 1

    # --- keeping sockets alive ------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._limits.heartbeat)
            self.sweep()

    def sweep(self) -> None:
        """Close the sockets silent for longer than idle_timeout; ping all the others."""
        if self._expiries and self._expiries[0][0] <= self._wall():
            self._expire_admins()
        now, idle = self._clock(), self._limits.idle_timeout
        for client in list(self._clients):
            if idle and now - client.seen > idle:
                self._clients.discard(client)
                self._behind.discard(client)
                self._metrics.ws_idle_closed.inc()
                self._close_later(client, WSCloseCode.GOING_AWAY, b"idle timeout")
            else:
                client.sock.write(PING_FRAME)

    async def close_one(self, client: Client, code: int, message: bytes) -> None:
        """Close one socket (it stays registered until its handler removes it)."""
        self._clients.discard(client)
        self._behind.discard(client)
        await self._close(client, code, message)

    def _drop(self, client: Client) -> None:
        self._clients.discard(client)
        self._behind.discard(client)
        self._metrics.ws_dropped.inc()
        self._close_later(client, CLOSE_TOO_SLOW, b"too slow")

    def _close_later(self, client: Client, code: int, message: bytes) -> None:
        task = asyncio.create_task(self._close(client, code, message))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, client: Client, code: int, message: bytes) -> None:
        try:
            await asyncio.wait_for(
                client.ws.close(code=code, message=message), self._limits.close_timeout
            )
        except (TimeoutError, ConnectionError):
            client.sock.abort()


@dataclass(eq=False, slots=True)
class _Board:
    caster: Broadcaster
    joining: int = 0  # sockets between the look-up and their registration (add awaits)


class Broadcasts:
    """The broadcasters of one instance, one per board with sockets here: made (and subscribed
    to its board's changes) on the board's first socket, stopped after its last. A change on
    one board is encoded once per audience and written to that board's sockets only; a board
    deleted (here or on another instance) gets its sockets closed with 1001."""

    def __init__(
        self,
        metrics: Metrics,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._wall = wall
        self._boards: dict[str, _Board] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._open = True
        metrics.board_sockets.source = self.socket_counts

    def socket_counts(self) -> list[int]:
        return [b.caster.clients for b in self._boards.values() if b.caster.clients]

    @property
    def clients(self) -> int:
        return sum(b.caster.clients for b in self._boards.values())

    def sockets(self) -> list[Client]:
        """Every registered socket of every board (for inspection)."""
        return [c for b in self._boards.values() for c in b.caster.sockets()]

    def caster(self, slug: str) -> Broadcaster | None:
        """The board's broadcaster while it has sockets here."""
        board = self._boards.get(slug)
        return board.caster if board is not None else None

    async def add(self, store: Store, ws: LiveSocket, transport: asyncio.Transport) -> Client:
        """Register a socket on its board (starting the board's broadcaster if it is the first)
        and write the board's current stats to it."""
        if not self._open:
            raise ConnectionResetError("the instance is shutting down")
        board = self._boards.get(store.slug)
        if board is None or board.caster.store is not store:
            if board is not None:  # a board deleted and looked up again: never the same store
                self._retire(store.slug)
            caster = Broadcaster(store, self._metrics, self._limits, self._clock, self._wall)
            caster.start()
            board = self._boards[store.slug] = _Board(caster)
        board.joining += 1
        try:
            client = await board.caster.add(ws, transport)
        finally:
            board.joining -= 1
            self._stop_if_empty(store.slug, board)
        if store.deleted or self._boards.get(store.slug) is not board:
            # The board was deleted while this socket joined (after its look-up): its
            # deletion closed the sockets there were, so this one is closed here.
            self.close_later(board.caster, client)
        return client

    def remove(self, client: Client) -> None:
        board = self._boards.get(client.board)
        if board is None:  # its board was closed (deleted, or shutdown): already gone
            self._metrics.ws_clients.dec()
            return
        board.caster.remove(client)
        self._stop_if_empty(client.board, board)

    def heard(self, client: Client) -> None:
        """The peer sent something (a message or a pong): it is alive."""
        client.seen = self._clock()

    async def promote(self, client: Client, until: float = NEVER) -> None:
        board = self._boards.get(client.board)
        if board is not None:
            await board.caster.promote(client, until=until)

    def _stop_if_empty(self, slug: str, board: _Board) -> None:
        if board.caster.clients == 0 and board.joining == 0 and self._boards.get(slug) is board:
            self._retire(slug)

    def _retire(self, slug: str) -> None:
        board = self._boards.pop(slug)
        task = asyncio.create_task(board.caster.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close_board(self, slug: str, code: int, message: bytes) -> None:
        """Close one board's sockets (its board was deleted) and stop its broadcaster."""
        board = self._boards.pop(slug, None)
        if board is not None:
            await board.caster.close_all(code, message)
            await board.caster.stop()

    def close_later(self, caster: Broadcaster, client: Client) -> None:
        task = asyncio.create_task(
            caster.close_one(client, WSCloseCode.GOING_AWAY, b"board deleted")
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def close_board_later(self, slug: str) -> None:
        """A board was deleted: its sockets get 1001 (the deletion listener; not a coroutine)."""
        if slug in self._boards:
            task = asyncio.create_task(
                self.close_board(slug, WSCloseCode.GOING_AWAY, b"board deleted")
            )
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def close_all(self, code: int, message: bytes) -> None:
        """Close every socket of every board (1001 on shutdown); no new ones are taken."""
        self._open = False
        await asyncio.gather(*(b.caster.close_all(code, message) for b in self._boards.values()))

    async def stop(self) -> None:
        self._open = False
        boards = list(self._boards.values())
        self._boards.clear()
        await asyncio.gather(*(b.caster.stop() for b in boards))
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
