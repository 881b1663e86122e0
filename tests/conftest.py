"""Shared fixtures: the real app from create_app(test settings), served on a loopback socket."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.auth import Role, Tokens
from service.config import Secret, Settings
from service.keys import TOKENS

from . import log_capture

TEST_SECRET = "test-secret-that-is-long-enough-0001"
# Servers the tests start as subprocesses keep nothing unless a test asks for a store: the
# default (SQLite, data/ in the working directory) would leave state between runs.
os.environ.setdefault("FV_STORE", "memory")
NO_RATE_LIMITS: dict[str, Any] = {
    "token_rate": 0.0, "vote_rate": 0.0, "create_rate": 0.0, "ws_connect_rate": 0.0,
    "auth_failure_rate": 0.0, "board_create_rate": 0.0,
}
AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
# Runs last (see pytest_collection_modifyitems): no token or secret in any log line of the run.
FINAL_CHECK = "test_zz_logs_hold_no_secrets.py"
# At INFO for the session, so every request's access lines are written and checked: the service's
# own and aiohttp's (the test server's, with the raw request line). The root logger (WARNING) and
# every other logger keep their levels; caplog.set_level still works as before.
CAPTURE_LEVELS = {"service": logging.INFO, "aiohttp.access": logging.INFO}


@pytest.fixture(scope="session", autouse=True)
def session_log_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the session, and every subprocess log, in one directory."""
    folder = tmp_path_factory.mktemp("logs", numbered=False)
    uninstall = log_capture.install(folder, CAPTURE_LEVELS)
    try:
        yield folder
    finally:
        uninstall()


@pytest.hookimpl(trylast=True)  # after -k/-m deselection and any reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [item for item in items if item.path.name == FINAL_CHECK]
    items[:] = [item for item in items if item.path.name != FINAL_CHECK] + last
    log_capture.STATE.collected_files = {item.path.name for item in items}


def pytest_deselected(items: list[pytest.Item]) -> None:
    log_capture.STATE.deselected += len(items)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if log_capture.STATE.summary:
        terminalreporter.write_line(log_capture.STATE.summary)


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: code defaults, a fixed secret, no config file, no environment."""
    values: dict[str, Any] = {
        "secret": Secret((TEST_SECRET,)),
        "drain_delay": 0.0,
        "store": "memory",  # the tests of the SQLite store ask for it
        **NO_RATE_LIMITS,  # tests mint many tokens from one address; test_ratelimit turns them on
    }
    values.update(overrides)
    log_capture.remember_secret(*getattr(values["secret"], "keys", ()))
    return Settings(**values)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    return await aiohttp_client(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(app: web.Application) -> Tokens:
    return app[TOKENS]


@pytest.fixture
def admin(tokens: Tokens) -> dict[str, str]:
    """Authorization header of an admin."""
    return bearer(tokens.issue(Role.ADMIN, "admin")[0])


@pytest.fixture
async def voter(client: Client) -> dict[str, str]:
    """Authorization header of a fresh voter, minted over HTTP like a browser would."""
    resp = await client.post("/auth/token")
    assert resp.status == 201
    return bearer((await resp.json())["token"])


async def create_feature(client: Client, auth: dict[str, str], title: str = "Dark mode",
                         description: str = "") -> dict[str, Any]:
    resp = await client.post("/features", json={"title": title, "description": description},
                             headers=auth)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def stats(client: Client) -> dict[str, Any]:
    resp = await client.get("/features/stats")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


# --- the page tests' browser and server (tests/browser.py) ---------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium per module (the page tests skip without it)."""
    from .browser import chromium_browser

    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def server() -> Iterator[Any]:
    """A real `python -m service` process for a page test, killed after it (a module may
    define its own `server` with other settings)."""
    from .browser import Server

    srv = Server().start()
    try:
        yield srv
    finally:
        srv.kill()
