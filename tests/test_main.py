"""The command line, run as real subprocesses: token minting, bad settings, serving, draining."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from service.app import create_app, make_runner
from service.auth import Role, TokenInvalid, Tokens
from service.config import PROJECT_ROOT, Secret, Settings

from .conftest import make_settings
from .log_capture import log_path, save_log
from .ports import PortTaken, free_port, port_taken, start_on_free_port

SECRET = "cli-test-secret-cli-test-secret-0123456789"
OTHER_SECRET = "another-secret-another-secret-9876543210"
START_TIMEOUT = 15.0
HTTP_TIMEOUT = 3.0


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any Feature Votes setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FV_") and k != "PORT"}
    env["PYTHONUNBUFFERED"] = "1"
    env["FV_STORE"] = "memory"  # the default (SQLite) would write data/ in the project
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    save_log("cli", result.stderr, env)  # stdout is the command's output (a token), not a log
    return result


def verifier(secret: str) -> Tokens:
    """Another instance with the secret and the default lifetimes (a longer one is refused)."""
    defaults = Settings()
    return Tokens(
        Secret((secret,)),
        voter_ttl=defaults.voter_token_ttl,
        admin_ttl=defaults.admin_token_ttl,
        cache_size=10,
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Answer(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def start_serving(env: dict[str, str], args: tuple[str, ...], port: int, flag: bool) -> Server:
    """`python -m service [args]` on `port` (PORT, or --port if `flag`), once it answers /healthz.

    PortTaken when another process bound the port between free_port() and the child's bind."""
    env = {"FV_HOST": "127.0.0.1", "PORT": str(port), **env}
    if flag:
        args = ("--port", str(port), *args)
    log = log_path(f"server-{port}", env)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                if port_taken(server.log_text()):
                    raise PortTaken(server.log_text())
                pytest.fail(f"server exited with {proc.returncode}: {server.log_text()}")
            try:
                if http("GET", server.url + "/healthz", timeout=0.5).status == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /healthz in time: {server.log_text()}")
            time.sleep(0.05)
    except BaseException:
        stop(proc)
        raise


@contextmanager
def serving(
    tmp_path: Path, env: dict[str, str], *args: str, port_flag: bool = False
) -> Iterator[Server]:
    """Run `python -m service [args]` on a free port, wait for /healthz, always kill it after.

    The port goes in PORT, or with `port_flag` in a leading --port flag. Its output goes to the
    session's log directory (tests/log_capture.py), not to tmp_path."""
    server = start_on_free_port(lambda port: start_serving(env, args, port, port_flag))
    try:
        yield server
    finally:
        stop(server.proc)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


# --- token --admin ------------------------------------------------------------------------------


def test_token_admin_prints_one_verifiable_line() -> None:
    result = run_cli("token", "--admin", env=clean_env(FV_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert result.stdout.endswith("\n")
    token = lines[0]
    assert token == token.strip()
    claims = verifier(SECRET).verify(token)
    assert claims.role is Role.ADMIN
    with pytest.raises(TokenInvalid):
        verifier(OTHER_SECRET).verify(token)


def test_token_admin_first_of_two_secrets_signs() -> None:
    result = run_cli("token", "--admin", env=clean_env(FV_SECRET=f"{SECRET},{OTHER_SECRET}"))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["role"] == "admin"
    assert verifier(SECRET).verify(token).role is Role.ADMIN


def test_token_admin_reads_config_file_and_env(tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text("admin_token_ttl = 120\n", encoding="utf-8")
    result = run_cli("--config", str(config), "token", "--admin", env=clean_env(FV_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    claims = verifier(SECRET).verify(result.stdout.strip())
    assert claims.exp - claims.iat == 120
    env = clean_env(FV_SECRET=SECRET, FV_ADMIN_TOKEN_TTL="300")
    result = run_cli("--config", str(config), "token", "--admin", env=env)
    assert result.returncode == 0, result.stderr
    claims = verifier(SECRET).verify(result.stdout.strip())
    assert claims.exp - claims.iat == 300  # environment beats the config file


def test_token_without_admin_flag_fails() -> None:
    result = run_cli("token", env=clean_env(FV_SECRET=SECRET))
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


# --- bad settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "setting"),
    [
        ({"PORT": "70000"}, (), "port"),
        ({"PORT": "abc"}, (), "port"),
        ({"FV_STORE": "mysql://x"}, (), "store"),
        ({"FV_SECRET": "short"}, (), "secret"),
        ({}, ("--config", "/nonexistent"), "config"),
        ({"FV_CONFIG": "/nonexistent.toml"}, (), "config"),
        ({}, ("--port", "0"), "port"),
        ({"FV_STORE": "mysql://x"}, ("token", "--admin"), "store"),
    ],
    ids=[
        "PORT=70000",
        "PORT=abc",
        "FV_STORE=mysql",
        "FV_SECRET=short",
        "--config-missing",
        "FV_CONFIG-missing",
        "--port=0",
        "token-bad-store",
    ],
)
def test_bad_setting_stops_the_start(
    env: dict[str, str], args: tuple[str, ...], setting: str
) -> None:
    base = {"FV_SECRET": SECRET, "FV_HOST": "127.0.0.1", "PORT": str(free_port())}  # never bound
    result = run_cli(*args, env=clean_env(**{**base, **env}))
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(rf"\b{setting}\b", lines[0]), lines[0]
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_stops_the_start() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(FV_SECRET=SECRET, FV_HOST="127.0.0.1", PORT=str(port))
        result = run_cli(env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0]


# --- serving ------------------------------------------------------------------------------------


def test_serve_answers_healthz_on_the_flag_port(tmp_path: Path) -> None:
    """PORT names one port, --port another: the flag wins."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:
        # PORT's port stays bound (not listening) by the test: no one else can listen there,
        # so a connection to it is refused unless the service wrongly serves it (it cannot:
        # it would fail to bind, and `serving` would report the exit).
        reserved.bind(("127.0.0.1", 0))
        env_port = reserved.getsockname()[1]
        env = {"FV_SECRET": SECRET, "PORT": str(env_port)}
        with serving(tmp_path, clean_env(**env), "serve", port_flag=True) as srv:
            assert srv.url != f"http://127.0.0.1:{env_port}"
            resp = http("GET", srv.url + "/healthz")
            assert resp.status == 200
            assert resp.json() == {"status": "ok"}
            assert http("GET", srv.url + "/readyz").status == 200
            with pytest.raises(OSError):
                http("GET", f"http://127.0.0.1:{env_port}/healthz", timeout=0.5)
            assert SECRET not in srv.log_text()
            assert "admin token" not in srv.log_text()


def start_upload(srv: Server, token: str, body: bytes, first: int) -> socket.socket:
    """An in-flight POST /features: headers and the first bytes of the body, the rest later.

    It asks `Expect: 100-continue` and returns once the server answered "100 Continue", which
    aiohttp sends when it starts handling the request: the request is then in flight."""
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)
    sock.sendall(
        (
            "POST /features HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    head = b""
    deadline = time.monotonic() + HTTP_TIMEOUT
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the final answer
        assert time.monotonic() < deadline, f"no 100 Continue: {head!r}"
        chunk = sock.recv(1)
        assert chunk, f"closed before 100 Continue: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 100"), head
    sock.sendall(body[:first])
    return sock


def read_status_line(sock: socket.socket, timeout: float) -> bytes:
    """The first line of the answer, or b"" when none comes before the deadline."""
    received = b""
    deadline = time.monotonic() + timeout
    while b"\r\n" not in received and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n", 1)[0]


def wait_until(condition: Any, seconds: float, what: str) -> None:
    """Poll `condition()` until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.02)


def readyz_status(srv: Server) -> int:
    try:
        return http("GET", srv.url + "/readyz", timeout=1.0).status
    except OSError:
        return 0


def listener_closed(srv: Server) -> bool:
    port = int(srv.url.rsplit(":", 1)[1])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return True
    return False


def open_ws(srv: Server) -> socket.socket:
    """A WebSocket to /ws on a plain socket, past the 101 and its first (snapshot) frame."""
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_ws_frame(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The next unmasked server frame (opcode, payload)."""
    sock.settimeout(timeout)

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "EOF inside a frame"
            data += chunk
        return data

    first, second = exactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", exactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(size)


UPLOAD = json.dumps({"title": "Sent while draining", "description": "x" * 200}).encode()


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    drain = 3.0
    env = clean_env(FV_SECRET=SECRET, FV_DRAIN_DELAY=str(drain), FV_SHUTDOWN_TIMEOUT="5")
    with serving(tmp_path, env) as srv:
        assert http("GET", srv.url + "/readyz").status == 200
        voter = http("POST", srv.url + "/auth/token").json()["token"]
        inflight = start_upload(srv, voter, UPLOAD, 50)
        try:
            sent_at = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: readyz_status(srv) == 503, drain, "/readyz answers 503")
            answer = http("GET", srv.url + "/readyz", timeout=1.0)
            if time.monotonic() - sent_at < drain:  # still inside the delay: check the answer
                assert answer.status == 503
                assert answer.headers.get("Content-Type", "").startswith(
                    "application/problem+json"
                )
                assert http("GET", srv.url + "/healthz", timeout=1.0).status == 200
            assert srv.proc.poll() is None, "exited while a request was in flight"
            # The in-flight request, finished during the drain, is answered.
            inflight.sendall(UPLOAD[50:])
            assert read_status_line(inflight, 5).startswith(b"HTTP/1.1 201")
        finally:
            inflight.close()

        code = wait_exit(srv.proc, timeout=drain + 10)
        elapsed = time.monotonic() - sent_at
        assert code == 0, srv.log_text()
        assert elapsed >= drain - 0.1, f"exited after {elapsed:.2f}s, before the drain delay"
        with pytest.raises(OSError):
            http("GET", srv.url + "/healthz", timeout=0.5)


def test_inflight_request_finishes_after_the_drain_delay(tmp_path: Path) -> None:
    """A request whose handler started before SIGTERM and whose body arrives after the drain
    delay (once the listener is closed) is still answered, and the process then exits 0 at
    once, not after shutdown_timeout."""
    timeout = 20.0
    env = clean_env(FV_SECRET=SECRET, FV_DRAIN_DELAY="0.3", FV_SHUTDOWN_TIMEOUT=str(timeout))
    with serving(tmp_path, env) as srv:
        voter = http("POST", srv.url + "/auth/token").json()["token"]
        inflight = start_upload(srv, voter, UPLOAD, 50)
        try:
            srv.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: listener_closed(srv), 10, "the listener closes")
            assert srv.proc.poll() is None, "exited while a request was in flight"
            inflight.sendall(UPLOAD[50:])
            finished_at = time.monotonic()
            status = read_status_line(inflight, 5)
        finally:
            inflight.close()
        code = wait_exit(srv.proc, timeout=timeout)
        elapsed = time.monotonic() - finished_at
        assert status.startswith(b"HTTP/1.1 201"), f"in-flight request got {status!r}"
        assert code == 0, srv.log_text()
        assert elapsed < timeout / 2, f"took {elapsed:.2f}s to exit after the request finished"


def test_sockets_get_1001_while_a_slow_request_is_still_in_flight(tmp_path: Path) -> None:
    env = clean_env(FV_SECRET=SECRET, FV_DRAIN_DELAY="0.2", FV_SHUTDOWN_TIMEOUT="20")
    with serving(tmp_path, env) as srv:
        voter = http("POST", srv.url + "/auth/token").json()["token"]
        ws = open_ws(srv)
        inflight = start_upload(srv, voter, UPLOAD, 50)
        try:
            assert read_ws_frame(ws, HTTP_TIMEOUT)[0] == 0x1  # the snapshot
            srv.proc.send_signal(signal.SIGTERM)
            opcode, payload = read_ws_frame(ws, 10)
            while opcode != 0x8:  # skip pushes and pings up to the Close
                opcode, payload = read_ws_frame(ws, 10)
            assert struct.unpack("!H", payload[:2])[0] == 1001
            assert srv.proc.poll() is None
            inflight.sendall(UPLOAD[50:])  # the upload was still waiting for its body
            assert read_status_line(inflight, 5).startswith(b"HTTP/1.1 201")
        finally:
            ws.close()
            inflight.close()
        assert wait_exit(srv.proc, timeout=20) == 0, srv.log_text()


def test_a_stuck_request_does_not_stretch_shutdown_past_shutdown_timeout(tmp_path: Path) -> None:
    """One deadline across the waits: a request that never finishes holds the exit for about
    shutdown_timeout, not for the in-flight wait and then aiohttp's own wait again."""
    timeout = 6.0
    env = clean_env(FV_SECRET=SECRET, FV_DRAIN_DELAY="0", FV_SHUTDOWN_TIMEOUT=str(timeout))
    with serving(tmp_path, env) as srv:
        voter = http("POST", srv.url + "/auth/token").json()["token"]
        stuck = start_upload(srv, voter, UPLOAD, 50)  # the rest of the body never comes
        try:
            sent_at = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = wait_exit(srv.proc, timeout=3 * timeout)
            elapsed = time.monotonic() - sent_at
        finally:
            stuck.close()
        assert code == 0, srv.log_text()
        assert elapsed >= timeout - 0.5, f"gave up on the request after {elapsed:.2f}s"
        assert elapsed < timeout + 5, f"took {elapsed:.2f}s with shutdown_timeout {timeout}"
        assert "request(s) are cancelled" in srv.log_text()


def test_sigint_also_exits_zero(tmp_path: Path) -> None:
    env = clean_env(FV_SECRET=SECRET, FV_DRAIN_DELAY="0")
    with serving(tmp_path, env) as srv:
        srv.proc.send_signal(signal.SIGINT)
        assert wait_exit(srv.proc, timeout=6) == 0, srv.log_text()
        assert "Traceback" not in srv.log_text()


def test_without_secret_the_log_has_a_working_admin_token(tmp_path: Path) -> None:
    with serving(tmp_path, clean_env()) as srv:
        match = None
        deadline = time.monotonic() + 5
        while match is None and time.monotonic() < deadline:
            match = re.search(r"admin token: (\S+)", srv.log_text())
            if match is None:
                time.sleep(0.05)
        assert match is not None, srv.log_text()
        admin = {"Authorization": f"Bearer {match.group(1)}"}
        lines = [line for line in srv.log_text().splitlines() if "admin token" in line]
        assert len(lines) == 1

        voter = {"Authorization": "Bearer " + http("POST", srv.url + "/auth/token").json()["token"]}
        created = http("POST", srv.url + "/features", body={"title": "Dark mode"}, headers=voter)
        assert created.status == 201, created.body
        path = srv.url + f"/features/{created.json()['id']}"

        denied = http("PATCH", path, body={"status": "planned"}, headers=voter)
        assert denied.status == 403
        patched = http("PATCH", path, body={"status": "planned"}, headers=admin)
        assert patched.status == 200, patched.body
        assert patched.json()["status"] == "planned"
        assert http("GET", path).json()["status"] == "planned"

        # The random secret is this process's own: a token signed with another is refused.
        forged = verifier(SECRET).issue(Role.ADMIN, "admin")[0]
        refused = http(
            "PATCH", path, body={"status": "done"}, headers={"Authorization": f"Bearer {forged}"}
        )
        assert refused.status == 401


async def idle_connection_lifetime(keepalive: float, wait_at_most: float) -> float | None:
    """Serve with make_runner, make one keep-alive request on a raw socket, then time how long
    the server keeps the idle connection open (None: still open after `wait_at_most`)."""
    settings = make_settings(http_keepalive_timeout=keepalive)
    runner = make_runner(create_app(settings), settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()  # in-process: the kernel picks a port
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = re.search(rb"(?i)content-length: (\d+)", head)
            assert length is not None, head
            await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)
            idle_since = time.monotonic()
            try:
                rest = await asyncio.wait_for(reader.read(), wait_at_most)
            except TimeoutError:
                return None
            assert rest == b"", rest
            return time.monotonic() - idle_since
        finally:
            writer.close()
    finally:
        await runner.cleanup()


async def test_idle_keep_alive_connections_are_closed_after_the_setting() -> None:
    lifetime = await idle_connection_lifetime(0.3, wait_at_most=5)
    assert lifetime is not None and 0.25 <= lifetime < 5, lifetime
    # The same request with a longer setting: the connection is still open well past 0.3 s.
    assert await idle_connection_lifetime(3.0, wait_at_most=1.0) is None
