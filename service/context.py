"""The request context: one middleware around every request, outermost in the app.

Its one job is what every request needs before and after its handler, in this order:
  1. a request id (the caller's X-Request-ID when sane, else a new one), kept on the request
     (the on_response_prepare signal in service/security.py writes it on the answer);
  2. the in-flight count that draining waits for (WebSocket upgrades are not counted: shutdown
     closes those with 1001);
  3. the problem mapping: whatever the handler raises becomes an application/problem+json
     answer (built in service/errors.py), a client that left mid-request a 499 client fault;
  4. after the answer, the request's metrics (count and latency under its route template) and
     its access line (a LogRecord on the `service.access` logger).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import hdrs, web

from .errors import client_closed, internal_error, problem_from
from .lifecycle import Lifecycle
from .logs import VOTER_KEY, voter_hash
from .metrics import KNOWN_METHODS, OTHER_METHOD, UNMATCHED_ROUTE, Metrics

# What aiohttp's (non-public) `aiohttp.typedefs` calls Handler and Middleware, spelled here.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Middleware(Protocol):
    """A new-style aiohttp middleware (made with `@web.middleware`)."""

    def __call__(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]: ...


REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID_KEY: Final = web.RequestKey("request_id", str)
_SANE_REQUEST_ID: Final = re.compile(r"[\w.:-]{1,128}", re.ASCII)
# Generated request ids: random per process, then a counter (unique across instances, and far
# cheaper than a uuid4 per request).
_ID_PREFIX: Final = os.urandom(8).hex()
_ID_COUNTER: Final = itertools.count(1)
CLIENT_CLOSED: Final = 499  # nginx's "client closed request": nobody was left to answer
SHUTDOWN_CANCELLED: Final = 503  # cancelled by a shutdown that could not wait any longer

ACCESS_LOGGER: Final = "service.access"
access_log: Final = logging.getLogger(ACCESS_LOGGER)
log: Final = logging.getLogger(__name__)


def pick_request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is sane (1 to 128 of `A-Za-z0-9_.:-`), else a new one."""
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def client_left(request: web.Request) -> bool:
    """True once the client's connection is gone (closed, reset, or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def route_of(request: web.Request) -> str:
    """The route template a request matched (never its raw path), or `unmatched`."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def _client_left_line(request: web.Request, exc: BaseException) -> None:
    log.debug(
        "client left before its answer: %s %s (%s: %s)",
        request.method,
        route_of(request),
        type(exc).__name__,
        exc,
    )


def request_context(metrics: Metrics, lifecycle: Lifecycle, *, access: bool) -> Middleware:
    """The middleware (see the module's docstring); `access` turns the access line on."""
    observe = metrics.http.observe
    known_methods = KNOWN_METHODS
    perf_counter = time.perf_counter
    info = logging.INFO

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        headers = request.headers
        rid = pick_request_id(headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID_KEY] = rid
        upgrade = headers.get(hdrs.UPGRADE)
        counted = upgrade is None or upgrade.lower() != "websocket"
        if counted:
            lifecycle.begin()
        status = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:  # redirects and the like: aiohttp sends them as they are
                    status = exc.status
                    raise
                response = problem_from(exc) or internal_error(request.method, request.path)
            except Exception as exc:
                if isinstance(exc, ConnectionError) and client_left(request):
                    # A client that left mid-body or mid-answer: its fault, not ours.
                    _client_left_line(request, exc)
                    response = client_closed()
                else:
                    response = problem_from(exc) or internal_error(request.method, request.path)
            status = response.status
            return response
        except asyncio.CancelledError as exc:
            # aiohttp cancels a handler whose client left when the server is made with
            # handler_cancellation (ours is not: see make_runner), and at the shutdown deadline.
            if client_left(request):
                status = CLIENT_CLOSED
                _client_left_line(request, exc)
            else:
                status = SHUTDOWN_CANCELLED
            raise
        finally:
            if counted:
                lifecycle.end()
            elapsed = perf_counter() - started
            route = route_of(request)
            method = request.method
            observe(route, method if method in known_methods else OTHER_METHOD, status, elapsed)
            if access and access_log.isEnabledFor(info):
                voter = request.get(VOTER_KEY)
                fields: dict[str, object] = {
                    "request_id": rid,
                    "method": method,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "remote": request.remote,
                }
                if voter:
                    fields["voter"] = voter_hash(voter)
                # A LogRecord through the logger's filters and handlers, as `.info()` makes, less
                # the look-up of the calling file and line (no access line shows them): the
                # documented makeRecord + handle pair, ~6 µs of a vote's CPU.
                access_log.handle(
                    access_log.makeRecord(
                        ACCESS_LOGGER,
                        info,
                        __file__,
                        0,
                        "%s %s %d",
                        (method, route, status),
                        None,
                        extra=fields,
                    )
                )

    return middleware
