"""service/context.py: one middleware gives every request an id, counts it in flight, maps its
errors to problem answers, and then counts, times and logs it, whatever its handler did."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from service import keys
from service.app import create_app, make_runner
from service.auth import Role
from service.context import pick_request_id
from service.logs import JsonFormatter

from .conftest import AiohttpClient, Client, make_settings
from .waiting import eventually

GENERATED_ID = re.compile(r"[0-9a-f]{24,}")


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the service and aiohttp, from DEBUG up."""
    caplog.set_level(logging.DEBUG, logger="service")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.clear()
    yield caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "service.access"
    ]


def requests_counted(app: web.Application, route: str, method: str, status: int) -> float:
    value = app[keys.METRICS].registry.get_sample_value(
        "fv_http_requests_total", {"route": route, "method": method, "status": str(status)}
    )
    return value or 0.0


def answered_5xx(app: web.Application) -> list[str]:
    """The request series of the exposition that have counted a 5xx."""
    return [
        f"{s.labels} {s.value}"
        for family in app[keys.METRICS].registry.collect()
        if family.name == "fv_http_requests"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["status"].startswith("5") and s.value
    ]


def test_a_request_id_is_taken_only_when_it_fully_matches() -> None:
    assert pick_request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    assert pick_request_id("x" * 128) == "x" * 128
    for odd in ("abc\n", "abc def", "x" * 129, "", "ünïcode", None):
        assert GENERATED_ID.fullmatch(pick_request_id(odd)), odd
    assert pick_request_id(None) != pick_request_id(None)


async def test_a_handler_error_still_gets_an_id_a_count_an_access_line_and_a_problem(
    aiohttp_client: AiohttpClient, logged: pytest.LogCaptureFixture
) -> None:
    """A bug in a handler (an exception nobody maps): the answer is a 500 problem with the
    caller's request id, the request is counted under its route with 500, and its access line
    says so; the traceback is logged once, as an error of ours."""
    app = create_app(make_settings())

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/test/broken/{n}", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/test/broken/7", headers={"X-Request-ID": "rid-broken"})
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 500
    assert resp.headers["X-Request-ID"] == "rid-broken"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"  # the signal ran too
    assert requests_counted(app, "/test/broken/{n}", "GET", 500) == 1
    (line,) = [e for e in access_lines(logged) if e["route"] == "/test/broken/{n}"]
    assert (line["status"], line["request_id"], line["method"]) == (500, "rid-broken", "GET")
    errors = [r for r in logged.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info, "the bug's traceback, once"


@pytest.mark.parametrize(
    ("method", "path", "route", "status"),
    [
        ("GET", "/features/99", "/features/{id}", 404),  # a domain error (NotFound)
        ("PUT", "/features/1/vote", "/features/{id}/vote", 401),  # no token
        ("GET", "/no/such/page", "unmatched", 404),  # aiohttp's own HTTPNotFound
        ("DELETE", "/healthz", "unmatched", 405),  # and HTTPMethodNotAllowed
    ],
)
async def test_every_failure_is_a_problem_with_an_id_counted_and_logged(
    client: Client,
    app: web.Application,
    logged: pytest.LogCaptureFixture,
    method: str,
    path: str,
    route: str,
    status: int,
) -> None:
    resp = await client.request(method, path)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    assert GENERATED_ID.fullmatch(resp.headers["X-Request-ID"])
    assert requests_counted(app, route, method, status) == 1
    (line,) = access_lines(logged)
    assert (line["route"], line["status"]) == (route, status)
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert not [r for r in logged.records if r.levelno >= logging.ERROR]


async def test_static_files_and_304s_carry_the_request_id(client: Client) -> None:
    static = await client.get("/static/css/app.css", headers={"X-Request-ID": "rid-static"})
    assert static.status == 200 and static.headers["X-Request-ID"] == "rid-static"
    first = await client.get("/features/stats")
    again = await client.get(
        "/features/stats",
        headers={"If-None-Match": first.headers["ETag"], "X-Request-ID": "rid-304"},
    )
    assert again.status == 304 and again.headers["X-Request-ID"] == "rid-304"


async def test_a_websocket_answer_carries_the_request_id(client: Client) -> None:
    async with client.ws_connect("/ws", headers={"X-Request-ID": "rid-ws"}) as ws:
        assert ws._response.headers["X-Request-ID"] == "rid-ws"  # the 101


async def test_requests_in_flight_are_counted_and_websockets_are_not(
    aiohttp_client: AiohttpClient,
) -> None:
    app = create_app(make_settings())
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    app.router.add_get("/test/slow", slow)
    client = await aiohttp_client(app)
    lifecycle = app[keys.LIFECYCLE]
    async with client.ws_connect("/ws") as ws:
        await ws.receive_json()  # the first stats frame: the socket is being served
        assert lifecycle.inflight == 0, "an open WebSocket is not a request in flight"
        pending = asyncio.create_task(client.get("/test/slow"))
        await asyncio.wait_for(entered.wait(), 10)
        assert lifecycle.inflight == 1 and not lifecycle.idle.is_set()
        release.set()
        resp = await pending
        assert resp.status == 200
        await eventually(lambda: lifecycle.inflight == 0, what="the request to end")
        assert lifecycle.idle.is_set()


@pytest.fixture(params=["served", "test-server"])
async def any_server(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> AsyncIterator[tuple[web.Application, int]]:
    """The app on a loopback port, as `serve` runs it (make_runner: a handler whose client
    leaves runs on and sees a ConnectionResetError) or as aiohttp's test server does (which
    cancels that handler instead)."""
    settings = make_settings()
    app = create_app(settings)
    if request.param == "test-server":
        client = await aiohttp_client(app)
        assert client.server.port is not None
        yield app, client.server.port
        return
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield app, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_client_that_leaves_mid_body_is_a_client_fault(
    any_server: tuple[web.Application, int], logged: pytest.LogCaptureFixture
) -> None:
    """Headers announcing 1000 bytes, 10 of them, then the socket closes: no 5xx counted, no
    error or traceback logged; a 499 in the metrics and the access line, one debug line."""
    app, port = any_server
    token, _ = app[keys.TOKENS].issue(Role.VOTER, "voter-leaving")
    logged.clear()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"PUT /features/1/vote HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        + b'{"value":1'
    )
    await writer.drain()
    await eventually(lambda: app[keys.LIFECYCLE].inflight == 1, what="the handler to read")
    writer.close()
    await writer.wait_closed()
    await eventually(
        lambda: requests_counted(app, "/features/{id}/vote", "PUT", 499) == 1,
        what="the request to be counted as a 499",
    )
    assert answered_5xx(app) == []
    assert not [r for r in logged.records if r.levelno >= logging.WARNING or r.exc_info]
    left = [r for r in logged.records if "client left" in r.getMessage()]
    assert len(left) == 1 and left[0].levelno == logging.DEBUG
    lines = [e for e in access_lines(logged) if e["route"] == "/features/{id}/vote"]
    assert [e["status"] for e in lines] == [499]
    assert app[keys.LIFECYCLE].inflight == 0
