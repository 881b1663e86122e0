"""The trivial REST reference for bench/rest.py: any request gets a small JSON answer.

    python bench/rest_trivial.py --port 9000

One aiohttp application with one catch-all route (every method, every path) answering
`200 {"ok": true}` through `web.json_response`, without reading the request body. It is served
the way the service serves itself (service/__main__.py): `AppRunner` without aiohttp's access
log, one `TCPSite`, uvloop when installed, one process. No middleware, no store, no tokens, no
logging: whatever our endpoints cost above this is their own.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from aiohttp import web


async def trivial(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", trivial)
    await serve_app(app, host, port)


async def serve_app(app: web.Application, host: str, port: int) -> None:
    """Serve `app` as the service serves itself, until SIGTERM or SIGINT (rest_floor.py too)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
