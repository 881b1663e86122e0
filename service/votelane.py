"""The vote lane: votes, stats reads and new voter tokens answered without aiohttp's
per-request layers.

A vote is the one request a live room sends in bursts, and most of its cost in aiohttp is the
generic machinery around it (request and response objects, routing, middlewares, signals), not
the vote. Every connection of the instance starts in this lane. A request that is exactly what
the lane knows is answered here, by the same code the aiohttp handlers run (`api.cast_vote`,
`api.stats_view`, the token cache, the rate limits, the store), with the same answer, headers,
metrics and access line:

    HTTP/1.1 PUT or POST /features/<digits>/vote with one Content-Length within
    `max_body_size`, a JSON Content-Type and one Authorization header; DELETE of the same
    path with one Authorization header and no body; GET /features/stats (or /stats) and
    POST /auth/token without a body; no query, none of the headers that change framing or
    meaning (Transfer-Encoding, Expect, Upgrade, TE, Content-Encoding, a Connection other
    than keep-alive, Origin when CORS is on), none that aiohttp's parser refuses (no Host, a
    repeated singleton header, 128 fields or more); the head ASCII, well formed, within
    `max_header_size`.

So a voting script's connection (a token, then votes, retractions and stats reads) stays in the
lane from its first request to its last. Anything else — another route, a browser, a WebSocket
upgrade, an odd or malformed request — is handed over, with the bytes already read, to an
aiohttp protocol for the rest of the connection (`transport.set_protocol`), before the lane has
acted on that request. aiohttp then answers it exactly as without the lane (its 400s, 404s,
413s, 415s). So the lane is an optimisation that never decides an answer aiohttp would give
differently, and `vote_lane = false` turns it off.

Requests on one connection are answered in order, one at a time (pipelined ones wait in the
buffer, which stops reading when it grows past one head and body). An idle connection closes
after `http_keepalive_timeout`, as aiohttp's do; draining closes idle ones and lets a request in
flight (its head in) finish. A client that half-closes after its request still gets the answer
(aiohttp closes without one). See ADR-009."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time  # aiohttp's own Date, cached a second
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS

from . import keys
from .api import (
    JSON,
    NO_STORE,
    cast_vote,
    etag_matches,
    new_voter,
    retract,
    stats_view,
    voter_claims,
)
from .errors import internal_error, problem_from
from .logs import REQUEST_ID_HEADER, pick_request_id, write_access
from .schemas import encoder
from .security import COMMON_HEADERS

log = logging.getLogger(__name__)

VOTE_ROUTE: Final = "/features/{id}/vote"
TOKEN_ROUTE: Final = "/auth/token"
_PREFIXES: Final = (
    b"PUT /features/",
    b"POST /features/",
    b"DELETE /features/",
    b"GET /features/stats ",
    b"GET /stats ",
    b"POST /auth/token ",
)
# The whole head, when the lane may read it: the request line of a vote, a retraction, a stats
# read or a token request, then field lines of a token name, a colon and a value of visible
# ASCII, spaces and tabs (no obs-fold, no bare CR or LF, no space before the colon, nothing
# outside ASCII), each ending in CRLF. Groups: the vote's method and feature id, the stats path,
# the token path; the field lines.
_HEAD: Final = re.compile(
    rb"(?:(PUT|POST|DELETE) /features/([0-9]{1,20})/vote|GET (/features/stats|/stats)"
    rb"|POST (/auth/token)) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*\r\n)*)"
)
# What a head still arriving may hold so far: lines of visible ASCII, spaces and tabs ending in
# CRLF, the last one perhaps unfinished. Anything else (a bare LF, say) cannot become a head the
# lane reads, and goes to aiohttp's parser at once instead of waiting for a CRLF CRLF.
_PARTIAL_HEAD: Final = re.compile(rb"(?:[\t\x20-\x7e]*\r\n)*[\t\x20-\x7e]*\r?")
_CONTENT_LENGTH: Final = re.compile(rb"[0-9]{1,10}")
_JSON_TYPES: Final = frozenset({b"application/json", b"application/json; charset=utf-8"})
# Headers whose presence sends the request to aiohttp: they change framing or meaning (a
# compressed body, an upgrade), or aiohttp's parser refuses them (Sec-WebSocket-Key1).
_HAND_OVER: Final = frozenset(
    {
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"te",
        b"content-encoding",
        b"sec-websocket-key1",
    }
)
# Headers the lane reads.
_READ: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"authorization",
        b"connection",
        b"x-request-id",
        b"if-none-match",
        b"x-forwarded-for",
    }
)
# Each at most once: those the lane reads, and those aiohttp's parser answers 400 for when
# repeated (its own list, so the two stay in step).
_ONCE: Final = _READ | frozenset(name.encode() for name in SINGLETON_HEADERS)
# aiohttp's parser refuses a request with more field lines than this (its max_headers); the
# lane hands over from this many on.
_MAX_FIELDS: Final = 128


def _header_lines(headers: Mapping[str, str], skip: str = "") -> str:
    """Header lines of a response head, each ending in CRLF (`skip`: a name left out)."""
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != skip)


_COMMON: Final = _header_lines(COMMON_HEADERS)
_JSON_FIELD: Final = f"Content-Type: {JSON}\r\n"
# (header order as aiohttp writes them: the handler's headers, then Content-Type)
_NEW_TOKEN_FIELDS: Final = _header_lines(NO_STORE) + _JSON_FIELD
_PHRASES: Final = {s.value: s.phrase for s in HTTPStatus}


class VoteLane:
    """One instance's lane: its settings, its app's parts, and its live connections."""

    def __init__(self, app: web.Application, handler_factory: Callable[[], asyncio.Protocol]):
        settings = app[keys.SETTINGS]
        self.app = app
        self.handler_factory = handler_factory  # aiohttp's protocol (runner.server)
        self.tokens = app[keys.TOKENS]
        self.metrics = app[keys.METRICS]
        self.lifecycle = app[keys.LIFECYCLE]
        self.access = settings.access_log
        self.max_head = settings.max_header_size
        self.max_body = settings.max_body_size
        self.keepalive = settings.http_keepalive_timeout
        self.cors = bool(settings.cors_origins)
        self.connections: set[LaneProtocol] = set()
        self.closing = False
        self.answered = 0  # requests the lane answered itself
        self.handed_over = 0  # connections given to aiohttp
        self.metrics.lanes.append(self)  # fv_vote_lane_* on /metrics

    def __call__(self) -> LaneProtocol:
        return LaneProtocol(self)

    def close_idle(self) -> None:
        """Draining: close every connection without a request in flight; the rest close after
        their answer."""
        self.closing = True
        for conn in list(self.connections):
            if not conn.in_flight:
                conn.close()


class LaneSite(web.TCPSite):
    """A TCPSite whose connections start in the vote lane."""

    __slots__ = ("lane",)

    def __init__(
        self, runner: web.AppRunner, host: str | None = None, port: int | None = None, **kw: Any
    ) -> None:
        super().__init__(runner, host, port, **kw)
        self.lane: VoteLane | None = None

    async def start(self) -> None:
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        self.lane = VoteLane(runner.app, runner.server)
        loop = asyncio.get_running_loop()
        # What TCPSite.start does, with the lane as the protocol factory.
        await web.BaseSite.start(self)
        self._server = await loop.create_server(
            self.lane,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        if self.lane is not None:
            self.lane.close_idle()


class LaneProtocol(asyncio.Protocol):
    """One connection while it stays in the lane."""

    __slots__ = (
        "_buf",
        "_can_write",
        "_eof",
        "_last",
        "_loop",
        "_pending",
        "_reading",
        "_remote",
        "_task",
        "_timer",
        "busy",
        "lane",
        "transport",
    )

    def __init__(self, lane: VoteLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.busy = False  # answering a request (the next ones wait in the buffer)
        self._loop = asyncio.get_running_loop()
        self._buf = b""
        self._last = 0.0  # loop time of the last byte received or answer written
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # the answer in flight (a strong reference)
        self._pending: tuple[_Request, int] | None = None  # a request with its head in, and
        # where its body starts
        self._reading = True
        self._can_write = True
        self._eof = False
        self._remote: str | None = None

    # --- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream (TCP) transport
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self.lane.connections.add(self)
        self._last = self._loop.time()
        if self.lane.keepalive > 0:
            self._timer = self._loop.call_at(self._last + self.lane.keepalive, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.connections.discard(self)
        if self._pending is not None and not self.busy:  # its body never came
            self._pending = None
            self.lane.lifecycle.end()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._last = self._loop.time()
        self._serve()

    def eof_received(self) -> bool:
        self._eof = True
        self._serve()
        return True  # the write side stays open for an answer in flight; _serve closes

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        self._serve()

    # --- the lane -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """A request whose head has come in and that is not answered yet."""
        return self._pending is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _check_idle(self) -> None:
        """The keep-alive timer: close when nothing arrived for `http_keepalive_timeout` while
        no request was in flight (a body may take its time, as with aiohttp)."""
        self._timer = None
        if self.transport is None:
            return
        due = self._last + self.lane.keepalive
        if not self.busy and self._pending is None and self._loop.time() >= due:
            self.close()
            return
        self._timer = self._loop.call_at(max(due, self._loop.time() + 0.1), self._check_idle)

    def _serve(self) -> None:
        """Answer the next complete request in the buffer, hand over, or wait for more bytes;
        then keep the buffer bounded: reading pauses while it holds more than one request."""
        while not self.busy and self._can_write and self.transport is not None:
            if self._pending is None and (self.lane.closing or (self._eof and not self._buf)):
                self.close()  # nothing begun: draining, or the client is done
                return
            if not self._buf or not self._start_next():
                break
        transport = self.transport
        if transport is None:
            return
        full = len(self._buf) > self.lane.max_head + self.lane.max_body
        if full and self._reading:
            transport.pause_reading()
            self._reading = False
        elif not full and not self._reading:
            transport.resume_reading()
            self._reading = True

    def _start_next(self) -> bool:
        """Start answering the request at the head of the buffer; False while it is incomplete
        (or was handed over). From its complete head on, a request counts as in flight, as an
        aiohttp handler does: draining waits for its body and answer."""
        buf = self._buf
        if self._pending is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if (
                    len(buf) > self.lane.max_head
                    or not any(p.startswith(buf[: len(p)]) for p in _PREFIXES)
                    or not _PARTIAL_HEAD.fullmatch(buf)
                ):
                    self._hand_over()
                elif self._eof:
                    self.close()  # a partial head and no more to come
                return False
            try:
                request = self._parse(buf, end)
            except Exception:  # a bug here must not cost the client its answer: aiohttp gives it
                log.exception("vote lane: could not read a request head; handed to aiohttp")
                request = None
            if request is None:
                self._hand_over()
                return False
            self._pending = request, end + 4
            self.lane.lifecycle.begin()
        request, start = self._pending
        stop = start + request.length
        if len(buf) < stop:
            if self._eof:
                self.close()  # the body will never complete
            return False
        self._buf = buf[stop:]
        self.busy = True
        self._task = self._loop.create_task(self._answer(request, buf[start:stop]))
        return True

    def _hand_over(self) -> None:
        """Give the connection, with everything it sent since the last answer, to aiohttp."""
        transport = self.transport
        if transport is None:
            return
        self.lane.connections.discard(self)
        self.lane.handed_over += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        protocol = self.lane.handler_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not self._reading:
            transport.resume_reading()
        data, self._buf = self._buf, b""
        if data:
            protocol.data_received(data)
        if self._eof:
            protocol.eof_received()

    def _parse(self, buf: bytes, end: int) -> _Request | None:
        """The request's parts when the lane may answer it; None to hand it over."""
        if end > self.lane.max_head:  # (aiohttp's limits are per line; this is stricter)
            return None
        match = _HEAD.fullmatch(buf, 0, end + 2)
        if match is None:
            return None
        method, raw_id, stats_path, token_path, block = match.groups()
        lines = block.split(b"\r\n")[:-1]
        if len(lines) >= _MAX_FIELDS:
            return None
        fields: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")  # (a token name holds no colon)
            name = name.lower()
            if name in _ONCE:
                if name in fields:
                    return None
                fields[name] = value.strip(b" \t")
            elif name in _HAND_OVER or (name == b"origin" and self.lane.cors):
                return None
        if b"host" not in fields:  # HTTP/1.1 requires it; aiohttp answers 400
            return None
        if fields.get(b"connection", b"keep-alive").lower() != b"keep-alive":
            return None
        length = fields.get(b"content-length")
        authorization = _text(fields.get(b"authorization"))
        request = _Request(
            method="GET" if stats_path else "POST" if token_path else method.decode(),
            route=(stats_path or token_path or VOTE_ROUTE.encode()).decode(),
            raw_id=None if raw_id is None else raw_id.decode(),
            length=0,
            authorization=authorization,
            request_id=_text(fields.get(b"x-request-id")) or "",
            if_none_match=_text(fields.get(b"if-none-match")),
            forwarded_for=_text(fields.get(b"x-forwarded-for")),
        )
        if request.raw_id is not None and authorization is None:
            return None  # (aiohttp's 401 for a missing token carries its own challenge)
        if request.raw_id is None or request.method == "DELETE":
            # Stats, a token, a retraction: no body (their handlers read none).
            return request if length is None or length == b"0" else None
        if length is None or not _CONTENT_LENGTH.fullmatch(length):
            return None
        request.length = int(length)
        if (
            request.length > self.lane.max_body
            or fields.get(b"content-type", b"").lower() not in _JSON_TYPES
        ):
            return None
        return request

    async def _answer(self, request: _Request, body: bytes) -> None:
        lane = self.lane
        started = time.perf_counter()
        try:
            if request.raw_id is not None:
                answer = _vote(lane, request, body)
            elif request.route == TOKEN_ROUTE:
                answer = _token(lane, request, self._remote)
            else:
                answer = _stats(lane, request)
            self._respond(request, *await answer, started)
        except Exception:
            # Not an error answer (those are answers): the lane itself failed. The client must
            # not wait for an answer that will not come, nor get the next one in its place.
            log.exception("vote lane: could not answer %s %s", request.method, request.route)
            self.close()
        finally:
            self._pending = None
            lane.lifecycle.end()
            self.busy = False
            self._task = None
            self._last = self._loop.time()
            self._serve()

    def _respond(
        self,
        request: _Request,
        status: int,
        body: bytes,
        fields: str,
        voter: str | None,
        started: float,
    ) -> None:
        lane = self.lane
        rid = pick_request_id(request.request_id)
        if self.transport is not None:
            length = "" if status == 304 else f"Content-Length: {len(body)}\r\n"
            head = (
                f"HTTP/1.1 {status} {_PHRASES[status]}\r\n"
                f"{fields}{REQUEST_ID_HEADER}: {rid}\r\n{length}"
                f"Date: {rfc822_formatted_time()}\r\n"
                f"Server: {SERVER_SOFTWARE}\r\n"
                f"{_COMMON}\r\n"
            )
            self.transport.write(head.encode() + body)
        elapsed = time.perf_counter() - started
        lane.answered += 1
        lane.metrics.observe(request.route, request.method, status, elapsed)
        if lane.access:
            write_access(rid, request.method, request.route, status, elapsed, self._remote, voter)


_Answer = tuple[int, bytes, str, str | None]  # status, body, header lines, voter id (logged)


async def _vote(lane: VoteLane, request: _Request, body: bytes) -> _Answer:
    """The vote's (or the retraction's) answer, or the problem's."""
    voter: str | None = None
    try:
        assert request.raw_id is not None and request.authorization is not None
        claims = voter_claims(lane.tokens, request.authorization)
        voter = claims.sub
        if request.method == "DELETE":
            result = await retract(lane.app, claims, request.raw_id)
        else:
            result = await cast_vote(lane.app, claims, request.raw_id, JSON, _returns(body))
        return 200, encoder.encode(result), _JSON_FIELD, voter
    except Exception as exc:
        return _problem(exc, request, f"/features/{request.raw_id}/vote", voter)


async def _token(lane: VoteLane, request: _Request, remote: str | None) -> _Answer:
    """A new voter's token (201), or the problem (429 over the per-address rate)."""
    try:
        out = await new_voter(lane.app, remote, request.forwarded_for)
    except Exception as exc:
        return _problem(exc, request, request.route, None)
    return 201, encoder.encode(out), _NEW_TOKEN_FIELDS, None


async def _stats(lane: VoteLane, request: _Request) -> _Answer:
    """The stats the caller may see (304 when their ETag is current), or the problem."""
    try:
        view, headers = await stats_view(lane.app, request.authorization)
    except Exception as exc:
        return _problem(exc, request, request.route, None)
    fields = _header_lines(headers)
    if etag_matches(request.if_none_match, view.etag):
        return 304, b"", fields, None
    return 200, view.body, fields + _JSON_FIELD, None


def _problem(exc: Exception, request: _Request, path: str, voter: str | None) -> _Answer:
    problem = problem_from(exc) or internal_error(request.method, path)
    payload = problem.body
    assert isinstance(payload, bytes)
    fields = _header_lines(problem.headers, skip="Content-Length")  # (the head writes its own)
    return problem.status, payload, fields, voter


class _Request:
    __slots__ = (
        "authorization",
        "forwarded_for",
        "if_none_match",
        "length",
        "method",
        "raw_id",
        "request_id",
        "route",
    )

    def __init__(
        self,
        *,
        method: str,
        route: str,
        raw_id: str | None,
        length: int,
        authorization: str | None,
        request_id: str,
        if_none_match: str | None,
        forwarded_for: str | None,
    ) -> None:
        self.method = method
        self.route = route  # the route template, as metrics and the access line name it
        self.raw_id = raw_id  # the feature id of a vote or retraction; None otherwise
        self.length = length
        self.authorization = authorization
        self.request_id = request_id
        self.if_none_match = if_none_match
        self.forwarded_for = forwarded_for


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _returns(body: bytes) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return body

    return read
