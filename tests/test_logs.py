"""Structured logs: one JSON access line per request with a request id; never a token or secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.handlers
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from service.logs import (
    SHOWS_TOKEN,
    BatchingStreamHandler,
    JsonFormatter,
    TextFormatter,
    setup_logging,
    voter_hash,
)

from .browser import ROOT
from .conftest import TEST_SECRET, Client, bearer
from .log_capture import save_log
from .ports import PortTaken, port_taken, start_on_free_port

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="service.access")
    return caplog


async def test_one_access_line_per_request(client: Client, access_lines: pytest.LogCaptureFixture,
                                           voter: dict[str, str]) -> None:
    access_lines.clear()
    resp = await client.get("/features/stats", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    await client.get("/me/votes", headers=voter)
    records = [r for r in access_lines.records if r.name == "service.access"]
    assert len(records) == 2
    first, second = (json.loads(JsonFormatter().format(r)) for r in records)
    assert first["request_id"] == "abc-123"
    assert (first["route"], first["status"], first["method"]) == ("/features/stats", 200, "GET")
    assert first["ms"] >= 0 and "voter" not in first
    assert second["route"] == "/me/votes"
    assert re.fullmatch(r"[0-9a-f]{12}", second["voter"])
    assert not any(JWT.search(r.getMessage() + json.dumps(vars(r), default=str))
                   for r in access_lines.records)


async def test_request_id_is_generated_when_missing_or_odd(client: Client) -> None:
    seen = set()
    for given in (None, "has spaces", "x" * 200, None):
        headers = {} if given is None else {"X-Request-ID": given}
        resp = await client.get("/healthz", headers=headers)
        rid = resp.headers["X-Request-ID"]
        # a per-process random prefix and a counter: unique across requests and instances
        assert rid != given and re.fullmatch(r"[0-9a-f]{24,}", rid), rid
        seen.add(rid)
    assert len(seen) == 4


def test_formatters_mask_anything_shaped_like_a_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    leaky = logging.makeLogRecord({"msg": "header was %s", "args": (f"Bearer {token}",)})
    shown = logging.makeLogRecord({"msg": "admin token: %s", "args": (token,), SHOWS_TOKEN: True})
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(leaky)
        assert token not in line and "Bearer <token>" in line, line
        assert token in formatter.format(shown)  # only the record that says it shows a token


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_turn_share_one_write() -> None:
    handler, stream = BatchingStreamHandler(), CountingStream()
    handler.setStream(stream)
    handler.setFormatter(JsonFormatter())
    for n in range(3):
        handler.handle(logging.makeLogRecord({"msg": "line %d", "args": (n,)}))
    assert stream.getvalue() == ""  # still this turn of the loop
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lines = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert lines == ["line 0", "line 1", "line 2"] and stream.writes == 1


def test_a_flush_left_on_an_ended_loop_does_not_hold_later_lines() -> None:
    handler, stream = BatchingStreamHandler(), CountingStream()
    handler.setStream(stream)

    async def log(msg: str) -> None:
        handler.handle(logging.makeLogRecord({"msg": msg}))

    def log_then_stop() -> None:
        handler.handle(logging.makeLogRecord({"msg": "first"}))  # schedules a flush on `loop`
        loop.stop()  # which ends before running it

    loop = asyncio.new_event_loop()
    loop.call_soon(log_then_stop)
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == ""
    asyncio.run(log("second"))  # a new loop: both lines get out when it flushes
    assert stream.getvalue() == "first\nsecond\n"


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    handler, stream = BatchingStreamHandler(), CountingStream()
    handler.setStream(stream)
    handler.handle(logging.makeLogRecord({"msg": "at start-up"}))
    assert stream.getvalue() == "at start-up\n" and stream.writes == 1


def test_voter_hash_is_stable_and_not_the_id() -> None:
    assert voter_hash("alice") == voter_hash("alice") != voter_hash("bob")
    assert "alice" not in voter_hash("alice")


def test_no_token_or_secret_in_a_served_process_log() -> None:
    """A real process in JSON mode: every line parses, none holds a token or the secret."""
    env = {**os.environ, "FV_SECRET": TEST_SECRET, "FV_HOST": "127.0.0.1",
           "FV_DRAIN_DELAY": "0", "FV_LOG_FORMAT": "json"}

    def start(port: int) -> tuple[int, subprocess.Popen[bytes]]:
        env["PORT"] = str(port)
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.communicate()[1].decode(errors="replace")
                if port_taken(err):
                    raise PortTaken(err)  # someone else bound it first: another port
                raise AssertionError(f"the service exited at start: {err}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                return port, proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"the service did not answer /healthz: {proc.communicate()[1]!r}")

    port, proc = start_on_free_port(start)
    base = f"http://127.0.0.1:{port}"
    try:
        req = urllib.request.Request(base + "/auth/token", method="POST")
        token = json.load(urllib.request.urlopen(req, timeout=2))["token"]
        for path in ("/me/votes", "/features?token=" + token):
            req = urllib.request.Request(base + path, headers=bearer(token))
            urllib.request.urlopen(req, timeout=2).close()
        # A header aiohttp's parser rejects: its error log used to echo the raw line (the token).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"GET /me/votes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + token.encode()
                + b"\x00\r\n\r\n"
            )
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
            assert status_line.split()[1] == b"400", f"the parser should refuse it: {status_line!r}"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        save_log("test_logs-served-process", err, env)
    lines = err.decode().splitlines()
    assert len(lines) >= 4
    entries = [json.loads(line) for line in lines]
    assert sum(1 for e in entries if e["logger"] == "service.access") == 4
    rejected = [e for e in entries if "malformed request" in e["msg"]]
    assert len(rejected) == 1 and rejected[0]["level"] == "warning", rejected
    assert "exc" not in rejected[0], "client garbage should not log a traceback"
    assert TEST_SECRET not in err.decode()
    assert token not in err.decode(), "a token leaked into the log"
    assert all(e["route"] != "/features?token=" + token for e in entries if "route" in e)


@pytest.fixture
def served_logging() -> Iterator[io.StringIO]:
    """Logging as `setup_logging` leaves it in a served process (one JSON handler on the root,
    writing to the returned stream); the test run's own handlers are put back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging("info", "json")
    (handler,) = root.handlers
    assert isinstance(handler, BatchingStreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.flush()
        root.handlers[:], root.level = saved


async def test_the_access_line_is_a_record_every_handler_sees(
    served_logging: io.StringIO, client: Client, voter: dict[str, str]
) -> None:
    """The access line goes through logging's own chain: another handler on `service.access`
    gets the LogRecord with its fields, and the process's handler writes it as JSON."""
    seen = logging.handlers.BufferingHandler(100)
    logging.getLogger("service.access").addHandler(seen)
    try:
        resp = await client.get("/me/votes", headers={**voter, "X-Request-ID": "rid-rec"})
        assert resp.status == 200
    finally:
        logging.getLogger("service.access").removeHandler(seen)
    (record,) = [r for r in seen.buffer if getattr(r, "request_id", None) == "rid-rec"]
    assert (record.route, record.status, record.method) == ("/me/votes", 200, "GET")  # type: ignore[attr-defined]
    await asyncio.sleep(0)  # the end of this loop turn: the handler writes its lines
    (line,) = [json.loads(x) for x in served_logging.getvalue().splitlines() if "rid-rec" in x]
    assert line["msg"] == "GET /me/votes 200" and line["logger"] == "service.access"
    assert line["voter"] == record.voter  # type: ignore[attr-defined]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])


class ParserError(Exception):
    """Shaped like aiohttp's parser errors (the 4xx it answered as `code`)."""

    code = 400


def aiohttp_server_record(exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        exc_info = sys.exc_info()
    return logging.getLogger("aiohttp.server").makeRecord(
        "aiohttp.server", level, __file__, 1, "Error handling request from %s",
        ("10.0.0.7",), exc_info,
    )


def test_a_refused_request_is_one_warning_without_what_the_client_sent() -> None:
    from service.logs import MalformedRequestFilter

    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    record = aiohttp_server_record(ParserError(f"bad header: Authorization: Bearer {token}"))
    assert MalformedRequestFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and "exc" not in line
    assert line["msg"] == "rejected a malformed request from 10.0.0.7: ParserError (400)"
    quiet = aiohttp_server_record(ParserError("garbage"), logging.DEBUG)  # aiohttp's debug one
    MalformedRequestFilter().filter(quiet)
    assert quiet.levelno == logging.DEBUG and quiet.exc_info is None
    # A real server error keeps its level and its traceback.
    bug = aiohttp_server_record(RuntimeError("a bug"))
    MalformedRequestFilter().filter(bug)
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert "Traceback" in JsonFormatter().format(bug)


async def test_a_line_from_a_thread_without_a_loop_is_written_at_once() -> None:
    """While the loop's flush is pending, another thread's line does not wait for it."""
    handler, stream = BatchingStreamHandler(), CountingStream()
    handler.setStream(stream)
    handler.handle(logging.makeLogRecord({"msg": "from the loop"}))
    assert stream.getvalue() == ""  # waits for the end of this turn
    await asyncio.to_thread(handler.handle, logging.makeLogRecord({"msg": "from a thread"}))
    assert stream.getvalue() == "from the loop\nfrom a thread\n"  # both, in order, at once
    handler.handle(logging.makeLogRecord({"msg": "later"}))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.getvalue().endswith("later\n")
