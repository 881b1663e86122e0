"""The vote-shaped aiohttp floor for bench/rest.py: what aiohttp itself spends on one vote.

    python bench/rest_floor.py --port 9000 [--body-file ANSWER] [--header NAME:VALUE ...]

A vote as our service receives it (PUT or POST /features/{id}/vote, an Authorization header, a
JSON body) is answered the way the service answers it, minus all of the service's own work: the
handler reads the body (`await request.read()`) and returns a fixed `200` of the same size with
the same headers. No middleware, no token check, no JSON parsing, no store, no metrics, no
logging, no on_response_prepare hook.

What makes it vote-shaped, so that aiohttp's part costs what it costs inside our service:
- the router: at start, the route templates of `service.app.create_app(...)`'s router are
  copied (the same resources in the same order with the same methods, HEAD included, and the
  two static prefixes), so resolving the vote's path walks a table like ours. Only templates
  are copied (`resource.canonical`: a converter's regex such as `{id:[0-9]+}` becomes `{id}`)
  and our app is built but never started: none of our handlers or middleware ever runs. Every
  route but the vote answers `200 {}` (so GET /healthz works);
- the answer: `--body-file` (bench/rest.py passes a vote answer it captured from our service)
  or, without it, VOTE_BODY, a vote answer as ours writes it (56 bytes);
- the headers: one `--header NAME:VALUE` each (bench/rest.py passes the ones of that captured
  answer) or, without any, DEFAULT_HEADERS: those our service puts on a vote answer.

Served like bench/rest_trivial.py (and service/__main__.py): `AppRunner` without aiohttp's
access log, one `TCPSite`, uvloop when installed, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # the project root: `service`, for its route table

from rest_trivial import _loop_factory, serve_app  # noqa: E402 (bench/ is this script's directory)

VOTE_PATH = "/features/{id}/vote"
VOTE_METHODS = frozenset({"PUT", "POST"})
# A vote answer as our service writes it (service/schemas.py VoteOut), mid-run: 56 bytes.
VOTE_BODY = b'{"feature_id":1,"value":-1,"up":100,"down":99,"score":1}'
DEFAULT_HEADERS = {
    "Content-Type": "application/json",
    "X-Request-ID": "0123456789abcdef01234567",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def service_routes() -> list[tuple[str, str, bool]]:
    """(method, template, is_static) of every route of our service's router, in its order."""
    from service.app import create_app
    from service.config import load_settings

    app = create_app(load_settings(env={}))  # built, never started: nothing of it runs
    return [
        (route.method, route.resource.canonical, isinstance(route.resource, web.StaticResource))
        for route in app.router.routes()
        if route.resource is not None
    ]


def build_app(body: bytes, headers: dict[str, str]) -> web.Application:
    async def vote(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)

    async def other(request: web.Request) -> web.Response:
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    statics: set[str] = set()
    votes = 0
    for method, template, is_static in service_routes():
        if is_static:
            if template not in statics:  # one static resource answers GET and HEAD
                statics.add(template)
                app.router.add_static(template, BENCH)
            continue
        is_vote = template == VOTE_PATH and method in VOTE_METHODS
        votes += is_vote
        # Consecutive routes of one template share one resource, as in our router.
        app.router.add_route(method, template, vote if is_vote else other)
    if votes != len(VOTE_METHODS):
        raise SystemExit(f"rest_floor: our router has not both PUT and POST {VOTE_PATH}")
    return app


async def serve(host: str, port: int, body: bytes, headers: dict[str, str]) -> None:
    await serve_app(build_app(body, headers), host, port)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, help="the vote answer's body (default VOTE_BODY)")
    parser.add_argument(
        "--header",
        type=parse_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header of the vote answer (repeatable; default DEFAULT_HEADERS)",
    )
    args = parser.parse_args()
    body = args.body_file.read_bytes() if args.body_file else VOTE_BODY
    headers = dict(args.header) if args.header else dict(DEFAULT_HEADERS)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.host, args.port, body, headers))


if __name__ == "__main__":
    main()
