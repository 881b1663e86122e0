"""Pre-built WebSocket frames and the one wrapper that writes them to a socket's transport.

The broadcaster encodes a push once and writes the same bytes to every socket, past aiohttp's
per-message writer (ADR-005). Every such raw write goes through `RawSocket`, which states when
it is allowed: only while the socket is open, that is never once `close()` has begun (aiohttp
sends our Close frame from there on, and RFC 6455 5.5.1 allows nothing after it) and never on a
closing transport. Everything else (pongs, error answers, the Close itself) goes through
aiohttp's own writer, which writes whole frames, so raw frames never split one of its frames."""

from __future__ import annotations

import asyncio
import struct
from typing import Final

from aiohttp import WSCloseCode, web

from .schemas import AuthOk, encoder

_FIN_TEXT: Final = 0x81
PING_FRAME: Final = b"\x89\x00"  # FIN + PING, unmasked, no payload


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked server-to-client TEXT frame; identical for every client."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _FIN_TEXT, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return header + payload


AUTH_ADMIN_FRAME: Final = text_frame(encoder.encode(AuthOk(role="admin")))
AUTH_PUBLIC_FRAME: Final = text_frame(encoder.encode(AuthOk(role="public")))


class LiveSocket(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, telling its RawSocket the moment a close begins.

    Every Close aiohttp sends goes through the public `close()` — ours, the answer to a peer's
    Close (autoclose), the 1009 for an over-size message — so overriding it marks the
    RawSocket closed before the Close frame is written, in the same step. The broadcaster then
    reads one flag on the object it touches anyway instead of this (large, cold) object's
    `closed` per socket per push: ~9 % of a frame's CPU at 5,000 sockets (bench/results/notes.md).
    `closed` stays the truth for everyone else; tests/test_ws.py checks both agree."""

    raw: RawSocket | None = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        raw = self.raw
        if raw is not None:
            raw.closing = True
        return await super().close(code=code, message=message, drain=drain)


class RawSocket:
    """Writes complete pre-built frames to one WebSocket, only while it is open."""

    __slots__ = ("closing", "transport", "ws")

    def __init__(self, ws: LiveSocket, transport: asyncio.Transport) -> None:
        self.ws = ws
        self.transport = transport
        self.closing = ws.closed  # and from now on kept by the LiveSocket's close()
        ws.raw = self

    @property
    def open(self) -> bool:
        """A raw write is allowed: our Close is not under way and the transport is not closing."""
        return not self.closing and not self.transport.is_closing()

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def write(self, frame: bytes) -> bool:
        """Write one whole frame if the socket is open; False when it was not written."""
        if self.closing or self.transport.is_closing():
            return False
        self.transport.write(frame)
        return True

    def write_within(self, frame: bytes, limit: int) -> bool:
        """Write one whole frame if the socket is open and has at most `limit` bytes unsent."""
        transport = self.transport
        if self.closing or transport.is_closing() or transport.get_write_buffer_size() > limit:
            return False
        transport.write(frame)
        return True

    def abort(self) -> None:
        """Cut the connection (a peer that did not answer our Close in time)."""
        self.transport.abort()
