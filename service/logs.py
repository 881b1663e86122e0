"""Logs: one JSON object per line (or readable text in development), on the standard path.

Every line is a LogRecord through logging's own handler chain: the access line too
(service/context.py logs it on the `service.access` logger with its fields as `extra`).
setup_logging puts one handler on the root logger: a BatchingStreamHandler (a StreamHandler
that writes a loop turn's lines in one write) with JsonFormatter or TextFormatter, both of
which mask anything shaped like a token.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web

# Set on the request by the auth helper; the access line writes only a hash of it.
VOTER_KEY: Final = web.RequestKey("voter_id", str)
# A record's own attributes; any other is an extra field of the line. (`message` and `asctime`
# are what a Formatter adds to the record, `taskName` Python 3.12's.)
_BASE_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
}
_encoder: Final = msgspec.json.Encoder()
# Anything shaped like a JWT (a token) is masked in every line, wherever it came from; the one
# record allowed to show a token sets `extra={SHOWS_TOKEN: True}` (the start-up admin token).
_TOKEN: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
SHOWS_TOKEN: Final = "shows_token"


def redact(line: str) -> str:
    return _TOKEN.sub("<token>", line) if "eyJ" in line else line


# How aiohttp's server (the `aiohttp.server` logger) reports a request it could not handle;
# for one its HTTP parser refused, the exception carries the 4xx it answered as `code`.
AIOHTTP_SERVER_LOGGER: Final = "aiohttp.server"
_AIOHTTP_HANDLING_ERROR: Final = "Error handling request from %s"


def _client_error_code(exc: BaseException | None) -> int | None:
    """The 4xx of an exception aiohttp's parser raised for a malformed request, else None
    (duck-typed: aiohttp's parser errors are not in a public module)."""
    code = getattr(exc, "code", None)
    return code if type(code) is int and 400 <= code < 500 else None


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser rejects (client garbage, answered 4xx) at ERROR with a
    traceback holding the raw offending line, which may carry an Authorization header. Make it
    one line (WARNING at most) that names the error and the peer, and nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != AIOHTTP_SERVER_LOGGER or record.msg != _AIOHTTP_HANDLING_ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        code = _client_error_code(exc)
        if code is not None:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "rejected a malformed request from %s: %s (%d)"
            record.args = (peer, type(exc).__name__, code)
            record.exc_info = record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _finish(record: logging.LogRecord, line: str) -> str:
    return line if getattr(record, SHOWS_TOKEN, False) else redact(line)


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    """The date and time of a line, to the second (ISO 8601, UTC): formatted once a second."""
    return datetime.fromtimestamp(epoch_second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields, "exc"} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": f"{_second(int(record.created))}.{int(record.msecs):03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _BASE_FIELDS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = _encoder.encode(entry).decode()
        return _finish(record, line)


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
    Under load, many requests' access lines share a write.

    The loop is looked up once and kept while it runs on the same thread: on Python 3.11
    asyncio.get_running_loop() makes a getpid() system call each time (py-spy under the REST
    benchmark: ~8 % of a vote's CPU in this VM when asked per line). A thread runs at most
    one loop at a time, so the kept loop is this thread's running loop while it is running."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop last found,
        self._loop_thread = 0  # on this thread
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush waits on

    def emit(self, record: logging.LogRecord) -> None:
        """The formatted line, written at the end of this turn of the loop."""
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line + self.terminator)
        loop = self._loop
        if loop is None or self._loop_thread != threading.get_ident() or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop running here: write now
                self.flush()
                return
            self._loop, self._loop_thread = loop, threading.get_ident()
        if self._flush_on is not loop:  # (a flush left on a loop that ended never runs)
            loop.call_soon(self.flush)
            self._flush_on = loop

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if not self._pending:
                return
            text, self._pending = "".join(self._pending), []
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
    # Fields no line of ours shows, skipped when each record is made: the thread's and the
    # process's names and ids (the documented switches of the logging HOWTO's "Optimization";
    # the process id alone is a getpid() system call per record).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingStreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # On the logger whose records it rewrites, not on the handler: the access line and every
    # other record pass no filter of ours.
    server = logging.getLogger(AIOHTTP_SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


@functools.lru_cache(maxsize=4096)
def voter_hash(voter_id: str) -> str:
    """A stable pseudonym for correlating a voter's lines without logging the id itself."""
    return hashlib.sha256(voter_id.encode()).hexdigest()[:12]
