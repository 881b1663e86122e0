"""Board-size benchmark: vote cost and stats cost at 10, 1,000 and 100,000 features (ratio to 10).

    .venv/bin/python bench/boardsize.py            # 10, 1k, 100k features; 9 repetitions (~3.5 min,
                                                   # + up to 30 s per round waiting for quiet)
    .venv/bin/python bench/boardsize.py --quick    # 10, 1k, 10k; 3 short repetitions (< 1 min)
    .venv/bin/python bench/boardsize.py --reps 15  # more repetitions (also with --quick)

Both stores (memory, Redis), each measured two ways, every size seeded once. Each phase of a
repetition is cut into chunks and every chunk visits every store and size (in a rotating order),
so all sizes share the machine's conditions; before each repetition the script waits (bounded)
for a quiet machine. Figures are medians over the repetitions (a warm-up round is dropped);
ratios are medians of each repetition's own ratio to the smallest board. Measured:
  * store interface, in-process: `set_vote` in batches of distinct (voter, random feature)
    pairs: +1/-1 alternating (new votes), then each flipped, then each retracted, so every vote
    changes the counts and moves the ranking and the board ends as it began. CPU = this thread's
    time (time.thread_time_ns) plus, for Redis, the redis-server's thread run time
    (/proc/<pid>/task/*/schedstat). Stats: `stats()` right after a vote (a recompute) and again
    with seq unchanged (the cache). Seeded with `create_feature`; the boards are then frozen
    out of the garbage collector (gc.freeze) so one board's heap does not tax another's votes.
  * end to end over HTTP: one `python -m service` per store and size (rate limits off), the
    same vote pattern as PUT/DELETE /features/{id}/vote, one request at a time; cost = server
    CPU (service + redis-server, schedstat) per request. The memory service is seeded through
    POST /features, the Redis one through the store into its redis-server.
One redis-server per size (`--save "" --appendonly no`, own port, stopped at the end), so each
board has its own keyspace. Servers run on CPU 0, this process on CPU 1 (taskset), if possible.
A pyinstrument profile of memory-store votes at the smallest and largest size, and Redis
`INFO commandstats` per vote, show what grows. Results: bench/results/boardsize[-quick].md/.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from service.schemas import FeatureCreate  # noqa: E402
from service.store import Store  # noqa: E402
from service.store.memory import MemoryStore  # noqa: E402
from service.store.redis import RedisStore  # noqa: E402

HOST = "127.0.0.1"
TARGET = 2.0
UNLIMITED = {f"FV_{n}_RATE": "0" for n in ("TOKEN", "VOTE", "CREATE", "WS_CONNECT")}
STORES = ("memory", "redis")
Key = tuple[str, str, int, str]  # (store, path, size, metric)


@dataclass
class Plan:
    sizes: list[int]
    reps: int
    store_k: dict[str, int]  # votes per pass per batch, in-process
    http_k: int  # votes per pass per batch, over HTTP (also the voter tokens per service)
    stats_m: int  # stats calls per measurement
    profile_votes: int
    chunks: int  # each phase is cut into this many turns over every target


@dataclass
class Target:
    """One store and size: what is measured and which processes' CPU counts."""

    store: str
    size: int
    obj: Store
    pids: list[int] = field(default_factory=list)  # server processes (redis-server)
    redis_port: int = 0
    http: str = ""  # base URL of its `python -m service`
    http_pids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


# --- processes and CPU ------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """Run time of every thread of a process, ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


async def wait_quiet(limit: float, busy_pct: float = 40) -> float:
    """Wait (at most `limit` s) until the machine was below `busy_pct` % busy for 1 s."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        b0, t0 = machine_busy()
        await asyncio.sleep(1)
        b1, t1 = machine_busy()
        if 100 * (b1 - b0) < busy_pct * max(1, t1 - t0):
            break
    return time.monotonic() - started


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kib / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def wait_http(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited:\n{tail(log)}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


# --- measuring --------------------------------------------------------------------------------


Votes = list[tuple[int, int, int]]


def pairs(rng: random.Random, n: int, k: int, hot: list[int] | None = None) -> Votes:
    """(voter index, feature, value): k distinct voters on random features, +1/-1 alternating,
    then each flipped, then each retracted (0): 3k votes, every one a change."""
    feats = [rng.choice(hot) if hot else rng.randint(1, n) for _ in range(k)]
    first = [(j, f, 1 if j % 2 == 0 else -1) for j, f in enumerate(feats)]
    return [*first, *((j, f, -v) for j, f, v in first), *((j, f, 0) for j, f, _ in first)]


async def timed(pids: list[int], work: Callable[[], Awaitable[object]]) -> tuple[int, list[int]]:
    """(this thread's CPU ns, each server's CPU ns) spent on `work`."""
    s0 = [cpu_ns(p) for p in pids]
    c0 = time.thread_time_ns()
    await work()
    c1 = time.thread_time_ns()
    return c1 - c0, [cpu_ns(p) - s for p, s in zip(pids, s0, strict=True)]


@dataclass
class Bench:
    """The measurements. Each phase is cut into chunks and every chunk visits every target, so
    all sizes see the same machine within a fraction of a second; a figure sums its chunks and
    gets one value per repetition."""

    plan: Plan
    session: aiohttp.ClientSession
    rng: random.Random = field(default_factory=lambda: random.Random(20261126))
    out: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    acc: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    cmdstats: dict[tuple[int, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, t: Target, path: str, metric: str, ns: float, n: int) -> None:
        acc = self.acc[(t.store, path, t.size, metric)]
        acc[0] += ns
        acc[1] += n

    async def end_rep(self, targets: list[Target], keep: bool) -> None:
        for key, (ns, n) in self.acc.items():
            if keep:
                self.out[key].append(ns / n / 1000)
        self.acc.clear()
        for t in targets if keep else []:
            body = len((await t.obj.stats()).body)
            self.out[(t.store, "store", t.size, "body")].append(body)
            if t.http_pids:
                rss = rss_mib(t.http_pids[0]) + sum(rss_mib(p) for p in t.pids)
                self.out[(t.store, "http", t.size, "rss")].append(rss)

    def share(self, total: int) -> int:
        return max(1, total // self.plan.chunks)

    async def store_votes(self, t: Target, chunk: int) -> None:
        store, k = t.obj, self.share(self.plan.store_k[t.store])

        async def run(batch: Votes) -> None:
            for j, f, v in batch:
                await store.set_vote(f"bench-{j}", f, v)

        votes = pairs(self.rng, t.size, k)
        before = await redis_cmdstats(t)
        client, server = await timed(t.pids, lambda: run(votes))
        self.add(t, "store", "vote", client + sum(server), len(votes))
        if t.pids:
            self.add(t, "store", "vote_srv", sum(server), len(votes))
            for cmd, (calls, usec) in (await redis_cmdstats(t)).items():
                c0, u0 = before.get(cmd, (0, 0.0))
                self.cmdstats[(t.size, cmd)] += [calls - c0, usec - u0, len(votes)]
        if t.store == "memory":  # the same votes on 10 features of the board: locality
            hot = pairs(self.rng, t.size, k, self.rng.sample(range(1, t.size + 1), 10))
            client, _ = await timed([], lambda: run(hot))
            self.add(t, "store", "vote_hot", client, len(hot))

    async def store_stats(self, t: Target, chunk: int) -> None:
        """A recompute right after each (untimed) vote, then reads with seq unchanged."""
        store, m = t.obj, self.share(self.plan.stats_m)
        for j in range(m):
            await store.set_vote(f"stats-{j}", self.rng.randint(1, t.size), 1 if j % 2 else -1)
            c, s = await timed(t.pids, store.stats)
            self.add(t, "store", "recompute", c - CLOCK_NS + sum(s), 1)

        async def reads() -> None:
            for _ in range(m):
                await store.stats()

        c, s = await timed(t.pids, reads)
        self.add(t, "store", "cached", c + sum(s), m)
        for j in range(m):  # the board as it was
            for f in await store.votes_of(f"stats-{j}"):
                await store.set_vote(f"stats-{j}", f, 0)

    async def request(
        self, method: str, url: str, token: str = "", *, etag: str = "", body: bytes | None = None
    ) -> str:
        headers = {"Content-Type": "application/json"} if body else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if etag:
            headers["If-None-Match"] = etag
        async with self.session.request(method, url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status not in (200, 304):
                raise RuntimeError(f"{method} {url} answered {resp.status}")
            return resp.headers.get("ETag", "")

    async def http_votes(self, t: Target, chunk: int) -> None:
        """The vote pattern over HTTP, and again with a GET /stats after every vote (which of
        the two goes first alternates by chunk)."""
        pids, k = [*t.http_pids, *t.pids], self.share(self.plan.http_k)

        async def run(batch: Votes, read: bool) -> None:
            for j, f, v in batch:
                url = f"{t.http}/features/{f}/vote"
                body = b'{"value":%d}' % v if v else None
                await self.request("PUT" if v else "DELETE", url, t.tokens[j], body=body)
                if read:
                    await self.request("GET", t.http + "/stats")

        cpu = {}
        for read in (False, True) if chunk % 2 else (True, False):
            batch = [(j + chunk * k, f, v) for j, f, v in pairs(self.rng, t.size, k)]
            cpu[read] = (await timed(pids, lambda: run(batch, read)))[1]  # noqa: B023
        self.add(t, "http", "vote", sum(cpu[False]), 3 * k)
        self.add(t, "http", "after_vote", sum(cpu[True]) - sum(cpu[False]), 3 * k)
        if t.pids:
            self.add(t, "http", "vote_srv", sum(cpu[False][1:]), 3 * k)

    async def http_stats(self, t: Target, chunk: int) -> None:
        pids, m = [*t.http_pids, *t.pids], self.share(self.plan.stats_m)
        etag = await self.request("GET", t.http + "/stats")
        for name, tag in (("cached", ""), ("304", etag)):

            async def reads(tag: str = tag) -> None:
                for _ in range(m):
                    await self.request("GET", t.http + "/stats", etag=tag)

            _, server = await timed(pids, reads)
            self.add(t, "http", name, sum(server), m)


async def redis_cmdstats(t: Target) -> dict[str, tuple[int, float]]:
    if t.store != "redis":
        return {}
    assert isinstance(t.obj, RedisStore)
    info = await t.obj._redis.info("commandstats")  # the bench only reads its client
    return {
        k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in info.items()
    }


def measure_clock() -> int:
    """Median ns of an empty thread_time_ns() pair: taken off each single timed stats() call."""
    samples = []
    for _ in range(2001):
        c0 = time.thread_time_ns()
        samples.append(time.thread_time_ns() - c0)
    return int(statistics.median(samples))


CLOCK_NS = measure_clock()


# --- seeding ----------------------------------------------------------------------------------


def new_feature(i: int) -> FeatureCreate:
    return FeatureCreate(
        title=f"Feature {i}: seeded by the board-size benchmark",
        description="A short description, as most proposals have one.",
    )


async def seed_store(store: Store, n: int) -> None:
    for start in range(0, n, 500):
        await asyncio.gather(
            *(
                store.create_feature(new_feature(i), owner="bench")
                for i in range(start, min(n, start + 500))
            )
        )


async def seed_http(session: aiohttp.ClientSession, base: str, n: int) -> None:
    async with session.post(base + "/auth/token") as resp:
        token = (await resp.json())["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            body = json.dumps(
                {"title": new_feature(i).title, "description": new_feature(i).description}
            ).encode()
            async with session.post(base + "/features", data=body, headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"POST /features answered {resp.status}")
                await resp.read()

    await asyncio.gather(*(worker() for _ in range(16)))


async def tokens(session: aiohttp.ClientSession, base: str, k: int) -> list[str]:
    found = []
    for _ in range(k):
        async with session.post(base + "/auth/token") as resp:
            found.append((await resp.json())["token"])
    return found


# --- profile ----------------------------------------------------------------------------------


async def profile(store: Store, n: int, votes: int) -> dict[str, float]:
    """Share (%) of set_vote's time in each function (inclusive), under pyinstrument."""
    from pyinstrument import Profiler

    rng = random.Random(n)
    batch = pairs(rng, n, votes // 3)
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    for j, f, v in batch:
        await store.set_vote(f"prof-{j}", f, v)
    profiler.stop()
    acc: dict[str, float] = defaultdict(float)

    def walk(frame: Any, above: frozenset[str]) -> None:
        key = f"{frame.function} ({Path(frame.file_path or '?').name})"
        if key not in above:
            acc[key] += frame.time
        for child in frame.children:
            walk(child, above | {key})

    session = profiler.last_session
    assert session is not None
    walk(session.root_frame(), frozenset())
    total = acc.get("set_vote (memory.py)", 0.0) or 1e-9
    return {
        k: 100 * v / total
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1])
        if v / total >= 0.02 and Path(__file__).name not in k and "[self]" not in k
    }


# --- report -----------------------------------------------------------------------------------


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


RATIOS = ("vote", "recompute", "cached", "after_vote", "304")
UNITS = {"rss": "rss_mib", "body": "stats_body_bytes"}


def summarize(out: dict[Key, list[float]], sizes: list[int]) -> list[dict[str, Any]]:
    """Medians per figure; a ratio is the median over reps of that rep's value ÷ the same rep's
    value at the smallest size (paired, so drift between reps cancels)."""
    rows = []
    for store, path, n in ((s, p, n) for s in STORES for p in ("store", "http") for n in sizes):
        row: dict[str, Any] = {"store": store, "path": path, "size": n}
        for metric in (*RATIOS, "vote_srv", "vote_hot", "rss", "body"):
            values = out.get((store, path, n, metric))
            base = out.get((store, path, sizes[0], metric))
            if not values:
                continue
            name = UNITS.get(metric, metric + "_us")
            row[name] = round(statistics.median(values), 3)
            if base and metric in RATIOS and len(base) == len(values) and min(base) > 0:
                paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
                row[metric + "_ratio"] = round(paired, 3)
            row[metric + "_reps"] = [round(x, 3) for x in values]
        rows.append(row)
    return rows


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(v: float | None, target: float | None = None) -> str:
    if v is None:
        return "-"
    mark = "" if target is None else (" ✅" if v <= target else " ❌")
    return f"{v:.2f}x{mark}"


def render(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    targets: list[dict[str, Any]],
    cmd: dict[str, dict[int, float]],
    prof: dict[int, dict[str, float]],
) -> str:
    sizes = sorted({r["size"] for r in rows})
    big, small = label(sizes[-1]), label(sizes[0])
    out = [
        "## Board size",
        "",
        f"Scaling with board size: vote cost and stats cost at {', '.join(label(n) for n in sizes)}"
        f" features (ratio to {small}). Target: vote cost at {big} ÷ at {small} ≤ {TARGET:g}.",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        "Medians over the repetitions, µs of CPU per operation; xN = median over the repetitions "
        f"of the ratio to the {small}-feature board in the same repetition. Stats `top` holds "
        f"the first {meta.get('top_n', 20)} features (all of them on a smaller board), never the "
        "whole board: the body grows from 10 to 20 features between the 10- and the 1k-feature "
        "board and not at all after that (body bytes), so a stats ratio to 10 includes a body "
        "about twice as long.",
        "",
        "### Through the store interface (in-process)",
        "",
        "Vote = `set_vote` (this thread's CPU + redis-server CPU; Redis server part in brackets). "
        "Stats recompute = `stats()` right after a vote; cached = `stats()` again, seq unchanged "
        "(Redis: still one GET of seq). Hot 10 = the same votes confined to 10 features of the "
        "board (what the cache-cold part of a vote costs).",
        "",
        "| store | features | vote µs | vote xN | stats recompute µs | xN | stats cached µs "
        "| xN | vote, hot 10 µs | stats body bytes |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["path"] == "store"):
        srv = f" ({fmt(r.get('vote_srv_us'))})" if "vote_srv_us" in r else ""
        out.append(
            f"| {r['store']} | {r['size']:,} | {fmt(r.get('vote_us'), 2)}{srv} "
            f"| {ratio(r.get('vote_ratio'), TARGET if r['size'] == sizes[-1] else None)} "
            f"| {fmt(r.get('recompute_us'), 2)} | {ratio(r.get('recompute_ratio'))} "
            f"| {fmt(r.get('cached_us'), 2)} | {ratio(r.get('cached_ratio'))} "
            f"| {fmt(r.get('vote_hot_us'), 2)} | {fmt(r.get('stats_body_bytes'), 0)} |"
        )
    out += [
        "",
        "### End to end over HTTP (server CPU per request)",
        "",
        "Server CPU = `python -m service` (+ redis-server, in brackets) per request, one request "
        "at a time. "
        "Vote includes the broadcaster's stats rebuild, which runs at most once per push "
        "interval (20 ms). Stats after a vote = (vote followed by GET /stats) - vote: the extra "
        "cost when every change is read. GET 200 / 304 = reads with seq unchanged (the cache; "
        "304 with If-None-Match). RSS = service (+ redis-server) after the run.",
        "",
        "| store | features | vote µs | vote xN | stats after a vote µs | xN | GET /stats 200 µs "
        "| xN | GET /stats 304 µs | xN | RSS MiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["path"] == "http"):
        srv = f" ({fmt(r.get('vote_srv_us'))})" if "vote_srv_us" in r else ""
        out.append(
            f"| {r['store']} | {r['size']:,} | {fmt(r.get('vote_us'))}{srv} "
            f"| {ratio(r.get('vote_ratio'), TARGET if r['size'] == sizes[-1] else None)} "
            f"| {fmt(r.get('after_vote_us'))} | {ratio(r.get('after_vote_ratio'))} "
            f"| {fmt(r.get('cached_us'))} | {ratio(r.get('cached_ratio'))} "
            f"| {fmt(r.get('304_us'))} | {ratio(r.get('304_ratio'))} | {fmt(r.get('rss_mib'), 0)} |"
        )
    out += [
        "",
        "**Targets:** "
        + "; ".join(
            f"{t['figure']}: {t['value']:.2f} {'met' if t['met'] else 'missed'}" for t in targets
        ),
        "",
    ]
    if cmd:
        out += [
            "### Redis: server time per vote by command (INFO commandstats)",
            "",
            "µs per vote of each command the vote script runs (evalsha = the whole script).",
            "",
            "| command | " + " | ".join(label(n) for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for name, by_size in cmd.items():
            out.append(f"| {name} | " + " | ".join(fmt(by_size.get(n), 2) for n in sizes) + " |")
        out.append("")
    if prof:
        names = list(dict.fromkeys(k for p in prof.values() for k in p))
        out += [
            "### Memory store: where a vote's time goes (pyinstrument)",
            "",
            "Inclusive % of `set_vote` time under the profiler (interval 0.1 ms; its per-call "
            "overhead inflates small Python functions), and that share of the measured "
            "median vote cost.",
            "",
            "| function | "
            + " | ".join(f"% at {label(n)} | µs at {label(n)}" for n in prof)
            + " |",
            "|---|" + "---:|---:|" * len(prof),
        ]
        vote = {
            n: next(
                r["vote_us"]
                for r in rows
                if r["store"] == "memory" and r["path"] == "store" and r["size"] == n
            )
            for n in prof
        }
        for name in names:
            cells = [
                f"{fmt(p.get(name), 0)} | {fmt(p[name] * vote[n] / 100 if name in p else None, 2)}"
                for n, p in prof.items()
            ]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def make_targets(rows: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    found = []
    for path, suffix in (("store", ""), ("http", ", HTTP end to end")):
        for store in STORES:
            r = next(
                (r for r in rows if (r["store"], r["path"], r["size"]) == (store, path, sizes[-1])),
                None,
            )
            if r and "vote_ratio" in r:
                found.append(
                    {
                        "figure": f"vote cost at {label(sizes[-1])} features ÷ at "
                        f"{label(sizes[0])} ({store} store{suffix})",
                        "value": r["vote_ratio"],
                        "target": f"≤ {TARGET:g}",
                        "met": r["vote_ratio"] <= TARGET,
                    }
                )
    return found


def commands(raw: dict[tuple[int, str], list[float]]) -> dict[str, dict[int, float]]:
    per: dict[str, dict[int, float]] = defaultdict(dict)
    for (n, name), acc in raw.items():
        usec, votes = sum(acc[1::3]), sum(acc[2::3])
        if votes and usec / votes >= 0.05 and name not in ("info",):
            per[name][n] = usec / votes
    return dict(sorted(per.items(), key=lambda kv: -max(kv[1].values())))


def meta_info(
    args: argparse.Namespace, argv: list[str], pinned: bool, plan: Plan
) -> dict[str, Any]:
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
        f"uvloop {version('uvloop')}, sortedcontainers "
        f"{version('sortedcontainers')}, msgspec {version('msgspec')}, redis-py "
        f"{version('redis')}, redis-server {redis_v}, pyinstrument "
        f"{version('pyinstrument')}",
        "code": f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}; sha256 of "
        f"service/**/*.py {digest.hexdigest()[:12]}",
        "command": " ".join([".venv/bin/python", "bench/boardsize.py", *map(shlex.quote, argv)]),
        "mode": "quick" if args.quick else "full",
        "load": f"{plan.reps} repetitions + 1 warm-up; per repetition, store and size: "
        f"{3 * plan.store_k['memory']} memory / {3 * plan.store_k['redis']} Redis "
        f"store-interface votes, {3 * plan.http_k} HTTP votes (+ as many with a "
        f"GET /stats each), {plan.stats_m} stats calls of each kind; each phase cut into "
        f"{plan.chunks} chunks, every chunk visiting every store and size (order rotating)",
        "settings": ", ".join(f"{k}=0" for k in UNLIMITED) + "; otherwise the defaults "
        "(top_n 20, push_interval 0.02 s, JSON access log to a file)",
        "pinning": "servers (service, redis-server) on CPU 0, this process on CPU 1 (taskset)"
        if pinned
        else "not pinned",
        "top_n": 20,
    }


# --- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.monotonic()
    quick = args.quick
    plan = Plan(
        sizes=args.sizes or ([10, 1000, 10_000] if quick else [10, 1000, 100_000]),
        reps=args.reps or (3 if quick else 9),
        store_k={"memory": 500 if quick else 2000, "redis": 60 if quick else 200},
        http_k=40 if quick else 100,
        stats_m=60 if quick else 200,
        profile_votes=30_000 if quick else 150_000,
        chunks=4 if quick else 10,
    )
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2 and not args.no_pin
    pin = ["taskset", "-c", "0"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})
    meta = meta_info(args, argv, pinned, plan)
    python = str(ROOT / ".venv" / "bin" / "python")
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[Target] = []
    seeding: dict[str, float] = {}
    secret = os.urandom(24).hex()
    logdir = Path(tempfile.mkdtemp(prefix="boardsize-"))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=60)
    )
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
        # Boards beyond the default max_features are what this measures.
        env.update(UNLIMITED, FV_SECRET=secret, FV_HOST=HOST, FV_MAX_FEATURES=str(max(plan.sizes)))
        for n in plan.sizes:  # one redis-server per size; seeded through the store
            port = free_port()
            redis = spawn(
                [
                    *pin,
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    HOST,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                logdir / f"redis-{n}.log",
            )
            procs.append(redis)
            rstore = RedisStore(
                f"redis://{HOST}:{port}/0",
                socket_timeout=60,
                connect_timeout=5,
                max_connections=64,
                max_features=n,
            )
            for _ in range(100):
                with contextlib.suppress(Exception):
                    await rstore.ping()
                    break
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await seed_store(rstore, n)
            await rstore.start()  # subscribes, as in the service (and builds the rankings)
            seeding[f"redis {label(n)} (store)"] = time.monotonic() - t0
            mstore = MemoryStore(max_features=n)
            t0 = time.monotonic()
            await seed_store(mstore, n)
            seeding[f"memory {label(n)} (store)"] = time.monotonic() - t0
            targets += [Target("memory", n, mstore), Target("redis", n, rstore, [redis.pid], port)]
        if not args.no_http:
            for t in targets:  # one service per store and size
                port, log = free_port(), logdir / f"service-{t.store}-{t.size}.log"
                store_url = "memory" if t.store == "memory" else f"redis://{HOST}:{t.redis_port}/0"
                proc = spawn(
                    [*pin, python, "-m", "service"],
                    log,
                    {**env, "PORT": str(port), "FV_STORE": store_url},
                )
                procs.append(proc)
                t.http, t.http_pids = f"http://{HOST}:{port}", [proc.pid]
                await wait_http(session, t.http, proc, log)
                if t.store == "memory":
                    t0 = time.monotonic()
                    await seed_http(session, t.http, t.size)
                    seeding[f"memory {label(t.size)} (HTTP)"] = time.monotonic() - t0
                t.tokens = await tokens(session, t.http, plan.http_k)
        gc.collect()
        gc.freeze()  # the seeded boards leave the collector's generations
        meta["seeding (s)"] = ", ".join(f"{k} {v:.1f}" for k, v in seeding.items())
        print(
            f"seeded in {time.monotonic() - started:.0f} s: {meta['seeding (s)']}", file=sys.stderr
        )
        bench = Bench(plan, session)
        phases = [bench.store_votes, bench.store_stats]
        phases += [] if args.no_http else [bench.http_votes, bench.http_stats]
        total_wait = 0.0
        for rep in range(plan.reps + 1):  # round 0 warms up and is dropped
            waited = await wait_quiet(args.quiet_wait)
            total_wait += waited
            for phase in phases:
                for chunk in range(plan.chunks):  # every target per chunk, in a rotating order
                    turn = (rep + chunk) % len(targets)
                    for t in targets[turn:] + targets[:turn]:
                        await phase(t, chunk)
            await bench.end_rep(targets, keep=rep > 0)
            if rep == 0:
                bench.cmdstats.clear()
            print(
                f"  round {rep}{' (warm-up)' if rep == 0 else ''} done at "
                f"{time.monotonic() - started:.0f} s (waited {waited:.0f} s for a quiet machine)",
                file=sys.stderr,
            )
        meta["waited for a quiet machine"] = (
            f"{total_wait:.0f} s in all (before each round, up to {args.quiet_wait:g} s for "
            "< 40 % load)"
        )
        prof: dict[int, dict[str, float]] = {}
        for t in targets:
            if t.store == "memory" and t.size in (plan.sizes[0], plan.sizes[-1]):
                prof[t.size] = await profile(t.obj, t.size, plan.profile_votes)
        for t in targets:
            if t.store == "redis":
                await t.obj.close()
    finally:
        await session.close()
        for p in reversed(procs):
            stop(p)
    rows = summarize(bench.out, plan.sizes)
    found = make_targets(rows, plan.sizes)
    meta["run time"] = f"{time.monotonic() - started:.0f} s"
    cmd = commands(bench.cmdstats)
    text = render(rows, meta, found, cmd, prof)
    stem = "boardsize-quick" if quick else "boardsize"
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / f"{stem}.md").write_text(text)
    (results / f"{stem}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "rows": rows,
                "targets": found,
                "redis_commands_us_per_vote": {
                    k: {str(n): round(v, 3) for n, v in d.items()} for k, d in cmd.items()
                },
                "profile_pct": {
                    str(n): {k: round(v, 1) for k, v in p.items()} for n, p in prof.items()
                },
            },
            indent=1,
        )
        + "\n"
    )
    print(text)
    print(f"written to {results / stem}.md/.json", file=sys.stderr)
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10, 1k, 10k features; < 1 min")
    parser.add_argument("--reps", type=int, help="repetitions (default 9, quick 3)")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated board sizes, smallest first (the ratio base)",
    )
    parser.add_argument("--no-http", action="store_true", help="store interface only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="s to wait for < 40 %% machine load before each round (default 30, quick 0)",
    )
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 30.0
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(amain(args, argv))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
