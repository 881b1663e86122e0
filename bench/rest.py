"""REST benchmark: our hot endpoints against a trivial aiohttp handler and a FastAPI peer.

    .venv/bin/python bench/rest.py            # 3 repetitions, 10 s per endpoint and server (~8 min)
    .venv/bin/python bench/rest.py --quick    # 1 repetition of 2 s (< 1 min)

Needs wrk (Debian: apt-get install wrk) and bench/requirements.txt (FastAPI, uvicorn). Every
repetition starts five servers as subprocesses pinned to CPU 0 (taskset): ours (`python -m
service` with its defaults: every request through aiohttp's one pipeline, every middleware, the
access log on, JSON lines to a temporary file; rate limits off: every request comes from
127.0.0.1), the reference (bench/rest_trivial.py: one aiohttp handler answering anything with a
small JSON body, served like the service: AppRunner, uvloop, one process), the vote peer
(bench/peer_fastapi.py: the seed's ADR-003 snippet in FastAPI + pydantic + PyJWT with cached
verification + one asyncio.Lock, on uvicorn with uvloop and httptools, no access log), and two
that explain the vote's cost rather than set a target: ours with the access line off
(FV_ACCESS_LOG=false, otherwise the same) and the vote-shaped floor (bench/rest_floor.py:
aiohttp's own part of a vote and nothing else: the body read, a router with our route
templates, an answer of the same bytes and headers as the one ours gave to a vote after the
warm-up, no middleware). Ours, ours without access line and the peer get --features features
and --voters voter tokens through their APIs. A 1 s warm-up of votes (on another feature) hits
each server, then for every endpoint the servers in turn (order rotated every repetition) are
loaded by `wrk -t1 -c50 --latency -s bench/rest_wrk.lua`, pinned to CPU 1, with exactly the
same requests (the peer, the floor and ours without access line serve the vote only):
  vote       PUT /features/{id}/vote with a Bearer token; the voters take turns and each one
             alternates {"value":1} / {"value":-1}, so every request moves a vote; checked on
             ours, ours without access line and the peer: the stats `seq` grows by the
             number of 200 answers (plus requests in flight at the stop)
  stats      GET /features/stats
  stats-304  GET /features/stats with If-None-Match: <the current ETag> (ours answers 304)
  list       GET /features (the first page: every seeded feature)
Reported per endpoint: medians of requests/s, p50 and p99 (wrk --latency), ours ÷ trivial as a
ratio of the medians, ours ÷ the peer on the vote (requests/s, and server CPU per vote: the
target), the floor's CPU per vote, ours above it and the access line's part of that (ours
minus ours without access line), the response statuses (counted by the Lua script), wrk's CPU
and the server's CPU (utime+stime from /proc/<pid>/stat over the run, % of one core: wrk near
100 % means the generator, not the server, was the limit), the server's CPU per answered
request (its ratio holds however much of CPU 0 other processes took), and CPU used by other
processes meanwhile.
Before each endpoint's runs it waits (bounded) for the machine to be quiet. Writes
<output-dir>/rest.md (a `## REST` section) and rest.json (--quick: rest-quick.md and .json).
Everything listens on and talks to 127.0.0.1; every subprocess is stopped in `finally` and gets
SIGKILL if this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import hashlib
import http.client
import json
import math
import os
import platform
import re
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "rest_wrk.lua"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_VOTE_RATIO = 0.5  # vote requests/s ÷ trivial handler, at least
TARGET_PEER_CPU_RATIO = 0.5  # our CPU per vote ÷ the FastAPI peer's, at most
SATURATED_PCT = 90.0  # wrk above this % of its core: the generator may be the limit
SERVERS = ("trivial", "ours", "fastapi", "floor", "ours-noaccess")
PEER_LABEL = "FastAPI + uvicorn (bench/peer_fastapi.py)"
UNLIMITED: dict[str, str] = {
    f"FV_{name}": "0" for name in ("TOKEN_RATE", "VOTE_RATE", "CREATE_RATE", "WS_CONNECT_RATE")
}


@dataclass(frozen=True)
class Endpoint:
    name: str
    label: str
    servers: tuple[str, ...] = ("trivial", "ours")


ENDPOINTS = (
    Endpoint("vote", "PUT /features/{id}/vote (token, alternating ±1)", SERVERS),
    Endpoint("stats", "GET /features/stats"),
    Endpoint("stats-304", "GET /features/stats, If-None-Match: current ETag"),
    Endpoint("list", "GET /features"),
)
SEEDED = ("ours", "fastapi", "ours-noaccess")  # tokens, features and a stats `seq` to check
# Headers aiohttp writes itself on every answer: the floor's own, not copied from ours.
AIOHTTP_HEADERS = frozenset({"content-length", "date", "server"})


# --- processes and /proc (small helpers as in bench/fanout.py) ---------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, exited threads included, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, fh.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most `max_wait` s) until the machine is below `limit_pct` % busy for 1 s."""
    started = time.monotonic()
    ncpu = os.cpu_count() or 1
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        if 100 * (machine_busy() - b0) / ncpu < limit_pct or time.monotonic() - started > max_wait:
            return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this benchmark dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""


def start_server(
    kind: str,
    python: str,
    pin: list[str],
    logdir: Path,
    extra: dict[str, str],
    argv: tuple[str, ...] = (),
) -> Server:
    """Start one server (`kind` in SERVERS; `extra`: our service's extra environment, `argv`:
    extra arguments of bench/rest_floor.py) and wait until its GET /healthz answers 200."""
    port = free_port()
    log = logdir / f"{kind}-{port}.log"
    # A clean configuration: nothing FV_* from the caller's environment leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
    if kind in ("ours", "ours-noaccess"):
        cmd = [*pin, python, "-m", "service"]
        env.update(FV_SECRET=secrets.token_urlsafe(32), FV_HOST=HOST, PORT=str(port), **UNLIMITED)
        env.update(FV_STORE="memory")  # the memory store unless asked (bench/durable.py does)
        env.update(extra)
        if kind == "ours-noaccess":
            env["FV_ACCESS_LOG"] = "false"
    elif kind == "fastapi":
        cmd = [*pin, python, str(BENCH / "peer_fastapi.py"), "--host", HOST, "--port", str(port)]
        env.update(PEER_SECRET=secrets.token_urlsafe(32))
    elif kind == "floor":
        cmd = [*pin, python, str(BENCH / "rest_floor.py"), "--host", HOST, "--port", str(port)]
        cmd += argv
    else:
        cmd = [*pin, python, str(BENCH / "rest_trivial.py"), "--host", HOST, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = Server(kind, proc, port, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited early:\n{server.log_tail()}")
        with contextlib.suppress(OSError):
            if call(port, "GET", "/healthz")[0] == 200:
                return server
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"{kind} not ready after 20 s:\n{server.log_tail()}")


def call(
    port: int, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def seed(port: int, voters: int, features: int) -> tuple[list[str], list[int]]:
    """Voter tokens and features through the API; (tokens, feature ids)."""
    tokens = []
    for _ in range(voters):
        status, _, body = call(port, "POST", "/auth/token")
        if status != 201:
            raise RuntimeError(f"POST /auth/token: {status} {body[:200]!r}")
        tokens.append(json.loads(body)["token"])
    ids = []
    for i in range(1, features + 1):
        feature = {
            "title": f"Feature number {i}: a realistic title",
            "description": f"What feature {i} does and why the audience wants it, in a "
            "sentence or two as people write them on a live board.",
        }
        status, _, body = call(port, "POST", "/features", feature, tokens[0])
        if status != 201:
            raise RuntimeError(f"POST /features: {status} {body[:200]!r}")
        ids.append(int(json.loads(body)["id"]))
    return tokens, ids


def stats_seq_etag(port: int) -> tuple[int, str]:
    status, headers, body = call(port, "GET", "/features/stats")
    if status != 200:
        raise RuntimeError(f"GET /features/stats: {status}")
    return int(json.loads(body)["seq"]), headers.get("ETag", "")


# --- wrk ----------------------------------------------------------------------------------------

_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SI = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)([kMG]?)\s*$", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s+(\d+(?:\.\d+)?)([kMG]?) requests in ", re.M)
_SCRIPT = re.compile(r"^rest-wrk (\{.*\})\s*$", re.M)


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and the request count from `wrk --latency` output,
    units and SI suffixes included; plus the line rest_wrk.lua prints (status counts)."""
    rps, total, script = _RPS.search(text), _TOTAL.search(text), _SCRIPT.search(text)
    if not (rps and total and script):
        raise RuntimeError(f"unexpected wrk output:\n{text[-2000:]}")
    pct = {float(p): float(v) * _TIME_MS[u] for p, v, u in _PERCENTILE.findall(text)}
    if 50.0 not in pct or 99.0 not in pct:
        raise RuntimeError(f"no latency distribution in wrk output:\n{text[-2000:]}")
    return {
        "rps": float(rps[1]) * _SI[rps[2]],
        "requests": round(float(total[1]) * _SI[total[2]]),
        "p50_ms": pct[50.0],
        "p99_ms": pct[99.0],
        "script": json.loads(script[1]),
    }


@dataclass
class Run:
    endpoint: str
    server: str
    rep: int
    rps: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: int = 0
    wrk_cpu_pct: float = math.nan
    server_cpu_pct: float = math.nan
    server_us_per_req: float = math.nan  # server CPU per answered request (noise-robust)
    other_cpu_pct: float = math.nan  # CPU of processes outside the benchmark, % of one core
    seq_delta: int | None = None  # vote on ours: stats seq after - before
    quiet_wait_s: float = 0.0
    error: str = ""


def run_wrk(
    server: Server,
    endpoint: Endpoint,
    rep: int,
    lua_args: list[str],
    duration: int,
    connections: int,
    pin: list[str],
) -> Run:
    run = Run(endpoint.name, server.kind, rep)
    cmd = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(LUA)]
    cmd += [f"http://{HOST}:{server.port}/", "--", *lua_args]
    wrk = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    pids = (wrk.pid, server.proc.pid, os.getpid())

    def sample() -> tuple[float, ...]:
        return (time.monotonic(), machine_busy(), *map(cpu_seconds, pids))

    try:
        first = last = sample()
        while wrk.poll() is None:
            time.sleep(0.1)
            with contextlib.suppress(OSError):
                now = sample()
                if wrk.poll() is None:  # taken while wrk was still running: whole threads
                    last = now
        assert wrk.stdout is not None
        out = wrk.stdout.read().decode(errors="replace")
    finally:
        stop_process(wrk, grace=2)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited {wrk.returncode}:\n{out[-2000:]}")
    parsed = parse_wrk(out)
    script = parsed["script"]
    run.rps, run.p50_ms, run.p99_ms = parsed["rps"], parsed["p50_ms"], parsed["p99_ms"]
    run.requests, run.max_ms = parsed["requests"], script["max_us"] / 1e3
    run.statuses = {k: script["statuses"][k] for k in sorted(script["statuses"])}
    run.socket_errors = sum(v for k, v in script["errors"].items() if k != "status")
    window = last[0] - first[0]
    if window > 0:
        wrk_s, server_s, self_s = (b - a for a, b in zip(first[2:], last[2:], strict=True))
        run.wrk_cpu_pct = 100 * wrk_s / window
        run.server_cpu_pct = 100 * server_s / window
        run.server_us_per_req = 1e6 * server_s / max(1, sum(run.statuses.values()))
        other = last[1] - first[1] - wrk_s - server_s - self_s
        run.other_cpu_pct = max(0.0, 100 * other / window)
    return run


def capture_vote_answer(
    port: int, path: str, token: str, logdir: Path, rep: int
) -> tuple[Path, dict[str, str]]:
    """One vote on our service: its answer's body (to a file) and the headers it carries
    beyond those aiohttp writes itself; bench/rest_floor.py answers with both."""
    status, headers, body = call(port, "PUT", path, {"value": 1}, token)
    if status != 200:
        raise RuntimeError(f"PUT {path}: {status} {body[:200]!r}")
    answer = logdir / f"floor-answer-{rep}.json"
    answer.write_bytes(body)
    return answer, {k: v for k, v in headers.items() if k.lower() not in AIOHTTP_HEADERS}


def measure_rep(rep: int, args: argparse.Namespace, ctx: dict[str, Any], runs: list[Run]) -> None:
    """One repetition: every server fresh, seeded, warmed up, then every endpoint on each."""
    servers: dict[str, Server] = {}
    try:
        for kind in SERVERS:
            if kind != "floor":  # it starts once ours has given it an answer to copy
                servers[kind] = start_server(
                    kind, ctx["python"], ctx["server_pin"], ctx["logdir"], ctx["ours_env"]
                )
        ours = servers["ours"]
        vote_args: dict[str, list[str]] = {}
        warm_args: dict[str, list[str]] = {}
        tokens_of: dict[str, list[str]] = {}
        for kind in SEEDED:  # each its own voters and features; the trivial one votes as ours
            tokens, ids = seed(servers[kind].port, args.voters, args.features)
            tokens_of[kind] = tokens
            tokens_file = ctx["logdir"] / f"tokens-{kind}.txt"
            tokens_file.write_text("\n".join(tokens) + "\n")
            vote_args[kind] = ["vote", f"/features/{ids[0]}/vote", str(tokens_file)]
            warm_args[kind] = ["vote", f"/features/{ids[1]}/vote", str(tokens_file)]
        for kind in ("trivial", "floor"):  # they vote as ours
            vote_args[kind], warm_args[kind] = vote_args["ours"], warm_args["ours"]

        def warm_up(server: Server) -> None:  # warm-up votes on another feature
            run_wrk(
                server,
                ENDPOINTS[0],
                rep,
                warm_args[server.kind],
                args.warmup,
                args.connections,
                ctx["wrk_pin"],
            )

        for server in servers.values():
            warm_up(server)
        # The floor answers what ours answers to a vote, with mid-run counts (after warm-up).
        body_file, headers = capture_vote_answer(
            ours.port, warm_args["ours"][1], tokens_of["ours"][0], ctx["logdir"], rep
        )
        ctx["floor_answer"] = {"bytes": body_file.stat().st_size, "headers": headers}
        floor_argv: tuple[str, ...] = ("--body-file", str(body_file))
        floor_argv += tuple(a for k, v in headers.items() for a in ("--header", f"{k}:{v}"))
        servers["floor"] = start_server(
            "floor", ctx["python"], ctx["server_pin"], ctx["logdir"], {}, floor_argv
        )
        warm_up(servers["floor"])
        shift = (rep - 1) % len(SERVERS)
        rotated = SERVERS[shift:] + SERVERS[:shift]  # each server first in turn
        for endpoint in ENDPOINTS:
            waited = wait_quiet(args.quiet_below, args.quiet_wait)
            for kind in (k for k in rotated if k in endpoint.servers):
                server = servers[kind]
                checked = servers[kind] if kind in SEEDED else ours
                seq0, _ = stats_seq_etag(checked.port)
                etag = stats_seq_etag(ours.port)[1]
                lua_args = {
                    "vote": vote_args[kind],
                    "stats": ["get", "/features/stats"],
                    "stats-304": ["get", "/features/stats", etag],
                    "list": ["get", "/features"],
                }[endpoint.name]
                try:
                    run = run_wrk(
                        server,
                        endpoint,
                        rep,
                        lua_args,
                        args.duration,
                        args.connections,
                        ctx["wrk_pin"],
                    )
                except RuntimeError as exc:
                    print(f"  rep {rep} {endpoint.name} {kind}: FAILED: {exc}", file=sys.stderr)
                    runs.append(Run(endpoint.name, kind, rep, error=str(exc)[:500]))
                    continue
                run.quiet_wait_s = waited
                if endpoint.name == "vote" and kind in SEEDED:
                    time.sleep(0.3)  # requests in flight when wrk stopped still land
                    run.seq_delta = stats_seq_etag(checked.port)[0] - seq0
                runs.append(run)
                print(
                    f"  rep {rep} {endpoint.name:<9} {kind:<13} {run.rps:9.0f} req/s  "
                    f"{run.server_us_per_req:6.1f} µs/req  "
                    f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  statuses "
                    f"{fmt_statuses(run.statuses)}  wrk CPU {run.wrk_cpu_pct:3.0f}%  server "
                    f"CPU {run.server_cpu_pct:3.0f}%  other {run.other_cpu_pct:3.0f}%"
                    + (f"  seq +{run.seq_delta}" if run.seq_delta is not None else "")
                    + (f"  (waited {waited:.0f} s for quiet)" if waited > 1.5 else ""),
                    file=sys.stderr,
                )
    finally:
        for server in servers.values():
            stop_process(server.proc)
            with contextlib.suppress(OSError):
                server.log.unlink()  # our access log: one JSON line per request


# --- reporting ----------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def fmt_statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in statuses.items()) or "none"


KEYS = ("rps", "p50_ms", "p99_ms", "wrk_cpu_pct", "server_cpu_pct", "server_us_per_req")


def per_rep(runs: list[Run], a: str, b: str, key: str) -> list[float]:
    """Server a's figure ÷ server b's, for each repetition that has both."""
    by_rep = {(r.rep, r.server): r for r in runs}
    reps = sorted({r.rep for r in runs})
    return [
        getattr(by_rep[n, a], key) / getattr(by_rep[n, b], key)
        for n in reps
        if (n, a) in by_rep and (n, b) in by_rep
    ]


def per_rep_values(runs: list[Run], server: str) -> list[float]:
    """CPU µs per request of `server` in each repetition (NaN where its run failed)."""
    by_rep = {r.rep: r.server_us_per_req for r in runs if r.server == server}
    return [by_rep.get(n, math.nan) for n in sorted({r.rep for r in runs})]


def summarize(runs: list[Run], connections: int) -> list[dict[str, Any]]:
    rows = []
    for endpoint in ENDPOINTS:
        row: dict[str, Any] = {"endpoint": endpoint.name, "label": endpoint.label}
        for kind in SERVERS:
            rs = [r for r in runs if r.endpoint == endpoint.name and r.server == kind]
            for key in KEYS:
                row[f"{kind}_{key}"] = med([getattr(r, key) for r in rs])
            statuses: dict[str, int] = {}
            for r in rs:
                for k, v in r.statuses.items():
                    statuses[k] = statuses.get(k, 0) + v
            row[f"{kind}_statuses"] = statuses
            row[f"{kind}_socket_errors"] = sum(r.socket_errors for r in rs)
            row[f"{kind}_failed_runs"] = sum(1 for r in rs if r.error)
        rs = [r for r in runs if r.endpoint == endpoint.name and not r.error]
        row["wrk_cpu_max_pct"] = max((r.wrk_cpu_pct for r in rs), default=math.nan)
        row["other_cpu_max_pct"] = max((r.other_cpu_pct for r in rs), default=math.nan)
        row["rps_ratio"] = row["ours_rps"] / row["trivial_rps"]
        row["rps_ratio_per_rep"] = per_rep(rs, "ours", "trivial", "rps")
        row["p99_ratio"] = row["ours_p99_ms"] / row["trivial_p99_ms"]
        # The same ratio from CPU per request: holds even when others take part of the core.
        row["cpu_ratio"] = row["trivial_server_us_per_req"] / row["ours_server_us_per_req"]
        if endpoint.name == "vote":
            # Against the peer: our CPU per vote ÷ its (the target), and req/s ours ÷ its.
            row["peer_cpu_ratio"] = row["ours_server_us_per_req"] / row["fastapi_server_us_per_req"]
            row["peer_cpu_ratio_per_rep"] = per_rep(rs, "ours", "fastapi", "server_us_per_req")
            row["peer_rps_ratio"] = row["ours_rps"] / row["fastapi_rps"]
            row["peer_p99_ratio"] = row["ours_p99_ms"] / row["fastapi_p99_ms"]
            # Explanatory, not targets: CPU per vote ours above aiohttp's own part (the floor),
            # the access line's share of that, and the best ours ÷ trivial (CPU) a service on
            # aiohttp could reach on this vote: trivial ÷ floor.
            us = {k: row[f"{k}_server_us_per_req"] for k in ("ours", "ours-noaccess", "floor")}
            row["ours_above_floor_us"] = us["ours"] - us["floor"]
            row["access_line_us"] = us["ours"] - us["ours-noaccess"]
            row["floor_cpu_ratio"] = row["trivial_server_us_per_req"] / us["floor"]
            row["ours_above_floor_us_per_rep"] = [
                a - b
                for a, b in zip(
                    per_rep_values(rs, "ours"), per_rep_values(rs, "floor"), strict=True
                )
            ]
            for kind in SEEDED:
                checked = [r for r in rs if r.server == kind and r.seq_delta is not None]
                ok = sum(r.statuses.get("200", 0) for r in checked)
                delta = sum(r.seq_delta or 0 for r in checked)
                row[f"{kind}_votes_ok"], row[f"{kind}_seq_delta"] = ok, delta
                # wrk stops with up to `connections` requests sent but not yet answered.
                row[f"{kind}_every_vote_changed"] = bool(checked) and (
                    ok <= delta <= ok + connections * len(checked)
                )
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], runs: list[Run], meta: dict[str, Any]) -> str:
    vote = rows[0]
    out = [f"## REST ({meta['mode']} run)", ""]
    out += [
        f"- date: {meta['date']}",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['kernel']}",
        f"- software: Python {meta['python']}, aiohttp {meta['aiohttp']}, event loop "
        f"{meta['loop']} (ours and trivial); {meta['peer_software']} (the peer); {meta['wrk']}",
        f"- code measured: {meta['code']}",
        f"- our service's settings: {meta['settings']}",
        f"- trivial reference: {meta['reference']}",
        f"- vote peer: {meta['peer']}",
        f"- vote floor: {meta['floor']}",
        f"- pinning: {meta['pinning']}",
        f"- load: {meta['load']}",
        f"- reproduce: `{meta['command']}` (from the project root)",
        "",
        "Medians of the repetitions; ratios are ratios of the medians. **req/s** and latency "
        "percentiles are wrk's (`--latency`: request sent to response read). **CPU µs/req** = "
        "server utime+stime (/proc/<pid>/stat) over the run ÷ requests answered; its ratio "
        "(trivial ÷ ours) is the throughput ratio a whole core would give, and does not depend "
        "on how much of CPU 0 other processes took. **wrk CPU** and **server CPU** = "
        f"utime+stime over the run, % of one core: wrk at ≥ {SATURATED_PCT:g} % would mean the "
        "generator, not the server, was the limit. **Statuses** are counted by "
        "bench/rest_wrk.lua's `response()`, summed over the repetitions.",
        "",
        "| endpoint | req/s ours | req/s trivial | ours ÷ trivial | CPU µs/req ours / trivial "
        "| CPU trivial ÷ ours | p50 ms ours / trivial | p99 ms ours | p99 ms trivial "
        "| p99 ours ÷ trivial | wrk CPU % ours / trivial | server CPU % ours / trivial "
        "| statuses ours | statuses trivial |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        mark = ""
        if r["endpoint"] == "vote":
            met = r["rps_ratio"] >= TARGET_VOTE_RATIO
            mark = f" {'✅' if met else '❌'} (target ≥ {TARGET_VOTE_RATIO})"
        out.append(
            f"| `{r['label']}` | {fmt(r['ours_rps'], 0)} | {fmt(r['trivial_rps'], 0)} "
            f"| {fmt(r['rps_ratio'], 2)}{mark} "
            f"| {fmt(r['ours_server_us_per_req'])} / {fmt(r['trivial_server_us_per_req'])} "
            f"| {fmt(r['cpu_ratio'], 2)} "
            f"| {fmt(r['ours_p50_ms'], 2)} / {fmt(r['trivial_p50_ms'], 2)} "
            f"| {fmt(r['ours_p99_ms'], 2)} | {fmt(r['trivial_p99_ms'], 2)} "
            f"| {fmt(r['p99_ratio'], 2)} "
            f"| {fmt(r['ours_wrk_cpu_pct'], 0)} / {fmt(r['trivial_wrk_cpu_pct'], 0)} "
            f"| {fmt(r['ours_server_cpu_pct'], 0)} / {fmt(r['trivial_server_cpu_pct'], 0)} "
            f"| {fmt_statuses(r['ours_statuses'])} | {fmt_statuses(r['trivial_statuses'])} |"
        )
    ok = [r for r in runs if not r.error]
    wrk_max = max((r.wrk_cpu_pct for r in ok), default=math.nan)
    saturated = sorted({r.endpoint for r in ok if r.wrk_cpu_pct >= SATURATED_PCT})
    server_cpu = [r.server_cpu_pct for r in ok] or [math.nan]
    errors = sum(r.socket_errors for r in ok)
    out += [
        "",
        f"**Target:** vote requests/s ÷ trivial aiohttp handler ≥ {TARGET_VOTE_RATIO}: "
        f"{fmt(vote['rps_ratio'], 2)}, {'met' if meta['target_met'] else 'missed'} "
        f"(per repetition: {', '.join(fmt(x, 2) for x in vote['rps_ratio_per_rep'])}; "
        f"by CPU per request: {fmt(vote['cpu_ratio'], 2)}).",
        "",
        f"**Target:** our server CPU per vote ÷ the same vote on {PEER_LABEL} "
        f"≤ {TARGET_PEER_CPU_RATIO}: {fmt(vote['peer_cpu_ratio'], 2)}, "
        f"{'met' if meta['peer_target_met'] else 'missed'} (per repetition: "
        f"{', '.join(fmt(x, 2) for x in vote['peer_cpu_ratio_per_rep'])}).",
        "",
        f"The vote, side by side (medians; {PEER_LABEL} serves the same contract: a token from "
        "its `POST /auth/token`, the same body, the same `200` JSON):",
        "",
        "| server | req/s | CPU µs/vote | votes/s per core (10⁶ ÷ µs) | p50 ms | p99 ms "
        "| server CPU % | wrk CPU % | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {name} | {fmt(vote[f'{k}_rps'], 0)} | {fmt(vote[f'{k}_server_us_per_req'])} "
            f"| {fmt(1e6 / vote[f'{k}_server_us_per_req'], 0)} "
            f"| {fmt(vote[f'{k}_p50_ms'], 2)} | {fmt(vote[f'{k}_p99_ms'], 2)} "
            f"| {fmt(vote[f'{k}_server_cpu_pct'], 0)} | {fmt(vote[f'{k}_wrk_cpu_pct'], 0)} "
            f"| {fmt_statuses(vote[f'{k}_statuses'])} |"
            for k, name in (
                ("ours", "ours (`python -m service`, every middleware, access line on)"),
                ("ours-noaccess", "ours, access line off (FV_ACCESS_LOG=false)"),
                ("fastapi", PEER_LABEL),
                ("floor", "vote-shaped aiohttp floor (bench/rest_floor.py)"),
                ("trivial", "trivial aiohttp handler"),
            )
        ),
        "",
        f"Ours ÷ peer: req/s {fmt(vote['peer_rps_ratio'], 2)}, p99 "
        f"{fmt(vote['peer_p99_ratio'], 2)}, CPU per vote {fmt(vote['peer_cpu_ratio'], 2)}.",
        "",
        f"**Where a vote's CPU goes:** aiohttp's own part of a vote (floor) "
        f"{fmt(vote['floor_server_us_per_req'])} µs; ours above it "
        f"{fmt(vote['ours_above_floor_us'])} µs (per repetition: "
        f"{', '.join(fmt(x) for x in vote['ours_above_floor_us_per_rep'])}); of which the "
        f"access line {fmt(vote['access_line_us'])} µs (ours minus ours with it off). Against "
        f"the trivial handler's {fmt(vote['trivial_server_us_per_req'])} µs, a service doing "
        "nothing but aiohttp's part of a vote would reach trivial ÷ floor = "
        f"{fmt(vote['floor_cpu_ratio'], 2)} by CPU per request. These rows explain the vote "
        "target; they are not targets.",
        "",
        f"**Load generator:** wrk used at most {fmt(wrk_max, 0)} % of its core in any run: "
        + (
            f"saturated ({', '.join(saturated)}), so those servers may be faster than shown."
            if saturated
            else f"below {SATURATED_PCT:g} %, so it never saturated its core and was not the limit."
        )
        + f" The servers used {fmt(min(server_cpu), 0)} to {fmt(max(server_cpu), 0)} % of CPU 0 "
        "and other processes up to "
        f"{fmt(max(r.other_cpu_pct for r in ok) if ok else math.nan, 0)} % of a core during a "
        "run: where a server stayed well below 100 %, others held its core (or wrk's), which "
        "lowers req/s but not CPU µs/req. "
        f"Socket errors: {errors}; failed runs: {len(runs) - len(ok)}.",
        "",
        "**Every vote changed state:** "
        + "; ".join(
            f"{kind}: {'yes' if vote.get(f'{kind}_every_vote_changed') else 'NO'} (the stats "
            f"`seq` grew by {vote.get(f'{kind}_seq_delta', 'n/a')} over the measured vote runs "
            f"for {vote.get(f'{kind}_votes_ok', 'n/a')} answers `200`)"
            for kind in SEEDED
        )
        + f"; the difference, ≤ {meta['connections']} a run, is requests in flight when wrk "
        "stopped.",
        "",
        "Every run:",
        "",
        "| rep | endpoint | server | req/s | p50 ms | p99 ms | max ms | requests | statuses "
        "| socket errors | CPU µs/req | wrk CPU % | server CPU % | other load % "
        "| waited for quiet s | seq + |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if run.error:
            out.append(f"| {run.rep} | {run.endpoint} | {run.server} | failed: {run.error[:80]} |")
            continue
        out.append(
            f"| {run.rep} | {run.endpoint} | {run.server} | {fmt(run.rps, 0)} "
            f"| {fmt(run.p50_ms, 2)} | {fmt(run.p99_ms, 2)} | {fmt(run.max_ms, 1)} "
            f"| {run.requests} | {fmt_statuses(run.statuses)} | {run.socket_errors} "
            f"| {fmt(run.server_us_per_req)} "
            f"| {fmt(run.wrk_cpu_pct, 0)} | {fmt(run.server_cpu_pct, 0)} "
            f"| {fmt(run.other_cpu_pct, 0)} | {fmt(run.quiet_wait_s, 0)} "
            f"| {'' if run.seq_delta is None else run.seq_delta} |"
        )
    return "\n".join(out) + "\n"


def versions(python: str) -> dict[str, str]:
    code = (
        "import sys, aiohttp\n"
        "try:\n import uvloop; loop = 'uvloop ' + uvloop.__version__\n"
        "except ImportError:\n loop = 'asyncio'\n"
        "print(sys.version.split()[0], aiohttp.__version__, loop, sep='|')\n"
    )
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    py, aio, loop = out.split("|")
    peer_code = (
        "import importlib.metadata as m\n"
        "names = ('fastapi', 'starlette', 'pydantic', 'uvicorn', 'uvloop', 'httptools', 'PyJWT')\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in names))\n"
    )
    peer = subprocess.run(
        [python, "-c", peer_code], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=30)
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
        "peer_software": peer or "NOT INSTALLED (pip install -r bench/requirements.txt)",
        "wrk": " ".join((wrk.stdout or wrk.stderr).split()[:2]),
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "kernel": f"Linux {platform.release()}",
    }


def code_version() -> str:
    """The working tree measured (others may be editing it): HEAD, dirty flag, service digest."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "service").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "service")
        dirty = " with uncommitted changes in service/" if changed else ""
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    return f"working tree at {head}{dirty}; sha256 of service/**/*.py {digest.hexdigest()[:12]}"


def floor_description(answer: dict[str, Any] | None) -> str:
    """What bench/rest_floor.py answered, as captured from our service's vote answer."""
    copied = (
        "not captured"
        if answer is None
        else (f"{answer['bytes']} bytes, headers {', '.join(answer['headers'])}")
    )
    return (
        "bench/rest_floor.py: the vote request as ours gets it (PUT, Bearer token, JSON body), "
        "the body read (`await request.read()`), a router holding our service's route "
        "templates, and the answer our service gave to a vote just before (copied: "
        f"{copied}); no middleware, no other code; AppRunner, uvloop, no access log"
    )


def clean(obj: Any) -> Any:
    """NaN -> null, so the .json stays JSON; floats to 3 decimals."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 3)
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repetition of 2 s (< 1 min)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up votes (default 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--voters", type=int, help="voter tokens taking turns (default 4 x connections)")
    p.add_argument("--features", type=int, default=20, help="features seeded (default 20)")
    p.add_argument(
        "--quiet-below",
        type=float,
        default=15.0,
        help="start each endpoint's pair of runs once the machine is below this %% busy",
    )
    p.add_argument("--quiet-wait", type=float, help="at most this many s (default 10; quick 2)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="FV_NAME=VALUE",
        help="extra environment for our service, e.g. FV_ACCESS_LOG=false (repeatable)",
    )
    p.add_argument("--output-dir", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.duration = args.duration or (2 if quick else 10)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if quick else 10.0)
    args.voters = args.voters or 4 * args.connections
    if args.voters < 2 * args.connections or args.features < 2:
        p.error("need --voters >= 2 x --connections (one vote in flight each) and >= 2 features")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("rest: needs wrk (Debian: apt-get install wrk)")
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    pinned = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_pin = ["taskset", "-c", "0"] if pinned else []
    wrk_pin = ["taskset", "-c", "1"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})  # this orchestrator stays off the server core
    meta: dict[str, Any] = versions(python)
    meta.update(
        mode="quick" if args.quick else "full",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        code=code_version(),
        settings=", ".join([*(f"{k}=0" for k in UNLIMITED), *args.ours_env])
        + " (rate limits off: every request comes from 127.0.0.1); otherwise the defaults "
        "(access log on: one JSON line per request, to a file)",
        reference='bench/rest_trivial.py, `web.json_response({"ok": true})` for any request',
        peer="bench/peer_fastapi.py: the seed's ADR-003 snippet as a user would write it "
        "(FastAPI, a pydantic body, PyJWT HS256 with verified tokens cached in an lru_cache and "
        "`exp` checked on every use, one asyncio.Lock around an in-memory store; uvicorn with "
        "uvloop and httptools, one process, no access log); it serves the vote only",
        pinning="servers on CPU 0, wrk and this orchestrator on CPU 1 (taskset)"
        if pinned
        else "not pinned",
        load=f"`wrk -t1 -c{args.connections} -d{args.duration}s --latency -s "
        f"bench/rest_wrk.lua`, the same requests to every server; {args.voters} voters taking "
        f"turns on one feature; {args.features} features seeded; {args.warmup} s of warm-up "
        f"votes per server; {args.reps} repetition(s), every server restarted for each, "
        "their order rotated every repetition",
        command=" ".join([".venv/bin/python", "bench/rest.py", *map(shlex.quote, argv)]),
        connections=args.connections,
    )
    print(f"rest ({meta['mode']}): {args.reps} rep(s), {meta['pinning']}", file=sys.stderr)
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rest-bench-") as logdir:
            ctx: dict[str, Any] = {
                "python": python,
                "server_pin": server_pin,
                "wrk_pin": wrk_pin,
                "logdir": Path(logdir),
                "ours_env": dict(kv.split("=", 1) for kv in args.ours_env),
            }
            for rep in range(1, args.reps + 1):
                measure_rep(rep, args, ctx, runs)
            meta["floor"] = floor_description(ctx.get("floor_answer"))
    except KeyboardInterrupt:
        print("rest: interrupted; subprocesses stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        print(f"rest: FAILED: {exc}", file=sys.stderr)
        return 1
    rows = summarize(runs, args.connections)
    ratio = rows[0]["rps_ratio"]
    meta["target_met"] = bool(ratio >= TARGET_VOTE_RATIO)
    peer_ratio = rows[0]["peer_cpu_ratio"]
    meta["peer_target_met"] = bool(peer_ratio <= TARGET_PEER_CPU_RATIO)
    text = render(rows, runs, meta)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / ("rest-quick" if args.quick else "rest")
    stem.with_suffix(".md").write_text(text)
    raw = {
        "meta": meta,
        "targets": [
            {
                "figure": "vote requests/s ÷ trivial aiohttp handler",
                "value": None if math.isnan(ratio) else round(ratio, 3),
                "target": f"≥ {TARGET_VOTE_RATIO}",
                "met": meta["target_met"],
                "note": "through aiohttp's full pipeline, every middleware, the access line on",
            },
            {
                "figure": "server CPU per vote ÷ FastAPI + uvicorn peer",
                "value": None if math.isnan(peer_ratio) else round(peer_ratio, 3),
                "target": f"≤ {TARGET_PEER_CPU_RATIO}",
                "met": meta["peer_target_met"],
            },
        ],
        "rows": rows,
        "runs": [asdict(r) for r in runs],
    }
    stem.with_suffix(".json").write_text(
        json.dumps(clean(raw), indent=1, ensure_ascii=False) + "\n"
    )
    print(text)
    print(f"written to {stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C
    sys.exit(main())
