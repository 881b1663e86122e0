"""Live push over GET /ws (API.md "Live push", issue 3), with real clients over real sockets.

Every client here is a real WebSocket peer on a loopback TCP socket: aiohttp's client, a raw
socket that does the handshake by hand, or the service started as a subprocess. No mocks.
Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, TCPConnector, WSMsgType

from service.app import create_app
from service.auth import Role
from service.keys import BROADCASTER, TOKENS

from .conftest import AiohttpClient, Client, bearer, create_feature, make_settings, stats
from .log_capture import log_path
from .ports import START_ATTEMPTS, PortTaken, free_port, port_taken

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
PROBLEM: Final = "application/problem+json"
WS_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Auth = dict[str, str]
Json = dict[str, Any]


# --- helpers ------------------------------------------------------------------------------------


def without_generated_at(body: Json) -> Json:
    return {k: v for k, v in body.items() if k != "generated_at"}


async def new_voter(client: Client) -> Auth:
    resp = await client.post("/auth/token")
    assert resp.status == 201, await resp.text()
    return bearer((await resp.json())["token"])


async def vote(client: Client, auth: Auth, fid: int, value: int) -> None:
    resp = await client.put(f"/features/{fid}/vote", json={"value": value}, headers=auth)
    assert resp.status == 200, await resp.text()
    await resp.read()


async def current_seq(client: Client) -> int:
    seq: int = (await stats(client))["seq"]
    return seq


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text output."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


async def metrics_text(client: Client) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


async def wait_for_metric(client: Client, name: str, expected: float, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    value = metric(await metrics_text(client), name)
    while value != expected:
        assert time.monotonic() < deadline, f"{name} = {value}, expected {expected}"
        await asyncio.sleep(0.02)
        value = metric(await metrics_text(client), name)


async def receive_json(ws: ClientWebSocketResponse, seconds: float = 5.0) -> Json:
    """The next message, which must be a JSON text frame."""
    msg = await ws.receive(timeout=seconds)
    assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    body: Json = json.loads(msg.data)
    return body


async def receive_until(
    ws: ClientWebSocketResponse, accept: Callable[[Json], bool], seconds: float = 5.0
) -> Json:
    """Skip messages (stats pushes) until one passes `accept`; fail at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching message before the deadline"
        body = await receive_json(ws, seconds=left)
        if accept(body):
            return body


def is_type(kind: str) -> Callable[[Json], bool]:
    return lambda body: body.get("type") == kind


def stats_at_least(seq: int) -> Callable[[Json], bool]:
    return lambda body: body.get("type") == "stats" and body["seq"] >= seq


async def wait_closed(ws: ClientWebSocketResponse, seconds: float) -> aiohttp.WSMessage:
    """Read (skipping data frames) until the server closes; return the CLOSE message."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the server did not close the connection before the deadline"
        msg = await ws.receive(timeout=left)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
            return msg


@contextlib.asynccontextmanager
async def ws_session() -> AsyncIterator[ClientSession]:
    """A session without a connection limit (the TestClient's own pool stops at 100)."""
    async with ClientSession(connector=TCPConnector(limit=0, force_close=True)) as session:
        yield session


@dataclass
class Recorder:
    """Reads one socket until it closes, keeping every stats seq and when it arrived."""

    ws: ClientWebSocketResponse
    seqs: list[int] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)
    last: Json = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    @property
    def latest(self) -> int:
        return self.seqs[-1] if self.seqs else -1

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type is not WSMsgType.TEXT:
                self.bad.append(f"unexpected {msg.type}: {msg.data!r}")
                continue
            body = json.loads(msg.data)
            if body.get("type") != "stats":
                self.bad.append(f"unexpected message {body!r}")
                continue
            if body["stats"]["seq"] != body["seq"]:
                self.bad.append(f"seq {body['seq']} carries stats of seq {body['stats']['seq']}")
            self.seqs.append(body["seq"])
            self.arrived.setdefault(body["seq"], time.monotonic())
            self.last = body

    async def stop(self) -> None:
        await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)


async def wait_all_reach(recorders: list[Recorder], seq: int, deadline: float) -> None:
    while any(r.latest < seq for r in recorders):
        if time.monotonic() > deadline:
            behind = sorted({r.latest for r in recorders if r.latest < seq})
            lagging = sum(r.latest < seq for r in recorders)
            raise AssertionError(f"{lagging} clients stuck below seq {seq} (at {behind[:10]})")
        await asyncio.sleep(0.005)


def assert_non_decreasing(seqs: list[int]) -> None:
    assert all(a <= b for a, b in itertools.pairwise(seqs)), seqs


# --- 1. many clients, bursts of votes -----------------------------------------------------------

CLIENTS: Final = 200
VOTERS: Final = 12
BURSTS: Final = 4
BURST_SIZE: Final = 50
TRICKLE: Final = 10


async def test_200_clients_follow_bursts_to_the_final_seq(client: Client, admin: Auth) -> None:
    fids = [(await create_feature(client, admin, f"Feature {i}"))["id"] for i in range(6)]
    voters = [await new_voter(client) for _ in range(VOTERS)]
    rng = random.Random(3)
    # The connects may land inside a push interval or after it: either way the first message
    # is the current snapshot (test_snapshot_is_current_even_inside_the_push_interval).
    async with ws_session() as session:
        url = client.make_url("/ws")
        sockets = await asyncio.gather(*(session.ws_connect(url) for _ in range(CLIENTS)))
        recorders = [Recorder(ws) for ws in sockets]
        try:
            # The first message on connect is the current snapshot.
            firsts = await asyncio.gather(*(receive_json(ws) for ws in sockets))
            snapshot = await stats(client)
            for first in firsts:
                assert set(first) == {"type", "seq", "stats"}
                assert first["type"] == "stats"
                assert first["seq"] == snapshot["seq"]
                assert without_generated_at(first["stats"]) == without_generated_at(snapshot)
            for recorder, first in zip(recorders, firsts, strict=True):
                recorder.seqs.append(first["seq"])
                recorder.start()

            sent = 0
            for _ in range(BURSTS):
                burst = [
                    vote(client, rng.choice(voters), rng.choice(fids), rng.choice((1, -1)))
                    for _ in range(BURST_SIZE)
                ]
                await asyncio.gather(*burst)
                for _ in range(TRICKLE):
                    await vote(client, rng.choice(voters), rng.choice(fids), rng.choice((1, -1)))
                sent += BURST_SIZE + TRICKLE
                await asyncio.sleep(rng.uniform(0, 0.03))
            assert sent >= 200

            final = await stats(client)
            assert final["seq"] > snapshot["seq"]
            await wait_all_reach(recorders, final["seq"], time.monotonic() + 15)
            for recorder in recorders:
                assert not recorder.bad, recorder.bad[:5]
                assert_non_decreasing(recorder.seqs)
                assert recorder.seqs[-1] == final["seq"]
                assert without_generated_at(recorder.last["stats"]) == without_generated_at(final)
        finally:
            await asyncio.gather(*(r.stop() for r in recorders))


# --- 2. a client that never reads cannot stall the others ---------------------------------------

HEALTHY: Final = 5
# Stats carry excerpts of the descriptions (~220 bytes a feature): a frame of ~40 KB takes
# the top 200.
BIG_FEATURES: Final = 200
# How long a push may take to reach the healthy clients before the test calls it hung. Not a
# speed bound: "without delaying" is checked by order (each push reaches them while the stalled
# client is still held), which a loaded host cannot fake or break.
HANG_GUARD: Final = 10.0


async def raw_handshake(host: str, port: int, rcvbuf: int = 4096) -> socket.socket:
    """Open a TCP socket with a small receive buffer and upgrade it by hand; read only the 101."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 5)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await asyncio.wait_for(loop.sock_sendall(sock, request.encode()), 5)
        head = b""
        deadline = time.monotonic() + 5
        while not head.endswith(b"\r\n\r\n"):  # one byte at a time: nothing past the headers
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), deadline - time.monotonic())
            assert chunk, f"EOF during the handshake: {head!r}"
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), head
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert f"sec-websocket-accept: {accept}".lower() in (ln.lower() for ln in lines), head
    except BaseException:
        sock.close()
        raise
    return sock


async def drain_until_eof(sock: socket.socket, seconds: float) -> bytes:
    """Read everything the server left until EOF or reset."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the stalled socket is still open after draining {len(data)} bytes"
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), left)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def complete_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every whole unmasked server frame; a cut-off tail is ignored."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(data):
        first, second = data[pos], data[pos + 1]
        assert second & 0x80 == 0, "server frames must not be masked"
        size, pos = second & 0x7F, pos + 2
        if size == 126:
            if pos + 2 > len(data):
                break
            size, pos = struct.unpack("!H", data[pos : pos + 2])[0], pos + 2
        elif size == 127:
            if pos + 8 > len(data):
                break
            size, pos = struct.unpack("!Q", data[pos : pos + 8])[0], pos + 8
        if pos + size > len(data):
            break
        assert first & 0x80, "no fragmented frames expected"
        frames.append((first & 0x0F, data[pos : pos + size]))
        pos += size
    return frames


async def test_stalled_client_is_dropped_without_delaying_the_others(
    aiohttp_client: AiohttpClient,
) -> None:
    settings = make_settings(
        top_n=BIG_FEATURES,
        ws_buffer_limit=1024,
        # how long the stalled client is held while behind: room for many votes before the drop
        # even on a busy host (phase 1 needs 5)
        slow_client_timeout=2.0,
        push_interval=0.005,
        ws_close_timeout=0.5,
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    admin = bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])
    fids = [
        (await create_feature(client, admin, f"Big {i}", f"{i:03d}" + "d" * 1997))["id"]
        for i in range(BIG_FEATURES)
    ]
    voter = await new_voter(client)
    first = await stats(client)
    assert len(json.dumps(first)) > 40_000  # every push is a ~40 KB frame

    host, port = client.host, client.port
    assert port is not None
    stalled = await raw_handshake(host, port)
    async with ws_session() as session:
        sockets = [await session.ws_connect(client.make_url("/ws")) for _ in range(HEALTHY)]
        healthy = [Recorder(ws) for ws in sockets]
        try:
            for recorder in healthy:
                recorder.start()
            await wait_all_reach(healthy, first["seq"], time.monotonic() + 5)
            await wait_for_metric(client, "fv_ws_clients", HEALTHY + 1, 5)

            value = 1

            async def dropped() -> float:
                return metric(await metrics_text(client), "fv_ws_dropped_slow_total")

            async def vote_reaches_the_healthy() -> bool:
                """One vote; True if its push reached every healthy client while the stalled
                one was still held (not yet dropped): they did not wait for it."""
                nonlocal value
                await vote(client, voter, fids[0], value)
                value = -value
                seq = await current_seq(client)
                await wait_all_reach(healthy, seq, time.monotonic() + HANG_GUARD)
                return await dropped() == 0

            # Phase 1: votes keep coming while the stalled client's buffer fills and it stays
            # behind (slow_client_timeout); each push reaches every healthy client before the
            # stalled one is let go. A broadcaster that waited on the stalled socket would
            # deliver only after the drop.
            prompt_before_drop = 0
            deadline = time.monotonic() + 20
            while await dropped() == 0:
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                prompt_before_drop += await vote_reaches_the_healthy()
            assert prompt_before_drop >= 5, prompt_before_drop

            # Phase 2: the server let go of it; its socket ends after what was already sent.
            # Whatever reached it is a clean prefix: whole TEXT stats frames, seq going up.
            received = await drain_until_eof(stalled, 10)
            frames = complete_frames(received)
            stalled_seqs = [json.loads(p)["seq"] for op, p in frames if op == WSMsgType.TEXT]
            assert stalled_seqs and stalled_seqs[0] == first["seq"], stalled_seqs[:3]
            assert_non_decreasing(stalled_seqs)
            assert all(op in (WSMsgType.TEXT, WSMsgType.CLOSE) for op, _ in frames)
            assert len(stalled_seqs) < prompt_before_drop, (len(stalled_seqs), prompt_before_drop)
            await wait_for_metric(client, "fv_ws_clients", HEALTHY, 5)

            # Phase 3: the healthy clients are still connected and still served.
            for _ in range(10):
                await vote_reaches_the_healthy()
            assert all(not r.ws.closed for r in healthy)
            assert metric(await metrics_text(client), "fv_ws_dropped_slow_total") == 1
            for recorder in healthy:
                assert not recorder.bad, recorder.bad[:5]
                assert_non_decreasing(recorder.seqs)
        finally:
            stalled.close()
            await asyncio.gather(*(r.stop() for r in healthy))


class RawWs:
    """The client side of a hand-made WebSocket on a raw socket: masked sends, frame reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_sendall(self.sock, header + mask + masked), 5)

    async def read_frame(self, seconds: float) -> tuple[int, bytes] | None:
        """The next whole frame, or None on EOF/reset; TimeoutError if none in time."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + seconds
        while True:
            frames = complete_frames(bytes(self.buffer))
            if frames:
                opcode, payload = frames[0]
                del self.buffer[: frame_length(bytes(self.buffer))]
                return opcode, payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), left)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self.buffer += chunk


def frame_length(data: bytes) -> int:
    """Bytes taken by the first (complete) frame in `data`."""
    size, header = data[1] & 0x7F, 2
    if size == 126:
        size, header = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        size, header = struct.unpack("!Q", data[2:10])[0], 10
    return header + size


async def test_no_data_frames_after_the_close_frame(
    client: Client, admin: Auth, voter: Auth
) -> None:
    """RFC 6455 5.5.1: after sending Close the server sends no more data frames.

    The peer here does not answer the Close at once (as a busy browser might not), and a vote
    lands meanwhile: no stats push may follow the Close frame.
    """
    fid = (await create_feature(client, admin))["id"]
    assert client.port is not None
    raw = RawWs(await raw_handshake(client.host, client.port, rcvbuf=1 << 16))
    try:
        snapshot = await raw.read_frame(5)
        assert snapshot is not None and snapshot[0] == WSMsgType.TEXT
        await raw.send(WSMsgType.TEXT, b"x" * 5000)  # above ws_max_msg_size (4 KiB)
        frame = await raw.read_frame(5)
        while frame is not None and frame[0] == WSMsgType.TEXT:  # pushes sent before the close
            frame = await raw.read_frame(5)
        assert frame is not None and frame[0] == WSMsgType.CLOSE, frame
        assert struct.unpack("!H", frame[1][:2])[0] == 1009
        async with client.ws_connect("/ws") as healthy:
            await receive_json(healthy)
            await vote(client, voter, fid, 1)
            # the vote's push has gone out to every socket once a healthy one has it
            await receive_until(healthy, stats_at_least(await current_seq(client)))
        late: list[tuple[int, bytes]] = []
        with contextlib.suppress(TimeoutError):
            while (frame := await raw.read_frame(0.1)) is not None:
                late.append(frame)
        assert late == [], f"frames after Close: {[(op, p[:60]) for op, p in late]}"
        await raw.send(WSMsgType.CLOSE, struct.pack("!H", 1009))  # now answer the Close
        assert await raw.read_frame(5) is None  # and the server ends the connection
    finally:
        raw.sock.close()


async def test_heartbeat_closes_a_peer_that_never_answers_pings_and_keeps_the_one_that_does(
    aiohttp_client: AiohttpClient,
) -> None:
    # Six sweeps fit in the idle timeout: "at least two pings before the close" holds even when
    # a busy host delays a sweep by most of a second (with 0.7 s, one stall left a single ping).
    settings = make_settings(ws_heartbeat=0.2, ws_idle_timeout=1.2)
    client = await aiohttp_client(create_app(settings))
    assert client.port is not None
    # Before the handshake: the server's idle clock for this peer starts later, so the silence
    # measured from here is never shorter than the one the server acted on.
    started = time.monotonic()
    raw = RawWs(await raw_handshake(client.host, client.port, rcvbuf=1 << 16))
    try:
        # aiohttp's client answers pings while someone reads: keep a reader on this one.
        async with client.ws_connect("/ws") as answering:
            received: list[Json] = []

            async def read() -> None:
                async for msg in answering:
                    if msg.type is WSMsgType.TEXT:
                        received.append(json.loads(msg.data))

            reader = asyncio.create_task(read())
            frames: list[tuple[int, bytes]] = []
            deadline = time.monotonic() + 5
            while (frame := await raw.read_frame(deadline - time.monotonic())) is not None:
                frames.append(frame)
                if frame[0] == WSMsgType.CLOSE:
                    break
            silent_for = time.monotonic() - started
            opcodes = [op for op, _ in frames]
            assert opcodes.count(WSMsgType.PING) >= 2, opcodes  # a sweep every 0.2 s
            assert opcodes[-1] == WSMsgType.CLOSE, opcodes
            close = frames[-1][1]
            assert struct.unpack("!H", close[:2])[0] == 1001 and close[2:] == b"idle timeout"
            assert silent_for >= settings.ws_idle_timeout, silent_for
            # the clock is the condition: the answering peer outlives ws_idle_timeout
            await asyncio.sleep(settings.ws_idle_timeout + 0.3)
            assert not answering.closed
            await answering.send_str('{"type":"ping"}')
            deadline = time.monotonic() + 5
            while {"type": "pong"} not in received:
                assert time.monotonic() < deadline, received
                await asyncio.sleep(0.01)
            assert metric(await metrics_text(client), "fv_ws_closed_idle_total") == 1
            await answering.close()
            await asyncio.wait_for(reader, 5)
        await wait_for_metric(client, "fv_ws_clients", 0, 5)
    finally:
        raw.sock.close()


async def test_ws_send_buffer_fixes_the_kernel_send_buffer(
    aiohttp_client: AiohttpClient,
) -> None:
    app = create_app(make_settings(ws_send_buffer=32768))
    client = await aiohttp_client(app)
    async with client.ws_connect("/ws") as ws:
        assert (await receive_json(ws))["type"] == "stats"
        (registered,) = app[BROADCASTER].sockets()  # the server's side of this connection
        sock = registered.transport.get_extra_info("socket")
        # Linux doubles the value for its bookkeeping; autotuning would start far lower (16 KiB)
        # and grow to megabytes under a client that does not read.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) in (32768, 65536)


async def test_a_client_ping_gets_a_pong_with_its_payload(client: Client) -> None:
    async with client.ws_connect("/ws", autoping=False) as ws:
        assert (await receive_json(ws))["type"] == "stats"
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.PONG and msg.data == b"are you there", msg


async def test_without_heartbeat_no_pings_are_sent(aiohttp_client: AiohttpClient) -> None:
    settings = make_settings(ws_heartbeat=0, ws_idle_timeout=0)
    client = await aiohttp_client(create_app(settings))
    async with client.ws_connect("/ws", autoping=False) as ws:
        assert (await receive_json(ws))["type"] == "stats"
        with pytest.raises(TimeoutError):
            msg = await ws.receive(timeout=0.5)
            pytest.fail(f"unexpected {msg.type}: {msg.data!r}")
        assert not ws.closed


# --- 3. Origin ----------------------------------------------------------------------------------


def upgrade_headers(origin: str | None = None) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def assert_problem(resp: aiohttp.ClientResponse, status: int) -> Json:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM, (resp.content_type, text)
    body: Json = json.loads(text)
    assert body["status"] == status
    assert body["title"]
    return body


async def assert_ws_opens(client: Client, origin: str | None) -> None:
    async with client.ws_connect("/ws", origin=origin) as ws:
        assert (await receive_json(ws))["type"] == "stats"


async def test_origin_default_is_the_servers_own(client: Client) -> None:
    own = f"http://{client.host}:{client.port}"
    for bad in ("http://evil.example", f"http://{client.host}:{client.port}.evil.example", "null"):
        resp = await client.get("/ws", headers=upgrade_headers(bad))
        await assert_problem(resp, 403)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", origin="http://evil.example")
    assert refused.value.status == 403
    await assert_ws_opens(client, own)
    await assert_ws_opens(client, None)  # not a browser: no Origin


async def test_origin_configured_list(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(make_settings(allowed_origins=("http://a.example",))))
    await assert_ws_opens(client, "http://a.example")
    await assert_ws_opens(client, None)
    for bad in ("http://evil.example", "http://b.example", f"http://{client.host}:{client.port}"):
        resp = await client.get("/ws", headers=upgrade_headers(bad))
        await assert_problem(resp, 403)


# --- 4-7. one connection ------------------------------------------------------------------------


async def test_oversized_frame_closes_with_1009(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        await ws.send_str("x" * (1 << 20))
        msg = await wait_closed(ws, 5)
        assert msg.type is WSMsgType.CLOSE, (msg.type, msg.data, ws.exception())
        assert msg.data == 1009  # WSCloseCode.MESSAGE_TOO_BIG
        assert ws.close_code == 1009


async def test_ping_gets_pong(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        assert (await receive_json(ws))["type"] == "stats"
        for _ in range(3):
            await ws.send_str('{"type":"ping"}')
            assert await receive_until(ws, lambda b: b.get("type") != "stats") == {"type": "pong"}


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("not json {", id="garbage"),
        pytest.param(b"\x00\x01binary", id="binary"),
        pytest.param('{"type":"subscribe"}', id="unknown-type"),
        pytest.param('{"type":"ping","x":1}', id="ping-with-extra-field"),
        pytest.param("[]", id="json-array"),
        pytest.param('"ping"', id="json-string"),
        pytest.param("", id="empty"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_stays(
    client: Client, admin: Auth, voter: Auth, frame: str | bytes
) -> None:
    fid = (await create_feature(client, admin))["id"]
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        for _ in range(2):
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            error = await receive_until(ws, lambda b: b.get("type") != "stats")
            assert error["type"] == "error", error
            assert isinstance(error.get("detail"), str) and error["detail"]
        # Still open: a ping is answered and a vote still arrives as a push.
        await ws.send_str('{"type":"ping"}')
        assert await receive_until(ws, lambda b: b.get("type") != "stats") == {"type": "pong"}
        await vote(client, voter, fid, 1)
        seq = await current_seq(client)
        pushed = await receive_until(ws, stats_at_least(seq))
        assert pushed["seq"] == seq
        assert pushed["stats"]["up"] == 1
        assert not ws.closed


async def test_reconnect_gets_a_fresh_snapshot(client: Client, admin: Auth, voter: Auth) -> None:
    fid = (await create_feature(client, admin))["id"]
    async with client.ws_connect("/ws") as ws:  # inside the creation's push interval or not
        before = await receive_json(ws)
        assert before["seq"] == await current_seq(client)
    await vote(client, voter, fid, 1)  # while disconnected
    await vote(client, voter, fid, -1)
    async with client.ws_connect("/ws") as ws:
        fresh = await receive_json(ws)
        now = await stats(client)
        assert fresh["type"] == "stats"
        assert now["seq"] == before["seq"] + 2
        assert fresh["seq"] == now["seq"], "the reconnect started from a stale snapshot"
        assert without_generated_at(fresh["stats"]) == without_generated_at(now)
        assert fresh["stats"]["down"] == 1 and fresh["stats"]["up"] == 0


async def pushes_total(client: Client) -> float:
    return metric(await metrics_text(client), "fv_ws_pushes_total")


async def test_snapshot_is_current_even_inside_the_push_interval(
    aiohttp_client: AiohttpClient,
) -> None:
    """A client that connects while a change waits out push_interval must not start stale.

    No sleeps: a vote right after a push waits out the interval, and whether it still waited
    when the client connected is read from fv_ws_pushes_total: no push counted between just
    before the vote and after the client's first message means none carried the vote (a push
    is counted after it read the stats, so one counted before the vote read older ones). A
    round where a push was counted in between is not the case under test and is repeated."""
    app = create_app(make_settings(push_interval=1.0))
    client = await aiohttp_client(app)
    admin = bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])
    fid = (await create_feature(client, admin))["id"]
    voter = await new_voter(client)
    value, exercised = 1, 0
    # A board's broadcaster runs while the board has sockets: this one keeps it running.
    watcher = await client.ws_connect("/ws")
    await receive_json(watcher)
    for _ in range(20):
        pushes_before = await pushes_total(client)
        await vote(client, voter, fid, value)
        value = -value
        async with client.ws_connect("/ws") as ws:
            first = await receive_json(ws, seconds=5)
            now = await stats(client)
        if await pushes_total(client) != pushes_before:
            continue  # a push went out meanwhile: the vote may not have been waiting
        exercised += 1
        assert first["seq"] == now["seq"], "the first message was not the current stats"
        assert without_generated_at(first["stats"]) == without_generated_at(now)
        if exercised == 2:
            break
    await watcher.close()
    assert exercised == 2, "no connect landed while a change waited out push_interval"


async def wait_until_quiet(
    client: Client, watcher: ClientWebSocketResponse, interval: float
) -> None:
    """Until the broadcaster may push at once again: the current seq reached `watcher` (so its
    push started no later than now), and then `interval` went by. The wait is the clock."""
    await receive_until(watcher, stats_at_least(await current_seq(client)), seconds=10)
    await asyncio.sleep(interval)


async def test_pushes_are_leading_edge_and_at_most_one_per_interval(
    aiohttp_client: AiohttpClient,
) -> None:
    """After a quiet spell a change is pushed at once (well inside push_interval); a burst
    within the interval costs one more push, which carries its last change."""
    interval = 1.0
    app = create_app(make_settings(push_interval=interval))
    client = await aiohttp_client(app)
    admin = bearer(app[TOKENS].issue(Role.ADMIN, "admin")[0])
    voters = [await new_voter(client) for _ in range(10)]
    loop = asyncio.get_running_loop()
    async with client.ws_connect("/ws") as ws:  # connected before the creation: sees its push
        await receive_json(ws)
        fid = (await create_feature(client, admin))["id"]
        await wait_until_quiet(client, ws, interval)
        before = await pushes_total(client)
        started = loop.time()
        await vote(client, voters[0], fid, 1)
        first = await receive_until(ws, stats_at_least(await current_seq(client)), seconds=5)
        # A push that waited for the interval would come push_interval after the vote at the
        # earliest; anything sooner is the leading edge.
        assert loop.time() - started < interval, "not pushed at once"
        assert first["stats"]["up"] == 1
        await asyncio.gather(*(vote(client, voter, fid, 1) for voter in voters[1:]))
        # the burst is inside the interval that the leading push began (at or after `started`)
        assert loop.time() - started < interval, "the burst took longer than push_interval"
        last = await receive_until(ws, stats_at_least(await current_seq(client)), seconds=5)
        assert last["stats"]["up"] == 10
        assert await pushes_total(client) - before == 2  # the leading one and one for the burst


# --- 8. shutdown --------------------------------------------------------------------------------

SHUTDOWN_CLIENTS: Final = 20


async def wait_healthy(
    session: ClientSession, base: str, proc: asyncio.subprocess.Process, log: Path
) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.returncode is not None:
            output = await asyncio.to_thread(log.read_text, errors="replace")
            if port_taken(output):
                raise PortTaken(output)
            raise AssertionError(f"the service exited with {proc.returncode}: {output}")
        assert time.monotonic() < deadline, "the service did not start"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)


async def start_service(
    session: ClientSession, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str, Path]:
    """`python -m service` on a free port (another one if someone took it first), healthy."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        run_env = {**env, "PORT": str(port)}
        log = log_path("ws-shutdown", run_env)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service", cwd=PROJECT_ROOT, env=run_env,
                stdout=out, stderr=out,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(session, base, proc, log)
        except PortTaken:
            await proc.wait()
            if attempt == START_ATTEMPTS:
                raise
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        else:
            return proc, base, log
    raise AssertionError("unreachable")


async def test_shutdown_closes_every_socket_with_1001() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
    env["FV_STORE"] = "memory"
    env |= {
        "FV_SECRET": "shutdown-test-secret-0123456789abcdef",
        "FV_HOST": "127.0.0.1",
        "FV_DRAIN_DELAY": "0.1",
    }
    async with ws_session() as session:
        proc, base, log = await start_service(session, env)
        try:
            sockets = await asyncio.gather(
                *(session.ws_connect(f"{base}/ws") for _ in range(SHUTDOWN_CLIENTS))
            )
            for ws in sockets:
                assert (await receive_json(ws))["type"] == "stats"
            proc.send_signal(signal.SIGTERM)
            closes = await asyncio.gather(*(wait_closed(ws, 10) for ws in sockets))
            for ws, msg in zip(sockets, closes, strict=True):
                assert msg.type is WSMsgType.CLOSE, (msg.type, msg.data, log.read_text())
                assert msg.data == 1001  # WSCloseCode.GOING_AWAY
                assert ws.close_code == 1001
            code = await asyncio.wait_for(proc.wait(), 15)
            assert code == 0, log.read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# --- 9. not an upgrade --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="plain-get"),
        pytest.param({"Upgrade": "websocket"}, id="upgrade-without-connection"),
        pytest.param({"Connection": "Upgrade", "Upgrade": "h2c"}, id="other-protocol"),
    ],
)
async def test_plain_get_is_a_4xx_problem(client: Client, headers: dict[str, str]) -> None:
    resp = await client.get("/ws", headers=headers)
    assert 400 <= resp.status < 500, await resp.text()
    await assert_problem(resp, resp.status)


async def test_bad_handshake_version_is_a_4xx(client: Client) -> None:
    headers = upgrade_headers() | {"Sec-WebSocket-Version": "99"}
    resp = await client.get("/ws", headers=headers)
    assert 400 <= resp.status < 500, await resp.text()


# --- 10. metrics --------------------------------------------------------------------------------


async def test_ws_metrics(client: Client, admin: Auth, voter: Auth) -> None:
    fid = (await create_feature(client, admin))["id"]
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        for value in (1, -1, 1):
            await vote(client, voter, fid, value)
            await receive_until(ws, stats_at_least(await current_seq(client)))
        text = await metrics_text(client)
        assert metric(text, "fv_ws_clients") == 1
        assert metric(text, "fv_ws_pushes_total") > 0
        assert metric(text, "fv_ws_frames_total") > 0
        assert metric(text, "fv_ws_push_lag_seconds_count") > 0
        assert metric(text, "fv_ws_dropped_slow_total") == 0
    await wait_for_metric(client, "fv_ws_clients", 0, 5)


# --- plumbing checks ----------------------------------------------------------------------------


def test_helpers_parse_metrics() -> None:
    text = "# HELP x\nfv_ws_clients 3.0\nfv_ws_clients_other 9\n"
    assert metric(text, "fv_ws_clients") == 3.0
    with pytest.raises(AssertionError):
        metric(text, "fv_missing")
