"""PEER 1 for bench/fanout.py: the `websockets` library's own server and `broadcast()`.

    python bench/peer_websockets.py --port 9001 --size 2423

The new asyncio API (`websockets.asyncio.server.serve`, compression off, no keepalive pings,
as the floor has none) on uvloop when installed. `GET /ws` opens a WebSocket that is kept in a
set until it closes; nothing it sends is used. `POST /vote` (or `GET /vote`) bumps a counter and
hands ONE pre-encoded TEXT message of exactly `--size` bytes, `{"type":"stats","seq":N,"pad":
"xxx…"}` (the floor's payload), to `websockets.broadcast()` for every open socket, then answers
`{"seq": N, "sent": S}`; `GET /healthz` answers `{"seq": N, "frames": F}`.

websockets speaks plain HTTP only through `process_request`, one request per TCP connection
(it answers `Connection: close`) and with no request body (`Content-Length` must be 0): the voter
therefore POSTs an empty body to every server but ours and opens a new connection per vote here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


def make_payload(seq: int, size: int) -> bytes:
    """A stats-shaped message of exactly `size` bytes (the floor's `make_payload`)."""
    head = b'{"type":"stats","seq":%d,"pad":"' % seq
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


class Peer:
    def __init__(self, size: int) -> None:
        self.size = size
        self.seq = 0
        self.frames = 0
        self.connections: set[ServerConnection] = set()

    async def handler(self, connection: ServerConnection) -> None:
        self.connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            self.connections.discard(connection)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws" and request.method == "GET":
            return None  # go on with the opening handshake
        if path == "/vote" and request.method in ("POST", "GET"):
            self.seq += 1
            sent = len(self.connections)
            broadcast(self.connections, make_payload(self.seq, self.size), text=True)
            self.frames += sent
            return json_response(connection, {"seq": self.seq, "sent": sent})
        if path == "/healthz" and request.method == "GET":
            return json_response(connection, {"seq": self.seq, "frames": self.frames})
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")


def json_response(connection: ServerConnection, body: dict[str, Any]) -> Response:
    response = connection.respond(HTTPStatus.OK, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


async def run(host: str, port: int, size: int) -> None:
    peer = Peer(size)
    async with serve(
        peer.handler,
        host,
        port,
        process_request=peer.process_request,
        compression=None,
        ping_interval=None,
        max_size=4096,
        backlog=128,  # aiohttp's default, as the floor has
    ):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"peer1 (websockets) listening on {host}:{port}", flush=True)
        await stop.wait()


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
        runner.run(run(args.host, args.port, args.size))


if __name__ == "__main__":
    main()
