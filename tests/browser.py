"""Helpers for the browser tests: the service in a subprocess, a tiny REST client, Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`python -m service` on a fixed loopback port; can be killed and started again."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FV_SECRET": TEST_SECRET,
            "FV_HOST": "127.0.0.1",
            "PORT": str(self.port),
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
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log_path(f"server-{self.port}", self.env)  # every start appends its stderr

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def start(self) -> Server:
        with self.log.open("ab") as sink:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=ROOT, env=self.env,
                stdout=subprocess.DEVNULL, stderr=sink,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited at start: {self.log_text()}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the service did not answer /healthz in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
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
