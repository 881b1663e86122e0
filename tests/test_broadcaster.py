"""The broadcaster's raw writes and admin roles, with real clients over loopback sockets:
nothing is written after our Close frame, and an admin socket's role ends with its token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import time
from typing import Any

from aiohttp import WSMsgType

from service.app import create_app
from service.auth import Role, Tokens
from service.config import Secret
from service.keys import TOKENS

from .conftest import TEST_SECRET, AiohttpClient, Client, bearer, create_feature, make_settings
from .test_ws import (
    RawWs,
    new_voter,
    raw_handshake,
    receive_json,
    receive_until,
    vote,
    ws_session,
)

Json = dict[str, Any]


async def test_no_raw_frame_after_our_close_frame(aiohttp_client: AiohttpClient) -> None:
    """Pushes and heartbeat pings are raw writes: none may follow the Close we sent (RFC 6455
    5.5.1), while the peer takes its time to answer it and a healthy peer keeps getting both."""
    settings = make_settings(
        ws_heartbeat=0.05, ws_idle_timeout=0.0, ws_close_timeout=10.0, ws_auth_failures_max=1
    )
    client = await aiohttp_client(create_app(settings))
    tokens: Tokens = client.app[TOKENS]
    admin_auth = bearer(tokens.issue(Role.ADMIN, "admin")[0])
    fid = (await create_feature(client, admin_auth))["id"]
    voter = await new_voter(client)
    assert client.port is not None
    raw = RawWs(await raw_handshake(client.host, client.port, rcvbuf=1 << 16))
    async with ws_session() as session:
        healthy = await session.ws_connect(f"http://{client.host}:{client.port}/ws", autoping=False)
        try:
            snapshot = await raw.read_frame(5)
            assert snapshot is not None and snapshot[0] == WSMsgType.TEXT
            # A failed token with ws_auth_failures_max = 1: the handler closes with 1008 and
            # waits for the peer's answer while the socket is still registered for pushes.
            await raw.send(WSMsgType.TEXT, b'{"type":"auth","token":"forged"}')
            frame = await raw.read_frame(5)
            while frame is not None and frame[0] in (WSMsgType.TEXT, WSMsgType.PING):
                frame = await raw.read_frame(5)  # written before our Close
            assert frame is not None and frame[0] == WSMsgType.CLOSE, frame
            assert struct.unpack("!H", frame[1][:2])[0] == 1008
            # The peer does not answer yet. Make a push and let pings go out: the healthy
            # socket sees both, which is when the closing one would have had them too.
            seq_before = (await receive_json(healthy))["seq"]
            await vote(client, voter, fid, 1)
            pings, pushed = 0, False
            deadline = time.monotonic() + 10
            while pings < 3 or not pushed:
                assert time.monotonic() < deadline, (pings, pushed)
                msg = await healthy.receive(timeout=deadline - time.monotonic())
                if msg.type is WSMsgType.PING:
                    pings += 1
                elif msg.type is WSMsgType.TEXT:
                    body = json.loads(msg.data)
                    pushed = pushed or (body["type"] == "stats" and body["seq"] > seq_before)
            late: list[tuple[int, bytes]] = []
            with contextlib.suppress(TimeoutError):
                while (frame := await raw.read_frame(0.2)) is not None:
                    late.append(frame)
            assert late == [], f"raw frames after our Close: {[(op, p[:40]) for op, p in late]}"
            await raw.send(WSMsgType.CLOSE, struct.pack("!H", 1008))
            assert await raw.read_frame(5) is None  # the close handshake completes
        finally:
            raw.sock.close()
            await healthy.close()


def expiring_admin_token(ttl: int, lead: float = 1.5) -> tuple[str, int]:
    """An admin token (TEST_SECRET, lifetime `ttl`) minted in the past so that it expires in
    `lead` to `lead` + 1 s (the lifetime rule sees a normal token). Claims are whole seconds:
    exp is put on a whole second at least `lead` ahead, never truncated to less. Mint it right
    before it is used: the lead is all the slack a busy host gets."""
    minted_at = math.ceil(time.time() + lead) - ttl
    tokens = Tokens(
        Secret((TEST_SECRET,)), voter_ttl=3600, admin_ttl=ttl, cache_size=10,
        clock=lambda: minted_at,
    )
    token, claims = tokens.issue(Role.ADMIN, "admin")
    return token, claims.exp


async def hidden_board(client: Client) -> tuple[dict[str, str], Json]:
    """A board with votes and hidden results; the admin's auth and the public stats."""
    tokens: Tokens = client.app[TOKENS]
    admin = bearer(tokens.issue(Role.ADMIN, "admin")[0])
    ids = [(await create_feature(client, admin, title=f"F{i}"))["id"] for i in range(3)]
    voter = await new_voter(client)
    await vote(client, voter, ids[2], 1)
    resp = await client.patch("/board", json={"results_hidden": True}, headers=admin)
    assert resp.status == 200, await resp.text()
    public = await (await client.get("/features/stats")).json()
    return admin, public


async def wait_past(exp: float) -> None:
    """Wait until the wall clock has passed a token's exp (bounded by the test's own ttl)."""
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)  # the condition is the clock itself
    assert time.time() > exp


def counts(stats: Json) -> list[Any]:
    return [(f["id"], f.get("up"), f.get("down")) for f in stats["top"]]


async def test_admin_socket_goes_public_when_its_token_expires_at_the_next_push(
    aiohttp_client: AiohttpClient,
) -> None:
    ttl = 3
    client = await aiohttp_client(create_app(make_settings(admin_token_ttl=ttl)))
    _, public = await hidden_board(client)
    async with client.ws_connect("/ws") as ws:
        first = await receive_json(ws)
        assert counts(first["stats"]) == counts(public)
        token, exp = expiring_admin_token(ttl)
        await ws.send_json({"type": "auth", "token": token})
        assert await receive_json(ws) == {"type": "auth", "role": "admin"}
        admin_frame = await receive_json(ws)
        assert counts(admin_frame["stats"]) != counts(public)  # the hidden numbers
        await wait_past(exp)
        voter = await new_voter(client)
        await vote(client, voter, public["top"][0]["id"], -1)  # a push after the expiry
        assert await receive_until(ws, lambda b: b["type"] == "auth") == {
            "type": "auth", "role": "public"
        }
        after = await receive_until(ws, lambda b: b["type"] == "stats")
        now_public = await (await client.get("/features/stats")).json()
        assert counts(after["stats"]) == counts(now_public)
        assert all(f.get("up") is None for f in after["stats"]["top"])
        # A fresh token (minted now: the board's own admin token has a 3 s life too) makes it
        # an admin's again.
        fresh = client.app[TOKENS].issue(Role.ADMIN, "admin")[0]
        await ws.send_json({"type": "auth", "token": fresh})
        assert await receive_until(ws, lambda b: b["type"] == "auth") == {
            "type": "auth", "role": "admin"
        }


async def test_admin_socket_goes_public_at_a_sweep_without_any_change(
    aiohttp_client: AiohttpClient,
) -> None:
    ttl = 3
    settings = make_settings(admin_token_ttl=ttl, ws_heartbeat=0.1, ws_idle_timeout=0.0)
    client = await aiohttp_client(create_app(settings))
    _, public = await hidden_board(client)
    async with client.ws_connect("/ws") as ws:
        await receive_json(ws)
        token, exp = expiring_admin_token(ttl)
        await ws.send_json({"type": "auth", "token": token})
        assert await receive_json(ws) == {"type": "auth", "role": "admin"}
        await receive_json(ws)
        await wait_past(exp)
        assert await receive_json(ws, seconds=5) == {"type": "auth", "role": "public"}
        after = await receive_json(ws, seconds=5)
        assert after["type"] == "stats"
        assert counts(after["stats"]) == counts(public)
