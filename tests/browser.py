"""Helpers for the browser tests: the service in a subprocess, a tiny REST client, Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from .conftest import TEST_SECRET
from .log_capture import log_path
from .ports import START_ATTEMPTS, PortTaken, free_port, port_taken

ROOT: Final = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES: Final = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT: Final = 15.0


def chromium_path() -> str | None:
    """Debian's chromium, never a downloaded browser."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (imported here, so a missing one skips first)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Server:
    """`python -m service` on a fixed loopback port; can be killed and started again.

    The first start moves to another port if someone took this one first (tests/ports.py);
    once it has served, a restart keeps its port (clients reconnect to it)."""

    def __init__(self, **env: str) -> None:
        self.port = 0
        self.url = ""
        self.served = False
        self.env = {
            **os.environ,
            "FV_SECRET": TEST_SECRET,
            "FV_HOST": "127.0.0.1",
            "FV_DRAIN_DELAY": "0",
            "FV_LOG_LEVEL": "warning",
            # the tests mint many tokens from 127.0.0.1; tests/test_ratelimit.py covers limits
            "FV_TOKEN_RATE": "0",
            "FV_VOTE_RATE": "0",
            "FV_CREATE_RATE": "0",
            "FV_WS_CONNECT_RATE": "0",
            "FV_AUTH_FAILURE_RATE": "0",  # fuzzers and pages send bad tokens on purpose
            **env,
        }
        self.use_port(free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log_path(f"server-{self.port}", self.env)  # every start appends its stderr

    def use_port(self, port: int) -> None:
        """Serve on `port` from the next start on."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env["PORT"] = str(port)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def start(self) -> Server:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
            except PortTaken:
                if self.served or attempt == START_ATTEMPTS:
                    raise
                self.use_port(free_port())
            else:
                self.served = True
                return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        started_at = len(self.log_text())
        with self.log.open("ab") as sink:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=ROOT, env=self.env,
                stdout=subprocess.DEVNULL, stderr=sink,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.log_text()[started_at:]
                if port_taken(output):
                    raise PortTaken(output)
                raise RuntimeError(f"the service exited at start: {output}")
            try:  # a short probe: a port someone else holds may accept and never answer
                if self.request("GET", "/healthz", timeout=0.5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the service did not answer /healthz in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        *,
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def token(self) -> str:
        status, body = self.request("POST", "/auth/token")
        assert status == 201
        token: str = body["token"]
        return token

    def feature(self, title: str, token: str, description: str = "") -> int:
        status, body = self.request(
            "POST", "/features", {"title": title, "description": description}, token
        )
        assert status == 201, body
        feature_id: int = body["id"]
        return feature_id

    def vote(self, feature_id: int, value: int, token: str) -> dict[str, Any]:
        status, body = self.request("PUT", f"/features/{feature_id}/vote", {"value": value}, token)
        assert status == 200, body
        result: dict[str, Any] = body
        return result
