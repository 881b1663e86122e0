"""The SQLite store under SIGKILL (issue 16): real `python -m service` processes on one file.

Several voters vote, change and retract votes and propose features over HTTP on two boards
while an admin closes a round; the server is killed (SIGKILL) at a seeded random moment, the
file is read as it was left, and the server is started again on it, several times in a row.
Every acknowledged (2xx) change must be there after each restart, nothing half-applied (each
feature's counts are the votes table's), seq never below one a client was shown, and when the
kill came with nothing in flight, every answer equals what the killed process answered.

Also the secret a durable store keeps beside its file: `token --admin` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from service.auth import Role
from service.config import PROJECT_ROOT

from .log_capture import log_path, save_log
from .ports import PortTaken, port_taken, start_on_free_port
from .test_main import SECRET, Server, clean_env, http, start_serving, stop, verifier
from .waiting import eventually, eventually_sync

SEED: Final = int(os.environ.get("FV_CRASH_SEED", "1616"))
CYCLES: Final = 4
VOTERS: Final = 6
FEATURES_AT_START: Final = 3  # per board, proposed by the admin before the first kill
PROPOSALS_PER_CYCLE: Final = 8  # at most, per cycle, over all voters (max_features stays far)
KILL_AFTER: Final = (15, 90)  # acknowledged changes in a cycle before its kill, drawn per cycle
NO_RATE_LIMITS_ENV: Final = {
    "FV_TOKEN_RATE": "0", "FV_VOTE_RATE": "0", "FV_CREATE_RATE": "0",
    "FV_WS_CONNECT_RATE": "0", "FV_BOARD_CREATE_RATE": "0",
}
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
START_TIMEOUT: Final = 15.0
# What a request whose server was killed meets: a reset or refused connection, a cut answer.
NO_ANSWER: Final = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
Key = tuple[str, str, int]  # (board, voter, feature)


def sqlite_env(db: Path, **extra: str) -> dict[str, str]:
    return clean_env(FV_STORE=f"sqlite:///{db}", FV_SECRET=SECRET, **NO_RATE_LIMITS_ENV, **extra)


# --- the file as the killed process left it --------------------------------------------------


@dataclass
class FileState:
    votes: dict[Key, int]
    features: dict[str, dict[int, tuple[str, str]]]  # board -> id -> (title, description)
    boards: dict[str, tuple[int, int]]  # slug -> (round, seq)
    rounds: dict[str, set[int]]  # board -> closed rounds

    def counts(self, board: str) -> dict[int, tuple[int, int]]:
        """Each feature's (up, down) as the votes table has it."""
        out = {fid: (0, 0) for fid in self.features.get(board, {})}
        for (b, _voter, fid), value in self.votes.items():
            if b == board:
                up, down = out.get(fid, (0, 0))
                out[fid] = (up + 1, down) if value > 0 else (up, down + 1)
        return out

    def votes_of(self, board: str, voter: str) -> dict[str, int]:
        return {str(f): v for (b, who, f), v in self.votes.items() if b == board and who == voter}


def read_file(db: Path) -> FileState:
    """The file, opened read-only (no checkpoint, no recovery written back)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        votes = {
            (board, voter, fid): value
            for board, fid, voter, value in conn.execute(
                "SELECT board, feature, voter, value FROM votes"
            )
        }
        features: dict[str, dict[int, tuple[str, str]]] = {}
        for board, fid, title, description in conn.execute(
            "SELECT board, id, title, description FROM features"
        ):
            features.setdefault(board, {})[fid] = (title, description)
        rows = conn.execute("SELECT slug, round, seq FROM boards")
        boards = {slug: (rnd, seq) for slug, rnd, seq in rows}
        rounds: dict[str, set[int]] = {}
        for board, rnd in conn.execute("SELECT board, round FROM rounds"):
            rounds.setdefault(board, set()).add(rnd)
    return FileState(votes, features, boards, rounds)


# --- what the clients were told ---------------------------------------------------------------


@dataclass
class Op:
    """One request that changes something: when it was sent, when (if ever) it was answered."""

    sent: float
    value: int = 0
    answered: float | None = None


@dataclass
class Model:
    """Every change the clients made, per cycle, and what they were answered."""

    boards: list[str]
    voters: dict[str, str]  # voter id -> token
    admin: str
    baseline: dict[Key, int] = field(default_factory=dict)  # the verified state at cycle start
    known: dict[str, list[int]] = field(default_factory=dict)  # features voters may vote on
    titles: dict[str, dict[str, int]] = field(default_factory=dict)  # acknowledged proposals
    round_at_start: dict[str, int] = field(default_factory=dict)
    max_seq: dict[str, int] = field(default_factory=dict)  # the highest seq a client was shown
    shown_by: dict[str, str] = field(default_factory=dict)  # and what showed it
    # this cycle:
    started: float = 0.0
    ops: dict[Key, list[Op]] = field(default_factory=dict)
    resets: dict[str, list[Op]] = field(default_factory=dict)
    doubtful_titles: dict[str, set[str]] = field(default_factory=dict)
    acks: int = 0
    in_doubt: int = 0
    unexpected: list[str] = field(default_factory=list)
    stopping: bool = False

    def new_cycle(self) -> None:
        self.started = time.monotonic()
        self.ops, self.resets, self.acks, self.in_doubt, self.stopping = {}, {}, 0, 0, False
        self.doubtful_titles = {b: set() for b in self.boards}

    def saw_seq(self, board: str, seq: Any, how: str) -> None:
        if isinstance(seq, int) and seq > self.max_seq.get(board, 0):
            self.max_seq[board] = seq
            self.shown_by[board] = how

    def possible(self, key: Key) -> set[int]:
        """The values the key may have now: its last acknowledged vote, or the later one that
        got no answer, either cleared by a round reset that may (or must) have come after it."""
        ops = self.ops.get(key, [])
        acked = [op for op in ops if op.answered is not None]
        start = acked[-1] if acked else Op(-math.inf, self.baseline.get(key, 0), self.started)
        candidates = [start]
        if ops and ops[-1].answered is None:
            candidates.append(ops[-1])
        resets = self.resets.get(key[0], [])
        found: set[int] = set()
        for op in candidates:
            done = op.answered
            must = any(r.answered is not None and done is not None and r.sent > done
                       for r in resets)
            may = any(r.answered is None or r.answered > op.sent for r in resets)
            if must:
                found.add(0)
            else:
                found.add(op.value)
                if may:
                    found.add(0)
        return found


# --- the server -------------------------------------------------------------------------------


def start_in(cwd: Path, env: dict[str, str], port: int) -> Server:
    """`python -m service` with its working directory `cwd`, once /healthz answers."""
    env = {"FV_HOST": "127.0.0.1", "PORT": str(port), "PYTHONPATH": str(PROJECT_ROOT), **env}
    log = log_path(f"server-{port}", env)
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=cwd, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if proc.poll() is not None:
            if port_taken(server.log_text()):
                raise PortTaken(server.log_text())
            pytest.fail(f"server exited with {proc.returncode}: {server.log_text()}")
        with contextlib.suppress(OSError):
            return http("GET", server.url + "/healthz", timeout=0.5).status == 200
        return False

    try:
        eventually_sync(up, START_TIMEOUT, what="the server answering /healthz", poll=0.05)
    except BaseException:
        stop(proc)
        raise
    return server


@contextlib.asynccontextmanager
async def running(db: Path) -> AsyncIterator[Server]:
    env = sqlite_env(db)
    server = await asyncio.to_thread(
        start_on_free_port, lambda port: start_serving(env, (), port, False)
    )
    try:
        yield server
    finally:
        stop(server.proc)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the clients ------------------------------------------------------------------------------


class Load:
    """Voters, an admin, a stats reader and a socket per board against one server."""

    def __init__(self, model: Model, session: aiohttp.ClientSession, url: str, cycle: int):
        self.model, self.session, self.url, self.cycle = model, session, url, cycle
        self.proposals = 0

    async def voter(self, index: int) -> None:
        model = self.model
        rng = random.Random(f"{SEED}-{self.cycle}-{index}")
        voter, token = list(model.voters.items())[index]
        auth = bearer(token)
        while not model.stopping:
            board = rng.choice(model.boards)
            roll = rng.random()
            if roll < 0.12 and self.proposals < PROPOSALS_PER_CYCLE:
                self.proposals += 1
                title = f"c{self.cycle}-v{index}-{self.proposals}"
                answer = await self.send(auth, "POST", f"/boards/{board}/features",
                                         {"title": title, "description": f"by {voter}"})
                if answer is None:
                    model.doubtful_titles[board].add(title)
                    return
                status, body = answer
                if status != 201 or body["title"] != title:
                    model.unexpected.append(f"propose {status} {body}")
                    return
                model.titles[board][title] = body["id"]
                model.known[board].append(body["id"])
                model.acks += 1
                continue
            fid = rng.choice(model.known[board])
            value = 0 if roll < 0.35 else rng.choice((1, -1))
            op = Op(time.monotonic(), value)
            model.ops.setdefault((board, voter, fid), []).append(op)
            path = f"/boards/{board}/features/{fid}/vote"
            answer = await (self.send(auth, "DELETE", path, None) if value == 0 else
                            self.send(auth, "PUT", path, {"value": value}))
            if answer is None:
                model.in_doubt += 1
                return
            status, body = answer
            if status != 200 or body["value"] != value or body["feature_id"] != fid:
                model.unexpected.append(f"vote {value} on {board}/{fid}: {status} {body}")
                return
            op.answered = time.monotonic()
            model.acks += 1

    async def send(self, auth: dict[str, str], method: str, path: str,
                   body: Any) -> tuple[int, Any] | None:
        try:
            async with self.session.request(method, self.url + path, json=body,
                                            headers=auth) as resp:
                data = await resp.json() if resp.content_type == "application/json" else None
                return resp.status, data
        except NO_ANSWER:
            return None

    async def admin(self, rng: random.Random) -> None:
        """One round reset on a random board, after a random number of changes."""
        model = self.model
        after = rng.randint(0, KILL_AFTER[0])
        board = rng.choice(model.boards)
        with contextlib.suppress(AssertionError):
            await eventually(lambda: model.acks >= after or model.stopping, what="changes")
        if model.stopping:
            return
        op = Op(time.monotonic())
        model.resets.setdefault(board, []).append(op)
        answer = await self.send(bearer(model.admin), "POST", f"/boards/{board}/reset", None)
        if answer is None:
            model.in_doubt += 1
            return
        status, body = answer
        if status != 200:
            model.unexpected.append(f"reset {board}: {status} {body}")
            return
        op.answered = time.monotonic()
        model.acks += 1

    async def reader(self) -> None:
        """Stats as a page loads them: every seq a 200 showed counts."""
        model = self.model
        while not model.stopping:
            for board in model.boards:
                answer = await self.send({}, "GET", f"/boards/{board}/stats", None)
                if answer is None:
                    return
                status, body = answer
                if status != 200:
                    model.unexpected.append(f"stats {board}: {status} {body}")
                    return
                model.saw_seq(board, body["seq"], "GET stats")
            await asyncio.sleep(0.02)  # pacing, not synchronisation: a page's poll

    async def watch(self, board: str, ready: asyncio.Event) -> None:
        """Every seq pushed on the board's socket."""
        with contextlib.suppress(*NO_ANSWER):
            async with self.session.ws_connect(f"{self.url}/boards/{board}/ws") as ws:
                ready.set()
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        frame = json.loads(msg.data)
                        self.model.saw_seq(board, frame.get("seq"), f"a {frame.get('type')} frame")
        ready.set()


# --- checks -----------------------------------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, url: str,
                   headers: dict[str, str] | None = None) -> Any:
    async with session.get(url, headers=headers or {}) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status} {await resp.text()}"
        return await resp.json()


async def all_features(session: aiohttp.ClientSession, url: str, board: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    for _ in range(50):  # bounded: far more pages than features
        query = f"?limit=200&cursor={cursor}" if cursor else "?limit=200"
        page = await get_json(session, f"{url}/boards/{board}/features{query}")
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the feature list does not end")


async def answers(session: aiohttp.ClientSession, url: str, board: str) -> dict[str, Any]:
    """What a client reads of a board: stats (but when it was made), features, rounds."""
    stats = await get_json(session, f"{url}/boards/{board}/stats")
    del stats["generated_at"]
    return {
        "stats": stats,
        "features": await all_features(session, url, board),
        "rounds": await get_json(session, f"{url}/boards/{board}/rounds"),
    }


def check_file(model: Model, found: FileState) -> None:
    """The file as the kill left it holds every acknowledged change, and only possible ones."""
    assert set(found.boards) == set(model.boards)
    for board in model.boards:
        titles = {title for title, _ in found.features.get(board, {}).values()}
        acked = set(model.titles[board])
        assert acked <= titles, f"acknowledged proposals lost on {board}: {acked - titles}"
        extra = titles - acked - model.doubtful_titles[board]
        assert not extra, f"features nobody proposed on {board}: {extra}"
        for title, fid in model.titles[board].items():
            assert found.features[board][fid][0] == title
        resets = model.resets.get(board, [])
        closed = found.boards[board][0] - model.round_at_start[board]
        done = sum(r.answered is not None for r in resets)
        assert done <= closed <= len(resets), f"{board}: {closed} rounds closed of {resets}"
        assert found.rounds.get(board, set()) == set(range(1, found.boards[board][0]))
    keys = set(model.baseline) | set(model.ops) | set(found.votes)
    for key in keys:
        assert key[1] in model.voters, f"a vote by nobody: {key}"
        value = found.votes.get(key, 0)
        assert value in model.possible(key), (
            f"{key}: the file has {value}, possible {model.possible(key)}, "
            f"ops {model.ops.get(key)}, resets {model.resets.get(key[0])}"
        )


async def check_restarted(model: Model, found: FileState, session: aiohttp.ClientSession,
                          url: str) -> None:
    """The restarted server answers what the file holds."""
    for board in model.boards:
        features = await all_features(session, url, board)
        counts = found.counts(board)
        assert {f["id"]: (f["up"], f["down"]) for f in features} == counts
        assert {f["id"]: (f["title"], f["description"]) for f in features} == found.features.get(
            board, {})
        stats = await get_json(session, f"{url}/boards/{board}/stats")
        assert stats["seq"] >= model.max_seq.get(board, 0), (
            f"{board}: seq {stats['seq']} after the restart, a client was shown "
            f"{model.max_seq.get(board)} ({model.shown_by.get(board)})"
        )
        assert stats["seq"] == found.boards[board][1]
        assert stats["board"]["round"] == found.boards[board][0]
        assert stats["up"] == sum(up for up, _ in counts.values())
        assert stats["down"] == sum(down for _, down in counts.values())
        for voter, token in model.voters.items():
            mine = await get_json(session, f"{url}/boards/{board}/me/votes", bearer(token))
            assert mine["votes"] == found.votes_of(board, voter)


def adopt(model: Model, found: FileState) -> None:
    """The verified state becomes the next cycle's starting point."""
    model.baseline = dict(found.votes)
    for board in model.boards:
        rows = found.features.get(board, {})
        model.known[board] = sorted(rows)
        model.titles[board] = {title: fid for fid, (title, _) in rows.items()}
        model.round_at_start[board] = found.boards[board][0]


# --- the crash test ---------------------------------------------------------------------------


async def setup_boards(session: aiohttp.ClientSession, url: str, model: Model) -> None:
    async with session.post(f"{url}/boards", json={"title": "Second"}) as resp:
        assert resp.status == 201, await resp.text()
        model.boards.append((await resp.json())["board"]["slug"])
    for board in model.boards:
        model.titles[board], model.known[board] = {}, []
        for i in range(FEATURES_AT_START):
            title = f"start-{i}"
            async with session.post(f"{url}/boards/{board}/features",
                                    json={"title": title, "description": "x" * 50 * i},
                                    headers=bearer(model.admin)) as resp:
                assert resp.status == 201, await resp.text()
                fid = (await resp.json())["id"]
            model.titles[board][title] = fid
            model.known[board].append(fid)
        stats = await get_json(session, f"{url}/boards/{board}/stats")
        model.round_at_start[board] = stats["board"]["round"]
        model.saw_seq(board, stats["seq"], "GET stats")


async def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    rng = random.Random(SEED)
    tokens = verifier(SECRET)
    voters = dict(
        (claims.sub, token)
        for token, claims in (tokens.issue(Role.VOTER) for _ in range(VOTERS))
    )
    model = Model(["main"], voters, tokens.issue(Role.ADMIN, "admin")[0])
    # At least one kill with nothing in flight (its answers are compared whole), the rest
    # under load, in a seeded order.
    quiet = rng.randrange(CYCLES)
    last_answers: dict[str, Any] | None = None
    found: FileState | None = None
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for cycle in range(CYCLES + 1):
            async with running(db) as server:
                if cycle == 0:
                    await setup_boards(session, server.url, model)
                else:
                    assert found is not None
                    await check_restarted(model, found, session, server.url)
                    adopt(model, found)
                    if last_answers is not None:
                        now = {b: await answers(session, server.url, b) for b in model.boards}
                        assert now == last_answers, "the restart changed what clients read"
                if cycle == CYCLES:
                    break
                last_answers = await crash_once(model, session, server, cycle, rng,
                                                quiet=cycle == quiet)
                assert server.proc.wait(timeout=10) == -9
            found = read_file(db)
            assert not model.unexpected, model.unexpected
            check_file(model, found)


async def crash_once(model: Model, session: aiohttp.ClientSession, server: Server, cycle: int,
                     rng: random.Random, *, quiet: bool) -> dict[str, Any] | None:
    """One cycle of load, ended by a SIGKILL; with `quiet`, the load stops first and what the
    process answers then is returned (to compare after the restart)."""
    model.new_cycle()
    load = Load(model, session, server.url, cycle)
    ready = {board: asyncio.Event() for board in model.boards}
    watchers = [asyncio.create_task(load.watch(b, r)) for b, r in ready.items()]
    for event in ready.values():
        await asyncio.wait_for(event.wait(), 10)
    workers = [asyncio.create_task(load.voter(i)) for i in range(VOTERS)]
    workers += [asyncio.create_task(load.admin(rng)), asyncio.create_task(load.reader())]
    target = rng.randint(*KILL_AFTER)
    snapshot = None
    try:
        await eventually(lambda: model.acks >= target or model.unexpected or
                         all(w.done() for w in workers), what=f"{target} acknowledged changes")
        if quiet:
            model.stopping = True
            await asyncio.wait_for(asyncio.gather(*workers), 10)
            snapshot = {b: await answers(session, server.url, b) for b in model.boards}
            for board, seen in snapshot.items():
                model.saw_seq(board, seen["stats"]["seq"], "GET stats")
        server.proc.kill()
    finally:
        model.stopping = True
        server.proc.kill()
        await asyncio.wait_for(asyncio.gather(*workers, *watchers), 15)
    assert model.acks >= target, f"only {model.acks} changes acknowledged: {model.unexpected}"
    if quiet:
        assert model.in_doubt == 0 and not any(model.doubtful_titles.values())
    return snapshot


# --- the secret kept beside the file ------------------------------------------------------------


def run_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(PROJECT_ROOT), **env}
    result = subprocess.run([sys.executable, "-m", "service", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    save_log("cli", result.stderr, env)
    return result


@contextlib.contextmanager
def serving_in(cwd: Path, env: dict[str, str]) -> Iterator[Server]:
    server = start_on_free_port(lambda port: start_in(cwd, env, port))
    try:
        yield server
    finally:
        stop(server.proc)


@pytest.mark.parametrize("named", [False, True], ids=["default-store", "FV_STORE-file"])
def test_token_admin_uses_the_secret_kept_beside_the_file(tmp_path: Path, named: bool) -> None:
    env = {k: v for k, v in clean_env(**NO_RATE_LIMITS_ENV).items() if k != "FV_STORE"}
    db = tmp_path / "data" / "feature-votes.sqlite3"
    if named:
        db = tmp_path / "y.sqlite3"
        env["FV_STORE"] = f"sqlite:///{db}"
    result = run_in(tmp_path, env, "token", "--admin")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token
    secret = db.with_name(db.name + ".secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = secret.read_bytes()
    with serving_in(tmp_path, env) as server:
        answer = http("PATCH", server.url + "/board", body={"title": "Kept"},
                      headers=bearer(token))
        assert answer.status == 200, answer.body
        assert "admin token:" not in server.log_text()  # no random secret of its own
    assert db.exists()
    assert secret.read_bytes() == before
    # A second token, minted after the server ran, is accepted by the next one too.
    again = run_in(tmp_path, env, "token", "--admin").stdout.strip()
    with serving_in(tmp_path, env) as server:
        answer = http("GET", server.url + "/board")
        assert answer.json()["title"] == "Kept"  # and the title outlived the restart
        answer = http("PATCH", server.url + "/board", body={"title": "Again"},
                      headers=bearer(again))
        assert answer.status == 200, answer.body


def test_token_admin_without_secret_on_the_memory_store_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in clean_env().items() if k != "FV_SECRET"}
    env["FV_STORE"] = "memory"
    result = run_in(tmp_path, env, "token", "--admin")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip() and "FV_SECRET" in result.stderr
    assert not (tmp_path / "data").exists()
