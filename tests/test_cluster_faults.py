"""Two instances on Redis behind config/nginx.conf; one is SIGKILLed mid-load (issue 7).

The real processes: two `python -m service` on the shared test Redis (one key prefix, one
secret) and nginx with a copy of config/nginx.conf whose ports are swapped for free ones. Every
request and WebSocket goes through nginx. While voters vote, one instance is killed with SIGKILL
(no drain, no close frames); then:

- the other instance keeps answering through nginx (acknowledged votes after the kill);
- every WebSocket client whose instance died reconnects (through nginx, so to the survivor) and
  every client is on the latest `seq` within 5 s of the load stopping;
- the final counts equal the model built from acknowledged votes, exactly. A vote whose reply was
  lost may or may not have landed, so a voter repeats it (votes are idempotent) until it is
  acknowledged before moving on: each voter's last word on each feature is then acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType

from .browser import ROOT, Server
from .log_capture import save_log
from .ports import PortTaken, port_taken, start_on_free_port
from .redis_support import REDIS_URL, delete_namespace, require_redis, unique_prefix
from .waiting import eventually

NGINX_CONF: Final = ROOT / "config" / "nginx.conf"
START_TIMEOUT: Final = 15.0
CONVERGE: Final = 5.0  # issue 7: clients are on the latest seq within this after the load
WATCHERS: Final = 20
VOTERS: Final = 8
FEATURES: Final = 5
# The load around the kill, counted in acknowledged votes rather than seconds, so a busy host
# gets the same load on both sides (waited for within LOAD_WITHIN, a hang guard).
ACKED_BEFORE_KILL: Final = 30
ACKED_AFTER_KILL: Final = 30
ACKED_AFTER_RECONNECT: Final = 10
LOAD_WITHIN: Final = 30.0
RETRY_FOR: Final = 5.0  # a voter repeats an unacknowledged vote for at most this long
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=3)
UNAVAILABLE: Final = frozenset({502, 503, 504})


# --- processes ---------------------------------------------------------------------------------


def nginx_conf(listen: int, upstreams: tuple[int, int]) -> str:
    """config/nginx.conf with its ports replaced; fails when the file no longer has them."""
    text = NGINX_CONF.read_text()
    replacements = [
        ("listen 8080;", f"listen 127.0.0.1:{listen};"),
        ("server 127.0.0.1:8081 ", f"server 127.0.0.1:{upstreams[0]} "),
        ("server 127.0.0.1:8082 ", f"server 127.0.0.1:{upstreams[1]} "),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"config/nginx.conf changed: {old!r} is not there once"
        text = text.replace(old, new)
    return text


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """In a session (and process group) of its own: nginx's workers are found by its group."""
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(server: Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            output = log.read_text()
            if port_taken(output):  # someone else bound the port first: try another one
                raise PortTaken(output)
            raise RuntimeError(f"{proc.args!r} exited at start:\n{output[-2000:]}")
        with contextlib.suppress(OSError):
            if server.request("GET", "/healthz")[0] == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no /healthz from {server.url} in time:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to its whole group: a SIGKILLed nginx master orphans its workers."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its group: start_new_session made pgid == pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class Cluster:
    url: str  # nginx
    instances: list[Server]
    procs: list[subprocess.Popen[bytes]]  # the instances', in the same order
    logs: Path

    def kill(self, index: int) -> None:
        """SIGKILL: no drain, no WebSocket close frames, connections reset by the kernel."""
        self.procs[index].kill()
        self.procs[index].wait(5)

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (Debian/Ubuntu: apt-get install -y nginx)")
    require_redis()
    prefix = unique_prefix()
    env = {"FV_STORE": REDIS_URL, "FV_REDIS_PREFIX": prefix, "FV_TRUSTED_PROXIES": "127.0.0.1"}
    instances = [Server(**env), Server(**env)]  # same FV_SECRET, rate limits off
    rundir = tmp_path / "nginx"
    rundir.mkdir()
    conf = tmp_path / "nginx.conf"
    procs: list[subprocess.Popen[bytes]] = []

    def starter(
        server: Server, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> Callable[[int], None]:
        """Start on a port, wait for /healthz; PortTaken (another port, please) if it was taken."""

        def start(port: int) -> None:
            server.use_port(port)
            proc = spawn(args, log, server.env if env is None else env)
            procs.append(proc)
            try:
                wait_healthy(server, proc, log)
            except PortTaken:
                procs.remove(proc)
                stop(proc)
                raise

        return start

    try:
        for i, server in enumerate(instances):  # one after the other: each may need a new port
            service = [sys.executable, "-m", "service"]
            start_on_free_port(starter(server, service, tmp_path / f"instance{i}.log"))
        front = Server()  # only its request(): nginx serves at its url

        def start_nginx(port: int) -> None:
            conf.write_text(nginx_conf(port, (instances[0].port, instances[1].port)))
            nginx_args = [nginx, "-p", str(rundir), "-e", "stderr", "-c", str(conf),
                          "-g", "daemon off;"]
            starter(front, nginx_args, tmp_path / "nginx.log", env=dict(os.environ))(port)

        start_on_free_port(start_nginx)
        yield Cluster(front.url, instances, procs[:2], tmp_path)
    finally:
        for proc in procs:
            stop(proc)
        delete_namespace(REDIS_URL, prefix)
        for log in sorted(tmp_path.glob("*.log")):  # for the whole run's no-secrets check
            save_log(f"cluster-{log.name}", log.read_bytes())


# --- clients -----------------------------------------------------------------------------------


@dataclass
class Watcher:
    """A WebSocket dashboard: reconnects on close with a short backoff, records every seq."""

    url: str
    connections: int = 0
    connected: bool = False
    seq: int = -1  # the last seq of the current connection
    backwards: list[tuple[int, int]] = field(default_factory=list)  # seq went back on one socket
    errors: list[str] = field(default_factory=list)
    stopping: bool = False

    async def run(self, session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        for _attempt in range(1000):  # bounded; the test stops it long before
            if self.stopping:
                return
            try:
                async with session.ws_connect(
                    self.url,
                    autoping=True,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=1),
                ) as ws:
                    self.connections += 1
                    last = -1
                    async for msg in ws:
                        if msg.type is not WSMsgType.TEXT:
                            break
                        body = json.loads(msg.data)
                        if body.get("type") != "stats":
                            continue
                        if body["seq"] < last:
                            self.backwards.append((last, body["seq"]))
                        last = body["seq"]
                        self.seq, self.connected = last, True
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.errors.append(repr(exc))
            self.connected, self.seq = False, -1
            await asyncio.sleep(0.05 + rng.random() * 0.15)


@dataclass
class Load:
    """Voters voting through nginx; `acked` holds each voter's last acknowledged value per feature.

    A voter repeats a vote that got no answer or a 502/503/504 until it is acknowledged (votes
    are idempotent), so no unacknowledged vote of its can land after an acknowledged later one.
    """

    url: str
    fids: list[int]
    acked: dict[tuple[int, int], int] = field(default_factory=dict)
    ack_times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    running: bool = True

    async def send(self, session: aiohttp.ClientSession, token: str, fid: int, value: int) -> bool:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{self.url}/features/{fid}/vote"
        deadline = time.monotonic() + RETRY_FOR
        while time.monotonic() < deadline:
            try:
                if value:
                    request = session.put(url, json={"value": value}, headers=headers)
                else:
                    request = session.delete(url, headers=headers)
                async with request as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        self.ack_times.append(time.monotonic())
                        return True
                    if resp.status not in UNAVAILABLE:
                        self.unexpected.append(f"{resp.status} {body[:200]!r}")
                        return False
                    self.failures.append(str(resp.status))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failures.append(repr(exc))
            await asyncio.sleep(0.02)
        self.unexpected.append(f"vote {fid}={value} never acknowledged in {RETRY_FOR}s")
        return False

    async def voter(self, session: aiohttp.ClientSession, number: int, token: str) -> None:
        rng = random.Random(number)
        for _vote in range(10_000):  # bounded; stopped by `running`
            if not self.running:
                return
            fid, value = rng.choice(self.fids), rng.choice((1, 1, -1, 0))
            if await self.send(session, token, fid, value):
                self.acked[(number, fid)] = value
            else:
                return  # the model of this voter is unknown from here; reported by the test


async def post_json(
    session: aiohttp.ClientSession, url: str, body: Any = None, token: str | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# --- the test ----------------------------------------------------------------------------------


async def test_sigkill_one_instance_mid_load(cluster: Cluster) -> None:
    base = cluster.url
    ws_url = base.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        tokens = [(await post_json(session, f"{base}/auth/token"))["token"] for _ in range(VOTERS)]
        fids = [
            (await post_json(session, f"{base}/features", {"title": f"feature {i}"}, tokens[0]))[
                "id"
            ]
            for i in range(FEATURES)
        ]

        watchers = [Watcher(ws_url) for _ in range(WATCHERS)]
        watching = [asyncio.create_task(w.run(session, i)) for i, w in enumerate(watchers)]
        load = Load(base, fids)
        voting: list[asyncio.Task[None]] = []
        try:
            await eventually(lambda: all(w.connected for w in watchers), 10,
                             what="every WebSocket client connected")

            voting = [
                asyncio.create_task(load.voter(session, i, token)) for i, token in enumerate(tokens)
            ]
            await eventually(lambda: len(load.ack_times) >= ACKED_BEFORE_KILL, LOAD_WITHIN,
                             what=f"{ACKED_BEFORE_KILL} votes acknowledged before the kill")
            acked_before = len(load.ack_times)
            cluster.kill(0)
            killed_at = time.monotonic()

            def acked_since(moment: float) -> int:
                return sum(1 for t in load.ack_times if t > moment)

            # The load goes on until the survivor acknowledged votes and the killed instance's
            # clients are back (through nginx, on the survivor), then a little longer.
            await eventually(
                lambda: acked_since(killed_at) >= ACKED_AFTER_KILL
                and any(w.connections > 1 for w in watchers)
                and all(w.connected for w in watchers),
                LOAD_WITHIN,
                what="votes acknowledged after the kill and every client reconnected",
            )
            reconnected_at = time.monotonic()
            await eventually(lambda: acked_since(reconnected_at) >= ACKED_AFTER_RECONNECT,
                             LOAD_WITHIN, what="votes acknowledged after the reconnects")
            load.running = False
            await asyncio.wait_for(asyncio.gather(*voting), RETRY_FOR + 2)
            stopped_at = time.monotonic()

            # Every client converges on the latest seq within CONVERGE of the load stopping.
            final = await get_json(session, f"{base}/features/stats")
            while not all(w.connected and w.seq == final["seq"] for w in watchers):
                if time.monotonic() - stopped_at > CONVERGE:
                    lagging = [
                        (w.connected, w.seq, w.connections)
                        for w in watchers
                        if not (w.connected and w.seq == final["seq"])
                    ]
                    pytest.fail(
                        f"clients not on seq {final['seq']} {CONVERGE}s after the load "
                        f"stopped (connected, seq, connections): {lagging}\n"
                        f"{cluster.logs_text()}"
                    )
                await asyncio.sleep(0.02)
            converged_in = time.monotonic() - stopped_at
            after = await get_json(session, f"{base}/features/stats")
            items = (await get_json(session, f"{base}/features?sort=new&limit=200"))["items"]
        finally:
            load.running = False
            for w in watchers:
                w.stopping = True
            for task in [*voting, *watching]:
                task.cancel()
            await asyncio.gather(*voting, *watching, return_exceptions=True)

    # The load ran on both sides of the kill, and the survivor kept acknowledging votes.
    assert not load.unexpected, f"unexpected answers: {load.unexpected[:10]}"
    assert acked_before >= ACKED_BEFORE_KILL, f"only {acked_before} votes acknowledged before"
    acked_after = sum(1 for t in load.ack_times if t > killed_at)
    assert acked_after >= ACKED_AFTER_KILL, f"only {acked_after} votes acknowledged after the kill"
    assert cluster.procs[1].poll() is None, "the surviving instance died"
    survivor_log = (cluster.logs / "instance1.log").read_text()
    assert "Traceback" not in survivor_log, survivor_log[-3000:]
    assert '"level":"error"' not in survivor_log, (
        "no error under ordinary load (e.g. a false data-loss report)"
    )

    # The clients of the killed instance reconnected (to the survivor), none saw seq go back.
    reconnected = [w for w in watchers if w.connections > 1]
    assert reconnected, "no WebSocket client was on the killed instance (least_conn spreads them)"
    assert all(w.connected for w in watchers)
    assert not [w.backwards for w in watchers if w.backwards], "seq went back on a connection"
    assert converged_in < CONVERGE
    assert after["seq"] == final["seq"], "the stats changed after the load stopped"

    # Every acknowledged vote is in the final counts, and nothing else is.
    expected = {fid: {"up": 0, "down": 0} for fid in fids}
    for (_voter, fid), value in load.acked.items():
        if value:
            expected[fid]["up" if value > 0 else "down"] += 1
    counted = {f["id"]: {"up": f["up"], "down": f["down"]} for f in items}
    assert counted == expected
    assert final["up"] == sum(e["up"] for e in expected.values())
    assert final["down"] == sum(e["down"] for e in expected.values())
    assert final["total_votes"] == sum(1 for v in load.acked.values() if v)
    assert final["voters"] == len({voter for (voter, _f), v in load.acked.items() if v})
