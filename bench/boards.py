"""Boards benchmark: vote cost with 10,000 boards, sockets on other boards, memory per board.

    .venv/bin/python bench/boards.py            # 10,000 boards, 5,000 sockets; 3 repetitions
                                                # (~15 min, + up to 30 s per round for quiet)
    .venv/bin/python bench/boards.py --quick    # 1,000 boards, 1,000 sockets; 2 short reps (~2 min)
    .venv/bin/python bench/boards.py --only store,memory   # a subset of the four parts
    .venv/bin/python bench/boards.py --only http --keep-others  # one part; the others' figures
                                                # kept from the last results file (meta says so)

Four parts (issue 15's "Benchmarks"), each a ratio against a reference measured in the same run:
  * store: vote cost in a directory of 10,000 boards (10 features each) ÷ in a directory of one
    board (10 features), for MemoryBoards and RedisBoards (service/store), through the directory
    as the service calls it: `await boards.get(slug)` then `set_vote`. The votes of the many-board
    case go to a random board each (the flip and the retraction of a vote to the same board), and,
    as a second figure, all to one board among the 10,000. Vote pattern, CPU accounting, chunking
    and gc.freeze as bench/boardsize.py: distinct (voter, feature) pairs, +1/-1, each flipped,
    each retracted; CPU = this thread's time plus, for Redis, its redis-server's run time
    (schedstat). One redis-server per directory (own port, no persistence, stopped at the end).
  * http: the store figure end to end, memory store: two `python -m service` (FV_STORE=memory,
    rate limits off, FV_MAX_BOARDS twice the boards), pinned to CPU 0, seeded through the API
    (POST /boards, POST /boards/{slug}/features): one with main alone (10 features), one with
    10,000 (quick 1,000) boards of 10 features. Per run, 30,000 (quick 6,000) votes from wrk
    (-t1 -c50, CPU 1, bench/boards_wrk.lua sends each request of a generated file once):
    PUT/DELETE /boards/{slug}/features/{id}/vote, voters on 5 distinct (board, feature) pairs
    each, +1/-1, each flipped, each retracted; on random boards, and on the many-board server
    also all on one board. Figure: the server's CPU (utime + stime, /proc/<pid>/stat) per vote,
    many ÷ one, median of the repetitions' ratios (order alternating each round, a warm-up
    round dropped). Redis is not measured this way (seeding 10,000 boards through the API into
    Redis alone would take minutes; the store part's Redis ratio is 1.11).
  * sockets: one `python -m service` (memory store, rate limits off), pinned to CPU 0. Board B
    has 10 features and 10 watching sockets; 100 (quick 50) other boards exist. Per repetition,
    both conditions in turn (order alternating): "none" = only B's sockets; "others" = plus 5,000
    (quick 1,000) idle sockets spread evenly over the other boards, opened by a separate client
    process (this script with --sockets-client: aiohttp, pinned to CPU 1, answers pings) and
    closed again after the condition. In each condition the server's CPU (run time of its
    threads, schedstat) is taken over a window of votes on B at a fixed rate (PUT/DELETE
    /boards/{B}/features/{id}/vote, one at a time, 40/s so each vote gets its own push to B's
    sockets) and over an idle window of the same length (no votes); in a full run each window
    lasts one ws_heartbeat period (30 s, 1,200 votes), so each holds one keep-alive sweep of
    every board. Figure: CPU per vote net of the idle window's CPU (what the sockets cost whether
    or not anyone votes: pings and their PONGs), and gross; both as others ÷ none, median of the
    repetitions' ratios.
  * memory: a child process creates 10,000 (quick 2,000) empty boards through
    MemoryBoards.create: tracemalloc's traced bytes per board (and its top allocation sites), and
    the child's RSS growth per board over the same number created without tracemalloc.
Before each repetition the script waits (bounded) for a quiet machine. Servers run on CPU 0, this
process and the socket client on CPU 1 (taskset), if possible.
Results: bench/results/boards[-quick].md/.json (report.py puts the targets in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import boardsize as bs
import rest as rb

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from service.schemas import FeatureCreate  # noqa: E402
from service.store.base import BoardDirectory  # noqa: E402
from service.store.memory import MemoryBoards  # noqa: E402
from service.store.redis import RedisBoards  # noqa: E402

HOST = "127.0.0.1"
FEATURES = 10
TARGET_VOTE = 1.2  # vote cost with many boards ÷ with one
TARGET_SOCKETS = 1.1  # server CPU per vote with sockets on other boards ÷ without
TARGET_KIB = 4.0  # memory per empty board
WATCHERS = 10  # sockets on the voted board, in both conditions
# The service's default ws_heartbeat: every board's broadcaster pings its sockets once per period
# (and reads their PONGs). The boards' sweeps fall within the second their sockets connected in,
# so a full run's windows last one period each: each holds one sweep of every board.
HEARTBEAT = 30.0
UNLIMITED = {f"FV_{n}_RATE": "0" for n in ("TOKEN", "VOTE", "CREATE", "WS_CONNECT", "BOARD_CREATE")}
PARTS = ("store", "http", "sockets", "memory")
LUA = BENCH / "boards_wrk.lua"
HTTP_PAIRS = 5  # distinct (board, feature) pairs per voter and run of the HTTP part
HTTP_CONNECTIONS = 50
NO_DISK = ("--save", "", "--appendonly", "no")
SCRIPT = str(Path(__file__).resolve())


@dataclass
class Plan:
    boards: int  # boards in the many-board directory (main included)
    reps: int
    store_k: dict[str, int]  # votes per pass (x3: vote, flip, retract) per repetition
    chunks: int
    sockets: int  # idle sockets on other boards
    socket_boards: int  # the other boards they spread over
    vote_rate: float  # votes/s on the voted board
    votes: int  # votes per window (x3 pattern, so a multiple of 3)
    empty_boards: int  # boards created for the memory figure
    http_votes: int  # votes per run of the HTTP part (x3 pattern: a multiple of 3 * HTTP_PAIRS)


# --- part 1: vote cost through the directory --------------------------------------------------


@dataclass
class Directory:
    store: str  # memory | redis
    name: str  # "1 board" | "10k boards"
    boards: BoardDirectory
    slugs: list[str]
    pids: list[int] = field(default_factory=list)  # redis-server


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def feature(i: int) -> FeatureCreate:
    return FeatureCreate(
        title=f"Feature {i}: seeded by the boards benchmark",
        description="A short description, as most proposals have one.",
    )


async def seed_directory(boards: BoardDirectory, n: int) -> list[str]:
    """main plus n - 1 boards, FEATURES features each; returns every slug, main first."""
    slugs = [boards.main.slug]
    for start in range(1, n, 200):
        made = await asyncio.gather(
            *(boards.create(f"Board {i}") for i in range(start, min(n, start + 200)))
        )
        slugs += [s.slug for s in made]
    for start in range(0, n, 100):
        stores = [await boards.get(s) for s in slugs[start : start + 100]]
        await asyncio.gather(
            *(
                st.create_feature(feature(i), owner="bench")
                for st in stores
                for i in range(FEATURES)
            )
        )
    return slugs


BoardVotes = list[tuple[str, int, int, int]]  # (slug, voter index, feature, value)


def board_pairs(rng: random.Random, slugs: list[str], k: int) -> BoardVotes:
    first = [
        (rng.choice(slugs), j, rng.randint(1, FEATURES), 1 if j % 2 == 0 else -1) for j in range(k)
    ]
    return [
        *first,
        *((s, j, f, -v) for s, j, f, v in first),
        *((s, j, f, 0) for s, j, f, _ in first),
    ]


async def directory_votes(d: Directory, slugs: list[str], k: int) -> tuple[int, int]:
    """(CPU ns, votes) of 3k votes through the directory on boards drawn from `slugs`."""
    votes = board_pairs(RNG, slugs, k)

    async def run() -> None:
        for slug, j, f, v in votes:
            store = await d.boards.get(slug)
            await store.set_vote(f"bench-{j}", f, v)

    client, server = await bs.timed(d.pids, run)
    return client + sum(server), len(votes)


RNG = random.Random(20261204)


async def part_store(
    plan: Plan, args: argparse.Namespace, pin: list[str], logdir: Path
) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    dirs: list[Directory] = []
    seeding: dict[str, float] = {}
    names: list[tuple[str, str]] = []  # the rows, in order
    try:
        for store, sizes in (("memory", (1, 100, plan.boards)), ("redis", (1, plan.boards))):
            for n in sizes:
                name = "1 board" if n == 1 else f"{label(n)} boards"
                pids: list[int] = []
                boards: BoardDirectory
                if store == "memory":
                    boards = MemoryBoards(max_boards=n)
                else:
                    port = bs.free_port()
                    redis = bs.spawn(
                        [*pin, "redis-server", "--port", str(port), "--bind", HOST, *NO_DISK],
                        logdir / f"redis-{n}.log",
                    )
                    procs.append(redis)
                    pids = [redis.pid]
                    boards = RedisBoards(
                        f"redis://{HOST}:{port}/0",
                        max_boards=n,
                        socket_timeout=60,
                        connect_timeout=5,
                        max_connections=64,
                    )
                    for _ in range(100):
                        with contextlib.suppress(Exception):
                            await boards.ping()
                            break
                        await asyncio.sleep(0.05)
                    await boards.start()
                t0 = time.monotonic()
                slugs = await seed_directory(boards, n)
                seeding[f"{store} {name}"] = time.monotonic() - t0
                dirs.append(Directory(store, name, boards, slugs, pids))
                names += [(store, name)] + ([(store, f"{name}, one of them")] if n > 1 else [])
        gc.collect()
        gc.freeze()
        print(f"  store: seeded {seeding}", file=sys.stderr)
        out: dict[tuple[str, str], list[float]] = defaultdict(list)
        for rep in range(plan.reps + 1):  # round 0 warms up (and visits every board once)
            await bs.wait_quiet(args.quiet_wait)
            acc: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
            for chunk in range(plan.chunks):
                turn = (rep + chunk) % len(dirs)
                for d in dirs[turn:] + dirs[:turn]:
                    k = max(1, plan.store_k[d.store] // plan.chunks)
                    if rep == 0:
                        k = max(k, len(d.slugs) // 3 // plan.chunks + 1)
                    ns, n = await directory_votes(d, d.slugs, k)
                    a = acc[(d.store, d.name)]
                    a[0], a[1] = a[0] + ns, a[1] + n
                    if len(d.slugs) > 1:  # the same votes, all on one board among the many
                        ns, n = await directory_votes(d, d.slugs[1:2], k)
                        a = acc[(d.store, d.name + ", one of them")]
                        a[0], a[1] = a[0] + ns, a[1] + n
            if rep > 0:
                for key, (ns, n) in acc.items():
                    out[key].append(ns / n / 1000)
            print(f"  store: round {rep} done", file=sys.stderr)
        for d in dirs:
            await d.boards.close()
    finally:
        for p in reversed(procs):
            bs.stop(p)
    rows = []
    for store in ("memory", "redis"):
        base = out[(store, "1 board")]
        for name in [n for s, n in names if s == store]:
            vals = out[(store, name)]
            ratios = [v / b for v, b in zip(vals, base, strict=True)]
            rows.append(
                {
                    "store": store,
                    "directory": name,
                    "vote_us": statistics.median(vals),
                    "ratio": statistics.median(ratios),
                    "ratios": [round(r, 3) for r in ratios],
                    "vote_us_reps": [round(v, 2) for v in vals],
                }
            )
    return {"rows": rows, "seeding_s": {k: round(v, 1) for k, v in seeding.items()}}


# --- part 1b: vote cost over HTTP, end to end ------------------------------------------------


@dataclass
class HttpBoards:
    """One `python -m service` (memory store) seeded through its API."""

    name: str  # "1 board" | "10k boards"
    server: rb.Server
    features: dict[str, list[int]]  # slug -> feature ids, main first
    tokens: list[str] = field(default_factory=list)


async def seed_http(session: aiohttp.ClientSession, base: str, n: int) -> dict[str, list[int]]:
    """main plus n - 1 boards through POST /boards, FEATURES features each through POST
    /boards/{slug}/features (32 requests at a time); slug -> feature ids, main first."""
    gate = asyncio.Semaphore(32)
    owner = (await post_json(session, base + "/auth/token", None))["token"]

    async def board(i: int) -> str:
        async with gate:
            made = await post_json(session, base + "/boards", {"title": f"Board {i}"})
            return str(made["board"]["slug"])

    slugs = ["main", *await asyncio.gather(*(board(i) for i in range(1, n)))]
    found: dict[str, list[int]] = {s: [] for s in slugs}

    async def add(slug: str, i: int) -> None:
        body = {"title": feature(i).title, "description": feature(i).description}
        async with gate:
            made = await post_json(session, f"{base}/boards/{slug}/features", body, owner)
        found[slug].append(int(made["id"]))

    for start in range(0, n, 500):  # a few thousand requests pending at a time
        await asyncio.gather(
            *(add(s, i) for s in slugs[start : start + 500] for i in range(FEATURES))
        )
    return found


async def http_tokens(session: aiohttp.ClientSession, base: str, k: int) -> list[str]:
    gate = asyncio.Semaphore(32)

    async def one() -> str:
        async with gate:
            return str((await post_json(session, base + "/auth/token", None))["token"])

    return list(await asyncio.gather(*(one() for _ in range(k))))


def http_vote_lines(
    rng: random.Random, features: dict[str, list[int]], slugs: list[str], tokens: list[str], n: int
) -> list[str]:
    """n requests (boards.py --quick: fewer) for boards_wrk.lua: n // 3 // HTTP_PAIRS voters,
    each on HTTP_PAIRS distinct (board, feature) pairs drawn from `slugs` (+1 for even voters,
    -1 for odd), in random order; then each flipped, then each retracted (DELETE), in the same
    order. Every request changes a vote and the boards end as they began."""
    first = []
    for j in range(n // 3 // HTTP_PAIRS):
        pairs: set[tuple[str, int]] = set()
        while len(pairs) < HTTP_PAIRS:
            slug = rng.choice(slugs)
            pairs.add((slug, rng.choice(features[slug])))
        first += [(j, s, f, 1 if j % 2 == 0 else -1) for s, f in sorted(pairs)]
    rng.shuffle(first)

    def line(j: int, slug: str, f: int, v: int) -> str:
        path = f"/boards/{slug}/features/{f}/vote"
        if v:
            return f'PUT\t{path}\t{tokens[j]}\t{{"value":{v}}}'
        return f"DELETE\t{path}\t{tokens[j]}\t"

    return [
        *(line(j, s, f, v) for j, s, f, v in first),
        *(line(j, s, f, -v) for j, s, f, v in first),
        *(line(j, s, f, 0) for j, s, f, _ in first),
    ]


def http_run(
    target: HttpBoards, votes_file: Path, client_pin: list[str], connections: int
) -> dict[str, Any]:
    """Send every request of votes_file once with wrk; the server's CPU (utime + stime) from just
    before wrk starts until every vote has been answered, per vote."""
    pid = target.server.proc.pid
    cmd = [*client_pin, "wrk", "-t1", f"-c{connections}", "-d300s", "--latency", "-s", str(LUA)]
    cmd += [f"http://{HOST}:{target.server.port}/", "--", str(votes_file)]
    self_pid = os.getpid()
    t0, b0 = time.monotonic(), rb.machine_busy()
    s0, m0 = rb.cpu_seconds(pid), rb.cpu_seconds(self_pid)
    wrk = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=rb._die_with_parent
    )
    assert wrk.stdout is not None
    head = []
    try:
        for raw in wrk.stdout:  # until the script says every vote was answered (or wrk ends)
            head.append(raw.decode(errors="replace"))
            if raw.startswith(b"boards-wrk answered"):
                break
        t1, b1, s1 = time.monotonic(), rb.machine_busy(), rb.cpu_seconds(pid)
        m1 = rb.cpu_seconds(self_pid)
        wrk_s = rb.cpu_seconds(wrk.pid) if wrk.poll() is None else math.nan
        wrk.send_signal(signal.SIGINT)  # wrk sleeps for -d otherwise
        out = "".join(head) + wrk.stdout.read().decode(errors="replace")
        wrk.wait(10)
    finally:
        rb.stop_process(wrk, grace=2)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited {wrk.returncode}:\n{out[-2000:]}")
    script = rb.parse_wrk(out)["script"]
    votes, window = int(script["answered"]), t1 - t0
    bad = {k: v for k, v in script["statuses"].items() if k != "200"}
    if bad or votes != int(script["sent"]):
        raise RuntimeError(f"{target.name}: {votes} of {script['sent']} answered; {script}")
    other = (b1 - b0) - (s1 - s0) - wrk_s - (m1 - m0)
    return {
        "votes": votes,
        "fillers": int(script["fillers"]),
        "server_cpu_s": round(s1 - s0, 3),
        "us_per_vote": 1e6 * (s1 - s0) / votes,
        "votes_per_s": votes / window,
        "p99_ms": script["p99_us"] / 1000,
        "server_cpu_pct": 100 * (s1 - s0) / window,
        "wrk_cpu_pct": 100 * wrk_s / window,
        "other_cpu_pct": max(0.0, 100 * other / window),
    }


async def part_http(
    plan: Plan, args: argparse.Namespace, pin: list[str], client_pin: list[str], logdir: Path
) -> dict[str, Any]:
    python = str(ROOT / ".venv" / "bin" / "python")
    extra = {**UNLIMITED, "FV_MAX_BOARDS": str(2 * plan.boards), "FV_STORE": "memory"}
    many = f"{label(plan.boards)} boards"
    targets: dict[str, HttpBoards] = {}
    seeding: dict[str, float] = {}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    rng = random.Random(20261205)
    runs: list[dict[str, Any]] = []
    try:
        for name, n in (("1 board", 1), (many, plan.boards)):
            server = rb.start_server("ours", python, pin, logdir, extra)
            base = f"http://{HOST}:{server.port}"
            t0 = time.monotonic()
            features = await seed_http(session, base, n)
            seeding[name] = round(time.monotonic() - t0, 1)
            target = HttpBoards(name, server, features)
            target.tokens = await http_tokens(session, base, plan.http_votes // 3 // HTTP_PAIRS)
            targets[name] = target
            print(f"  http: seeded {name} in {seeding[name]} s", file=sys.stderr)
        slugs = {name: list(t.features) for name, t in targets.items()}
        # (row, server, boards the votes go to): random boards; then all on one of the many
        conds = [
            ("1 board", "1 board", slugs["1 board"]),
            (many, many, slugs[many]),
            (f"{many}, one of them", many, slugs[many][1:2]),
        ]
        for rep in range(plan.reps + 1):  # round 0 warms up (and visits the boards)
            waited = await bs.wait_quiet(args.quiet_wait)
            order = conds if rep % 2 == 0 else conds[::-1]
            for row, name, board_slugs in order:
                target = targets[name]
                lines = http_vote_lines(
                    rng, target.features, board_slugs, target.tokens, plan.http_votes
                )
                votes_file = logdir / "votes.txt"
                votes_file.write_text("\n".join(lines) + "\n")
                run = http_run(target, votes_file, client_pin, HTTP_CONNECTIONS)
                run.update(rep=rep, row=row, waited_s=round(waited, 1))
                print(
                    f"  http: round {rep} {row}: {run['us_per_vote']:.1f} µs/vote, "
                    f"{run['votes_per_s']:.0f} votes/s, server CPU {run['server_cpu_pct']:.0f}%, "
                    f"wrk {run['wrk_cpu_pct']:.0f}%, other {run['other_cpu_pct']:.0f}%",
                    file=sys.stderr,
                )
                if rep > 0:
                    runs.append(run)
        rss = {name: round(bs.rss_mib(t.server.proc.pid), 1) for name, t in targets.items()}
    finally:
        await session.close()
        for t in targets.values():
            rb.stop_process(t.server.proc)
    by: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by[r["row"]][r["rep"]] = r
    reps = sorted(by["1 board"])
    rows = []
    for row, _, _ in conds:
        vals = [by[row][i]["us_per_vote"] for i in reps]
        ratios = [v / by["1 board"][i]["us_per_vote"] for v, i in zip(vals, reps, strict=True)]
        rows.append(
            {
                "directory": row,
                "vote_us": statistics.median(vals),
                "ratio": statistics.median(ratios),
                "ratios": [round(x, 3) for x in ratios],
                "vote_us_reps": [round(v, 1) for v in vals],
                "votes_per_s": statistics.median(by[row][i]["votes_per_s"] for i in reps),
                "p99_ms": statistics.median(by[row][i]["p99_ms"] for i in reps),
                "other_cpu_max_pct": max(by[row][i]["other_cpu_pct"] for i in reps),
            }
        )
    return {"rows": rows, "runs": runs, "seeding_s": seeding, "rss_mib": rss}


# --- part 2: sockets on other boards ----------------------------------------------------------


async def sockets_client() -> int:
    """--sockets-client: read {"urls": [...]} from stdin's first line, open one socket per URL,
    print {"connected": n, "failed": m}, keep them open (reading; aiohttp answers pings) until
    stdin closes or says "close", then close them all and print {"closed": n}."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)  # the first line lists every URL
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    urls = json.loads(await reader.readline())["urls"]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    failed = 0
    gate = asyncio.Semaphore(100)

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    async def connect(url: str) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(5):
                try:
                    ws = await session.ws_connect(url, autoping=True, compress=0)
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                sockets.append(ws)
                readers.add(asyncio.create_task(drain(ws)))
                return
            failed += 1

    readers: set[asyncio.Task[None]] = set()
    await asyncio.gather(*(connect(u) for u in urls))
    print(json.dumps({"connected": len(sockets), "failed": failed}), flush=True)
    while (line := await reader.readline()) and line.strip() != b"close":
        pass
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await session.close()
    print(json.dumps({"closed": len(sockets)}), flush=True)
    return 0


class SocketFleet:
    """A --sockets-client child process holding `urls` open."""

    def __init__(self, urls: list[str], pin: list[str]) -> None:
        self.urls, self.pin = urls, pin
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SocketFleet:
        self.proc = await asyncio.create_subprocess_exec(
            *self.pin,
            sys.executable,
            SCRIPT,
            "--sockets-client",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"urls": self.urls}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 300)
        got = json.loads(line or b"{}")
        if got.get("connected") != len(self.urls):
            raise RuntimeError(f"socket client: {got} of {len(self.urls)}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc and self.proc.stdin and self.proc.stdout
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"close\n")
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 120)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def post_json(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None, token: str = ""
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST {url} answered {resp.status}: {await resp.text()}")
        return await resp.json()


async def vote_window(
    session: aiohttp.ClientSession, base: str, tokens: list[str], rate: float, n: int
) -> float:
    """n votes (the x3 pattern over FEATURES features) at `rate`/s, one at a time; elapsed s."""
    votes = bs.pairs(RNG, FEATURES, n // 3)
    started = time.monotonic()
    for i, (j, f, v) in enumerate(votes):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        url = f"{base}/features/{f}/vote"
        headers = {"Authorization": f"Bearer {tokens[j]}"}
        method = "PUT" if v else "DELETE"
        body = {"value": v} if v else None
        async with session.request(method, url, json=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {url} answered {resp.status}")
    return time.monotonic() - started


async def part_sockets(
    plan: Plan, args: argparse.Namespace, pin: list[str], client_pin: list[str], logdir: Path
) -> dict[str, Any]:
    port = bs.free_port()
    base = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
    env.update(UNLIMITED, FV_SECRET=os.urandom(24).hex(), FV_HOST=HOST, PORT=str(port))
    env.update(FV_STORE="memory")
    log = logdir / "service.log"
    python = str(ROOT / ".venv" / "bin" / "python")
    proc = bs.spawn([*pin, python, "-m", "service"], log, env)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    runs: list[dict[str, Any]] = []
    first_growth: float | None = None
    try:
        await bs.wait_http(session, base, proc, log)
        voted = (await post_json(session, base + "/boards", {"title": "The voted board"}))["board"]
        board_url = f"{base}/boards/{voted['slug']}"
        owner = (await post_json(session, base + "/auth/token", None))["token"]
        for i in range(FEATURES):
            body = {"title": feature(i).title, "description": feature(i).description}
            await post_json(session, board_url + "/features", body, owner)
        others = []
        for i in range(plan.socket_boards):
            made = await post_json(session, base + "/boards", {"title": f"Other board {i}"})
            others.append(made["board"]["slug"])
        ws = f"ws://{HOST}:{port}/boards"
        other_urls = [f"{ws}/{others[i % len(others)]}/ws" for i in range(plan.sockets)]
        tokens = await bs.tokens(session, base, plan.votes // 3)
        pid = proc.pid
        async with SocketFleet([f"{ws}/{voted['slug']}/ws"] * WATCHERS, client_pin):
            for rep in range(plan.reps + 1):  # round 0 warms up
                waited = await bs.wait_quiet(args.quiet_wait)
                order = ("none", "others") if rep % 2 == 0 else ("others", "none")
                for cond in order:
                    urls = other_urls if cond == "others" else []
                    async with contextlib.AsyncExitStack() as stack:
                        rss0 = bs.rss_mib(pid)
                        if urls:
                            await stack.enter_async_context(SocketFleet(urls, client_pin))
                        await asyncio.sleep(1.0)  # the connect burst settles
                        rss = bs.rss_mib(pid)
                        if urls and first_growth is None:  # later connects reuse that memory
                            first_growth = (rss - rss0) * 1024 / len(urls)
                        c0 = bs.cpu_ns(pid)
                        elapsed = await vote_window(
                            session, board_url, tokens, plan.vote_rate, plan.votes
                        )
                        c1 = bs.cpu_ns(pid)
                        await asyncio.sleep(elapsed)
                        c2 = bs.cpu_ns(pid)
                    run = {
                        "rep": rep,
                        "cond": cond,
                        "votes": plan.votes,
                        "window_s": round(elapsed, 2),
                        "vote_cpu_ms": (c1 - c0) / 1e6,
                        "idle_cpu_ms": (c2 - c1) / 1e6,
                        "rss_mib": round(rss, 1),
                        "waited_s": round(waited, 1),
                    }
                    run["gross_us"] = (c1 - c0) / plan.votes / 1000
                    run["net_us"] = (c1 - c0 - (c2 - c1)) / plan.votes / 1000
                    print(
                        f"  sockets: round {rep} {cond}: {run['gross_us']:.0f} µs/vote gross, "
                        f"{run['net_us']:.0f} net, idle {run['idle_cpu_ms']:.1f} ms, "
                        f"RSS {rss:.0f} MiB",
                        file=sys.stderr,
                    )
                    if rep > 0:
                        runs.append(run)
    finally:
        await session.close()
        bs.stop(proc)
    by: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by[r["cond"]][r["rep"]] = r
    reps = sorted(by["none"])
    summary: dict[str, Any] = {}
    for key in ("gross_us", "net_us", "idle_cpu_ms"):
        for cond in ("none", "others"):
            summary[f"{cond}_{key}"] = statistics.median(by[cond][i][key] for i in reps)
    for key in ("gross_us", "net_us"):
        ratios = [by["others"][i][key] / by["none"][i][key] for i in reps]
        summary[f"{key}_ratio"] = statistics.median(ratios)
        summary[f"{key}_ratios"] = [round(r, 3) for r in ratios]
    summary["kib_per_socket"] = first_growth
    return {"summary": summary, "runs": runs}


# --- part 3: memory per empty board -----------------------------------------------------------


async def memory_probe(n: int) -> int:
    """--memory-probe N (a fresh child): RSS growth over N boards made without tracemalloc, then
    tracemalloc's bytes over N more; prints one JSON line."""
    import tracemalloc

    first = MemoryBoards(max_boards=n + 1)
    gc.collect()
    rss0 = rss_bytes()
    for i in range(n):
        await first.create(f"Board {i}")
    gc.collect()
    rss1 = rss_bytes()
    second = MemoryBoards(max_boards=n + 1)
    gc.collect()
    tracemalloc.start(1)
    s0 = tracemalloc.take_snapshot()
    for i in range(n):
        await second.create(f"Board {i}")
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diffs = s1.compare_to(s0, "lineno")
    traced = sum(d.size_diff for d in diffs)
    top = []
    for d in diffs[:8]:
        frame = d.traceback[0]
        where = f"{short_path(frame.filename)}:{frame.lineno}"
        top.append({"where": where, "bytes_per_board": d.size_diff / n})
    print(json.dumps({"boards": n, "rss": rss1 - rss0, "traced": traced, "top": top}))
    return 0


def short_path(filename: str) -> str:
    where = os.path.relpath(filename, ROOT)
    return where.split("site-packages/", 1)[-1] if where.startswith(".venv") else where


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return 1024 * next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def part_memory(plan: Plan) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, SCRIPT, "--memory-probe", str(plan.empty_boards)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    n = got["boards"]
    return {
        "boards": n,
        "traced_kib": got["traced"] / n / 1024,
        "rss_kib": got["rss"] / n / 1024,
        "top": got["top"],
    }


# --- report -----------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def targets_of(plan: Plan, res: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    many = f"{label(plan.boards)} boards"
    for r in res.get("store", {}).get("rows", []):
        if r["directory"] == many:
            found.append(
                {
                    "figure": f"vote cost with {label(plan.boards)} boards ({FEATURES} features "
                    f"each) ÷ with 1 ({r['store']} store)",
                    "value": r["ratio"],
                    "target": f"≤ {TARGET_VOTE:g}",
                    "met": r["ratio"] <= TARGET_VOTE,
                    "note": "votes on random boards",
                }
            )
    for r in res.get("http", {}).get("rows", []):
        if r["directory"] == many:
            one = next(x for x in res["http"]["rows"] if x["directory"].endswith("one of them"))
            found.append(
                {
                    "figure": f"vote cost with {label(plan.boards)} boards ({FEATURES} features "
                    "each) ÷ with 1 (memory store, HTTP end to end)",
                    "value": r["ratio"],
                    "target": f"≤ {TARGET_VOTE:g}",
                    "met": r["ratio"] <= TARGET_VOTE,
                    "note": f"server CPU per vote, wrk -c{HTTP_CONNECTIONS}, votes on random "
                    f"boards; all on one of them {one['ratio']:.2f}",
                }
            )
    if "sockets" in res:
        s = res["sockets"]["summary"]
        found.append(
            {
                "figure": f"server CPU per vote with {plan.sockets:,} sockets on other boards "
                "÷ with none",
                "value": s["net_us_ratio"],
                "target": f"≤ {TARGET_SOCKETS:g}",
                "met": s["net_us_ratio"] <= TARGET_SOCKETS,
                "note": f"net of the idle sockets' CPU; gross {s['gross_us_ratio']:.2f}",
            }
        )
    if "memory" in res:
        m = res["memory"]
        found.append(
            {
                "figure": "memory per empty board KiB (memory store)",
                "value": m["traced_kib"],
                "target": f"≤ {TARGET_KIB:g}",
                "met": m["traced_kib"] <= TARGET_KIB,
                "note": f"tracemalloc; RSS growth {m['rss_kib']:.2f}",
            }
        )
    return found


def render(
    plan: Plan, res: dict[str, Any], meta: dict[str, str], found: list[dict[str, Any]]
) -> str:
    out = [
        "## Boards: vote cost with many boards, sockets on other boards, memory per board",
        "",
        *(f"- **{k}**: {v}" for k, v in meta.items()),
        "",
    ]
    if "store" in res:
        out += [
            "### Vote cost through the board directory",
            "",
            "CPU per `set_vote` (this thread, plus redis-server for Redis) with the board looked "
            "up through the directory each time; median of the repetitions; ratio = median of "
            "each repetition's ratio to the one-board directory.",
            "",
            "| store | directory | vote µs | ÷ 1 board | per repetition |",
            "|---|---|---:|---:|---|",
        ]
        for r in res["store"]["rows"]:
            out.append(
                f"| {r['store']} | {r['directory']} | {fmt(r['vote_us'], 2)} "
                f"| {r['ratio']:.2f} | {', '.join(f'{x:.2f}' for x in r['ratios'])} |"
            )
        out.append("")
    if "http" in res:
        h = res["http"]
        out += [
            "### Vote cost over HTTP, end to end (memory store)",
            "",
            f"Two `python -m service` on CPU 0 (FV_STORE=memory, rate limits off), one seeded "
            f"through the API with 1 board, one with {label(plan.boards)} boards, "
            f"{FEATURES} features each (seeding: "
            + ", ".join(f"{k} {v} s" for k, v in h["seeding_s"].items())
            + "; server RSS at the end: "
            + ", ".join(f"{k} {v} MiB" for k, v in h["rss_mib"].items())
            + f"). Per run {plan.http_votes:,} votes from wrk -t1 -c{HTTP_CONNECTIONS} on CPU 1 "
            "(bench/boards_wrk.lua: PUT/DELETE /boards/{slug}/features/{id}/vote, each request "
            f"once; {plan.http_votes // 3 // HTTP_PAIRS:,} voters on {HTTP_PAIRS} distinct "
            "(board, feature) pairs each, +1/-1, each flipped, each retracted), on random boards "
            "or all on one board among the many. CPU = the server's utime + stime "
            "(/proc/<pid>/stat) per vote; medians of the repetitions (order alternating); ratio "
            "= median of each repetition's ratio to the one-board server. Other load = CPU of "
            "processes outside the benchmark during a run (worst run, % of one core).",
            "",
            "| directory | CPU µs/vote | ÷ 1 board | per repetition | votes/s | p99 ms "
            "| other load % |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for r in h["rows"]:
            out.append(
                f"| {r['directory']} | {fmt(r['vote_us'])} | {r['ratio']:.2f} "
                f"| {', '.join(f'{x:.2f}' for x in r['ratios'])} | {fmt(r['votes_per_s'], 0)} "
                f"| {fmt(r['p99_ms'], 2)} | {fmt(r['other_cpu_max_pct'], 0)} |"
            )
        out.append("")
    if "sockets" in res:
        s = res["sockets"]["summary"]
        out += [
            f"### A vote on one board with {plan.sockets:,} sockets on {plan.socket_boards} "
            "other boards",
            "",
            f"Server CPU per vote (schedstat, every thread) over {plan.votes} votes at "
            f"{plan.vote_rate:g}/s on a board with {WATCHERS} sockets; *idle* = the server's CPU "
            "over as long again with no votes; *net* = (vote window - idle window) ÷ votes. "
            "Medians of the repetitions; ratios are medians of each repetition's ratio.",
            "",
            "| other sockets | CPU/vote µs gross | net | idle window CPU ms |",
            "|---|---:|---:|---:|",
        ]
        for cond, n in (("none", 0), ("others", plan.sockets)):
            out.append(
                f"| {n:,} | {fmt(s[f'{cond}_gross_us'])} | {fmt(s[f'{cond}_net_us'])} "
                f"| {fmt(s[f'{cond}_idle_cpu_ms'])} |"
            )
        out += [
            f"| **ratio** | **{s['gross_us_ratio']:.2f}** | **{s['net_us_ratio']:.2f}** | |",
            "",
            f"Per repetition, net: {', '.join(f'{x:.2f}' for x in s['net_us_ratios'])}; gross: "
            f"{', '.join(f'{x:.2f}' for x in s['gross_us_ratios'])}. Server RSS growth per socket "
            f"when the {plan.sockets:,} first connected: {fmt(s['kib_per_socket'])} KiB.",
            "",
        ]
    if "memory" in res:
        m = res["memory"]
        out += [
            f"### Memory per empty board ({m['boards']:,} x MemoryBoards.create)",
            "",
            f"tracemalloc: **{m['traced_kib']:.2f} KiB** per board; RSS growth of a fresh "
            f"process: {m['rss_kib']:.2f} KiB per board. Where the traced bytes are:",
            "",
            "| allocation site | bytes per board |",
            "|---|---:|",
            *(f"| `{t['where']}` | {t['bytes_per_board']:.0f} |" for t in m["top"]),
            "",
        ]
    out += [
        "**Targets:** "
        + "; ".join(
            f"{t['figure']}: {t['value']:.2f} {'met' if t['met'] else 'missed'}" for t in found
        ),
        "",
    ]
    return "\n".join(out)


def meta_info(
    args: argparse.Namespace, argv: list[str], plan: Plan, pinned: bool
) -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    redis_v = (
        subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
        .stdout.split()[2]
        .removeprefix("v=")
    )
    digest = hashlib.sha256()
    for p in sorted((ROOT / "service").rglob("*.py")):
        digest.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = (
        " with uncommitted changes in service/" if git("status", "--porcelain", "service") else ""
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {cpu}; Linux {platform.release()}; shared with "
        "other work (CPU time, not wall time, is measured)",
        "software": f"Python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}, sortedcontainers {version('sortedcontainers')}, "
        f"redis-py {version('redis')}, redis-server {redis_v}",
        "code": f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}; sha256 of "
        f"service/**/*.py {digest.hexdigest()[:12]}",
        "command": " ".join([".venv/bin/python", "bench/boards.py", *map(shlex.quote, argv)]),
        "mode": "quick" if args.quick else "full",
        "load": f"{plan.reps} repetitions + 1 warm-up; store: {label(plan.boards)} boards x "
        f"{FEATURES} features, {3 * plan.store_k['memory']} memory / "
        f"{3 * plan.store_k['redis']} Redis votes per directory and repetition in "
        f"{plan.chunks} chunks; HTTP: {plan.http_votes:,} votes per run and directory; "
        f"sockets: {plan.sockets:,} on {plan.socket_boards} other boards, "
        f"{plan.votes} votes per window at {plan.vote_rate:g}/s; memory: "
        f"{plan.empty_boards:,} empty boards",
        "settings": ", ".join(f"{k}=0" for k in UNLIMITED) + "; otherwise the defaults "
        "(ws_heartbeat 30 s, push_interval 0.02 s, JSON access log)",
        "pinning": "servers (service, redis-server) on CPU 0, this process, the socket "
        "client and wrk on CPU 1 (taskset)"
        if pinned
        else "not pinned",
    }


# --- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.monotonic()
    quick = args.quick
    plan = Plan(
        boards=args.boards or (1000 if quick else 10_000),
        reps=args.reps or (2 if quick else 3),
        store_k={"memory": 1000 if quick else 3000, "redis": 100 if quick else 300},
        chunks=4 if quick else 10,
        sockets=args.sockets or (1000 if quick else 5000),
        socket_boards=50 if quick else 100,
        vote_rate=40.0,
        votes=150 if quick else int(HEARTBEAT * 40),  # full: a window is one heartbeat
        empty_boards=2000 if quick else 10_000,
        http_votes=3 * HTTP_PAIRS * (400 if quick else 2000),
    )
    parts = args.only or list(PARTS)
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2 and not args.no_pin
    pin = ["taskset", "-c", "0"] if pinned else []
    client_pin = ["taskset", "-c", "1"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})
    meta = meta_info(args, argv, plan, pinned)
    logdir = Path(tempfile.mkdtemp(prefix="boards-"))
    res: dict[str, Any] = {}
    if "memory" in parts:
        res["memory"] = part_memory(plan)
        print(f"  memory: {res['memory']['traced_kib']:.2f} KiB per board", file=sys.stderr)
    if "sockets" in parts:
        res["sockets"] = await part_sockets(plan, args, pin, client_pin, logdir)
    if "store" in parts:
        res["store"] = await part_store(plan, args, pin, logdir)
    if "http" in parts:
        res["http"] = await part_http(plan, args, pin, client_pin, logdir)
    stem = "boards-quick" if quick else "boards"
    results = BENCH / "results"
    earlier = results / f"{stem}.json"
    if args.keep_others and earlier.exists():  # the parts not run now: from the last run's file
        old = json.loads(earlier.read_text())
        kept = [p for p in PARTS if p not in parts and p in old]
        for p in kept:
            res[p] = old[p]
        if kept:  # (a file that itself kept parts says so in its own "earlier parts")
            m = old["meta"]
            meta["earlier parts"] = m.get("earlier parts") or (
                f"{', '.join(kept)} from the run of {m['date']} ({m['command']}; {m['code']}; "
                f"{m['run time']})"
            )
    if "store" in res:
        meta["seeding (s)"] = ", ".join(f"{k} {v}" for k, v in res["store"]["seeding_s"].items())
    meta["run time"] = f"{time.monotonic() - started:.0f} s"
    found = targets_of(plan, res)
    text = render(plan, res, meta, found)
    results.mkdir(exist_ok=True)
    (results / f"{stem}.md").write_text(text)
    (results / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "targets": found, **res}, indent=1, default=str) + "\n"
    )
    print(text)
    print(f"written to {results / stem}.md/.json", file=sys.stderr)
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 boards and sockets; ~2 min")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 2)")
    parser.add_argument("--boards", type=int, help="boards in the many-board directory")
    parser.add_argument("--sockets", type=int, help="idle sockets on other boards")
    parser.add_argument(
        "--only",
        type=lambda s: [p for p in s.split(",") if p],
        help=f"comma-separated parts of {','.join(PARTS)}",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="with --only: keep the other parts' figures from the last results file",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="s to wait for < 40 %% machine load before each round (default 30, quick 0)",
    )
    parser.add_argument("--sockets-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 30.0
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            if args.sockets_client:
                return runner.run(sockets_client())
            if args.memory_probe:
                return runner.run(memory_probe(args.memory_probe))
            return runner.run(amain(args, argv))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
