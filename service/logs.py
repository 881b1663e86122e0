"""Logs: one JSON object per line (or readable text in development), one access line a request."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID: Final = re.compile(r"^[\w.:-]{1,128}$")
# Set on the request by the auth helper; the access log writes only a hash of it.
VOTER_KEY: Final = web.RequestKey("voter_id", str)
REQUEST_ID_KEY: Final = web.RequestKey("request_id", str)
# Generated request ids: random per process, then a counter (unique across instances, and far
# cheaper than a uuid4 per request).
_ID_PREFIX: Final = os.urandom(8).hex()
_ID_COUNTER: Final = itertools.count(1)
_BASE_FIELDS: Final = frozenset(vars(logging.makeLogRecord({})))
_encoder: Final = msgspec.json.Encoder()
access_log: Final = logging.getLogger("service.access")
# Anything shaped like a JWT (a token) is masked in every line, wherever it came from; the one
# record allowed to show a token sets `extra={SHOWS_TOKEN: True}` (the start-up admin token).
_TOKEN: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
SHOWS_TOKEN: Final = "shows_token"


def redact(line: str) -> str:
    return _TOKEN.sub("<token>", line) if "eyJ" in line else line


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser rejects (client garbage, answered 400) at ERROR with a
    traceback holding the raw offending line, which may carry an Authorization header. Make it
    one WARNING line that names the error and the peer, and nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "rejected a malformed request from %s: %s (%d)"
            record.args = (peer, type(exc).__name__, exc.code)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _finish(record: logging.LogRecord, line: str) -> str:
    return line if getattr(record, SHOWS_TOKEN, False) else redact(line)


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the date part is formatted once per second."""
    second = int(created)
    return f"{_second(second)}.{int((created - second) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        entry.update({k: v for k, v in vars(record).items() if k not in _BASE_FIELDS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _finish(record, _encoder.encode(entry).decode())


def _entry(created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
    return {"ts": _timestamp(created), "level": level, "logger": logger, "msg": msg}


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _BASE_FIELDS)
        line = super().format(record)
        return _finish(record, f"{line} {extra}" if extra else line)


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines logged during one turn of the event loop reach the stream in one write + flush
    at the end of that turn (instead of one syscall per line); outside a running loop, at once.
    Under load, many requests' access lines share a write."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush waits on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.enqueue(line)

    def enqueue(self, line: str) -> None:
        """A formatted line, written at the end of this turn of the loop."""
        self._pending.append(line + self.terminator)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running here: write now
            self.flush()
            return
        if self._flush_on is not loop:  # (a flush left on a loop that ended never runs)
            loop.call_soon(self.flush)
            self._flush_on = loop

    def flush(self) -> None:
        self._flush_on = None
        if self._pending:
            text, self._pending = "".join(self._pending), []
            self.acquire()
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                logging.Handler.handleError(self, logging.makeLogRecord({"msg": text}))
            finally:
                self.release()

    def close(self) -> None:
        self.flush()
        super().close()


def setup_logging(level: str, fmt: str) -> None:
    """Root logging for the process; `fmt` is json, text, or auto (text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    # Fields no line of ours shows, skipped when each record is made (the logging HOWTO's
    # "Optimization" list): the caller's frame, thread and process names.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingStreamHandler()
    handler.addFilter(MalformedRequestFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def pick_request_id(given: str) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    return given if _REQUEST_ID.match(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def request_id(request: web.Request) -> str:
    """pick_request_id for an aiohttp request, stored on the request for its access line."""
    rid = pick_request_id(request.headers.get(REQUEST_ID_HEADER, ""))
    request[REQUEST_ID_KEY] = rid
    return rid


@functools.lru_cache(maxsize=4096)
def voter_hash(voter_id: str) -> str:
    """A stable pseudonym for correlating a voter's lines without logging the id itself."""
    return hashlib.sha256(voter_id.encode()).hexdigest()[:12]


def log_access(request: web.Request, route: str, status: int, seconds: float) -> None:
    """One line per request; never a token, a secret or a raw voter id."""
    write_access(
        request.get(REQUEST_ID_KEY),
        request.method,
        route,
        status,
        seconds,
        request.remote,
        request.get(VOTER_KEY),
    )


def write_access(
    rid: str | None,
    method: str,
    route: str,
    status: int,
    seconds: float,
    remote: str | None,
    voter: str | None,
) -> None:
    """The access line itself."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": rid,
        "method": method,
        "route": route,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "remote": remote,
    }
    if voter:
        fields["voter"] = voter_hash(voter)
    sink = _json_sink()
    if sink is None:
        access_log.info("%s %s %d", method, route, status, extra=fields)
        return
    # What access_log.info would put on that handler, without a LogRecord and the handler chain.
    entry = _entry(time.time(), "info", access_log.name, f"{method} {route} {status}")
    entry.update(fields)
    sink.enqueue(redact(_encoder.encode(entry).decode()))


def _json_sink() -> BatchingStreamHandler | None:
    """The handler an access record would reach, when it is the only one and formats JSON
    lines; then write_access may format the line itself (a third of the cost of a record).
    None when anything else would see the record: another handler or filter on the way, a
    handler above INFO, another formatter (tests, or a logging setup not made here)."""
    logger: logging.Logger | None = access_log
    found = None
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if found is not None or type(handler) is not BatchingStreamHandler:
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    if (
        found is None
        or found.level > logging.INFO
        or type(found.formatter) is not JsonFormatter
        or any(type(f) is not MalformedRequestFilter for f in found.filters)
    ):
        return None
    return found
