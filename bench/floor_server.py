"""The fan-out FLOOR for bench/fanout.py: the least an aiohttp server can do per push.

    python bench/floor_server.py --port 9000 --size 2423

`GET /ws` accepts a WebSocket (compress off) and only reads it. `POST /vote` bumps a counter and
writes ONE pre-built unmasked TEXT frame of exactly `--size` payload bytes,
`{"type":"stats","seq":N,"pad":"xxx…"}`, to every open socket with `transport.write`, then
answers `{"seq": N}`. No store, no tokens, no metrics, no slow-client bookkeeping: whatever our
service costs above this is its own overhead. Uses uvloop when installed, as the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import struct
from collections.abc import Callable

from aiohttp import web

TRANSPORTS = web.AppKey("transports", set[asyncio.Transport])
STATE = web.AppKey("state", dict[str, int])


def text_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def make_payload(seq: int, size: int) -> bytes:
    """A stats-shaped message of exactly `size` bytes (or the shortest possible)."""
    head = b'{"type":"stats","seq":%d,"pad":"' % seq
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=4096)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    transports = request.app[TRANSPORTS]
    transports.add(transport)
    try:
        async for _ in ws:
            pass
    finally:
        transports.discard(transport)
    return ws


async def vote(request: web.Request) -> web.Response:
    await request.read()
    state = request.app[STATE]
    state["seq"] += 1
    frame = text_frame(make_payload(state["seq"], state["size"]))
    sent = 0
    for transport in request.app[TRANSPORTS]:
        if not transport.is_closing():
            transport.write(frame)
            sent += 1
    state["frames"] += sent
    return web.json_response({"seq": state["seq"], "sent": sent})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"seq": state["seq"], "frames": state["frames"]})


def make_app(size: int) -> web.Application:
    app = web.Application()
    app[TRANSPORTS] = set()
    app[STATE] = {"seq": 0, "size": size, "frames": 0}
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/vote", vote)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(host: str, port: int, size: int) -> None:
    runner = web.AppRunner(make_app(size), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="payload bytes per frame")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.host, args.port, args.size))


if __name__ == "__main__":
    main()
