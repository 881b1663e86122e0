"""Durable store benchmark (issue 16): votes/s on SQLite ÷ on memory, and the load at start.

    .venv/bin/python bench/durable.py            # 5 repetitions of 10 s; 100,000 votes loaded
                                                 # 3 times (~3 min)
    .venv/bin/python bench/durable.py --quick    # 1 repetition of 2 s; 10,000 votes (< 1 min)
    .venv/bin/python bench/durable.py --only load   # one part (rest, load)

Two parts (issue 16's "Benchmarks"):
  * rest: two `python -m service` servers, FV_STORE=sqlite:///<a temporary file> (WAL,
    synchronous=FULL, group commit from one writer thread; the default store) and
    FV_STORE=memory, otherwise as bench/rest.py runs ours (its defaults, access log on, to a
    temporary file; rate limits off), both pinned to CPU 0. Each repetition starts both afresh
    (a new file), seeds them through the API (--voters tokens, --features features), warms
    them up (1 s of votes on another feature), then loads each in turn (order alternating every
    repetition; each run after a bounded wait for a quiet machine) with `wrk -t1 -c50 --latency
    -s bench/rest_wrk.lua ... vote` pinned to CPU 1: PUT /features/{id}/vote, voters taking
    turns, each alternating +1/-1, so every request changes state and on SQLite writes a row.
    Figure:
    SQLite requests/s ÷ memory requests/s (ratio of the medians; target ≥ 0.8), with p50/p99
    latency and the server's CPU per vote (utime+stime of the whole process, writer thread
    included, from /proc) for both. On the SQLite runs `perf stat` (if it can) counts the
    server's fsync/fdatasync calls over the run: with synchronous=FULL a WAL commit is one
    sync, so syncs/s ≈ commits/s and votes per sync ≈ votes per group commit. The time of one
    small append + fdatasync in the same directory is measured too (the floor of a commit).
  * load: a file of 100,000 votes on 1,000 features across 10 boards (main plus 9; 100
    features each; quick: 10,000 votes) is built once, in this process, through SqliteBoards
    itself (service.store.sqlite's own schema and open_file): boards and features through its
    API, then the votes as concurrent set_vote calls in chunks of 5,000, so group commit puts
    each chunk in one transaction (random voters, 2,000 per board, ~85 % +1). Then a fresh
    child process (this script with --load-child, pinned to CPU 0) imports service.store.sqlite
    and times `SqliteBoards(url)` — open, schema check, read every row, rebuild every board in
    memory — median of 3 children (the file is in the page cache after the build: this is the
    CPU cost, not a cold disk read). Each child also times open_file and read_boards on their
    own, to split the load into reading rows and rebuilding memory (DurableStore.restore).
    Target (issue 16): ≤ 2 s for 100,000 votes on 1,000 features.
Results: bench/results/durable[-quick].md/.json (report.py puts the targets in bench/RESULTS.md).
Every subprocess is stopped in `finally` and gets SIGKILL if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import rest as rb

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPT = str(Path(__file__).resolve())
TARGET_RPS_RATIO = 0.8  # SQLite vote requests/s ÷ memory's, at least
TARGET_LOAD_S = 2.0  # 100,000 votes on 1,000 features load in at most this
STORES = ("sqlite", "memory")
PARTS = ("rest", "load")
VOTE = rb.ENDPOINTS[0]
BOARDS = 10  # main plus 9
FEATURES_PER_BOARD = 100
VOTERS_PER_BOARD = 2_000
CHUNK = 5_000  # concurrent set_vote calls per gather: one group commit each


def med(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return statistics.median(ok) if ok else math.nan


def fmt(v: float | None, digits: int = 1) -> str:
    return rb.fmt(v, digits)


# --- part 1: votes/s on SQLite ÷ on memory -------------------------------------------------------


def fsync_ms(directory: Path, n: int = 50) -> float:
    """Median time of one small append + fdatasync to a file in `directory` (a commit's floor)."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return 1e3 * statistics.median(times)


_PERF_COUNT = re.compile(r"^\s*([\d,]+)\s+syscalls:sys_enter_(fsync|fdatasync)\b", re.M)


def start_sync_count(pid: int, pin: list[str]) -> subprocess.Popen[bytes] | None:
    """`perf stat` counting the server's fsync and fdatasync calls until SIGINT (or None)."""
    if shutil.which("perf") is None:
        return None
    cmd = [*pin, "perf", "stat", "-e"]
    cmd += ["syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "-p", str(pid)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=rb._die_with_parent,
    )
    time.sleep(0.2)  # attached before the load starts
    return None if proc.poll() is not None else proc


def stop_sync_count(proc: subprocess.Popen[bytes] | None) -> int | None:
    if proc is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    counts = _PERF_COUNT.findall(err.decode(errors="replace"))
    return sum(int(c.replace(",", "")) for c, _ in counts) if counts else None


def measure_rep(rep: int, args: argparse.Namespace, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """One repetition: both servers fresh (a new file), seeded, warmed up, then loaded in turn."""
    servers: dict[str, rb.Server] = {}
    out: list[dict[str, Any]] = []
    repdir = Path(tempfile.mkdtemp(prefix=f"rep{rep}-", dir=ctx["tmp"]))
    try:
        vote_args: dict[str, list[str]] = {}
        for kind in STORES:
            url = f"sqlite:///{repdir / 'fv.sqlite3'}" if kind == "sqlite" else "memory"
            server = rb.start_server(
                "ours", ctx["python"], ctx["server_pin"], repdir, {"FV_STORE": url}
            )
            server.kind = kind
            servers[kind] = server
            tokens, ids = rb.seed(server.port, args.voters, args.features)
            tokens_file = repdir / f"tokens-{kind}.txt"
            tokens_file.write_text("\n".join(tokens) + "\n")
            vote_args[kind] = ["vote", f"/features/{ids[0]}/vote", str(tokens_file)]
            warm = ["vote", f"/features/{ids[1]}/vote", str(tokens_file)]
            rb.run_wrk(server, VOTE, rep, warm, args.warmup, args.connections, ctx["wrk_pin"])
        order = STORES if rep % 2 else STORES[::-1]
        for kind in order:
            waited = rb.wait_quiet(args.quiet_below, args.quiet_wait)
            server = servers[kind]
            seq0, _ = rb.stats_seq_etag(server.port)
            counter = (
                start_sync_count(server.proc.pid, ctx["wrk_pin"]) if kind == "sqlite" else None
            )
            try:
                run = rb.run_wrk(
                    server,
                    VOTE,
                    rep,
                    vote_args[kind],
                    args.duration,
                    args.connections,
                    ctx["wrk_pin"],
                )
            except RuntimeError as exc:
                stop_sync_count(counter)
                print(f"  rep {rep} {kind}: FAILED: {exc}", file=sys.stderr)
                out.append({**asdict(rb.Run(VOTE.name, kind, rep, error=str(exc)[:500]))})
                continue
            syncs = stop_sync_count(counter)
            time.sleep(0.3)  # requests in flight when wrk stopped still land
            run.seq_delta = rb.stats_seq_etag(server.port)[0] - seq0
            run.quiet_wait_s = waited
            row = asdict(run)
            answered = sum(run.statuses.values())
            row["syncs"] = syncs
            row["syncs_per_s"] = math.nan if syncs is None else syncs / args.duration
            row["votes_per_sync"] = math.nan if not syncs else answered / syncs
            out.append(row)
            print(
                f"  rep {rep} {kind:<6} {run.rps:8.0f} req/s  "
                f"{run.server_us_per_req:6.1f} µs/vote  "
                f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  statuses "
                f"{rb.fmt_statuses(run.statuses)}  wrk CPU {run.wrk_cpu_pct:3.0f}%  server CPU "
                f"{run.server_cpu_pct:3.0f}%  other {run.other_cpu_pct:3.0f}%  "
                f"seq +{run.seq_delta}"
                + (
                    ""
                    if syncs is None
                    else f"  syncs {syncs} ({row['votes_per_sync']:.1f} votes each)"
                ),
                file=sys.stderr,
            )
    finally:
        for server in servers.values():
            rb.stop_process(server.proc)
        shutil.rmtree(repdir, ignore_errors=True)
    return out


def part_rest(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    sync_floor = fsync_ms(ctx["tmp"])
    for rep in range(1, args.reps + 1):
        runs += measure_rep(rep, args, ctx)
    ok = [r for r in runs if not r["error"]]
    summary: dict[str, Any] = {"fsync_ms": sync_floor, "runs": runs}
    for kind in STORES:
        rs = [r for r in ok if r["server"] == kind]
        for key in ("rps", "p50_ms", "p99_ms", "server_us_per_req", "server_cpu_pct"):
            summary[f"{kind}_{key}"] = med([r[key] for r in rs])
        summary[f"{kind}_every_vote_changed"] = all(
            r["seq_delta"] >= r["statuses"].get("200", 0) for r in rs
        ) and bool(rs)
        summary[f"{kind}_non200"] = sum(
            v for r in rs for k, v in r["statuses"].items() if k != "200"
        )
    sq = [r for r in ok if r["server"] == "sqlite"]
    summary["syncs_per_s"] = med([r["syncs_per_s"] for r in sq])
    summary["votes_per_sync"] = med([r["votes_per_sync"] for r in sq])
    summary["rps_ratio"] = summary["sqlite_rps"] / summary["memory_rps"]
    summary["rps_ratio_per_rep"] = [
        a["rps"] / b["rps"]
        for rep in range(1, args.reps + 1)
        for a in ok
        if a["rep"] == rep and a["server"] == "sqlite"
        for b in ok
        if b["rep"] == rep and b["server"] == "memory"
    ]
    summary["cpu_ratio"] = summary["sqlite_server_us_per_req"] / summary["memory_server_us_per_req"]
    summary["p99_ratio"] = summary["sqlite_p99_ms"] / summary["memory_p99_ms"]
    summary["wrk_cpu_max_pct"] = max((r["wrk_cpu_pct"] for r in ok), default=math.nan)
    summary["other_cpu_max_pct"] = max((r["other_cpu_pct"] for r in ok), default=math.nan)
    return summary


# --- part 2: the load at start -------------------------------------------------------------------


def voter_id(rng: random.Random) -> str:
    """Shaped like the service's voter ids: token_urlsafe(16)."""
    return base64.urlsafe_b64encode(rng.randbytes(16)).rstrip(b"=").decode()


async def build_file(url: str, votes: int) -> dict[str, Any]:
    """BOARDS boards of FEATURES_PER_BOARD features, `votes` distinct votes spread evenly over
    them, written through SqliteBoards (its API, its group commit); the build's own figures."""
    from service.schemas import FeatureCreate
    from service.store.sqlite import SqliteBoards

    rng = random.Random(20261205)
    t0 = time.perf_counter()
    boards = SqliteBoards(url)
    try:
        stores = [boards.main]
        for i in range(1, BOARDS):
            stores.append(await boards.create(f"Board {i} of the durable benchmark"))
        feature_ids = []
        for store in stores:
            made = await asyncio.gather(
                *(
                    store.create_feature(
                        FeatureCreate(
                            title=f"Feature {i}: a realistic title for a proposal",
                            description="What it does and why the audience wants it, in a "
                            "sentence or two as people write them on a live board.",
                        ),
                        owner="bench",
                    )
                    for i in range(FEATURES_PER_BOARD)
                )
            )
            feature_ids.append([c.feature.id for c in made])
        per_board = votes // BOARDS
        plan: list[tuple[Any, str, int, int]] = []
        for store, ids in zip(stores, feature_ids, strict=True):
            voters = [voter_id(rng) for _ in range(VOTERS_PER_BOARD)]
            pairs: set[tuple[int, int]] = set()
            while len(pairs) < per_board:
                pairs.add((rng.randrange(len(voters)), rng.randrange(len(ids))))
            plan += [
                (store, voters[v], ids[f], 1 if rng.random() < 0.85 else -1)
                for v, f in sorted(pairs)
            ]
        rng.shuffle(plan)
        commits0 = boards.journal.commits
        t1 = time.perf_counter()
        for start in range(0, len(plan), CHUNK):
            await asyncio.gather(
                *(
                    s.set_vote(voter, fid, value)
                    for s, voter, fid, value in plan[start : start + CHUNK]
                )
            )
        t2 = time.perf_counter()
        commits = boards.journal.commits - commits0
    finally:
        await boards.close()
    return {
        "build_s": t2 - t0,
        "votes_s": t2 - t1,
        "vote_commits": commits,
        "votes": len(plan),
    }


def load_child(url: str) -> None:
    """In a fresh process: time SqliteBoards(url), then its parts on their own; print json."""
    t0 = time.perf_counter()
    from service.store import sqlite as sq

    t1 = time.perf_counter()
    boards = sq.SqliteBoards(url)
    t2 = time.perf_counter()
    n_boards = len(list(boards._boards.values()))
    asyncio.run(boards.close())
    t3 = time.perf_counter()
    conn, _ = sq.open_file(sq.path_of(url))
    t4 = time.perf_counter()
    rows = sq.read_boards(conn)
    t5 = time.perf_counter()
    conn.close()
    print(
        json.dumps(
            {
                "import_s": t1 - t0,
                "construct_s": t2 - t1,
                "open_s": t4 - t3,
                "read_boards_s": t5 - t4,
                "boards": n_boards,
                "features": sum(len(r.features) for r in rows),
                "votes": sum(len(r.votes) for r in rows),
            }
        )
    )


def part_load(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    path = ctx["tmp"] / "load.sqlite3"
    url = f"sqlite:///{path}"
    print(f"  load: building {args.load_votes:,} votes ...", file=sys.stderr)
    built = asyncio.run(build_file(url, args.load_votes))
    with sqlite3.connect(path) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("boards", "features", "votes")
        }
    built.update(counts=counts, file_mib=path.stat().st_size / 2**20)
    children = []
    for i in range(args.load_reps):
        rb.wait_quiet(args.quiet_below, args.quiet_wait)
        done = subprocess.run(
            [*ctx["server_pin"], ctx["python"], SCRIPT, "--load-child", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"load child failed:\n{done.stderr[-2000:]}")
        child = json.loads(done.stdout.strip().splitlines()[-1])
        children.append(child)
        print(
            f"  load {i + 1}: SqliteBoards() {child['construct_s']:.3f} s (open_file "
            f"{child['open_s']:.3f}, read_boards {child['read_boards_s']:.3f}); "
            f"{child['boards']} boards, {child['features']} features, {child['votes']} votes",
            file=sys.stderr,
        )
    construct = med([c["construct_s"] for c in children])
    read = med([c["read_boards_s"] for c in children])
    opened = med([c["open_s"] for c in children])
    return {
        "built": built,
        "children": children,
        "construct_s": construct,
        "read_boards_s": read,
        "open_s": opened,
        "restore_s": construct - read - opened,  # the rest: rebuilding memory (restore)
        "import_s": med([c["import_s"] for c in children]),
        "us_per_vote": 1e6 * construct / max(1, counts["votes"]),
    }


# --- the report ------------------------------------------------------------------------------


def render(meta: dict[str, Any], rest: dict[str, Any] | None, load: dict[str, Any] | None) -> str:
    out = [
        "## Durable store: votes/s on SQLite ÷ memory, load at start (bench/durable.py)",
        "",
        f"Run {meta['date']} ({meta['mode']}), `{meta['command']}`; {meta['code']}. "
        f"{meta['cpu']}, {meta['nproc']} CPUs, {meta['kernel']}; Python {meta['python']}, "
        f"aiohttp {meta['aiohttp']}, {meta['loop']}, SQLite {meta['sqlite']}, {meta['wrk']}. "
        f"{meta['pinning']}.",
    ]
    if rest is not None:
        mark = "met" if meta.get("rest_target_met") else "NOT met"
        out += [
            "",
            "### Vote requests/s, SQLite store ÷ memory store",
            "",
            f"Load: {meta['load']}. Servers: {meta['settings']}.",
            "",
            f"**SQLite ÷ memory, vote requests/s: {fmt(rest['rps_ratio'], 2)}** (target ≥ "
            f"{TARGET_RPS_RATIO}: {mark}; per repetition "
            + ", ".join(fmt(v, 2) for v in rest["rps_ratio_per_rep"])
            + f"). Server CPU per vote SQLite ÷ memory: {fmt(rest['cpu_ratio'], 2)}; p99 "
            f"latency SQLite ÷ memory: {fmt(rest['p99_ratio'], 2)}.",
            "",
            "| store | req/s | p50 ms | p99 ms | server CPU µs/vote | server CPU % "
            "| every vote changed state | non-200 answers |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for kind in STORES:
            out.append(
                f"| {kind} | {fmt(rest[f'{kind}_rps'], 0)} | {fmt(rest[f'{kind}_p50_ms'], 2)} "
                f"| {fmt(rest[f'{kind}_p99_ms'], 2)} | {fmt(rest[f'{kind}_server_us_per_req'])} "
                f"| {fmt(rest[f'{kind}_server_cpu_pct'], 0)} "
                f"| {'yes' if rest[f'{kind}_every_vote_changed'] else 'NO'} "
                f"| {rest[f'{kind}_non200']} |"
            )
        out += [
            "",
            f"Group commit on the SQLite runs: {fmt(rest['syncs_per_s'], 0)} fsync/fdatasync "
            f"calls per second (perf stat on the server; one per WAL commit), "
            f"{fmt(rest['votes_per_sync'])} votes per sync (median of the repetitions). One "
            f"4 KiB append + fdatasync in the same directory: {fmt(rest['fsync_ms'], 2)} ms "
            "(median of 50). wrk used at most "
            f"{fmt(rest['wrk_cpu_max_pct'], 0)} % of its core; other processes at most "
            f"{fmt(rest['other_cpu_max_pct'], 0)} % of a core during a run.",
            "",
            "Every run:",
            "",
            "| rep | store | req/s | p50 ms | p99 ms | max ms | statuses | socket errors "
            "| CPU µs/vote | server CPU % | wrk CPU % | other load % | seq + | syncs "
            "| votes/sync |",
            "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rest["runs"]:
            if r["error"]:
                out.append(f"| {r['rep']} | {r['server']} | failed: {r['error'][:80]} |")
                continue
            out.append(
                f"| {r['rep']} | {r['server']} | {fmt(r['rps'], 0)} | {fmt(r['p50_ms'], 2)} "
                f"| {fmt(r['p99_ms'], 2)} | {fmt(r['max_ms'], 1)} "
                f"| {rb.fmt_statuses(r['statuses'])} | {r['socket_errors']} "
                f"| {fmt(r['server_us_per_req'])} | {fmt(r['server_cpu_pct'], 0)} "
                f"| {fmt(r['wrk_cpu_pct'], 0)} | {fmt(r['other_cpu_pct'], 0)} | {r['seq_delta']} "
                f"| {'' if r['syncs'] is None else r['syncs']} | {fmt(r['votes_per_sync'])} |"
            )
    if load is not None:
        b = load["built"]
        mark = "met" if meta.get("load_target_met") else "NOT met"
        if b["counts"]["votes"] < 100_000:
            mark = f"not judged: {b['counts']['votes']:,} votes, not 100,000"
        out += [
            "",
            "### Load at start",
            "",
            f"The file: {b['counts']['votes']:,} votes on {b['counts']['features']:,} features "
            f"across {b['counts']['boards']} boards, {fmt(b['file_mib'])} MiB, built through "
            f"SqliteBoards in {fmt(b['build_s'])} s (the votes: {fmt(b['votes_s'])} s in "
            f"{b['vote_commits']} group commits of concurrent set_vote calls, chunks of "
            f"{CHUNK:,}). Timed: `SqliteBoards(url)` in a fresh child process pinned to CPU 0 "
            f"(after importing service.store.sqlite: {fmt(load['import_s'], 3)} s, not counted), "
            f"median of {len(load['children'])}; the file is in the page cache.",
            "",
            f"**Load: {fmt(load['construct_s'], 3)} s** (target ≤ {TARGET_LOAD_S} s for 100,000 "
            f"votes on 1,000 features: {mark}); {fmt(load['us_per_vote'], 2)} µs per vote. Of "
            f"it: open_file (schema and version checks) {fmt(load['open_s'], 3)} s, read_boards "
            f"(every row into Python) {fmt(load['read_boards_s'], 3)} s, the rest — rebuilding "
            f"each board in memory (DurableStore.restore: records, vote maps, counts, rankings) "
            f"— {fmt(load['restore_s'], 3)} s.",
            "",
            "| child | SqliteBoards() s | open_file s | read_boards s | boards | features "
            "| votes |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, c in enumerate(load["children"], 1):
            out.append(
                f"| {i} | {fmt(c['construct_s'], 3)} | {fmt(c['open_s'], 3)} "
                f"| {fmt(c['read_boards_s'], 3)} | {c['boards']} | {c['features']:,} "
                f"| {c['votes']:,} |"
            )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repetition of 2 s; 10,000 votes")
    p.add_argument("--only", help=f"comma-separated parts ({', '.join(PARTS)})")
    p.add_argument(
        "--reps", type=int, help="repetitions of the REST part (default 5: a noisy VM; quick 1)"
    )
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up votes (default 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--voters", type=int, help="voter tokens taking turns (default 4 x connections)")
    p.add_argument("--features", type=int, default=20, help="features seeded (default 20)")
    p.add_argument("--load-votes", type=int, help="votes in the load file (default 100,000)")
    p.add_argument("--load-reps", type=int, default=3, help="child processes timed (default 3)")
    p.add_argument("--quiet-below", type=float, default=15.0, help="%% busy counted as quiet")
    p.add_argument("--quiet-wait", type=float, help="at most this many s (default 10; quick 2)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--output-dir", type=Path, default=BENCH / "results")
    p.add_argument("--load-child", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.parts = PARTS if not args.only else tuple(args.only.split(","))
    if set(args.parts) - set(PARTS):
        p.error(f"--only takes {', '.join(PARTS)}")
    args.reps = args.reps or (1 if quick else 5)
    args.duration = args.duration or (2 if quick else 10)
    args.load_votes = args.load_votes or (10_000 if quick else 100_000)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if quick else 10.0)
    args.voters = args.voters or 4 * args.connections
    if args.voters < 2 * args.connections or args.features < 2:
        p.error("need --voters >= 2 x --connections (one vote in flight each) and >= 2 features")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.load_child:
        sys.path.insert(0, str(ROOT))
        load_child(args.load_child)
        return 0
    if "rest" in args.parts and shutil.which("wrk") is None:
        sys.exit("durable: needs wrk (Debian: apt-get install wrk)")
    sys.path.insert(0, str(ROOT))
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    pinned = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_pin = ["taskset", "-c", "0"] if pinned else []
    wrk_pin = ["taskset", "-c", "1"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})  # this orchestrator (and the load file's build) off CPU 0
    meta: dict[str, Any] = rb.versions(python)
    meta.update(
        mode="quick" if args.quick else "full",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        code=rb.code_version(),
        sqlite=sqlite3.sqlite_version,
        pinning="servers and load children on CPU 0, wrk, perf and this orchestrator on CPU 1 "
        "(taskset)"
        if pinned
        else "not pinned",
        settings=", ".join(f"{k}=0" for k in rb.UNLIMITED)
        + " (rate limits off), FV_STORE=sqlite:///<temporary file> or memory; otherwise the "
        "defaults (access log on, to a file)",
        load=f"`wrk -t1 -c{args.connections} -d{args.duration}s --latency -s "
        f"bench/rest_wrk.lua` vote mode, {args.voters} voters taking turns on one feature, "
        f"{args.features} features seeded, {args.warmup} s of warm-up votes per server; "
        f"{args.reps} repetition(s), both servers restarted (a new file) for each, their "
        "order alternating",
        command=" ".join([".venv/bin/python", "bench/durable.py", *map(shlex.quote, argv)]),
    )
    print(f"durable ({meta['mode']}): parts {', '.join(args.parts)}", file=sys.stderr)
    rest = load = None
    try:
        with tempfile.TemporaryDirectory(prefix="durable-bench-", dir=tempfile.gettempdir()) as tmp:
            ctx: dict[str, Any] = {
                "python": python,
                "server_pin": server_pin,
                "wrk_pin": wrk_pin,
                "tmp": Path(tmp),
            }
            if "rest" in args.parts:
                rest = part_rest(args, ctx)
            if "load" in args.parts:
                load = part_load(args, ctx)
    except KeyboardInterrupt:
        print("durable: interrupted; subprocesses stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"durable: FAILED: {exc}", file=sys.stderr)
        return 1
    targets = []
    if rest is not None:
        ratio = rest["rps_ratio"]
        meta["rest_target_met"] = bool(ratio >= TARGET_RPS_RATIO)
        targets.append(
            {
                "figure": "vote requests/s, SQLite store ÷ memory store",
                "value": None if math.isnan(ratio) else round(ratio, 3),
                "target": f"≥ {TARGET_RPS_RATIO}",
                "met": meta["rest_target_met"],
                "note": f"{args.connections} connections; p99 "
                f"{fmt(rest['sqlite_p99_ms'], 2)} vs {fmt(rest['memory_p99_ms'], 2)} ms",
            }
        )
    if load is not None:
        seconds = load["construct_s"]
        votes = load["built"]["counts"]["votes"]
        meta["load_target_met"] = bool(seconds <= TARGET_LOAD_S and votes >= 100_000)
        targets.append(
            {
                "figure": "start-up load of 100,000 votes on 1,000 features (10 boards), s",
                "value": round(seconds, 3),
                "target": f"≤ {TARGET_LOAD_S} s",
                "met": meta["load_target_met"],
                "note": f"only {votes:,} votes loaded: not judged" if votes < 100_000 else "",
            }
        )
    text = render(meta, rest, load)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / ("durable-quick" if args.quick else "durable")
    stem.with_suffix(".md").write_text(text)
    raw = {"meta": meta, "targets": targets, "rest": rest, "load": load}
    stem.with_suffix(".json").write_text(
        json.dumps(rb.clean(raw), indent=1, ensure_ascii=False) + "\n"
    )
    print(text)
    print(f"written to {stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C
    sys.exit(main())
