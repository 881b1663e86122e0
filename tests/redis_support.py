"""Real Redis for tests: the shared server (one key namespace per test) and private servers.

The shared server is FV_TEST_REDIS_URL (default redis://127.0.0.1:6379/15). Each store made here
gets its own prefix and deletes its keys when closed. A test that stops Redis starts its own
`redis-server` on a free port in a temporary directory and kills it in `finally`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from redis import exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.store.redis import RedisStore

from .ports import START_ATTEMPTS, PortTaken, free_port, port_taken

REDIS_URL: Final = os.environ.get("FV_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_SERVER: Final = shutil.which("redis-server")
START_TIMEOUT: Final = 10.0
SLOW_MACHINE_TIMEOUT: Final = 5.0


@functools.cache
def shared_redis_problem() -> str | None:
    """Why the shared test Redis cannot be used, or None when it answers."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except (rex.RedisError, OSError) as exc:
        return f"no Redis at {REDIS_URL} ({exc}); start redis-server or set FV_TEST_REDIS_URL"
    return None


def require_redis() -> None:
    problem = shared_redis_problem()
    if problem is not None:
        pytest.skip(problem)


def require_redis_server() -> str:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed; these tests start their own")
    return REDIS_SERVER


def unique_prefix() -> str:
    return f"fvtest:{uuid.uuid4().hex[:12]}:"


class TestRedisStore(RedisStore):
    """A RedisStore that deletes every key of its namespace when closed."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, url: str = REDIS_URL, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", unique_prefix())
        # Generous unless a test asks for fast failure: a loaded CI machine can take more than
        # the production 0.5 s to open dozens of connections at once (the fault tests pass their
        # own short timeouts).
        kwargs.setdefault("socket_timeout", SLOW_MACHINE_TIMEOUT)
        kwargs.setdefault("connect_timeout", SLOW_MACHINE_TIMEOUT)
        super().__init__(url, **kwargs)
        self.url = url
        self.prefix: str = kwargs["prefix"]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            delete_namespace(self.url, self.prefix)
        await super().close()


def delete_namespace(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        batch = list(client.scan_iter(match=prefix + "*", count=1000))
        while batch:
            client.unlink(*batch[:1000])
            batch = batch[1000:]
    finally:
        client.close()


class PrivateRedis:
    """A redis-server of this test only: kill it, restart it on the same port.

    Its first start moves to another port if someone took this one first (tests/ports.py);
    once it has run, a restart keeps the port (the test's clients know only that one)."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.directory = directory
        self.persistent = persistent
        self.ran = False
        self.use_port(free_port())
        self.process: subprocess.Popen[bytes] | None = None

    def use_port(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def log_text(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self, *, pinned: bool = False) -> None:
        """Start; `pinned`: the URL was handed out already, so the port may not move."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
            except PortTaken:
                if self.ran or pinned or attempt == START_ATTEMPTS:
                    raise
                self.use_port(free_port())
            else:
                self.ran = True
                return

    def _start_once(self) -> None:
        server = require_redis_server()
        logged_before = len(self.log_text())
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.directory), "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        # appendfsync always: an acknowledged write is on disk before the reply.
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [
            "--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        # No retries inside ping(): the loop retries, and looks at the process between tries.
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))
        try:
            while self.process.poll() is None:
                with contextlib.suppress(rex.RedisError, OSError):
                    # the server that answers must be this one, not whoever else has the port
                    if client.info("server")["process_id"] == self.process.pid:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}")
                time.sleep(0.02)
        finally:
            client.close()
        output = self.log_text()[logged_before:]
        if port_taken(output):
            raise PortTaken(output)
        raise RuntimeError(f"redis-server exited at start: {output}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; clients see their connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def private_redis(directory: Path, *, persistent: bool = True) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGCONT)
        server.kill()
