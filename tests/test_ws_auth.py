"""/ws token checks under abuse, and peers that leave mid-write: real clients, real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time

import pytest
from aiohttp import WSMsgType, web

from service.app import create_app, make_runner
from service.auth import Role
from service.keys import BROADCASTER, SETTINGS, TOKENS

from .conftest import AiohttpClient, make_settings
from .test_ws import RawWs, raw_handshake, receive_json, wait_closed
from .waiting import eventually

FORGED = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIn0.c2lnbmF0dXJl"


async def test_a_socket_is_closed_with_1008_after_ws_auth_failures_max_failed_tokens(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(make_settings(ws_auth_failures_max=3)))
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        for _ in range(2):
            await ws.send_json({"type": "auth", "token": FORGED})
            assert (await receive_json(ws))["type"] == "error"
        await ws.send_json({"type": "ping"})
        assert await receive_json(ws) == {"type": "pong"}  # two failures: still open
        await ws.send_json({"type": "auth", "token": FORGED})
        assert (await receive_json(ws))["type"] == "error"
        msg = await wait_closed(ws, 5)
        assert msg.type is WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == 1008


async def test_failed_tokens_are_limited_per_address_before_the_signature_check(
    aiohttp_client: AiohttpClient,
) -> None:
    settings = make_settings(
        auth_failure_rate=1.0, auth_failure_burst=2, ws_auth_failures_max=100
    )
    client = await aiohttp_client(create_app(settings))
    admin_token = client.app[TOKENS].issue(Role.ADMIN, "admin")[0]
    known_token = client.app[TOKENS].issue(Role.ADMIN, "presenter")[0]
    # Verified before the flood (here over REST): it will cost no signature check later.
    resp = await client.get("/me/votes", headers={"Authorization": f"Bearer {known_token}"})
    assert resp.status == 200
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        details = []
        for i in range(6):
            await ws.send_json({"type": "auth", "token": f"{FORGED}{i}"})
            details.append((await receive_json(ws))["detail"])
        assert all("not valid" in d for d in details[:2]), details
        assert all("too many failed tokens" in d for d in details[3:]), details
    async with client.ws_connect("/ws") as other:  # another socket, the same address
        await receive_json(other)
        await other.send_json({"type": "auth", "token": admin_token})
        assert "too many failed tokens" in (await receive_json(other))["detail"]
        # REST shares the address's budget: the new token is refused there too, unchecked.
        resp = await client.get("/me/votes", headers={"Authorization": f"Bearer {admin_token}"})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        # A token already verified costs no signature check: it still works, on either path.
        resp = await client.get("/me/votes", headers={"Authorization": f"Bearer {known_token}"})
        assert resp.status == 200
        await other.send_json({"type": "auth", "token": known_token})
        assert await receive_json(other) == {"type": "auth", "role": "admin"}


async def test_a_flood_of_forged_tokens_costs_few_signature_checks(
    aiohttp_client: AiohttpClient,
) -> None:
    """3,000 forged auth messages from one socket: closed after ws_auth_failures_max."""
    client = await aiohttp_client(create_app(make_settings()))
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        for i in range(3000):
            await ws.send_json({"type": "auth", "token": f"{FORGED}{i}"})
        errors = 0
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not WSMsgType.TEXT:
                break
            errors += 1
        assert msg.type is WSMsgType.CLOSE and msg.data == 1008, (msg.type, msg.data)
        assert errors == client.app[SETTINGS].ws_auth_failures_max


async def test_a_peer_that_leaves_while_pongs_drain_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pings from a peer that never reads fill the server's buffer (its pong writes wait for
    the drain); the peer then resets the connection: a client fault, not a server error."""
    caplog.set_level(logging.DEBUG, logger="service")
    settings = make_settings(ws_send_buffer=4096)
    app = create_app(settings)
    # The runner `serve` uses: aiohttp's test server cancels a handler whose peer left
    # (handler_cancellation), which would hide what production does.
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        await _flood_pings_then_reset(app, host, port)
        deadline = time.monotonic() + 5
        while app[BROADCASTER].clients:
            assert time.monotonic() < deadline, "the server never noticed the reset"
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("peer left" in r.getMessage() for r in caplog.records if r.name == "service.ws"), [
        (r.name, r.getMessage()[:200]) for r in caplog.records
    ]


def _server_stuck_writing(app: web.Application) -> bool:
    """For some socket the server holds more unsent bytes than its transport's high-water mark
    (writing paused: a pong waits for a drain) and has stopped reading (the handler takes no
    more messages, so aiohttp applied back-pressure)."""
    return any(
        c.transport.get_write_buffer_size() > c.transport.get_write_buffer_limits()[1]
        and not c.transport.is_reading()
        for c in app[BROADCASTER].sockets()
    )


async def _flood_pings_then_reset(app: web.Application, host: str, port: int) -> None:
    """Send pings without reading until the server stops taking them because its pong waits
    for a drain that never comes (seen on its transport, not guessed from a slow send), then
    reset the connection."""
    raw = RawWs(await raw_handshake(host, port, rcvbuf=4096))
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.get_running_loop()
    try:
        mask = os.urandom(4)
        payload = b"p" * 125
        ping = struct.pack("!BB", 0x89, 0x80 | 125) + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(payload)
        )
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "the server kept reading pings"
            batch = asyncio.ensure_future(loop.sock_sendall(raw.sock, ping * 50))

            def taken_or_stuck(batch: asyncio.Future[None] = batch) -> bool:
                return batch.done() or _server_stuck_writing(app)

            await eventually(taken_or_stuck, 20, what="the batch taken, or the server stuck")
            if not batch.done():  # the server stopped reading, and its pongs wait for a drain
                batch.cancel()
                break
            batch.result()
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        raw.sock.close()  # with SO_LINGER 0: a reset
