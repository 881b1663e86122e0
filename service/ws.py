"""GET /ws: check Origin, upgrade, hand the socket to the broadcaster, answer pings and
an admin's {"type": "auth"} message (which switches the socket to the admin's frames).

The broadcaster sends the keep-alive PINGs (one sweep for every socket); this handler answers
the client's PINGs and tells the broadcaster whenever the peer sent anything.

Failed token checks are limited per socket (`ws_auth_failures_max`, then close 1008) and per
address (the `auth_failure` rate rule, looked at before a signature check of a new token). A
peer that leaves while we write to it is the peer's doing: one debug line, no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from typing import Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from . import keys
from .api import BOARD_PREFIX, board_of, client_of, core_of
from .auth import TokenInvalid
from .broadcaster import Broadcasts, Client
from .core import Core
from .errors import ApiError
from .frames import LiveSocket
from .ratelimit import LimiterUnavailable, RateLimited
from .schemas import Auth, Pong, WsError, client_message_decoder, encoder
from .store import StoreUnavailable

PONG: Final = encoder.encode(Pong())
BINARY_REFUSED: Final = encoder.encode(WsError(detail="send JSON text frames"))
log = logging.getLogger(__name__)

routes = web.RouteTableDef()


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser) is fine; otherwise the configured list or our own host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return "*" in allowed or origin in (a.rstrip("/").lower() for a in allowed)
    return urlsplit(origin).netloc == request.host.lower()


def cap_send_buffer(transport: asyncio.Transport, size: int) -> None:
    """A fixed kernel send buffer: a never-reading client is noticed after ~size (+ our own
    ws_buffer_limit) bytes, not after the megabytes the kernel's autotuning would absorb."""
    sock = transport.get_extra_info("socket")
    if size and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def reply_to(data: str) -> bytes | Auth:
    """The answer to one client text message, or the Auth message to act on."""
    try:
        message = client_message_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return encoder.encode(WsError(detail=f"unsupported message: {exc}"))
    return message if isinstance(message, Auth) else PONG


def _error(detail: str) -> bytes:
    return encoder.encode(WsError(detail=detail))


async def authenticate(
    core: Core, address: str, broadcaster: Broadcasts, client: Client, auth: Auth
) -> tuple[bytes | None, bool]:
    """An admin token of this board (or a site admin's) turns the socket into an admin one
    until the token expires (the broadcaster acks); else an error. The flag says whether this
    counts as a failed attempt."""
    try:
        claims = await core.verify(auth.token, address)
        if not claims.admin_of(client.board):
            return _error("auth: only an admin token of this board changes what is pushed"), False
        await broadcaster.promote(client, until=claims.exp)
    except RateLimited as exc:  # the address is over its auth_failure budget: not checked
        return _error(
            f"auth: too many failed tokens from this address; "
            f"try again in {math.ceil(exc.retry_after)} s"
        ), True
    except TokenInvalid as exc:
        return _error(f"auth: {exc}"), True
    except (StoreUnavailable, LimiterUnavailable):
        return _error("auth: the store is unavailable; try again"), False
    return None, False


@routes.get("/ws")
@routes.get(BOARD_PREFIX + "/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[keys.SETTINGS]
    if not origin_allowed(request, settings.allowed_origins):
        raise ApiError(403, "this Origin may not open /ws (see allowed_origins)")
    board = await board_of(request)
    core = core_of(request)
    address = client_of(request)
    await core.admit_socket(address)
    ws = LiveSocket(
        compress=False,
        # aiohttp refuses a message of max_msg_size bytes or more; ours may be exactly the setting.
        max_msg_size=settings.ws_max_msg_size + 1,
        autoping=False,  # PINGs are the broadcaster's sweep; PONGs come here as proof of life
        timeout=settings.ws_close_timeout,  # for the peer's answer to a Close we send
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "this endpoint speaks WebSocket", headers={"Upgrade": "websocket"})
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the peer left during the handshake
        return ws
    cap_send_buffer(transport, settings.ws_send_buffer)
    broadcaster = request.app[keys.BROADCASTER]
    try:
        client = await broadcaster.add(board, ws, transport)
    except StoreUnavailable:  # upgraded already: answer in WebSocket terms, not HTTP
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"store unavailable")
        return ws
    except ConnectionResetError:  # the instance started shutting down meanwhile
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        return ws
    failures = 0
    try:
        async for msg in ws:  # only this task reads the socket
            broadcaster.heard(client)
            if msg.type is WSMsgType.PONG:
                continue
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.TEXT:
                answer = reply_to(msg.data)
                failed = False
                if isinstance(answer, Auth):
                    reply, failed = await authenticate(core, address, broadcaster, client, answer)
                else:
                    reply = answer
                if reply is not None:
                    await ws.send_frame(reply, WSMsgType.TEXT)
                failures += failed
                if failures >= settings.ws_auth_failures_max:
                    await ws.close(
                        code=WSCloseCode.POLICY_VIOLATION, message=b"too many failed tokens"
                    )
                    break
            elif msg.type is WSMsgType.BINARY:
                await ws.send_frame(BINARY_REFUSED, WSMsgType.TEXT)
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
        # The peer left while a pong or an answer was being written: a client fault.
        log.debug("ws peer left while we wrote to it: %s", exc)
    finally:
        broadcaster.remove(client)
    return ws
