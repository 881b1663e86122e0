"""The durable embedded store: the memory store serves, SQLite (WAL) beneath it keeps a copy.

Every change is applied in memory under its board's lock, as in MemoryStore, and in the same
step (no await in between) the rows it changed are handed to the journal; the change's answer
waits until the transaction holding those rows has committed. The journal writes from one
thread, and everything handed to it while a commit runs goes into the next transaction (group
commit), so a burst of votes costs a commit per batch, not per vote. Listeners (the
broadcaster, the seq gauge) hear of a change only after its commit: no screen shows a change
that is not on disk.

If a commit fails (disk full, file gone, I/O error) every change in it and after it is
answered 503, and memory is rebuilt from the file: never an acknowledged change that is not
on disk, never a change on disk that memory lacks. See ADR-002.

The file: `PRAGMA application_id` says it is ours, `PRAGMA user_version` is the schema
version (migrated forward at start; a newer one refuses to start). Tables: meta (epoch),
boards, features, votes, rounds, idempotency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from ..schemas import (
    Board,
    BoardPatch,
    CastVote,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Status,
    VoteOut,
    VoteValue,
)
from .base import (
    DEFAULT_MAX_BOARDS,
    DEFAULT_MAX_FEATURES,
    MAIN,
    Audience,
    Created,
    CursorKey,
    Identity,
    Page,
    StatsView,
)
from .errors import BoardKept, StoreError, StoreUnavailable
from .memory import DEFAULT_IDEMPOTENCY_TTL, MemoryBoards, MemoryStore, _Record

APPLICATION_ID: Final = 0x46566F74  # "FVot": this file is a Feature Votes store
SCHEMA_VERSION: Final = 1
REBUILD_RETRY_MIN: Final = 0.1  # seconds between attempts to rebuild memory from the file
REBUILD_RETRY_MAX: Final = 5.0
log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE boards (
  slug TEXT PRIMARY KEY,
  position INTEGER NOT NULL,
  join_code TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  title TEXT NOT NULL,
  round INTEGER NOT NULL,
  voting_open INTEGER NOT NULL,
  results_hidden INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  next_id INTEGER NOT NULL,
  touched REAL NOT NULL
);
CREATE TABLE features (
  board TEXT NOT NULL,
  id INTEGER NOT NULL,
  title TEXT NOT NULL,
  description TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (board, id)
) WITHOUT ROWID;
CREATE TABLE votes (
  board TEXT NOT NULL,
  feature INTEGER NOT NULL,
  voter TEXT NOT NULL,
  value INTEGER NOT NULL CHECK (value IN (-1, 1)),
  PRIMARY KEY (board, feature, voter)
) WITHOUT ROWID;
CREATE TABLE rounds (
  board TEXT NOT NULL,
  round INTEGER NOT NULL,
  summary TEXT NOT NULL,
  standings TEXT NOT NULL,
  PRIMARY KEY (board, round)
) WITHOUT ROWID;
CREATE TABLE idempotency (
  board TEXT NOT NULL,
  owner TEXT NOT NULL,
  key TEXT NOT NULL,
  title TEXT NOT NULL,
  description TEXT NOT NULL,
  feature TEXT NOT NULL,
  expires REAL NOT NULL,
  PRIMARY KEY (board, owner, key)
) WITHOUT ROWID;
"""

Statement = tuple[str, Sequence[Any]]
_T = TypeVar("_T")
READ_TRIES: Final = 3  # a read meeting failed commits this many times in a row answers 503
REBUILD_WAIT: Final = 5.0  # seconds a read waits for memory to be rebuilt after a failed commit
_feature_codec: Final = msgspec.json.Encoder()
_feature_decoder: Final = msgspec.json.Decoder(Feature)
_round_decoder: Final = msgspec.json.Decoder(tuple[RoundSummary, list[Feature]])


class StoreFileError(StoreError):
    """The file cannot be this store's (not ours, from a newer version, corrupt)."""


def path_of(url: str) -> Path:
    """The file of a `sqlite:///PATH` URL (PATH relative to the working directory unless it
    starts with / after the three slashes, as in sqlite:////var/lib/fv.sqlite3)."""
    return Path(url.removeprefix("sqlite:///"))


def secret_path(db: Path) -> Path:
    """Where a durable store keeps the secret it generated: beside its data."""
    return db.with_name(db.name + ".secret")


def load_or_make_secret(db: Path) -> str:
    """The secret kept beside the file (made once, mode 0600): tokens outlive restarts."""
    path = secret_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32)
    # Written whole and synced before it is in place: a crash leaves no empty secret file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(temporary, path)  # fails if another process put one there first
    except FileExistsError:
        return path.read_text().strip()
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return value


def _connect(path: Path, max_bytes: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before its answer
    if max_bytes:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
    return conn


def _check_ours(path: Path) -> None:
    """A read-only look at an existing file: StoreFileError unless it is ours (or a SQLite
    file with nothing in it) from this version or an older one. Nothing is written to it."""
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreFileError(f"{path} is not a readable SQLite file: {exc}") from None
    if app_id == 0 and tables == 0:
        return
    if app_id != APPLICATION_ID:
        raise StoreFileError(f"{path} is not a Feature Votes store (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise StoreFileError(
            f"{path} was written by a newer version (schema {version}; this one reads up to "
            f"{SCHEMA_VERSION})"
        )


def open_file(path: Path, max_bytes: int = 0) -> tuple[sqlite3.Connection, str]:
    """Open (or create) the store file, migrated to SCHEMA_VERSION; (connection, epoch).

    StoreFileError for a file that is not ours, from a newer version, or unreadable: the file
    is left as it is (never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or path.stat().st_size == 0
    if not fresh:
        _check_ours(path)  # before _connect, whose WAL mode would write to another's file
    try:
        conn = _connect(path, max_bytes)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreFileError(f"{path} is not a readable SQLite file: {exc}") from None
    if fresh or (app_id == 0 and tables == 0):
        epoch = secrets.token_hex(8)
        conn.execute("BEGIN")
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
        return conn, epoch
    if app_id != APPLICATION_ID:
        conn.close()
        raise StoreFileError(f"{path} is not a Feature Votes store (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreFileError(
            f"{path} was written by a newer version (schema {version}; this one reads up to "
            f"{SCHEMA_VERSION})"
        )
    # (schema 1 is the first: nothing to migrate yet; a later version migrates here, forward)
    row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if row is None:
        conn.close()
        raise StoreFileError(f"{path} has no epoch: not a complete Feature Votes store")
    return conn, str(row[0])


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class Journal:
    """The one writer: batches of statements committed in order from one thread.

    `submit` (on the loop thread) adds a change's statements to the open batch and returns the
    future of that batch's commit. One batch commits at a time; what arrives meanwhile waits
    in the next one. A failed commit fails its batch and every later one, and calls
    `on_failure` (which rebuilds memory from the file); until `recovered()`, `submit` refuses.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "sqlite-writer")
        self._pending: list[Statement] = []
        # The boards the open batch changed: each one's row (its seq, controls, next id) is
        # written once per batch, as it is at the last change, and after the commit each
        # board's listeners hear of its newest seq once.
        self._pending_boards: dict[DurableStore, None] = {}
        self._pending_future: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._last: asyncio.Future[None] | None = None  # the newest batch's commit
        self.broken: str | None = None  # why writes are refused, while they are
        self.on_failure: Callable[[], None] = lambda: None
        self.commits = 0
        # Clear from a failed commit until memory is the file's again: reads wait for it.
        self.healthy = asyncio.Event()
        self.healthy.set()

    def writable(self) -> None:
        if self.broken is not None:
            raise StoreUnavailable(f"the store file cannot be written: {self.broken}")

    def submit(
        self, statements: Iterable[Statement], board: DurableStore | None = None
    ) -> asyncio.Future[None]:
        """Add a change's rows (and mark its board changed) to the open batch."""
        self.writable()
        self._pending.extend(statements)
        if board is not None:
            self._pending_boards[board] = None
        if self._pending_future is None:
            self._pending_future = asyncio.get_running_loop().create_future()
            self._last = self._pending_future
            if self._inflight is None:
                asyncio.get_running_loop().call_soon(self._flush)
        return self._pending_future

    def barrier(self) -> asyncio.Future[None] | None:
        """The commit of everything submitted so far (None: nothing is waiting)."""
        last = self._last
        return None if last is None or last.done() else last

    def _flush(self) -> None:
        if self._inflight is not None or self._pending_future is None:
            return
        batch, future, boards = self._pending, self._pending_future, self._pending_boards
        self._pending, self._pending_future, self._pending_boards = [], None, {}
        told = [(board, board.seq_now) for board in boards]  # what commits with this batch
        batch.extend(board.board_row() for board in boards)
        self._inflight = future
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._commit, batch)
        done.add_done_callback(functools.partial(self._committed, future, told))

    def _commit(self, batch: list[Statement]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in batch:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _committed(
        self,
        future: asyncio.Future[None],
        told: list[tuple[DurableStore, int]],
        done: asyncio.Future[None],
    ) -> None:
        self._inflight = None
        exc = done.exception()
        if exc is None:
            self.commits += 1
            future.set_result(None)
            for board, seq in told:
                board.tell(seq)
            if self._pending_future is not None:
                self._flush()
            return
        self.broken = f"{type(exc).__name__}: {exc}"
        self.healthy.clear()
        log.error("a commit to the store file failed (%s); rebuilding from the file", self.broken)
        failure = StoreUnavailable(f"the change could not be stored: {self.broken}")
        future.set_exception(failure)
        if self._pending_future is not None:
            self._pending_future.set_exception(failure)
        self._pending, self._pending_future, self._pending_boards = [], None, {}
        self.on_failure()

    def recovered(self) -> None:
        self.broken = None
        self.healthy.set()

    def read(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        """Run a read on the writer's thread (after every commit before it)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._conn.close()


def _iso(value: datetime) -> str:
    return value.isoformat()


@dataclass(slots=True)
class _BoardRows:
    """One board as the file holds it, ready to load into a DurableStore."""

    identity: Identity
    position: int
    title: str
    round: int
    voting_open: bool
    results_hidden: bool
    seq: int
    next_id: int
    touched: float
    features: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    votes: list[tuple[int, str, int]] = field(default_factory=list)
    rounds: list[tuple[int, str]] = field(default_factory=list)
    idempotency: list[tuple[str, str, str, str, str, float]] = field(default_factory=list)


def read_boards(conn: sqlite3.Connection) -> list[_BoardRows]:
    """Every board with its rows, in the order they were made."""
    boards: dict[str, _BoardRows] = {}
    for row in conn.execute(
        "SELECT slug, position, join_code, created_at, title, round, voting_open, "
        "results_hidden, seq, next_id, touched FROM boards ORDER BY position"
    ):
        slug, position, code, created, title, rnd, open_, hidden, seq, next_id, touched = row
        boards[slug] = _BoardRows(
            Identity(slug, code, datetime.fromisoformat(created)),
            position,
            title,
            rnd,
            bool(open_),
            bool(hidden),
            seq,
            next_id,
            touched,
        )
    for board, *rest in conn.execute(
        "SELECT board, id, title, description, status, created_at FROM features ORDER BY board, id"
    ):
        if board in boards:
            boards[board].features.append(tuple(rest))
    for board, feature, voter, value in conn.execute(
        "SELECT board, feature, voter, value FROM votes"
    ):
        if board in boards:
            boards[board].votes.append((feature, voter, value))
    for board, rnd, summary, standings in conn.execute(
        "SELECT board, round, summary, standings FROM rounds ORDER BY board, round"
    ):
        if board in boards:
            boards[board].rounds.append((rnd, f"[{summary},{standings}]"))
    for board, *rest in conn.execute(
        "SELECT board, owner, key, title, description, feature, expires FROM idempotency "
        "ORDER BY expires"
    ):
        if board in boards:
            boards[board].idempotency.append(tuple(rest))
    return list(boards.values())


class DurableStore(MemoryStore):
    """A MemoryStore whose every change is also committed to the file before its answer."""

    def __init__(
        self,
        journal: Journal,
        *,
        wall: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._journal = journal
        self._wall = wall
        self.directory: SqliteBoards | None = None  # the directory whose file holds it
        self._told = 0  # the last seq listeners heard of (after its commit)

    # --- listeners hear of a change once it is committed ---------------------------------------

    def _changed(self) -> None:
        """MemoryStore's bookkeeping of a change, without telling listeners yet (they hear of
        it after its commit: Journal._committed tells them)."""
        listeners, self._listeners = self._listeners, []
        try:
            super()._changed()
        finally:
            self._listeners = listeners

    @property
    def seq_now(self) -> int:
        """The seq in memory (a change may still be on its way to the file)."""
        return self._seq

    def tell(self, seq: int) -> None:
        """The journal committed this board's changes up to `seq`: listeners hear of it."""
        self._tell_now(seq)

    def _tell_now(self, seq: int) -> None:
        if seq > self._told:
            self._told = seq
            for listener in tuple(self._listeners):  # a listener may unsubscribe itself
                listener(seq)

    # --- the rows a change writes --------------------------------------------------------------

    def board_row(self) -> Statement:
        """The board's own row as memory holds it now (the journal adds it once per batch)."""
        return self._board_row()

    def _board_row(self) -> Statement:
        board = self._board
        return (
            "UPDATE boards SET title = ?, round = ?, voting_open = ?, results_hidden = ?, "
            "seq = ?, next_id = ?, touched = ? WHERE slug = ?",
            (
                board.title,
                board.round,
                int(board.voting_open),
                int(board.results_hidden),
                self._seq,
                self._next_id,
                self._wall(),
                self.slug,
            ),
        )

    def _feature_row(self, rec: _Record) -> Statement:
        return (
            "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)",
            (self.slug, rec.id, rec.title, rec.description, rec.status.value, _iso(rec.created_at)),
        )

    async def _commit(self, seq_before: int, statements: list[Statement]) -> None:
        """Hand a change's rows to the journal (if it changed anything) and wait for the
        commit; a change that changed nothing still waits for what is pending before it (its
        answer may rest on a change not yet on disk)."""
        if self._seq == seq_before:
            barrier = self._journal.barrier()
            if barrier is not None:
                await asyncio.shield(barrier)
            return
        await asyncio.shield(self._journal.submit(statements, self))

    # --- reads show only what is committed ---------------------------------------------------

    async def _settled(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """A read's answer once every change it may show is on disk: memory holds a change
        from the step that applies it, before its commit, so without this wait a read (a
        page's stats, its seq) could show what a crash takes back. After a failed commit the
        read waits for memory to be rebuilt and reads again."""
        journal = self._journal
        for _ in range(READ_TRIES):
            if not journal.healthy.is_set():
                try:
                    await asyncio.wait_for(journal.healthy.wait(), REBUILD_WAIT)
                except TimeoutError:
                    break
            value = await read()  # from memory, in this step: no await in between
            barrier = journal.barrier()
            if barrier is None:
                return value
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(barrier)
                return value
        raise StoreUnavailable(f"the store file cannot be written: {journal.broken}")

    async def get_feature(
        self, feature_id: int, *, audience: Audience = Audience.PUBLIC
    ) -> Feature:
        return await self._settled(
            functools.partial(super().get_feature, feature_id, audience=audience)
        )

    async def list_features(
        self,
        *,
        sort: Sort,
        status: Status | None,
        limit: int,
        after: CursorKey | None,
        audience: Audience = Audience.PUBLIC,
    ) -> Page:
        read = functools.partial(
            super().list_features,
            sort=sort,
            status=status,
            limit=limit,
            after=after,
            audience=audience,
        )
        return await self._settled(read)

    async def votes_of(self, voter: str) -> dict[int, CastVote]:
        return await self._settled(functools.partial(super().votes_of, voter))

    async def seq(self) -> int:
        return await self._settled(super().seq)

    async def stats(self, audience: Audience = Audience.PUBLIC) -> StatsView:
        return await self._settled(functools.partial(super().stats, audience))

    async def stats_by_audience(self) -> dict[Audience, StatsView]:
        return await self._settled(super().stats_by_audience)

    async def board(self) -> Board:
        return await self._settled(super().board)

    async def rounds(self) -> list[RoundSummary]:
        return await self._settled(super().rounds)

    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        return await self._settled(
            functools.partial(super().standings, round_no, audience=audience)
        )

    # --- the changes ---------------------------------------------------------------------------

    async def create_feature(
        self,
        new: FeatureCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        audience: Audience = Audience.PUBLIC,
    ) -> Created:
        self._journal.writable()
        before = self._seq
        created = await super().create_feature(
            new, owner=owner, idempotency_key=idempotency_key, audience=audience
        )
        rows: list[Statement] = []
        if self._seq != before:
            rec = self._features[created.feature.id]
            rows.append(self._feature_row(rec))
            if idempotency_key is not None:
                _, feature, expires = self._idempotency[(owner, idempotency_key)]
                wall_expires = self._wall() + (expires - self._clock())
                rows.append(
                    (
                        "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            self.slug,
                            owner,
                            idempotency_key,
                            new.title,
                            new.description,
                            _feature_codec.encode(feature).decode(),
                            wall_expires,
                        ),
                    )
                )
        await self._commit(before, rows)
        return created

    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature:
        self._journal.writable()
        before = self._seq
        feature = await super().update_feature(feature_id, patch)
        rows = [self._feature_row(self._features[feature_id])] if self._seq != before else []
        await self._commit(before, rows)
        return feature

    async def delete_feature(self, feature_id: int) -> None:
        self._journal.writable()
        before = self._seq
        await super().delete_feature(feature_id)
        await self._commit(
            before,
            [
                ("DELETE FROM features WHERE board = ? AND id = ?", (self.slug, feature_id)),
                ("DELETE FROM votes WHERE board = ? AND feature = ?", (self.slug, feature_id)),
            ],
        )

    async def set_vote(
        self,
        voter: str,
        feature_id: int,
        value: VoteValue,
        *,
        audience: Audience = Audience.PUBLIC,
    ) -> VoteOut:
        self._journal.writable()
        before = self._seq
        out = await super().set_vote(voter, feature_id, value, audience=audience)
        row: Statement
        if value:
            row = (
                "INSERT OR REPLACE INTO votes VALUES (?, ?, ?, ?)",
                (self.slug, feature_id, voter, value),
            )
        else:
            row = (
                "DELETE FROM votes WHERE board = ? AND feature = ? AND voter = ?",
                (self.slug, feature_id, voter),
            )
        await self._commit(before, [row])
        return out

    async def update_board(self, patch: BoardPatch) -> Board:
        self._journal.writable()
        before = self._seq
        board = await super().update_board(patch)
        await self._commit(before, [])
        return board

    async def reset_board(self) -> Board:
        self._journal.writable()
        before = self._seq
        board = await super().reset_board()
        closed = board.round - 1
        summary, standings = self._rounds[closed]
        await self._commit(
            before,
            [
                (
                    "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?)",
                    (
                        self.slug,
                        closed,
                        _feature_codec.encode(summary).decode(),
                        _feature_codec.encode(standings).decode(),
                    ),
                ),
                ("DELETE FROM votes WHERE board = ?", (self.slug,)),
            ],
        )
        return board

    # --- loading -------------------------------------------------------------------------------

    def insert_row(self, position: int) -> Statement:
        """The board's own row, for a board being made."""
        board, identity = self._board, self.identity
        return (
            "INSERT INTO boards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                identity.slug,
                position,
                identity.join_code,
                _iso(identity.created_at),
                board.title,
                board.round,
                int(board.voting_open),
                int(board.results_hidden),
                self._seq,
                self._next_id,
                self._wall(),
            ),
        )

    def restore(self, rows: _BoardRows) -> None:
        """Replace everything in memory with what the file holds (at start, and after a failed
        commit). Counts are rebuilt from the votes themselves."""
        fresh = DurableStore(
            self._journal,
            wall=self._wall,
            top_n=self._top_n,
            idempotency_ttl=self._idempotency_ttl,
            max_features=self._max_features,
            clock=self._clock,
            identity=rows.identity,
            title=rows.title,
        )
        fresh._board = msgspec.structs.replace(
            fresh._board,
            round=rows.round,
            voting_open=rows.voting_open,
            results_hidden=rows.results_hidden,
        )
        for fid, title, description, status, created in rows.features:
            rec = _Record(fid, title, description, Status(status), datetime.fromisoformat(created))
            fresh._features[fid] = rec
            fresh._by_feature[fid] = {}
        for fid, voter, value in rows.votes:
            voted = fresh._features.get(fid)
            if voted is None:
                continue
            cast: CastVote = 1 if value > 0 else -1
            fresh._by_feature[fid][voter] = cast
            fresh._by_voter.setdefault(voter, {})[fid] = cast
            if cast > 0:
                voted.up += 1
                fresh._up += 1
            else:
                voted.down += 1
                fresh._down += 1
        for rec in fresh._features.values():
            fresh._index(rec)
        for rnd, raw in rows.rounds:
            summary, standings = _round_decoder.decode(raw)
            fresh._rounds[rnd] = (summary, standings)
        now_wall, now = self._wall(), self._clock()
        for owner, key, title, description, feature, expires in rows.idempotency:
            if expires > now_wall:
                fresh._idempotency[(owner, key)] = (
                    (title, description),
                    _feature_decoder.decode(feature),
                    now + expires - now_wall,
                )
        fresh._next_id = max(rows.next_id, max(fresh._features, default=0) + 1)
        # seq never goes back, also across a rebuild: what listeners heard stays behind it.
        fresh._seq = max(rows.seq, self._seq)
        self._adopt(fresh)
        self.touched = self._clock() - max(0.0, now_wall - rows.touched)

    async def rebuild(self, rows: _BoardRows) -> None:
        """restore() under the board's lock. (Its seq, which never goes back, is written to
        the file before listeners hear of it: SqliteBoards._rebuild.)"""
        async with self._lock:
            self.restore(rows)

    def _adopt(self, fresh: DurableStore) -> None:
        """Take over another store's state, keeping this object (and its lock, listeners)."""
        keep = {
            "_lock",
            "_listeners",
            "_journal",
            "_told",
            "_wall",
            "_clock",
            "directory",
            "epoch",
        }
        for name, value in vars(fresh).items():
            if name not in keep:
                setattr(self, name, value)
        self._stats = None
        self._orders.clear()


class SqliteBoards(MemoryBoards):
    """Every board in memory (MemoryBoards), each change also committed to one SQLite file."""

    def __init__(
        self,
        url: str,
        *,
        max_boards: int = DEFAULT_MAX_BOARDS,
        top_n: int = 20,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_features: int = DEFAULT_MAX_FEATURES,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path_of(url)
        conn, self.epoch = open_file(self.path, max_bytes)
        self.journal = Journal(conn)
        self.journal.on_failure = self._rebuild_soon
        self._rebuilding: asyncio.Task[None] | None = None
        make = functools.partial(
            DurableStore,
            self.journal,
            epoch=self.epoch,  # the file's: it outlives the process
            top_n=top_n,
            idempotency_ttl=idempotency_ttl,
            max_features=max_features,
            clock=clock,
        )
        super().__init__(
            make(),
            max_boards=max_boards,
            top_n=top_n,
            idempotency_ttl=idempotency_ttl,
            max_features=max_features,
            clock=clock,
        )
        self._make = make  # type: ignore[assignment]  # the directory's boards are durable
        main = self.main
        assert isinstance(main, DurableStore)
        main.directory = self
        self._load(read_boards(conn), conn)

    def _load(self, found: list[_BoardRows], conn: sqlite3.Connection) -> None:
        """Memory from the file; a new file gets main's row."""
        main = self.main
        assert isinstance(main, DurableStore)
        by_slug = {rows.identity.slug: rows for rows in found}
        if MAIN.slug not in by_slug:
            sql, params = main.insert_row(0)
            conn.execute(sql, params)
        else:
            self._codes.pop(main.identity.join_code, None)
            main.restore(by_slug[MAIN.slug])
            self._codes[main.identity.join_code] = MAIN.slug
        for rows in found:
            if rows.identity.slug == MAIN.slug:
                continue
            store = self._make(identity=rows.identity, title=rows.title)
            assert isinstance(store, DurableStore)
            store.restore(rows)
            self._boards[rows.identity.slug] = store
            self._made[rows.identity.slug] = rows.position
            self._next_position = max(self._next_position, rows.position + 1)
            self._codes[rows.identity.join_code] = rows.identity.slug
        votes = sum(len(r.votes) for r in found)
        log.info("loaded %d board(s), %d vote(s) from %s", len(found) or 1, votes, self.path)

    async def create(self, title: str) -> MemoryStore:
        self.journal.writable()
        store = await super().create(title)
        assert isinstance(store, DurableStore)
        position = self.position_of(store.slug)
        commit = self.journal.submit([store.insert_row(position)])
        try:
            await asyncio.shield(commit)
        except StoreUnavailable:
            self._boards.pop(store.slug, None)
            self._codes.pop(store.identity.join_code, None)
            raise
        return store

    async def delete(self, slug: str) -> None:
        """First no change applies (marked under the board's lock), then the rows go in one
        commit, and only once that commit holds does the board leave memory: a failed commit
        (503) leaves the board as the file has it, there and in memory."""
        if slug == MAIN.slug:
            raise BoardKept("the default board (main) cannot be deleted")
        self.journal.writable()
        store = await self.get(slug)
        await store.mark_deleted()
        statements: list[Statement] = [
            (f"DELETE FROM {table} WHERE board = ?", (slug,))
            for table in ("features", "votes", "rounds", "idempotency")
        ]
        statements.append(("DELETE FROM boards WHERE slug = ?", (slug,)))
        try:
            await asyncio.shield(self.journal.submit(statements))
        except StoreUnavailable:
            store.deleted = False  # (the rebuild restores it from the file as well)
            raise
        self._forget(store)

    def _durable(self) -> Iterable[DurableStore]:
        return (s for s in self._boards.values() if isinstance(s, DurableStore))

    def _rebuild_soon(self) -> None:
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild())

    async def _rebuild(self) -> None:
        """After a failed commit: memory becomes what the file holds again, then writes resume.
        A rebuild that cannot read the file is tried again (backing off), never given up."""
        delay = REBUILD_RETRY_MIN
        while True:
            try:
                await self._rebuild_once()
                return
            except (sqlite3.Error, OSError, StoreUnavailable) as exc:
                log.error(
                    "rebuilding from %s failed (%s); trying again in %gs", self.path, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, REBUILD_RETRY_MAX)

    async def _rebuild_once(self) -> None:
        found = await self.journal.read(read_boards)
        by_slug = {rows.identity.slug: rows for rows in found}
        for slug, store in list(self._boards.items()):
            rows = by_slug.get(slug)
            if rows is None:  # made in memory, never committed
                self._boards.pop(slug, None)
                self._codes.pop(store.identity.join_code, None)
                continue
            if isinstance(store, DurableStore):
                await store.rebuild(rows)
        self.journal.recovered()
        # Each board's seq (kept from memory when higher: seq never goes back) goes to the
        # file first; listeners hear of it once that commit holds (Journal._committed).
        commit = None
        for store in self._durable():
            commit = self.journal.submit([], store)
        if commit is not None:
            await asyncio.shield(commit)
        log.warning("memory rebuilt from %s; writes are taken again", self.path)

    async def close(self) -> None:
        self.journal.close()


def backup_file(source: Path, target: Path) -> None:
    """`python -m service backup PATH`: a consistent copy of a store file, even one a running
    server writes (WAL lets a reader copy beside the writer)."""
    if not source.exists():
        raise StoreFileError(f"{source} does not exist")
    source_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    with contextlib.closing(source_db) as conn, contextlib.closing(sqlite3.connect(target)) as out:
        conn.backup(out)
