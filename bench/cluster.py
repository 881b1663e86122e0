"""Cluster benchmark: instances on one Redis, each figure against a reference in the same run.

    .venv/bin/python bench/cluster.py           # all three measurements, 3 repetitions (~30 min)
    .venv/bin/python bench/cluster.py --quick   # small and short (< 2 min): cluster-quick.*
    .venv/bin/python bench/cluster.py --only slow --reps 1

Needs Node (`npm ci` in bench/, done here if node_modules is missing) and `redis-server`: every
run on Redis starts its own on a free port (no persistence) and stops it afterwards. Servers,
fleet, voter and /proc readings come from bench/fanout.py (see there how latency is measured:
vote request sent -> first frame with that vote's seq or a later one, over every (vote, client)
pair, on one CLOCK_MONOTONIC); the fleet is bench/fleet.js.

  cross  votes on instance A, the fleet on instance B (one Redis, one FV_SECRET), against one
         instance on the memory store with votes and fleet on it, and one instance on Redis (the
         store's cost without the hop). The instance serving the fleet and Redis on CPU 0; the
         fleet, voter, this script and A on CPU 1. N = 100, 1000 (quick: 50).
  cores  5,000 clients (quick: 1,000) at a vote rate one instance cannot keep up with: one
         instance pinned to CPU 0 against two on Redis on CPU 0 and CPU 1, clients split evenly.
         The fleet (fleet.js --raw, 2 processes) and this script are not pinned: they use what
         the servers leave, alike in both layouts. Capacity = frames/s the fleet received.
  slow   1,000 healthy clients (quick: 200) without and with 50 (quick: 10) stalled ones
         (fleet.js --stall: handshake, then never read) on one instance (memory store, CPU 0;
         fleet on CPU 1), 20 features (5.6 KB frames: the stalled sockets' kernel buffers,
         the server's capped by ws_send_buffer, fill within the run): healthy p99 ratio,
         clients dropped by the server (fv_ws_dropped_slow_total: closed with 1013), server
         RSS sampled every 0.25 s.

Writes bench/results/cluster.md (a `## Cluster` section) and cluster.json (meta, rows, targets,
runs). Every process started here is stopped in `finally` and gets SIGKILL if this one dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import fanout as fo

RESULTS = fo.BENCH / "results"
CPUS = os.cpu_count() or 1
SLOW_FEATURES = 20  # = the default top_n: the largest stats message the defaults send
BUFFER_LIMIT_KIB = 256  # the default ws_buffer_limit: what a slow client may hold on the server
MINUS, TIMES = "\N{MINUS SIGN}", "\N{MULTIPLICATION SIGN}"
Row = dict[str, Any]


# --- processes and readings ---------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def taskset(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def spawn_redis(logdir: Path, pin: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = fo.free_port()
    cmd = [*pin, "redis-server", "--bind", fo.HOST, "--port", str(port), "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(logdir)]
    with (logdir / f"redis-{port}.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return proc, port


async def start_redis(logdir: Path, pin: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    proc, port = spawn_redis(logdir, pin)
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(fo.HOST, port)
            writer.close()
            return proc, port
        await asyncio.sleep(0.05)
    fo.stop_process(proc)
    raise RuntimeError(f"redis-server did not start on port {port}")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else "?"


class Fleet(fo.Fleet):
    """fanout's fleet, passing extra fleet.js options (--stall=K, --raw)."""

    async def start(
        self, url: str, clients: int, nprocs: int, pin: list[str], extra: Sequence[str] = ()
    ) -> None:
        nprocs = max(1, min(nprocs, clients))
        for i in range(nprocs):
            share = clients // nprocs + (1 if i < clients % nprocs else 0)
            cmd = [*pin, "node", str(fo.BENCH / "fleet.js"), url, str(share), "64", *extra]
            pipe = asyncio.subprocess.PIPE
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd,
                    stdin=pipe,
                    stdout=pipe,
                    limit=1 << 26,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )


METRICS = (
    "fv_ws_clients",
    "fv_ws_frames_total",
    "fv_ws_pushes_total",
    "fv_ws_dropped_slow_total",
    "fv_ws_push_lag_seconds_sum",
    "fv_ws_push_lag_seconds_count",
)


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The broadcaster's counters from GET /metrics."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    found = {n: re.search(rf"^{n} (\S+)$", text, re.M) for n in METRICS}
    return {n: float(m.group(1)) if m else math.nan for n, m in found.items()}


async def wait_ready(session: aiohttp.ClientSession, server: Any) -> None:
    """/healthz answers, then /readyz (on Redis: the change subscription is up)."""
    await fo.wait_ready(session, server)
    for _ in range(200):
        async with session.get(f"{server.base}/readyz") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.base} not ready:\n{server.log_tail()}")


def sys_seconds(pid: int) -> float:
    """Kernel-mode CPU time of a process (stime, /proc/<pid>/stat): its share of fo.cpu_seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")


def tcp_mem_kib() -> int:
    """Kernel memory of all TCP sockets of the machine (/proc/net/sockstat `mem`, in pages)."""
    with open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def code_state() -> str:
    """The working tree measured (others may be editing it): HEAD and a digest of service/."""
    git = ["git", "-C", str(fo.ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "service"], capture_output=True)
    digest = hashlib.sha256()
    for path in sorted((fo.ROOT / "service").rglob("*.py")):
        digest.update(path.relative_to(fo.ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    state = " with uncommitted changes in service/" if dirty.stdout else ""
    return (
        f"working tree at {head.stdout.strip()}{state}; sha256 of service/**/*.py "
        + (digest.hexdigest()[:12])
    )


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Where the instances run and who talks to which."""

    name: str
    store: str  # "memory" or "redis"
    cpus: list[int]  # one per instance: the CPU it is pinned to
    clients: list[int]  # healthy clients per instance
    vote_on: int = 0
    stalled: int = 0  # stalled clients, on instance 0
    fleet_cpu: int | None = 1  # CPU of the fleet, the voter and this script; None: any
    redis_cpu: int | None = 0
    features: int = fo.FEATURES
    watch: bool = False  # poll /metrics every 0.5 s (when were the stalled clients dropped?)
    raw: bool = False  # fleet.js --raw: a bare-socket client, cheaper per frame than `ws`


@dataclass
class Run:
    measurement: str
    layout: str
    n: int
    rep: int
    rate: float = 0.0
    stalled: int = 0
    connected: int = 0
    stalled_connected: int = 0
    failed: int = 0
    frame_bytes: int = 0
    votes: int = 0
    vote_rate: float = 0.0
    window_s: float = 0.0
    frames: int = 0
    capacity: float = math.nan  # frames/s the fleet received over the vote phase
    missing: int = 0
    closed: int = 0
    behind_at_end: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    server_cpu_pct: list[float] = field(default_factory=list)  # per instance, % of one core
    server_sys_pct: list[float] = field(default_factory=list)  # of which in the kernel
    pushes_per_s: list[float] = field(default_factory=list)  # per instance
    push_lag_ms: list[float] = field(default_factory=list)  # per instance: change -> last write
    redis_cpu_pct: float = math.nan
    fleet_cpu_pct: float = math.nan  # all fleet processes, % of one core
    fleet_sys_pct: float = math.nan  # of which in the kernel
    fleet_cpu_max_proc_pct: float = math.nan
    foreign_cpu_pct: float = math.nan  # CPU of processes outside the benchmark, % of one core
    quiet_wait_s: float = 0.0
    rss_start_kib: list[int] = field(default_factory=list)  # per instance, at the vote start
    rss_max_kib: list[int] = field(default_factory=list)  # per instance, max over the phase
    tcp_mem_start_kib: int = 0
    tcp_mem_max_kib: int = 0
    dropped_slow: int = 0
    all_dropped_after_s: float = math.nan
    clients_at_end: int = 0
    # Per second of the vote phase: [s, mean ms, max ms] over the (vote, client) pairs in it.
    timeline: list[list[float]] = field(default_factory=list)
    error: str = ""


async def measure(
    meas: str, lay: Layout, rep: int, rate: float, duration: float, ctx: dict[str, Any]
) -> Run:
    run = Run(meas, lay.name, sum(lay.clients), rep, rate=rate, stalled=lay.stalled)
    pin = ctx["pin"]
    if pin:
        os.sched_setaffinity(0, set(range(CPUS)) if lay.fleet_cpu is None else {lay.fleet_cpu})
    run.quiet_wait_s, _ = await fo.wait_quiet(ctx["quiet_below"], ctx["quiet_wait"])
    logdir: Path = ctx["logdir"]
    redis: subprocess.Popen[bytes] | None = None
    servers: list[Any] = []
    fleets: list[Fleet] = []
    try:
        env = dict(fo.UNLIMITED)
        if lay.store == "redis":
            redis, port = await start_redis(logdir, taskset(lay.redis_cpu) if pin else [])
            env["FV_STORE"] = f"redis://{fo.HOST}:{port}/0"
        for cpu in lay.cpus:
            server_pin = taskset(cpu) if pin else []
            args = (ctx["python"], server_pin, logdir, 0, ctx["secret"], env, fo.ROOT)
            servers.append(fo.start_server("ours", *args))
        timeout = aiohttp.ClientTimeout(total=30)
        # The voter has a connection of its own, as a voting script would; readiness and
        # /metrics go over another.
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            aiohttp.ClientSession(timeout=timeout) as voter_session,
        ):
            for server in servers:
                await wait_ready(session, server)
            voter = fo.Voter(voter_session, servers[lay.vote_on])
            await voter.setup(lay.features)
            urls = [f"ws://{fo.HOST}:{s.port}/ws" for s in servers]
            for url in urls:
                await fo.warm_up(url, first=True)
            run.frame_bytes = await voter.message_size() + 4  # + the frame header
            fleet_pin = taskset(lay.fleet_cpu) if pin else []
            used = [(url, n) for url, n in zip(urls, lay.clients, strict=True) if n]
            for url, n in used:  # 2 fleet processes in all, split over the instances
                fleets.append(fleet := Fleet())
                await fleet.start(url, n, 2 // len(used), fleet_pin, ["--raw"] * lay.raw)
            if lay.stalled:
                fleets.append(fleet := Fleet())
                await fleet.start(urls[0], 0, 1, fleet_pin, [f"--stall={lay.stalled}"])
            for fleet in fleets:
                for c in await fleet.gather("connected", 180):
                    run.connected += c["ok"]
                    run.stalled_connected += c.get("stalled", 0)
                    run.failed += c["failed"] + c.get("stalled_failed", 0)
            await asyncio.sleep(1.0)
            await asyncio.gather(*(f.send({"cmd": "mark"}) for f in fleets))
            for fleet in fleets:
                await fleet.gather("marked", 10)

            bases = [s.base for s in servers]
            pids = [s.proc.pid for s in servers]
            fleet_pids = [p for f in fleets for p in f.pids]
            ours = [*pids, *fleet_pids, *([redis.pid] if redis else []), os.getpid()]
            m0 = [await metrics(session, b) for b in bases]
            run.rss_start_kib = [fo.rss_kib(p) for p in pids]
            run.tcp_mem_start_kib = tcp_mem_kib()
            rss_max, tcp_max = list(run.rss_start_kib), [run.tcp_mem_start_kib]
            c0 = {p: fo.cpu_seconds(p) for p in ours}
            k0 = [sys_seconds(p) for p in pids]
            fk0 = sum(sys_seconds(p) for p in fleet_pids)
            b0, t0 = fo.machine_busy()[0], time.monotonic()

            async def sample() -> None:  # memory, and when the last stalled client was dropped
                polled = 0.0
                while True:
                    for i, p in enumerate(pids):
                        rss_max[i] = max(rss_max[i], fo.rss_kib(p))
                    tcp_max[0] = max(tcp_max[0], tcp_mem_kib())
                    if lay.watch and time.monotonic() - polled >= 0.5:
                        polled = time.monotonic()
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            m = await metrics(session, bases[0])
                            gone = m["fv_ws_dropped_slow_total"] - m0[0]["fv_ws_dropped_slow_total"]
                            if (
                                lay.stalled
                                and gone >= lay.stalled
                                and math.isnan(run.all_dropped_after_s)
                            ):
                                run.all_dropped_after_s = time.monotonic() - t0
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            try:
                votes = await voter.run(rate, duration)
                wait = {"cmd": "wait", "seq": votes[-1][0], "timeout_ms": 15000}
                await asyncio.gather(*(f.send(wait) for f in fleets))
                for fleet in fleets:
                    run.behind_at_end += sum(r["behind"] for r in await fleet.gather("reached", 30))
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            run.window_s = time.monotonic() - t0
            pct = {p: 100 * (fo.cpu_seconds(p) - c0[p]) / run.window_s for p in ours}
            run.foreign_cpu_pct = max(
                0.0, 100 * (fo.machine_busy()[0] - b0) / run.window_s - sum(pct.values())
            )
            m1 = [await metrics(session, b) for b in bases]
            d = [{k: b[k] - a[k] for k in METRICS} for a, b in zip(m0, m1, strict=True)]
            run.server_cpu_pct = [pct[p] for p in pids]
            run.server_sys_pct = [
                100 * (sys_seconds(p) - k) / run.window_s for p, k in zip(pids, k0, strict=True)
            ]
            run.redis_cpu_pct = pct[redis.pid] if redis else math.nan
            run.fleet_cpu_pct = sum(pct[p] for p in fleet_pids)
            fk1 = sum(sys_seconds(p) for p in fleet_pids)
            run.fleet_sys_pct = 100 * (fk1 - fk0) / run.window_s
            run.fleet_cpu_max_proc_pct = max(pct[p] for p in fleet_pids)
            run.rss_max_kib, run.tcp_mem_max_kib = rss_max, tcp_max[0]
            run.pushes_per_s = [x["fv_ws_pushes_total"] / run.window_s for x in d]
            run.push_lag_ms = [
                1e3 * x["fv_ws_push_lag_seconds_sum"] / max(1, x["fv_ws_push_lag_seconds_count"])
                for x in d
            ]
            run.dropped_slow = int(sum(x["fv_ws_dropped_slow_total"] for x in d))
            run.clients_at_end = int(sum(m["fv_ws_clients"] for m in m1))
            run.votes = len(votes)
            run.vote_rate = (len(votes) - 1) / max(1e-9, votes[-1][1] - votes[0][1])

            await collect(run, fleets, votes, t0)
    finally:
        for fleet in fleets:
            await fleet.stop()
        for server in servers:
            fo.stop_process(server.proc)
        if redis is not None:
            fo.stop_process(redis)
    return run


async def collect(run: Run, fleets: list[Fleet], votes: list[tuple[int, float]], t0: float) -> None:
    """Latency of every (vote, client) pair from the fleet's histograms, and a timeline."""
    hist: dict[float, int] = {}
    per_s = [[0.0, 0.0, 0.0] for _ in range(math.ceil(votes[-1][1] - t0) + 1)]
    report = {"cmd": "report", "votes": [[s, t * 1e3] for s, t in votes]}
    await asyncio.gather(*(f.send(report) for f in fleets))
    for fleet in fleets:
        for r in await fleet.gather("report", 120):
            for (_, t), (count, total, worst) in zip(votes, r["per_vote"], strict=True):
                acc = per_s[int(t - t0)]
                acc[0], acc[1], acc[2] = acc[0] + count, acc[1] + total, max(acc[2], worst)
            for b, c in r["hist"].items():
                ms = (int(b) + 0.5) / r["bin_per_ms"]
                hist[ms] = hist.get(ms, 0) + c
            run.missing += r["missing"]
            run.frames += r["frames"]
            run.closed += r["closed"]
    run.timeline = [[i, round(a[1] / a[0], 2), a[2]] for i, a in enumerate(per_s) if a[0]]
    run.capacity = run.frames / run.window_s
    run.p50_ms = fo.percentile(hist, run.missing, 0.50)
    run.p99_ms = fo.percentile(hist, run.missing, 0.99)
    run.max_ms = math.inf if run.missing else max(hist, default=math.nan)


# --- the three measurements ---------------------------------------------------------------------

Plan = tuple[str, int, list[Layout], float, float]  # measurement, N, layouts, votes/s, seconds


def plans(args: argparse.Namespace) -> list[Plan]:
    """What runs, in order; the first layout of each plan is its reference."""
    out: list[Plan] = []
    if "cross" in args.only:
        for n in [50] if args.quick else [100, 1000]:
            rate = min(args.rate, args.max_frame_rate / n)
            layouts = [
                Layout("one instance, memory store", "memory", [0], [n]),
                Layout("one instance, Redis", "redis", [0], [n]),
                Layout("Redis: votes on A, clients on B", "redis", [1, 0], [0, n], vote_on=0),
            ]
            out.append(("cross", n, layouts, rate, max(args.duration, args.min_votes / rate)))
    if "cores" in args.only:
        n = 1000 if args.quick else 5000
        layouts = [
            Layout("one instance, memory store, CPU 0", "memory", [0], [n], fleet_cpu=None),
            Layout("one instance, Redis, CPU 0", "redis", [0], [n], fleet_cpu=None),
            Layout(
                "two instances, Redis, CPU 0 + CPU 1",
                "redis",
                [0, 1],
                [n // 2, n - n // 2],
                fleet_cpu=None,
            ),
        ]
        for lay in layouts:
            lay.raw, lay.redis_cpu = not args.ws_fleet, None
        out.append(("cores", n, layouts, args.cores_frame_rate / n, args.duration))
    if "slow" in args.only:
        n, k = (200, 10) if args.quick else (1000, 50)
        rate = min(args.slow_rate, args.slow_frame_rate / n)
        layouts = [
            Layout("without stalled clients", "memory", [0], [n]),
            Layout(f"with {k} stalled", "memory", [0], [n], stalled=k),
        ]
        for lay in layouts:  # the same /metrics polling in both, for the drop time
            lay.features, lay.watch = SLOW_FEATURES, True
        out.append(("slow", n, layouts, rate, args.slow_duration))
    return out


def summarize(runs: list[Run]) -> list[Row]:
    """One row per (measurement, N, layout): medians of the repetitions, and the ratios to the
    first layout of the same measurement and N (the reference)."""
    rows: list[Row] = []
    for key in dict.fromkeys((r.measurement, r.n, r.layout) for r in runs):
        all_ = [r for r in runs if (r.measurement, r.n, r.layout) == key]
        rs = [r for r in all_ if not r.error]
        row: Row = {"measurement": key[0], "n": key[1], "layout": key[2], "reps": len(rs)}
        row["errors"] = len(all_) - len(rs)
        for name in (
            "rate", "vote_rate", "frame_bytes", "p50_ms", "p99_ms", "max_ms", "capacity",
            "fleet_cpu_pct", "fleet_sys_pct", "fleet_cpu_max_proc_pct", "redis_cpu_pct",
            "foreign_cpu_pct", "all_dropped_after_s",
        ):  # fmt: skip
            row[name] = fo.med([getattr(r, name) for r in rs])
        row["server_cpu_pct"] = fo.med([sum(r.server_cpu_pct) for r in rs])
        row["server_sys_pct"] = fo.med([sum(r.server_sys_pct) for r in rs])
        row["frames_per_cpu_s"] = fo.med(
            [r.capacity / max(1e-9, sum(r.server_cpu_pct) / 100) for r in rs]
        )
        # Healthy clients' mean latency before / after the stalled ones of the same repetition
        # were all dropped (the fill phase, then the clean-up).
        drop_at = {x.rep: x.all_dropped_after_s for x in runs if x.measurement == key[0]}
        for name, before in (("mean_before_drop_ms", True), ("mean_after_drop_ms", False)):
            row[name] = fo.med([phase_mean(r, drop_at.get(r.rep, math.nan), before) for r in rs])
        for per in ("server_cpu_pct", "push_lag_ms", "pushes_per_s"):  # the busiest instance
            row[f"{per}_max"] = fo.med([max(getattr(r, per), default=math.nan) for r in rs])
        growth = [
            max(b - a for a, b in zip(r.rss_start_kib, r.rss_max_kib, strict=True)) for r in rs
        ]
        row["rss_growth_kib"] = fo.med([float(g) for g in growth])
        row["rss_max_kib"] = fo.med([float(max(r.rss_max_kib)) for r in rs])
        row["tcp_mem_growth_kib"] = fo.med(
            [float(r.tcp_mem_max_kib - r.tcp_mem_start_kib) for r in rs]
        )
        for name in ("missing", "closed", "failed", "behind_at_end", "dropped_slow"):
            row[name] = sum(getattr(r, name) for r in rs)
        row["stalled"] = max((r.stalled for r in rs), default=0)  # per run
        row["clients_at_end"] = [r.clients_at_end for r in rs]
        same = [x for x in [*rows, row] if x["measurement"] == key[0] and x["n"] == key[1]]
        ref, prev = same[0], same[-2] if len(same) > 1 else row
        row["p50_minus_prev_ms"] = row["p50_ms"] - prev["p50_ms"]
        row["p50_minus_ref_ms"] = row["p50_ms"] - ref["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / ref["p99_ms"]
        row["capacity_ratio"] = row["capacity"] / ref["capacity"]
        rows.append(row)
    return rows


def phase_mean(run: Run, at: float, before: bool) -> float:
    """Mean latency of the votes sent before (or from one second after) `at` s into the phase."""
    if math.isnan(at):
        return math.nan
    xs = [m for t, m, _ in run.timeline if (t + 1 <= at if before else t >= at + 1)]
    return sum(xs) / len(xs) if xs else math.nan


def targets(rows: list[Row]) -> list[Row]:
    def last(meas: str) -> Row:
        return ([r for r in rows if r["measurement"] == meas] or [{"p99_ratio": math.nan}])[-1]

    cross = [r["p50_minus_ref_ms"] for r in rows if r["layout"].startswith("Redis: votes on A")]
    worst = max(cross) if cross and not any(map(math.isnan, cross)) else math.nan
    values = [
        (f"cross-instance p50 {MINUS} local p50 (ms)", worst, 2.0,
         "≤ 2 ms", "the worst N; local = one instance on the memory store"),
        ("two instances on 2 cores: p99 at 5,000 clients ÷ one instance",
         last("cores")["p99_ratio"], 0.6, "≤ 0.6",
         f"N = {last('cores').get('n')}; one instance = memory store, pinned to CPU 0"),
        ("healthy p99 with 50 stalled ÷ without", last("slow")["p99_ratio"], 1.1, "≤ 1.1",
         f"{last('slow').get('n')} healthy, {last('slow').get('stalled')} stalled"),
    ]  # fmt: skip
    return [
        {"figure": fig, "value": v, "target": t, "met": bool(v <= limit), "note": note}
        for fig, v, limit, t, note in values
    ]


def checks(rows: list[Row]) -> list[str]:
    """What would make a figure suspect, said next to it."""
    out = []
    for r in rows:
        at = f"{r['measurement']}, N = {r['n']}, {r['layout']}"
        if r["errors"]:
            out.append(f"{at}: {r['errors']} run(s) failed (see the every-run table)")
        if r["missing"] or r["closed"] or r["failed"]:
            out.append(
                f"{at}: {r['missing']} (vote, client) pairs undelivered, {r['closed']} healthy "
                f"clients closed, {r['failed']} connections failed"
            )
        if r["fleet_cpu_max_proc_pct"] >= 90:
            out.append(f"{at}: a fleet process used {r['fleet_cpu_max_proc_pct']:.0f} % of a core")
        if r["foreign_cpu_pct"] >= 50:
            out.append(f"{at}: other load {r['foreign_cpu_pct']:.0f} % of a core (median)")
        if r["dropped_slow"] < r["stalled"] * r["reps"]:
            out.append(f"{at}: {r['dropped_slow']} of {r['stalled'] * r['reps']} stalled dropped")
        if r["measurement"] == "slow" and any(c != r["n"] for c in r["clients_at_end"]):
            out.append(f"{at}: clients connected at the end {r['clients_at_end']}, not {r['n']}")
    return out


# --- markdown -----------------------------------------------------------------------------------

Col = tuple[str, Callable[[Row], str]]
TEXT = {"figure", "target", "met", "note", "measurement", "layout", "error"}  # left-aligned


def num(key: str, digits: int = 1, scale: float = 1.0) -> Callable[[Row], str]:
    return lambda r: fo.fmt(float(r[key]) * scale, digits)


def table(cols: list[Col], rows: list[Row]) -> list[str]:
    head = "| " + " | ".join(h for h, _ in cols) + " |"
    rule = "|" + "|".join("---" if h in TEXT else "---:" for h, _ in cols) + "|"
    return [head, rule, *("| " + " | ".join(fn(r) for _, fn in cols) + " |" for r in rows)]


COMMON: list[Col] = [("layout", lambda r: r["layout"]), ("N", lambda r: str(r["n"]))]
SECTIONS: dict[str, tuple[str, list[Col]]] = {
    "cross": ("Cross-instance latency", [
        *COMMON, ("votes/s", num("vote_rate")), ("p50 ms", num("p50_ms", 2)),
        (f"p50 {MINUS} memory ms", num("p50_minus_ref_ms", 2)),
        (f"p50 {MINUS} row above ms", num("p50_minus_prev_ms", 2)), ("p99 ms", num("p99_ms", 2)),
        ("p99 ÷ memory", num("p99_ratio", 2)), ("servers CPU %", num("server_cpu_pct", 0)),
        ("Redis CPU %", num("redis_cpu_pct", 0)),
        ("busiest fleet process CPU %", num("fleet_cpu_max_proc_pct", 0)),
        ("undelivered", lambda r: str(r["missing"])), ("other load %", num("foreign_cpu_pct", 0)),
    ]),
    "cores": ("Both cores", [
        *COMMON, ("votes/s", num("vote_rate")), ("capacity frames/s", num("capacity", 0)),
        ("capacity ÷ one", num("capacity_ratio", 2)), ("p50 ms", num("p50_ms")),
        ("p99 ms", num("p99_ms")), ("p99 ÷ one", num("p99_ratio", 2)),
        ("pushes/s per instance", num("pushes_per_s_max", 1)),
        ("server push time ms", num("push_lag_ms_max", 1)),
        ("frames per server CPU-second", num("frames_per_cpu_s", 0)),
        ("servers CPU %", num("server_cpu_pct", 0)),
        ("of it kernel %", num("server_sys_pct", 0)),
        ("busiest server CPU %", num("server_cpu_pct_max", 0)),
        ("fleet CPU %", num("fleet_cpu_pct", 0)), ("fleet kernel %", num("fleet_sys_pct", 0)),
        ("Redis CPU %", num("redis_cpu_pct", 0)),
        ("undelivered", lambda r: str(r["missing"])), ("other load %", num("foreign_cpu_pct", 0)),
    ]),
    "slow": ("Slow clients", [
        *COMMON, ("votes/s", num("vote_rate")), ("frame bytes", num("frame_bytes", 0)),
        ("p50 ms", num("p50_ms")), ("p99 ms", num("p99_ms")),
        ("p99 ÷ without", num("p99_ratio", 2)),
        ("dropped (1013) / stalled", lambda r: f"{r['dropped_slow']} / {r['stalled'] * r['reps']}"),
        ("all dropped after s", num("all_dropped_after_s")),
        ("healthy mean ms before the drop", num("mean_before_drop_ms", 2)),
        ("healthy mean ms after", num("mean_after_drop_ms", 2)),
        ("server CPU %", num("server_cpu_pct", 0)),
        ("of it kernel %", num("server_sys_pct", 0)),
        ("server RSS growth MiB", num("rss_growth_kib", 1, 1 / 1024)),
        ("server RSS max MiB", num("rss_max_kib", 1, 1 / 1024)),
        ("kernel TCP memory growth MiB", num("tcp_mem_growth_kib", 0, 1 / 1024)),
        ("undelivered", lambda r: str(r["missing"])),
        ("busiest fleet process CPU %", num("fleet_cpu_max_proc_pct", 0)),
        ("other load %", num("foreign_cpu_pct", 0)),
    ]),
}  # fmt: skip


def worst_second(run: Row) -> str:
    """The second of the vote phase holding the slowest delivery: where to look for a stall."""
    if not run["timeline"]:
        return "n/a"
    t, _, worst = max(run["timeline"], key=lambda x: x[2])
    return f"{worst:.0f} @ {t:.0f}"


def render(rows: list[Row], runs: list[Run], tg: list[Row], meta: dict[str, Any]) -> str:
    out = [
        f"## Cluster ({meta['mode']} run)",
        "",
        f"- date: {meta['date']}; the whole run took {meta['elapsed_s'] / 60:.1f} min",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['kernel']}",
        f"- software: Python {meta['python']}, aiohttp {meta['aiohttp']}, {meta['loop']}; "
        f"Redis {meta['redis']}; Node {meta['node']}, ws {meta['ws']} (fleet)",
        f"- code measured: {meta['code']}",
        f"- settings: {meta['settings']}",
        f"- reproduce: `{meta['command']}` (from the project root)",
        "",
        "Medians of the repetitions (each layout runs once per repetition, in turn). "
        "**Latency** = vote request sent → first frame with that vote's `seq` (or a later one) "
        "received, over every (vote, healthy client) pair; an undelivered pair counts as "
        "infinitely late. **CPU** = utime+stime over the vote phase, % of one core. **Other "
        "load** = CPU of processes outside the benchmark over the vote phase (this machine is "
        "shared), % of one core.",
        "",
        *table(
            [
                ("figure", lambda t: t["figure"]),
                ("value", num("value", 2)),
                ("target", lambda t: t["target"]),
                ("met", lambda t: "n/a" if math.isnan(t["value"]) else "✅❌"[not t["met"]]),
                ("note", lambda t: t["note"]),
            ],
            tg,
        ),
    ]
    for meas, (title, cols) in SECTIONS.items():
        if any(r["measurement"] == meas for r in rows):
            part = [r for r in rows if r["measurement"] == meas]
            out += ["", f"### {title}", "", meta[meas], "", *table(cols, part)]
    warnings = checks(rows)
    out += ["", "Checks: " + ("; ".join(warnings) if warnings else "none raised") + "."]
    out += ["", "Every run:", ""]
    out += table(
        [
            ("measurement", lambda r: r["measurement"]),
            *COMMON,
            ("rep", lambda r: str(r["rep"])),
            ("votes", lambda r: str(r["votes"])),
            ("p50 ms", num("p50_ms", 2)),
            ("p99 ms", num("p99_ms", 2)),
            ("max ms", num("max_ms", 1)),
            ("worst second: max ms @ s", worst_second),
            ("frames/s", num("capacity", 0)),
            ("servers CPU %", lambda r: " + ".join(f"{c:.0f}" for c in r["server_cpu_pct"])),
            ("fleet CPU %", num("fleet_cpu_pct", 0)),
            ("RSS start→max MiB", lambda r: " + ".join(
                f"{a / 1024:.0f}→{b / 1024:.0f}" for a, b in zip(r["rss_start_kib"],
                                                                r["rss_max_kib"], strict=True))),
            ("dropped", lambda r: str(r["dropped_slow"])),
            ("undelivered", lambda r: str(r["missing"])),
            ("other load %", num("foreign_cpu_pct", 0)),
            ("error", lambda r: r["error"]),
        ],
        [asdict(r) for r in runs],
    )  # fmt: skip
    return "\n".join(out) + "\n"


def describe(meas: str, todo: list[Plan], args: argparse.Namespace, pin: bool) -> str:
    """The set-up of one measurement, for the markdown."""
    mine = [p for p in todo if p[0] == meas]
    _, n, layouts, rate, duration = mine[-1]
    loads = "; ".join(f"N = {p[1]}: {p[3]:g} votes/s for {p[4]:g} s" for p in mine)
    load = f"{rate:g} votes/s for {duration:g} s, {args.reps} repetition(s)"
    if meas == "cross":
        where = (
            "The instance the fleet listens to (the only one, or B) and Redis (a fresh one per "
            "run) on CPU 0; the fleet (2 Node `ws` processes), the voter, this script and A on "
            "CPU 1: A answers the vote while B pushes, as on two machines, instead of taking "
            "CPU from B (with A and B both on CPU 0, an earlier run measured the hop ~1 ms "
            "slower at N = 100)."
        )
        return (
            f"{loads}; {args.reps} repetition(s). {where if pin else 'Nothing pinned.'} "
            "A and B share one Redis and "
            "FV_SECRET; votes go to A, the fleet listens on B, so every push crosses Redis "
            f"pub/sub. Reference: one instance on the memory store. **p50 {MINUS} row above**: "
            f"the Redis store's own cost (one instance on Redis {MINUS} memory), then the hop's "
            f"(A→B {MINUS} one instance on Redis)."
        )
    if meas == "cores":
        return (
            f"N = {n}: {load} = {rate * n:,.0f} frames/s offered, more than one instance can "
            "send (pushes then coalesce: capacity = frames/s the fleet received). One instance "
            f"{'pinned to CPU 0 ' if pin else ''}against two on one Redis "
            f"{'pinned to CPU 0 and CPU 1 ' if pin else ''}with the clients split evenly and "
            "the votes on the first. The fleet (`fleet.js --raw`: the same WebSocket frames "
            "read from a bare socket, ~30 % less CPU per frame than the `ws` library; 2 "
            "processes, one per instance when there are two), the voter and this script are "
            "not pinned: they take what the servers leave, the same way in both layouts. On 2 "
            "cores the clients need about as much CPU per frame as the server, so this machine "
            "cannot show what a second core gives a server whose clients live elsewhere: the "
            "two layouts share the same 2 cores with the fleet. **Frames per server CPU-second** "
            "= capacity ÷ the servers' CPU: what each core would deliver if the fleet left it "
            "alone. **votes/s** is what was achieved: the voter waits for each answer, and an "
            "instance busy pushing answers late. **Server push time** = mean time from a change "
            "to its frame written to every client of an instance (fv_ws_push_lag_seconds; the "
            "busiest instance), the server's part of the latency. **of it kernel %** / **fleet "
            "kernel %** = the part of the servers' / the fleet's CPU spent in the kernel (stime): "
            "mostly loopback TCP, sending on one side and receiving on the other, which a leaner "
            "client program would not remove."
        )
    stalled = layouts[-1].stalled
    return (
        f"{n} healthy clients, and {stalled} stalled ones in the second layout "
        "(`fleet.js --stall`: WebSocket handshake, then the socket is paused and never read); "
        f"{load}; {SLOW_FEATURES} features, so each frame is ~5.6 KB (the largest the default "
        "top_n = 20 sends) and a stalled socket's kernel buffers (the server's send buffer is "
        "fixed by ws_send_buffer = 64 KiB; the client's receive buffer is autotuned) fill within "
        "the run. Defaults otherwise: ws_buffer_limit = 256 KiB, slow_client_timeout = "
        f"5 s. One instance, memory store{', CPU 0; fleet on CPU 1' if pin else ''}. "
        "**Dropped** = the server's fv_ws_dropped_slow_total (closed with 1013; the close frame "
        "cannot reach a client that never reads, so the connection is cut after "
        f"ws_close_timeout). **RSS growth** = server VmRSS max (every 0.25 s) {MINUS} at the "
        f"vote start; the bound the design promises is stalled {TIMES} (ws_buffer_limit + a "
        f"frame) ≈ {stalled * (BUFFER_LIMIT_KIB + 6) / 1024:.0f} MiB. **Kernel TCP memory** = "
        "all TCP sockets of the machine (/proc/net/sockstat): where the stalled sockets' "
        "buffers sit until they are cut. **Healthy mean before / after the drop**: mean "
        "latency of the votes sent before the last stalled client of the same repetition was "
        "dropped, and from a second after (the same split in the run without them). Both runs "
        "poll /metrics every 0.5 s (~1 ms of server CPU each) to time the drop."
    )


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--quick", action="store_true", help="small and short; writes cluster-quick.*")
    add("--reps", type=int, help="repetitions (default 3; quick 1)")
    add("--only", choices=("cross", "cores", "slow"), action="append", help="repeatable")
    add("--rate", type=float, default=20.0, help="cross: votes/s (20)")
    add("--max-frame-rate", type=float, default=25_000, help="cross: votes/s ≤ this ÷ N (25000)")
    add("--min-votes", type=int, help="cross: at least this many votes (100; quick 0)")
    add("--duration", type=float, help="cross, cores: vote seconds (10; quick 3)")
    add("--cores-frame-rate", type=float, default=200_000, help="cores: votes/s = this ÷ N")
    add("--ws-fleet", action="store_true", help="cores: the `ws` fleet, not fleet.js --raw")
    add("--slow-rate", type=float, default=50.0, help="slow: votes/s (50) ...")
    add("--slow-frame-rate", type=float, default=25_000, help="... ≤ this ÷ N (25000)")
    add("--slow-duration", type=float, help="slow: vote seconds (50; quick 25)")
    add("--quiet-below", type=float, default=25.0, help="start a run below this %% busy (25)")
    add("--quiet-wait", type=float, help="... waiting at most this many s (15; quick 0)")
    add("--no-pin", action="store_true", help="do not pin with taskset")
    add("--output", type=Path, help="markdown (bench/results/cluster.md); .json next to it")
    args = p.parse_args(argv)
    args.only = args.only or ["cross", "cores", "slow"]
    args.reps = args.reps or (1 if args.quick else 3)
    args.min_votes = args.min_votes if args.min_votes is not None else (0 if args.quick else 100)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.slow_duration = args.slow_duration or (25.0 if args.quick else 50.0)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 15.0
    args.output = args.output or RESULTS / f"cluster{'-quick' if args.quick else ''}.md"
    return args


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    fo.ensure_node_modules()
    if shutil.which("redis-server") is None:
        sys.exit("cluster: needs redis-server on PATH")
    venv = fo.ROOT / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    fo.raise_fd_limit(2 * 5000 + 1024)
    pin = not args.no_pin and shutil.which("taskset") is not None and CPUS >= 2
    meta: dict[str, Any] = fo.versions(python)
    meta.update(
        mode="quick" if args.quick else "full",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        redis=redis_version(),
        code=code_state(),
        settings=", ".join(f"{k}=0" for k in fo.UNLIMITED) + " (all traffic comes from "
        "127.0.0.1), one FV_SECRET for every instance; otherwise the defaults",
        command=shlex.join([".venv/bin/python", "bench/cluster.py", *argv]),
    )  # fmt: skip
    ctx = {"python": python, "pin": pin, "secret": secrets.token_urlsafe(32)}
    ctx.update(quiet_below=args.quiet_below, quiet_wait=args.quiet_wait)
    runs: list[Run] = []
    started = time.monotonic()
    todo = plans(args)
    with tempfile.TemporaryDirectory(prefix="cluster-") as logdir:
        ctx["logdir"] = Path(logdir)
        for plan in todo:
            meas, n, layouts, rate, duration = plan
            meta[meas] = describe(meas, todo, args, pin)
            for rep in range(1, args.reps + 1):
                for lay in layouts:
                    t = time.monotonic()
                    try:
                        run = await measure(meas, lay, rep, rate, duration, ctx)
                    except (RuntimeError, OSError, TimeoutError, aiohttp.ClientError) as exc:
                        run = Run(meas, lay.name, n, rep, error=f"{type(exc).__name__}: {exc}")
                    runs.append(run)
                    print(
                        f"  {meas} N={n} rep {rep} {lay.name}: p50 {fo.fmt(run.p50_ms, 2)} ms, "
                        f"p99 {fo.fmt(run.p99_ms, 2)} ms, {fo.fmt(run.capacity, 0)} frames/s, "
                        f"servers CPU {'+'.join(f'{c:.0f}' for c in run.server_cpu_pct)} %, "
                        f"fleet {fo.fmt(run.fleet_cpu_pct, 0)} %, missing {run.missing}, "
                        f"dropped {run.dropped_slow}, other {fo.fmt(run.foreign_cpu_pct, 0)} % "
                        f"({time.monotonic() - t:.0f} s) {run.error[:300]}",
                        file=sys.stderr,
                    )
    meta["elapsed_s"] = time.monotonic() - started
    if (end := code_state()) != meta["code"]:
        meta["code"] += f" at the start; {end} at the end"
    rows = summarize(runs)
    tg = targets(rows)
    text = render(rows, runs, tg, meta)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw = {"meta": meta, "rows": rows, "targets": tg, "runs": [asdict(r) for r in runs]}
    text = json.dumps(finite(raw), indent=1, ensure_ascii=False)
    args.output.with_suffix(".json").write_text(text + "\n")
    print(f"written to {args.output} and {args.output.with_suffix('.json').name}", file=sys.stderr)
    return 0


def finite(x: Any) -> Any:
    """Strict JSON: NaN (no figure) and infinity (undelivered frames) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    return [finite(v) for v in x] if isinstance(x, list | tuple) else x


async def run_cancellable(args: argparse.Namespace, argv: list[str]) -> int:
    """SIGTERM cancels the run like Ctrl-C, so every `finally` stops its subprocesses."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await amain(args, argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return asyncio.run(run_cancellable(parse_args(argv), argv))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("cluster: interrupted; subprocesses stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
