"""Fan-out benchmark: our /ws broadcaster against a FLOOR and two PEERS, same fleet, same votes.

    .venv/bin/python bench/fanout.py              # N = 100, 1000, 5000; 3 repetitions (~15 min)
    .venv/bin/python bench/fanout.py --quick      # N = 50, 200; 1 short repetition (~1.5 min)
    .venv/bin/python bench/fanout.py --quick --servers ours peer2   # a subset of the servers
    .venv/bin/python bench/fanout.py --rev HEAD   # a committed revision, not the working tree
    .venv/bin/python bench/fanout.py --from-json bench/results/fanout.json --plot  # re-render

Needs Node and `npm ci` in bench/ (run here if bench/node_modules is missing).
The servers (--servers chooses some; default all four, in this order):
  ours  = `python -m service` with its rate limits off (votes: PUT /features/1/vote);
  floor = bench/floor_server.py: minimal aiohttp, one pre-encoded frame written to every
          socket with `transport.write`;
  peer1 = bench/peer_websockets.py: the `websockets` library's asyncio server and its
          `broadcast()` (compression off, no pings);
  peer2 = bench/peer_ws.js: a Node `ws` WebSocketServer, `send()` of one Buffer to every client.
Floor and peers share one control protocol: POST /vote (empty body; websockets' HTTP handling
refuses request bodies and answers one request per connection, so the voter opens a new TCP
connection per vote for peer1) broadcasts one `{"type":"stats","seq":N,"pad":"xx…"}` frame of
exactly the size of our stats message and answers {"seq":N}; GET /healthz answers {"seq":N}.
For every N and repetition, each server in turn is started as a subprocess pinned to CPU 0
(taskset), and:
  1. a warm-up WebSocket connects once, then votes with no client connected measure the per-vote
     CPU (ours: GET /stats gives the size of its stats message, which the others pad to);
  2. server VmRSS with no client, then with N idle clients of the Node `ws` fleet (bench/fleet.js,
     --fleet-procs processes pinned to CPU 1): (RSS_N - RSS_0) / N per idle connection;
  3. one voter sends votes one at a time at --rate votes/s (capped at --max-frame-rate / N so the
     fleet's single core keeps up) for --duration s; each vote's send time (CLOCK_MONOTONIC,
     shared with the fleet) and seq are kept; every client records when the first frame with a
     seq >= each vote's seq arrived -> latency p50/p99 over every (vote, client) pair;
  4. server CPU (run time of every thread, /proc/<pid>/task/*/schedstat, in ns) over the vote
     phase / frames the fleet got;
     fleet CPU over the same window as % of one core; CPU used by other processes ("other load").
Before each run it waits (bounded) for the machine to be quiet. Medians of the repetitions, the
ratios ours/floor and ours/peer and every run go to bench/results/fanout.md (a `## Fan-out`
section; quick: fanout-quick.md) with the raw figures and the targets next to it as .json; a
full run (or --plot) then draws latency against N into bench/fanout.png (bench/plot.py).
Everything listens on and talks to 127.0.0.1 only; every subprocess is stopped in `finally` and
gets SIGKILL if this process dies (PR_SET_PDEATHSIG); the fleet and peer2 exit when their stdin
closes.
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
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_P99 = 1.2  # ours ÷ floor, from TARGET_P99_MIN_N clients on
TARGET_P99_MIN_N = 1000
TARGET_CPU = 1.15  # ours ÷ floor
TARGET_PEER_CPU = 1.0  # ours ÷ each peer: below
TARGET_KIB = 16.0
# Every server the benchmark knows, in the order each (N, repetition) measures them. Ours comes
# first: it sets the payload size the others pad to.
SERVERS = ("ours", "floor", "peer1", "peer2")
PEERS = ("peer1", "peer2")
LABELS = {
    "ours": "ours (service /ws)",
    "floor": "floor (minimal aiohttp)",
    "peer1": "peer1 (websockets broadcast())",
    "peer2": "peer2 (Node ws)",
}
FEATURES = 10  # features seeded into our store: sets the size of the stats message
# Every request of the benchmark comes from 127.0.0.1: per-client rate limits (where the service
# has them; unknown FV_ names are ignored) would refuse the fleet and the voter. 0 = off.
UNLIMITED: dict[str, str] = {
    f"FV_{name}": "0" for name in ("TOKEN_RATE", "VOTE_RATE", "CREATE_RATE", "WS_CONNECT_RATE")
}


# --- /proc readings ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_ns(pid: int) -> int:
    """Run time of every thread in nanoseconds (/proc/<pid>/task/*/schedstat): finer than ticks."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total


def machine_busy() -> tuple[float, float]:
    """(busy CPU-seconds, total CPU-seconds) of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


async def wait_quiet(limit_pct: float, max_wait: float) -> tuple[float, float]:
    """Wait (at most `max_wait` s) until the machine is below `limit_pct` % busy for 1 s.

    Other work on a shared machine (package installs, test runs) shows up as latency tails;
    the wait and the load seen are reported. Returns (seconds waited, last busy %).
    """
    started = time.monotonic()
    while True:
        b0, t0 = machine_busy()
        await asyncio.sleep(1.0)
        b1, t1 = machine_busy()
        pct = 100 * (b1 - b0) / max(1e-9, t1 - t0)
        waited = time.monotonic() - started
        if pct < limit_pct or waited >= max_wait:
            return waited, pct


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_fd_limit(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        print(f"warning: RLIMIT_NOFILE is {soft}, below the {need} this run needs", file=sys.stderr)
    return soft, hard


# --- subprocesses -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this benchmark dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL; always reaps (and closes its stdin pipe)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


@dataclass
class Server:
    kind: str  # one of SERVERS: "ours", "floor", "peer1", "peer2"
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""


def start_server(
    kind: str,
    python: str,
    pin: list[str],
    logdir: Path,
    size: int,
    secret: str,
    extra_env: dict[str, str],
    source: Path,
) -> Server:
    port = free_port()
    log = logdir / f"{kind}-{port}.log"
    # A clean configuration: nothing FV_* from the caller's environment leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
    cwd = ROOT
    stdin: int | None = None  # inherited, as before
    control = ["--host", HOST, "--port", str(port), "--size", str(size)]
    if kind == "ours":
        cmd = [*pin, python, "-m", "service"]
        env.update(FV_SECRET=secret, FV_HOST=HOST, PORT=str(port), **UNLIMITED)
        env.update(FV_STORE="memory")  # as these figures were set (the default is SQLite now)
        env.update(extra_env)
        cwd = source
    elif kind == "floor":
        cmd = [*pin, python, str(BENCH / "floor_server.py"), *control]
    elif kind == "peer1":
        cmd = [*pin, python, str(BENCH / "peer_websockets.py"), *control]
    elif kind == "peer2":
        # A pipe nobody writes to: Node exits when it closes (this process is gone).
        cmd = [*pin, "node", str(BENCH / "peer_ws.js"), *control]
        stdin = subprocess.PIPE
    else:
        raise ValueError(f"unknown server {kind!r} (one of {', '.join(SERVERS)})")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Server(kind, proc, port, log)


async def wait_ready(session: aiohttp.ClientSession, server: Server, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited early:\n{server.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"{server.base}/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.kind} not ready after {within}s:\n{server.log_tail()}")


class Fleet:
    """Node `ws` client processes (bench/fleet.js) speaking JSON lines on stdin/stdout."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self, url: str, clients: int, nprocs: int, pin: list[str]) -> None:
        nprocs = max(1, min(nprocs, clients))
        shares = [clients // nprocs + (1 if i < clients % nprocs else 0) for i in range(nprocs)]
        for share in shares:
            proc = await asyncio.create_subprocess_exec(
                *pin,
                "node",
                str(BENCH / "fleet.js"),
                url,
                str(share),
                "64",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)

    async def _recv(self, proc: asyncio.subprocess.Process, event: str, within: float) -> Any:
        assert proc.stdout is not None
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"fleet {proc.pid}: no {event!r} within {within}s")
            line = await asyncio.wait_for(proc.stdout.readline(), left)
            if not line:
                raise RuntimeError(f"fleet {proc.pid} exited (rc {proc.returncode})")
            msg = json.loads(line)
            if msg.get("event") == event:
                return msg

    async def send(self, cmd: dict[str, Any]) -> None:
        data = (json.dumps(cmd) + "\n").encode()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(data)
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin is not None))

    async def gather(self, event: str, within: float) -> list[Any]:
        return list(await asyncio.gather(*(self._recv(p, event, within) for p in self.procs)))

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"cmd":"exit"}\n')
                    proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 5)
        self.procs.clear()


# --- the voter --------------------------------------------------------------------------------


class Voter:
    """Votes one at a time on a fixed schedule; returns (seq or None, send time on monotonic)."""

    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self.session = session
        self.server = server
        self.token = ""
        self.value = 1

    async def setup(self, features: int = FEATURES) -> None:
        """Start as a voting script does: the first request on the voter's connection asks for
        a token. The board's features are proposed over another connection (the room's), so
        the voter's carries what a voting script sends: a token request, votes, stats reads."""
        if self.server.kind != "ours":
            return
        async with self.session.post(f"{self.server.base}/auth/token") as resp:
            resp.raise_for_status()
            self.token = (await resp.json())["token"]
        async with aiohttp.ClientSession(timeout=self.session.timeout) as room:
            for i in range(1, features + 1):
                body = {
                    "title": f"Feature number {i}: a realistic title",
                    "description": f"What feature {i} does and why the audience wants it, in "
                    "a sentence or two as people write them on a live board.",
                }
                async with room.post(
                    f"{self.server.base}/features", json=body, headers=self._auth()
                ) as resp:
                    resp.raise_for_status()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def message_size(self) -> int:
        """Bytes of our `stats` push right now: {"type":"stats","seq":N,"stats":<GET /stats>}."""
        async with self.session.get(f"{self.server.base}/stats") as resp:
            body = await resp.read()
        seq = json.loads(body)["seq"]
        return len(b'{"type":"stats","seq":%d,"stats":%s}' % (seq, body))

    async def seq(self) -> int:
        path = "/stats" if self.server.kind == "ours" else "/healthz"
        async with self.session.get(f"{self.server.base}{path}") as resp:
            return int((await resp.json())["seq"])

    async def vote_once(self) -> int | None:
        if self.server.kind == "ours":
            # Alternate +1 / -1 on feature 1: every vote changes the stats (seq + 1).
            self.value = -self.value
            async with self.session.put(
                f"{self.server.base}/features/1/vote",
                json={"value": self.value},
                headers=self._auth(),
            ) as resp:
                resp.raise_for_status()
                await resp.read()
                return None
        # Floor and peers: an empty POST (websockets' HTTP handling refuses any request body).
        async with self.session.post(f"{self.server.base}/vote") as resp:
            resp.raise_for_status()
            return int((await resp.json())["seq"])

    async def run(self, rate: float, duration: float) -> list[tuple[int, float]]:
        """Votes at `rate`/s for `duration` s (never two in flight); [(seq, sent_monotonic)]."""
        count = max(1, round(rate * duration))
        before = await self.seq()
        sent: list[tuple[int | None, float]] = []
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.monotonic()
            sent.append((await self.vote_once(), t))
        if self.server.kind == "ours":
            after = await self.seq()
            if after != before + count:
                raise RuntimeError(f"seq moved {after - before} for {count} votes")
            return [(before + i + 1, t) for i, (_, t) in enumerate(sent)]
        return [(s, t) for s, t in sent if s is not None]


async def warm_up(url: str, first: bool) -> None:
    """Connect one WebSocket and close it; with `first`, wait for the first frame."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        if first:
            await asyncio.wait_for(ws.receive(), 10)


# --- one measurement --------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    n: int
    rep: int
    connected: int = 0
    connect_failed: int = 0
    rss0_kib: int = 0
    rssn_kib: int = 0
    kib_per_conn: float = math.nan
    votes: int = 0
    vote_rate: float = 0.0
    window_s: float = 0.0
    frames: int = 0
    server_cpu_s: float = 0.0
    server_cpu_ns: int = 0
    us_per_frame: float = math.nan
    vote_cpu_us: float = math.nan  # per vote with no client connected (schedstat)
    net_us_per_frame: float = math.nan  # (CPU - votes * vote_cpu) / frames (schedstat)
    fleet_cpu_pct: float = 0.0
    fleet_cpu_max_proc_pct: float = 0.0
    rate: float = 0.0  # votes/s asked for
    quiet_wait_s: float = 0.0
    busy_before_pct: float = 0.0  # machine busy % (of all CPUs) just before the run
    foreign_cpu_pct: float = 0.0  # CPU used by other processes during the vote phase, % of 1 core
    samples: int = 0
    missing: int = 0
    negative: int = 0
    closed: int = 0
    behind_at_end: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    elapsed_s: float = 0.0  # wall time of the whole run: start, warm-up, connect, votes, stop
    hist: dict[float, int] = field(default_factory=dict, repr=False)
    # Per vote, in order: [seq, mean latency ms, max latency ms] over every client.
    per_vote: list[list[float]] = field(default_factory=list, repr=False)


def percentile(hist: dict[float, int], missing: int, q: float) -> float:
    """q-quantile of a histogram {ms: count}; missing deliveries count as infinitely late."""
    total = sum(hist.values()) + missing
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= rank:
            return ms
    return math.inf


def rate_for(n: int, args: argparse.Namespace) -> tuple[float, float]:
    """(votes/s, vote-phase seconds) for N clients: --rate, capped at --max-frame-rate / N so
    the fleet's one core is not the bottleneck, for at least --min-votes votes."""
    rate = min(args.rate, args.max_frame_rate / max(1, n))
    return rate, max(args.duration, args.min_votes / rate)


async def measure(
    kind: str, n: int, rep: int, args: argparse.Namespace, ctx: dict[str, Any]
) -> Run:
    run = Run(kind, n, rep)
    rate, duration = rate_for(n, args)
    run.rate = rate
    run.quiet_wait_s, run.busy_before_pct = await wait_quiet(args.quiet_below, args.quiet_wait)
    server = start_server(
        kind,
        ctx["python"],
        ctx["server_pin"],
        ctx["logdir"],
        ctx["size"],
        ctx["secret"],
        ctx["ours_env"],
        ctx["source"],
    )
    fleet = Fleet()
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as probe:
            await wait_ready(probe, server)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            voter = Voter(session, server)
            await voter.setup()
            ws_url = f"ws://{HOST}:{server.port}/ws"
            await warm_up(ws_url, first=kind == "ours")
            if kind == "ours":
                ctx["size"] = await voter.message_size()
            pid = server.proc.pid

            # Per-vote cost with nobody connected (the part of CPU/frame that is not fan-out).
            c0 = cpu_ns(pid)
            idle_votes = await voter.run(rate, args.idle_vote_duration)
            run.vote_cpu_us = (cpu_ns(pid) - c0) / 1e3 / len(idle_votes)

            await asyncio.sleep(0.5)
            run.rss0_kib = rss_kib(pid)

            await fleet.start(ws_url, n, args.fleet_procs, ctx["fleet_pin"])
            connected = await fleet.gather("connected", args.connect_timeout)
            run.connected = sum(c["ok"] for c in connected)
            run.connect_failed = sum(c["failed"] for c in connected)
            await asyncio.sleep(args.settle)
            run.rssn_kib = rss_kib(pid)
            run.kib_per_conn = (run.rssn_kib - run.rss0_kib) / max(1, run.connected)

            await fleet.send({"cmd": "mark"})
            await fleet.gather("marked", 10)
            s0, ns0, t0 = cpu_seconds(pid), cpu_ns(pid), time.monotonic()
            f0 = {p: cpu_seconds(p) for p in fleet.pids}
            m0, me0 = machine_busy()[0], cpu_seconds(os.getpid())
            votes = await voter.run(rate, duration)
            await fleet.send({"cmd": "wait", "seq": votes[-1][0], "timeout_ms": 15000})
            reached = await fleet.gather("reached", 30)
            s1, ns1, t1 = cpu_seconds(pid), cpu_ns(pid), time.monotonic()
            f1 = {p: cpu_seconds(p) for p in fleet.pids}
            m1, me1 = machine_busy()[0], cpu_seconds(os.getpid())

            run.behind_at_end = sum(r["behind"] for r in reached)
            run.votes = len(votes)
            if len(votes) > 1:
                run.vote_rate = (len(votes) - 1) / (votes[-1][1] - votes[0][1])
            run.window_s = t1 - t0
            run.server_cpu_s = s1 - s0
            run.server_cpu_ns = ns1 - ns0
            per_proc = [(f1[p] - f0[p]) / run.window_s * 100 for p in fleet.pids]
            run.fleet_cpu_pct = sum(per_proc)
            run.fleet_cpu_max_proc_pct = max(per_proc)
            ours_cpu = run.server_cpu_s + sum(f1[p] - f0[p] for p in fleet.pids) + me1 - me0
            run.foreign_cpu_pct = max(0.0, (m1 - m0 - ours_cpu) / run.window_s * 100)

            await fleet.send({"cmd": "report", "votes": [[s, t * 1e3] for s, t in votes]})
            reports = await fleet.gather("report", 60)
            hist: dict[float, int] = {}
            for rep_ in reports:
                per_ms = rep_["bin_per_ms"]
                for b, c in rep_["hist"].items():
                    ms = (int(b) + 0.5) / per_ms
                    hist[ms] = hist.get(ms, 0) + c
                run.samples += rep_["samples"]
                run.missing += rep_["missing"]
                run.negative += rep_["negative"]
                run.frames += rep_["frames"]
                run.closed += rep_["closed"]
            run.hist = hist
            for i, (seq, _) in enumerate(votes):
                pvs = [r["per_vote"][i] for r in reports]
                count = sum(p[0] for p in pvs)
                mean = sum(p[1] for p in pvs) / count if count else math.nan
                run.per_vote.append([seq, round(mean, 3), max(p[2] for p in pvs)])
            run.p50_ms = percentile(hist, run.missing, 0.50)
            run.p99_ms = percentile(hist, run.missing, 0.99)
            run.max_ms = math.inf if run.missing else max(hist, default=math.nan)
            if run.frames:
                run.us_per_frame = run.server_cpu_ns / 1e3 / run.frames
                run.net_us_per_frame = (
                    run.server_cpu_ns / 1e3 - run.votes * run.vote_cpu_us
                ) / run.frames
    finally:
        await fleet.stop()
        stop_process(server.proc)
    return run


# --- reporting --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def fmt(v: float, digits: int = 1) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def verdict(value: float, target: float, below: bool = False) -> str:
    """✅ when `value` is ≤ `target` (with `below`: strictly under it), ❌ otherwise."""
    if math.isnan(value):
        return "n/a"
    return "✅" if (value < target if below else value <= target) else "❌"


MEDIAN_KEYS = (
    "p50_ms",
    "p99_ms",
    "us_per_frame",
    "net_us_per_frame",
    "kib_per_conn",
    "fleet_cpu_pct",
    "fleet_cpu_max_proc_pct",
    "vote_rate",
    "vote_cpu_us",
)
# Ratios ours ÷ another server kept in each row: "<figure>_ratio" against the floor (the names
# the rows always had), "<figure>_ratio_<peer>" against a peer.
RATIO_FIGURES = {
    "p50": "p50_ms",
    "p99": "p99_ms",
    "cpu": "us_per_frame",
    "net_cpu": "net_us_per_frame",
}
SHORT = {"peer1": "websockets", "peer2": "Node ws"}


def kinds_of(runs: list[Run]) -> list[str]:
    """The servers measured, in SERVERS order (any other kind of an old file after them)."""
    present = list(dict.fromkeys(r.kind for r in runs))
    return [k for k in SERVERS if k in present] + [k for k in present if k not in SERVERS]


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def ratio_key(figure: str, other: str) -> str:
    return f"{figure}_ratio" if other == "floor" else f"{figure}_ratio_{other}"


def summarize(runs: list[Run], ns: list[int]) -> list[dict[str, float]]:
    kinds = kinds_of(runs)
    rows = []
    for n in ns:
        row: dict[str, float] = {"n": n}
        row["rate"] = max((r.rate for r in runs if r.n == n), default=math.nan)
        for kind in kinds:
            rs = [r for r in runs if r.n == n and r.kind == kind]
            for key in MEDIAN_KEYS:
                row[f"{kind}_{key}"] = med([getattr(r, key) for r in rs])
            row[f"{kind}_missing"] = sum(r.missing for r in rs)
            row[f"{kind}_closed"] = sum(r.closed + r.connect_failed for r in rs)
            row[f"{kind}_foreign_max"] = max((r.foreign_cpu_pct for r in rs), default=math.nan)
        if "ours" in kinds:
            for other in ("floor", *PEERS):
                if other in kinds:
                    for figure, key in RATIO_FIGURES.items():
                        row[ratio_key(figure, other)] = ratio(
                            row[f"ours_{key}"], row[f"{other}_{key}"]
                        )
        rows.append(row)
    return rows


def targets(rows: list[dict[str, float]], kinds: list[str]) -> list[dict[str, Any]]:
    """One entry per target figure and N: {"figure", "value", "target", "met"}."""
    out: list[dict[str, Any]] = []

    def add(figure: str, value: float, target: float, below: bool = False) -> None:
        met = value < target if below else value <= target
        sign = "<" if below else "≤"
        out.append({"figure": figure, "value": value, "target": f"{sign} {target:g}", "met": met})

    if "ours" not in kinds:
        return out
    if "floor" in kinds:
        for r in rows:
            if r["n"] >= TARGET_P99_MIN_N:
                add(f"fan-out p99 ÷ floor p99 at N={r['n']}", r["p99_ratio"], TARGET_P99)
        for r in rows:
            add(f"CPU per delivery ÷ floor at N={r['n']}", r["cpu_ratio"], TARGET_CPU)
    for peer in PEERS:
        if peer in kinds:
            for r in rows:
                add(
                    f"CPU per delivery ÷ {peer} ({SHORT[peer]}) at N={r['n']}",
                    r[ratio_key("cpu", peer)],
                    TARGET_PEER_CPU,
                    below=True,
                )
    for r in rows:
        add(f"memory per idle connection KiB at N={r['n']}", r["ours_kib_per_conn"], TARGET_KIB)
    return out


def verdicts(rows: list[dict[str, float]], kinds: list[str]) -> str:
    """One sentence per target: at which N it is met."""

    def which(key: str, target: float, below: bool = False, min_n: int = 0) -> str:
        rs = [r for r in rows if r["n"] >= min_n]
        if not rs:
            return f"not assessed (no N ≥ {min_n} in this run)"
        ok = [(r[key] < target if below else r[key] <= target) for r in rs]
        met = [str(int(r["n"])) for r, good in zip(rs, ok, strict=True) if good]
        missed = [str(int(r["n"])) for r, good in zip(rs, ok, strict=True) if not good]
        if not missed:
            return "met at every N" if not min_n else f"met at every N ≥ {min_n}"
        if not met:
            return "missed at every N" if not min_n else f"missed at every N ≥ {min_n}"
        return f"met at N = {', '.join(met)}; missed at N = {', '.join(missed)}"

    if "ours" not in kinds:
        return "**Targets:** not assessed (our service was not measured)."
    parts = []
    if "floor" in kinds:
        parts += [
            f"p99 ≤ {TARGET_P99}x floor (from {TARGET_P99_MIN_N} clients): "
            f"{which('p99_ratio', TARGET_P99, min_n=TARGET_P99_MIN_N)}.",
            f"CPU/frame ≤ {TARGET_CPU}x floor: {which('cpu_ratio', TARGET_CPU)} "
            f"(fan-out alone, net of per-vote cost: {which('net_cpu_ratio', TARGET_CPU)}).",
        ]
    for peer in PEERS:
        if peer in kinds:
            parts.append(
                f"CPU/frame below {peer} ({SHORT[peer]}): "
                f"{which(ratio_key('cpu', peer), TARGET_PEER_CPU, below=True)} (net: "
                f"{which(ratio_key('net_cpu', peer), TARGET_PEER_CPU, below=True)})."
            )
    parts.append(
        f"≤ {TARGET_KIB:g} KiB per idle connection: {which('ours_kib_per_conn', TARGET_KIB)}."
    )
    return "**Targets:** " + " ".join(parts)


def render(rows: list[dict[str, float]], runs: list[Run], meta: dict[str, str]) -> str:
    kinds = kinds_of(runs)
    others = [k for k in ("floor", *PEERS) if k in kinds and "ours" in kinds]
    names = " / ".join(kinds)
    nan = math.nan

    def each(r: dict[str, float], key: str, digits: int = 1) -> str:
        return " / ".join(fmt(r.get(f"{k}_{key}", nan), digits) for k in kinds)

    out = [f"## Fan-out: our /ws broadcaster against a floor and two peers ({meta['mode']} run)"]
    python_servers = ", ".join(k for k in kinds if k in ("ours", "floor", "peer1"))
    software = f"Python {meta['python']}, aiohttp {meta['aiohttp']}, event loop {meta['loop']}"
    software += f" ({python_servers})" if python_servers else ""
    if "peer1" in kinds:
        software += f"; websockets {meta.get('websockets', 'n/a')} (peer1)"
    node_users = "peer2 and the fleet" if "peer2" in kinds else "the fleet"
    software += f"; Node {meta['node']}, ws {meta['ws']} ({node_users})"
    out += [
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['kernel']}",
        f"- software: {software}",
        f"- servers: {meta.get('servers') or ', '.join(kinds)}",
        f"- code measured: {meta['code']}"
        + (f" at start, {meta['code_end']} at the end" if meta["code_end"] != meta["code"] else ""),
        f"- our service's settings: {meta['settings']}",
        f"- pinning: {meta['pinning']}",
        f"- load: {meta['load']}",
        f"- reproduce: `{meta['command']}` (from the project root)",
    ]
    if meta.get("elapsed"):
        out.append(f"- duration: {meta['elapsed']}")
    if meta.get("plot"):
        out.append(f"- figure: `{meta['plot']}` (bench/plot.py): latency p50 and p99 against N")
    out += [
        "",
        "Medians of the repetitions; ratios are ratios of the medians, ours ÷ the other server "
        "(below 1: ours is faster or leaner). **Latency** = vote request sent → first frame "
        "carrying that vote's `seq` (or a later one) received, over every (vote, client) pair; "
        "send and receipt times are both CLOCK_MONOTONIC of this host. **CPU/frame** = server "
        "CPU time (every thread's run time in ns, /proc/<pid>/task/*/schedstat; until 2026-11-26 "
        "utime+stime in 10 ms ticks) over the vote phase ÷ frames the fleet received in it: the "
        "CPU per delivery. **KiB/idle conn** = (VmRSS with N idle clients - "
        "VmRSS with none) ÷ N. **Fleet CPU** = all fleet processes, % of one core, over the "
        "vote phase (they share one core: near 100 % would mean the fleet is the bottleneck). "
        f"Cells with several figures list the servers in the order {names}.",
        "",
    ]
    head = ["N", "votes/s", f"p50 ms {names}", f"p99 ms {names}"]
    align = ["---:", "---:", "---:", "---:"]
    for other in others:
        note = f" (target ≤ {TARGET_P99} from N = {TARGET_P99_MIN_N})" if other == "floor" else ""
        head.append(f"p99 ours/{other}{note}")
        align.append("---")
    head.append(f"CPU/frame µs {names}")
    align.append("---:")
    for other in others:
        note = f"≤ {TARGET_CPU}" if other == "floor" else f"< {TARGET_PEER_CPU:g}"
        head.append(f"CPU ours/{other} (target {note})")
        align.append("---")
    head += [f"KiB/idle conn {names} (target ours ≤ {TARGET_KIB:g})", f"fleet CPU % {names}"]
    align += ["---:", "---:"]
    out += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [str(r["n"]), fmt(r["rate"], 0), each(r, "p50_ms"), each(r, "p99_ms")]
        for other in others:
            value = r[ratio_key("p99", other)]
            mark = ""
            if other == "floor" and r["n"] >= TARGET_P99_MIN_N:
                mark = " " + verdict(value, TARGET_P99)
            cells.append(fmt(value, 2) + mark)
        cells.append(each(r, "us_per_frame", 2))
        for other in others:
            value = r[ratio_key("cpu", other)]
            if other == "floor":
                cells.append(f"{fmt(value, 2)} {verdict(value, TARGET_CPU)}")
            else:
                cells.append(f"{fmt(value, 2)} {verdict(value, TARGET_PEER_CPU, below=True)}")
        kib = [fmt(r.get(f"{k}_kib_per_conn", nan)) for k in kinds]
        if "ours" in kinds:
            kib[0] += " " + verdict(r["ours_kib_per_conn"], TARGET_KIB)
        cells += [" / ".join(kib), each(r, "fleet_cpu_pct", 0)]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", verdicts(rows, kinds)]
    out += [
        "",
        "Per server (medians). **Vote CPU** = server CPU per vote with no client connected "
        "(ours: HTTP handling, token, store, stats encoding, the push machinery; the others: "
        "HTTP handling, and for peer1 a new TCP connection per vote; thread run time from "
        "/proc/<pid>/task/*/schedstat). **Net CPU/frame** = (vote-phase CPU - votes * vote "
        "CPU) ÷ frames: the fan-out alone. **ours ÷** = ours' figure over this server's, for "
        "p99 / CPU per frame / net CPU per frame. **Other load** = CPU used by processes "
        "outside the benchmark during the vote phase (worst run, % of one core).",
        "",
        "| N | server | votes/s achieved | p50 ms | p99 ms | CPU/frame µs | vote CPU µs "
        "| net CPU/frame µs | ours ÷ p99 / CPU / net | KiB/idle conn "
        "| fleet CPU % all / busiest process | undelivered (vote, client) "
        "| closed or failed clients | other load % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for k in kinds:
            if k in others:
                vs = " / ".join(fmt(r[ratio_key(f, k)], 2) for f in ("p99", "cpu", "net_cpu"))
            else:
                vs = "—"
            out.append(
                f"| {r['n']} | {LABELS.get(k, k)} | {fmt(r[f'{k}_vote_rate'])} "
                f"| {fmt(r[f'{k}_p50_ms'], 2)} | {fmt(r[f'{k}_p99_ms'], 2)} "
                f"| {fmt(r[f'{k}_us_per_frame'], 2)} | {fmt(r[f'{k}_vote_cpu_us'], 0)} "
                f"| {fmt(r[f'{k}_net_us_per_frame'], 2)} | {vs} "
                f"| {fmt(r[f'{k}_kib_per_conn'])} "
                f"| {fmt(r[f'{k}_fleet_cpu_pct'], 0)} / {fmt(r[f'{k}_fleet_cpu_max_proc_pct'], 0)} "
                f"| {int(r[f'{k}_missing'])} | {int(r[f'{k}_closed'])} "
                f"| {fmt(r[f'{k}_foreign_max'], 0)} |"
            )
    out += [
        "",
        "Every run:",
        "",
        "| N | rep | server | connected | votes | frames | p50 ms | p99 ms | max ms | CPU s "
        "| CPU/frame µs | net µs | RSS0 KiB | RSS_N KiB | KiB/conn | fleet CPU % "
        "| other load % | waited for quiet s | run s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|",
    ]
    for run in runs:
        out.append(
            f"| {run.n} | {run.rep} | {run.kind} | {run.connected} | {run.votes} | {run.frames} "
            f"| {fmt(run.p50_ms, 2)} | {fmt(run.p99_ms, 2)} | {fmt(run.max_ms, 1)} "
            f"| {fmt(run.server_cpu_s, 2)} | {fmt(run.us_per_frame, 2)} "
            f"| {fmt(run.net_us_per_frame, 2)} | {run.rss0_kib} | {run.rssn_kib} "
            f"| {fmt(run.kib_per_conn)} | {fmt(run.fleet_cpu_pct, 0)} "
            f"| {fmt(run.foreign_cpu_pct, 0)} | {fmt(run.quiet_wait_s, 0)} "
            f"| {fmt(run.elapsed_s, 0)} |"
        )
    return "\n".join(out) + "\n"


def versions(python: str) -> dict[str, str]:
    code = (
        "import sys, aiohttp\n"
        "try:\n import uvloop; loop = 'uvloop ' + uvloop.__version__\n"
        "except ImportError:\n loop = 'asyncio'\n"
        "try:\n import websockets; wsp = websockets.__version__\n"
        "except ImportError:\n wsp = 'not installed'\n"
        "print(sys.version.split()[0], aiohttp.__version__, loop, wsp, sep='|')\n"
    )
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    py, aio, loop, websockets_version = out.split("|")
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    ws_pkg = BENCH / "node_modules" / "ws" / "package.json"
    ws = json.loads(ws_pkg.read_text())["version"]
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": py,
        "aiohttp": aio,
        "loop": loop,
        "node": node,
        "ws": ws,
        "websockets": websockets_version,
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "kernel": f"Linux {platform.release()}",
    }


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def service_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "service").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def code_version(source: Path, commit: str | None) -> str:
    """What was measured: an exported commit, or the working tree (others may be editing it)."""
    if commit is not None:
        return f"commit {commit[:10]} (exported with git archive); sha256 of service/**/*.py " + (
            service_digest(source)
        )
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "service")
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    state = " with uncommitted changes in service/" if dirty else ""
    return f"working tree at {head}{state}; sha256 of service/**/*.py {service_digest(source)}"


def export_rev(rev: str, into: Path) -> tuple[Path, str]:
    """`git archive` the service at `rev` into a directory (the repository is only read)."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "service", "config", "web"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, timeout=60, check=True)
    return into, commit


def ensure_node_modules() -> None:
    if (BENCH / "node_modules" / "ws" / "package.json").exists():
        return
    if shutil.which("npm") is None:
        sys.exit("fanout: needs Node and npm (npm ci in bench/) for the client fleet")
    print("installing the fleet's node_modules (npm ci)…", file=sys.stderr)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True, timeout=300)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 50, 200; one short repetition")
    p.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        help="servers to measure (default all: ours floor peer1 peer2; always in that order)",
    )
    p.add_argument("--clients", type=int, nargs="+", help="N values (default 100 1000 5000)")
    p.add_argument("--reps", type=int, help="repetitions per N and server (default 3; quick 1)")
    p.add_argument("--rate", type=float, default=20.0, help="votes per second (default 20)")
    p.add_argument(
        "--max-frame-rate",
        type=float,
        default=25_000,
        help="cap votes/s at this / N so the fleet keeps up (default 25000 frames/s)",
    )
    p.add_argument("--duration", type=float, help="vote phase seconds (default 10; quick 3)")
    p.add_argument("--min-votes", type=int, help="lengthen the phase to this many votes (100)")
    p.add_argument("--idle-vote-duration", type=float, help="votes with no client, seconds")
    p.add_argument("--fleet-procs", type=int, default=2, help="fleet processes (default 2)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds idle before RSS_N")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument(
        "--quiet-below",
        type=float,
        default=15.0,
        help="start a run once the machine is below this %% busy (default 15)",
    )
    p.add_argument("--quiet-wait", type=float, help="at most this many s (default 180; quick 3)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--rev",
        help="measure this git revision (e.g. HEAD), exported to a temporary directory, "
        "instead of the working tree",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS.json",
        help="measure nothing: write the markdown again from the raw figures of an earlier run",
    )
    p.add_argument(
        "--source",
        type=Path,
        help="measure the service in this directory (holding service/, config/, web/), e.g. an "
        "experimental copy, instead of the working tree",
    )
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="FV_NAME=VALUE",
        help="extra environment for our service, e.g. FV_PUSH_INTERVAL=0.05 (repeatable)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="markdown file (default bench/results/fanout.md; quick: bench/results/"
        "fanout-quick.md); the raw figures and targets go next to it as .json",
    )
    p.add_argument(
        "--plot",
        action="store_true",
        help="draw the figure (bench/plot.py) after a quick run or --from-json too; a full run "
        "always does (bench/fanout.png; another --output: that name with .png)",
    )
    args = p.parse_args(argv)
    if args.rev and args.source:
        p.error("--rev and --source exclude each other")
    if args.quick:
        args.clients = args.clients or [50, 200]
        args.reps = args.reps or 1
        args.duration = args.duration or 3.0
        args.min_votes = args.min_votes if args.min_votes is not None else 0
        args.idle_vote_duration = args.idle_vote_duration or 1.0
        args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else 3.0
        args.output = args.output or RESULTS / "fanout-quick.md"
    args.clients = args.clients or [100, 1000, 5000]
    args.reps = args.reps or 3
    args.duration = args.duration or 10.0
    args.min_votes = args.min_votes if args.min_votes is not None else 100
    args.idle_vote_duration = args.idle_vote_duration or 3.0
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else 180.0
    args.output = args.output or RESULTS / "fanout.md"
    args.servers = [k for k in SERVERS if k in args.servers]
    return args


def bench_python() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def plot_path(output: Path) -> Path:
    """bench/<name>.png for an output in bench/results/ (which holds only .md and .json),
    e.g. bench/fanout.png; elsewhere the output's own name with .png."""
    if output.resolve().parent == RESULTS.resolve():
        return BENCH / output.with_suffix(".png").name
    return output.with_suffix(".png")


def plot(raw_json: Path, png: Path) -> bool:
    """Run bench/plot.py (matplotlib) on a results .json; False (and why) if it failed."""
    cmd = [bench_python(), str(BENCH / "plot.py"), "--input", str(raw_json), "--output", str(png)]
    try:
        subprocess.run(cmd, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"fanout: plot failed: {exc}", file=sys.stderr)
        return False
    return True


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(ROOT).as_posix()
    return str(path)


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    ensure_node_modules()
    python = bench_python()
    raise_fd_limit(max(args.clients) + 1024)

    pinned = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_pin = ["taskset", "-c", "0"] if pinned else []
    fleet_pin = ["taskset", "-c", "1"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})  # the voter and this orchestrator stay off the server core
    meta = versions(python)
    meta.update(
        mode="quick" if args.quick else "full",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        settings=", ".join([*(f"{k}=0" for k in UNLIMITED), *args.ours_env])
        + " (rate limits off: every request comes from 127.0.0.1); otherwise the defaults",
        pinning=(
            "server on CPU 0; fleet, voter and orchestrator on CPU 1 (taskset)"
            if pinned
            else "not pinned"
        ),
        load=(
            f"votes one at a time at {args.rate:g}/s, capped at {args.max_frame_rate:g} "
            f"frames/s ÷ N; at least {args.duration:g} s (and {args.min_votes} votes) per run; "
            f"{args.reps} repetition(s) per N and server; fleet = {args.fleet_procs} Node `ws` "
            f"processes; our stats message has {FEATURES} features (floor and peers pad to its "
            "size)"
        ),
        servers=describe_servers(args.servers, meta),
        command=" ".join([".venv/bin/python", "bench/fanout.py", *(shlex.quote(a) for a in argv)]),
        rev=args.rev or "",
    )
    print(
        f"fanout ({meta['mode']}): N={args.clients}, {args.reps} rep(s), servers "
        f"{' '.join(args.servers)}, {meta['pinning']}",
        file=sys.stderr,
    )
    began = time.monotonic()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as logdir:
        source, commit = (args.source or ROOT).resolve(), None
        if args.rev:
            source, commit = export_rev(args.rev, Path(logdir) / "src")
        meta["code"] = code_version(source, commit)
        if commit is not None:  # reproduce the same code even after HEAD moves
            meta["command"] = meta["command"].replace(
                f"--rev {shlex.quote(args.rev)}", f"--rev {commit[:10]}"
            )
        print(f"measuring {meta['code']}", file=sys.stderr)
        ctx: dict[str, Any] = {
            "source": source,
            "python": python,
            "server_pin": server_pin,
            "fleet_pin": fleet_pin,
            "logdir": Path(logdir),
            "size": 2400,
            "secret": secrets.token_urlsafe(32),
            "ours_env": dict(kv.split("=", 1) for kv in args.ours_env),
        }
        for n in args.clients:
            for rep in range(1, args.reps + 1):
                for kind in args.servers:
                    started = time.monotonic()
                    try:
                        run = await measure(kind, n, rep, args, ctx)
                    except (RuntimeError, OSError, TimeoutError, aiohttp.ClientError) as exc:
                        print(f"  N={n} rep {rep} {kind}: FAILED: {exc}", file=sys.stderr)
                        failed = Run(kind, n, rep)
                        failed.elapsed_s = time.monotonic() - started
                        runs.append(failed)
                        continue
                    run.elapsed_s = time.monotonic() - started
                    runs.append(run)
                    print(
                        f"  N={n:>5} rep {rep} {kind:<5} {run.rate:g} votes/s  "
                        f"p50 {fmt(run.p50_ms, 2):>7} ms  "
                        f"p99 {fmt(run.p99_ms, 2):>7} ms  CPU {fmt(run.us_per_frame, 2):>6} "
                        f"µs/frame (net {fmt(run.net_us_per_frame, 2)})  "
                        f"{fmt(run.kib_per_conn)} KiB/conn  fleet {fmt(run.fleet_cpu_pct, 0)}%  "
                        f"frames {run.frames}  missing {run.missing}  "
                        f"other load {fmt(run.foreign_cpu_pct, 0)}%  "
                        f"({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                    )
        meta["load"] += f"; frame payload {ctx['size']} bytes"
        meta["code_end"] = code_version(source, commit)
    elapsed = time.monotonic() - began
    per_run = [r.elapsed_s for r in runs if r.elapsed_s]
    meta["elapsed"] = (
        f"{elapsed / 60:.1f} min for {len(runs)} runs (median {med(per_run):.0f} s per run, "
        "quiet waits included)"
    )
    raw = {
        "meta": meta,
        "runs": [{k: v for k, v in asdict(r).items() if k != "hist"} for r in runs],
    }
    write_results(raw, runs, args.output, args.plot or not args.quick)
    return 0


def describe_servers(kinds: list[str], meta: dict[str, str]) -> str:
    what = {
        "ours": "`python -m service` (votes: PUT /features/1/vote with a voter token)",
        "floor": "bench/floor_server.py (aiohttp; one pre-encoded frame, `transport.write` to "
        "each socket)",
        "peer1": f"bench/peer_websockets.py (websockets {meta.get('websockets', '')} asyncio "
        "server, `websockets.broadcast()` of one pre-encoded message, compression off, no "
        "pings; its votes are answered by `process_request`, one TCP connection per vote)",
        "peer2": f"bench/peer_ws.js (Node `ws` {meta.get('ws', '')} WebSocketServer, "
        "perMessageDeflate off, `send()` of one pre-built Buffer to each client)",
    }
    listed = "; ".join(f"{k} = {what[k]}" for k in kinds)
    if any(k != "ours" for k in kinds):
        listed += (
            "; floor and peers: POST /vote with an empty body broadcasts one frame of our stats "
            "message's size and answers its seq"
        )
    return listed


def write_results(raw: dict[str, Any], runs: list[Run], output: Path, draw: bool) -> None:
    """The markdown section, the .json next to it (rows and targets from `runs`), the figure."""
    meta = raw["meta"]
    kinds = kinds_of(runs)
    rows = summarize(runs, list(dict.fromkeys(r.n for r in runs)))
    raw["rows"] = rows
    raw["targets"] = targets(rows, kinds)
    raw_json = output.with_suffix(".json")
    output.parent.mkdir(parents=True, exist_ok=True)
    if draw:  # else the figure an earlier run drew (if any) stays named in meta
        meta.pop("plot", None)
        raw_json.write_text(dump_raw(raw))  # plot.py reads it
        png = plot_path(output)
        if plot(raw_json, png):
            meta["plot"] = rel(png)
    text = render(rows, runs, meta)
    print(text)
    output.write_text(text)
    raw_json.write_text(dump_raw(raw))
    print(f"written to {rel(output)} and {rel(raw_json)}", file=sys.stderr)
    if meta.get("plot"):
        print(f"figure in {meta['plot']}", file=sys.stderr)


def dump_raw(raw: dict[str, Any]) -> str:
    """JSON with one line per run (each carries its per-vote figures) and one per target."""
    runs = ",\n".join("  " + json.dumps(r) for r in raw["runs"])
    goals = ",\n".join("  " + json.dumps(t, ensure_ascii=False) for t in raw.get("targets", []))
    head = json.dumps({"meta": raw["meta"], "rows": raw["rows"]}, indent=1, ensure_ascii=False)
    return f'{head[:-2]},\n "runs": [\n{runs}\n ],\n "targets": [\n{goals}\n ]\n}}\n'


def rerender(path: Path, output: Path | None, draw: bool = False) -> int:
    """Write the results again from a raw .json of an earlier run (no measuring): the markdown,
    the .json next to it with rows and targets recomputed (meta and runs as read), the figure."""
    raw = json.loads(path.read_text())
    names = set(Run.__dataclass_fields__)
    runs = [Run(**{k: v for k, v in r.items() if k in names}) for r in raw["runs"]]
    write_results(raw, runs, output or path.with_suffix(".md"), draw)
    return 0


async def run_cancellable(args: argparse.Namespace, argv: list[str]) -> int:
    """SIGTERM cancels the run like Ctrl-C does, so every `finally` stops its subprocesses."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await amain(args, argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.output if "--output" in argv else None, args.plot)
    try:
        return asyncio.run(run_cancellable(args, argv))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("fanout: interrupted; subprocesses stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
