"""The vote lane (service/votelane.py) on real sockets: it answers exactly as aiohttp does.

One app is served twice by one runner: through a LaneSite (what `python -m service` serves) and
through a plain aiohttp TCPSite. Every request in the table goes raw to both and the answers are
compared (status line; header names, values and order but Date and X-Request-ID; body); the
lane's own counters say which requests it answered itself and which connections it handed to
aiohttp.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service import keys
from service.app import create_app, make_runner
from service.auth import Role
from service.config import Settings
from service.votelane import LaneSite, VoteLane

from .conftest import make_settings

HOST = "127.0.0.1"
VARYING = {"date", "x-request-id"}


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def comparable(self) -> tuple[bytes, list[tuple[str, str]], bytes]:
        fixed = [(k.lower(), v) for k, v in self.headers if k.lower() not in VARYING]
        return self.status_line, fixed, self.body


async def read_answer(reader: asyncio.StreamReader, body: bool = True) -> Answer:
    """The next final answer (an interim 100 Continue is skipped); `body=False` for HEAD."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    while head.startswith(b"HTTP/1.1 1"):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head[:-4].split(b"\r\n")
    headers = [
        (k.decode(), v.strip().decode()) for k, _, v in (h.partition(b":") for h in lines[1:])
    ]
    answer = Answer(lines[0], headers, b"")
    length = answer.header("Content-Length")
    if length is not None and body:
        answer.body = await asyncio.wait_for(reader.readexactly(int(length)), 5)
    return answer


async def fetch(port: int, path: str) -> bytes:
    """GET with aiohttp's client (its own connection: handed over by the lane)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{port}{path}") as r:
        assert r.status == 200
        return await r.read()


async def exchange(port: int, raw: bytes, answers: int = 1) -> list[Answer]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        body = not raw.startswith(b"HEAD ")
        return [await read_answer(reader, body) for _ in range(answers)]
    finally:
        writer.close()


@dataclass
class Served:
    app: web.Application
    lane_port: int
    plain_port: int
    lane: VoteLane
    feature: int
    voter: str
    admin: str
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, role: Role = Role.VOTER, sub: str | None = None) -> str:
        return self.app[keys.TOKENS].issue(role, sub)[0]


async def serve_both(settings: Settings) -> tuple[web.AppRunner, Served]:
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    lane_site = LaneSite(runner, HOST, 0)
    await lane_site.start()
    plain_site = web.TCPSite(runner, HOST, 0)
    await plain_site.start()
    assert lane_site.lane is not None
    tokens = app[keys.TOKENS]
    admin = tokens.issue(Role.ADMIN, "admin")[0]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{HOST}:{plain_site.port}/features",
            json={"title": "Dark mode"},
            headers={"Authorization": f"Bearer {admin}"},
        ) as resp,
    ):
        assert resp.status == 201
        feature = (await resp.json())["id"]
    etag = (await app[keys.STORE].stats()).etag
    served = Served(
        app,
        lane_site.port,
        plain_site.port,
        lane_site.lane,
        feature,
        tokens.issue(Role.VOTER)[0],
        admin,
        {"etag": etag},
    )
    return runner, served


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    runner, served = await serve_both(make_settings())
    try:
        yield served
    finally:
        await runner.cleanup()


def vote_request(
    path: str,
    body: bytes = b'{"value":1}',
    *,
    method: str = "PUT",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    fields = {"Host": "votes.test", "Content-Type": "application/json"}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} {version}\r\n{head}\r\n".encode() + body


def get_request(
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
) -> bytes:
    fields = {"Host": "votes.test", "Accept": "*/*", **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} {version}\r\n{head}\r\n".encode()


ORDINARY = {"User-Agent": "curl/8.5", "Accept": "*/*", "X-Forwarded-For": "10.0.0.1"}
TWO_AGENTS = {"User-Agent": "a", "user-agent": "b"}
MANY_FIELDS = {f"X-{i}": "1" for i in range(130)}
GZIPPED = gzip.compress(b'{"value":1}')
GZIP = {"Content-Encoding": "gzip"}


# (name, request builder, does the lane answer it itself?)
def cases(s: Served) -> list[tuple[str, bytes, bool]]:
    f, v, etag = s.feature, s.voter, s.extra.get("etag", '"?"')
    path = f"/features/{f}/vote"
    return [
        ("vote up", vote_request(path, token=v), True),
        ("vote down by POST", vote_request(path, b'{"value":-1}', method="POST", token=v), True),
        (
            "charset",
            vote_request(
                path, token=v, headers={"Content-Type": "application/json; charset=utf-8"}
            ),
            True,
        ),
        ("admin votes too", vote_request(path, token=s.admin), True),
        ("request id kept", vote_request(path, token=v, headers={"X-Request-ID": "abc-123"}), True),
        (
            "odd request id replaced",
            vote_request(path, token=v, headers={"X-Request-ID": "a b"}),
            True,
        ),
        ("no token", vote_request(path), False),
        ("bad token", vote_request(path, token="x" + v), True),
        ("not bearer", vote_request(path, headers={"Authorization": f"Basic {v}"}), True),
        ("expired-shaped junk", vote_request(path, token="eyJ.eyJ.x"), True),
        ("unknown feature", vote_request("/features/999999/vote", token=v), True),
        ("leading zero id", vote_request(f"/features/0{f}/vote", token=v), True),
        ("20-digit id", vote_request("/features/12345678901234567890/vote", token=v), True),
        ("letters id", vote_request("/features/abc/vote", token=v), False),
        ("not json", vote_request(path, b"{value", token=v), True),
        ("wrong value", vote_request(path, b'{"value":3}', token=v), True),
        ("extra field", vote_request(path, b'{"value":1,"x":1}', token=v), True),
        ("empty body", vote_request(path, b"", token=v), True),
        ("bad utf-8", vote_request(path, b'{"value":1,"\xff":1}', token=v), True),
        ("text/plain", vote_request(path, token=v, headers={"Content-Type": "text/plain"}), False),
        (
            "+json type",
            vote_request(path, token=v, headers={"Content-Type": "application/vote+json"}),
            False,
        ),
        ("too large", vote_request(path, b" " * 70_000 + b'{"value":1}', token=v), False),
        ("query string", vote_request(f"{path}?x=1", token=v), False),
        ("HTTP/1.0", vote_request(path, token=v, version="HTTP/1.0"), False),
        ("lower-case method", vote_request(path, token=v, method="put"), False),
        ("retract", vote_request(path, b"", method="DELETE", token=v), True),
        (
            "retract, no length",
            get_request(path, {"Authorization": f"Bearer {v}"}, method="DELETE"),
            True,
        ),
        ("retract, no token", get_request(path, method="DELETE"), False),
        (
            "delete a feature (not a vote)",
            get_request(
                "/features/999999", {"Authorization": f"Bearer {s.admin}"}, method="DELETE"
            ),
            False,
        ),
        ("token path below", get_request("/auth/tokens", method="POST"), False),
        (
            "retract, bad token",
            get_request(path, {"Authorization": "Bearer x"}, method="DELETE"),
            True,
        ),
        (
            "retract, unknown feature",
            get_request("/features/999999/vote", {"Authorization": f"Bearer {v}"}, method="DELETE"),
            True,
        ),
        ("retract with a body", vote_request(path, method="DELETE", token=v), False),
        (
            "retract with a query",
            get_request(f"{path}?x=1", {"Authorization": f"Bearer {v}"}, method="DELETE"),
            False,
        ),
        (
            "chunked",
            (
                f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {v}\r\nTransfer-Encoding: chunked\r\n\r\n"
                'b\r\n{"value":1}\r\n0\r\n\r\n'
            ).encode(),
            False,
        ),
        ("two lengths", vote_request(path, token=v, headers={"content-length": "11"}), False),
        (
            "two tokens",
            vote_request(path, token=v, headers={"authorization": f"Bearer {v}"}),
            False,
        ),
        ("space before colon", vote_request(path, token=v, headers={"X-Thing ": "1"}), False),
        (
            "non-ascii header",
            vote_request(path, token=v, headers={"X-Name": "\u00e9"}).replace(b"\xc3\xa9", b"\xe9"),
            False,
        ),
        ("expect", vote_request(path, token=v, headers={"Expect": "100-continue"}), False),
        ("ordinary fields", vote_request(path, token=v, headers=ORDINARY), True),
        ("no Host", vote_request(path, token=v, headers={"Host": None}), False),
        ("two Hosts", vote_request(path, token=v, headers={"host": "b"}), False),
        ("two User-Agents", vote_request(path, token=v, headers=TWO_AGENTS), False),
        ("130 fields", vote_request(path, token=v, headers=MANY_FIELDS), False),
        ("a 9000-byte field", vote_request(path, token=v, headers={"X-A": "a" * 9000}), False),
        ("gzip body", vote_request(path, GZIPPED, token=v, headers=GZIP), False),
        (
            "Sec-WebSocket-Key1",
            vote_request(path, token=v, headers={"Sec-WebSocket-Key1": "x"}),
            False,
        ),
        ("stats without Host", get_request("/stats", {"Host": None}), False),
        ("token", get_request("/auth/token", method="POST"), True),
        (
            "token, empty body",
            get_request("/auth/token", {"Content-Length": "0"}, method="POST"),
            True,
        ),
        (
            "token, forwarded",
            get_request("/auth/token", {"X-Forwarded-For": "10.1.2.3"}, method="POST"),
            True,
        ),
        (
            "token, any Authorization",
            get_request("/auth/token", {"Authorization": f"Bearer {v}"}, method="POST"),
            True,
        ),
        (
            "token with a body",
            get_request("/auth/token", {"Content-Length": "2"}, method="POST") + b"{}",
            False,
        ),
        ("token with a query", get_request("/auth/token?x=1", method="POST"), False),
        ("token by GET", get_request("/auth/token"), False),
        (
            "token, two forwarded",
            get_request(
                "/auth/token",
                {"X-Forwarded-For": "1.1.1.1", "x-forwarded-for": "2.2.2.2"},
                method="POST",
            ),
            False,
        ),
        ("token, HTTP/1.0", get_request("/auth/token", method="POST", version="HTTP/1.0"), False),
        ("stats", get_request("/features/stats"), True),
        ("stats at /stats", get_request("/stats"), True),
        ("stats, current ETag", get_request("/features/stats", {"If-None-Match": etag}), True),
        ("stats, a list of ETags", get_request("/stats", {"If-None-Match": f'"x", {etag}'}), True),
        ("stats, old ETag", get_request("/features/stats", {"If-None-Match": 'W/"0"'}), True),
        (
            "stats as admin",
            get_request("/features/stats", {"Authorization": f"Bearer {s.admin}"}),
            True,
        ),
        ("stats, junk token", get_request("/features/stats", {"Authorization": "Bearer x"}), True),
        ("stats, empty body", get_request("/features/stats", {"Content-Length": "0"}), True),
        (
            "stats with a body",
            get_request("/features/stats", {"Content-Length": "2"}) + b"{}",
            False,
        ),
        ("stats with a query", get_request("/features/stats?x=1"), False),
        ("HEAD stats", get_request("/features/stats", method="HEAD"), False),
        ("stats below", get_request("/stats/x"), False),
        ("stats, HTTP/1.0", get_request("/stats", version="HTTP/1.0"), False),
        (
            "tab and spaces around a value",
            vote_request(path, token=v, headers={"X-A": "\t b \t"}),
            True,
        ),
        ("empty value", vote_request(path, token=v, headers={"X-A": ""}), True),
        (
            "bare LF",
            vote_request(path, token=v, headers={"X-A": "1"}).replace(b"X-A: 1\r\n", b"X-A: 1\n"),
            False,
        ),
        ("obs-fold", vote_request(path, token=v, headers={"X-A": "1\r\n 2"}), False),
        ("DEL in a value", vote_request(path, token=v, headers={"X-A": "a\x7fb"}), False),
        (
            "line without colon",
            vote_request(path, token=v, headers={"X-A": "1"}).replace(b"X-A: 1", b"X-A 1"),
            False,
        ),
    ]


def case_ids() -> list[str]:
    fake = Served(web.Application(), 0, 0, None, 1, "t", "a")  # type: ignore[arg-type]
    return [name for name, _, _ in cases(fake)]


def new_voter(served: Served, answer: Answer) -> tuple[list[str], int]:
    """The fields and expiry of a 201 from POST /auth/token, whose token must verify as a new
    voter's with the id and expiry the answer gives."""
    out = json.loads(answer.body)
    claims = served.app[keys.TOKENS].verify(out["token"])
    assert claims.role is Role.VOTER and claims.sub == out["voter_id"]
    assert datetime.fromisoformat(out["expires_at"]).timestamp() == claims.exp
    return sorted(out), claims.exp


@pytest.mark.parametrize("name", case_ids())
async def test_the_lane_answers_as_aiohttp_does(served: Served, name: str) -> None:
    raw, answered_by_lane = next((r, a) for n, r, a in cases(served) if n == name)
    # The state after one request is the state both see: each vote here is idempotent.
    expected = (await exchange(served.plain_port, raw))[0]
    answered, handed = served.lane.answered, served.lane.handed_over
    got = (await exchange(served.lane_port, raw))[0]
    if expected.status == 201:  # a new token each time: compare what it says, not its bytes
        (keys_a, exp_a), (keys_b, exp_b) = new_voter(served, expected), new_voter(served, got)
        assert keys_a == keys_b and abs(exp_a - exp_b) <= 5
        expected.body = got.body = b""
    assert got.comparable() == expected.comparable()
    assert got.header("Date")
    # (aiohttp's parser-level 400s carry no request id, on either path)
    assert (got.header("X-Request-ID") is None) == (expected.header("X-Request-ID") is None)
    assert (served.lane.answered - answered, served.lane.handed_over - handed) == (
        (1, 0) if answered_by_lane else (0, 1)
    )


async def test_the_vote_counts_once_and_shows_in_stats(served: Served) -> None:
    path = f"/features/{served.feature}/vote"
    voters = [served.token() for _ in range(5)]
    for token in voters:
        (answer,) = await exchange(served.lane_port, vote_request(path, token=token))
        assert answer.status == 200, answer.body
    feature = json.loads(await fetch(served.lane_port, f"/features/{served.feature}"))
    assert (feature["up"], feature["down"], feature["score"]) == (5, 0, 5)
    assert served.lane.answered == 5 and served.lane.handed_over == 1  # the GET


async def test_keep_alive_pipelining_and_hand_over_keep_the_order(served: Served) -> None:
    """Three votes, a stats read and a feature read in one write: five answers in order; the
    votes and the stats from the lane, the feature from aiohttp after the hand-over."""
    path = f"/features/{served.feature}/vote"
    tokens = [served.token() for _ in range(3)]
    raw = b"".join(vote_request(path, token=t) for t in tokens)
    raw += b"GET /features/stats HTTP/1.1\r\nHost: t\r\n\r\n"
    raw += f"GET /features/{served.feature} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    answers = await exchange(served.lane_port, raw, answers=5)
    assert [a.status for a in answers] == [200] * 5
    assert [json.loads(a.body)["up"] for a in answers[:3]] == [1, 2, 3]
    assert json.loads(answers[3].body)["total_votes"] == 3
    assert json.loads(answers[4].body)["up"] == 3
    assert (served.lane.answered, served.lane.handed_over) == (4, 1)


async def test_a_request_arriving_byte_by_byte_is_answered(served: Served) -> None:
    raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and served.lane.answered == 1


async def test_a_client_that_half_closes_still_gets_its_answer(served: Served) -> None:
    raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        writer.write(raw)
        writer.write_eof()
        answer = await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server closes
    finally:
        writer.close()
    assert answer.status == 200


async def test_a_partial_request_and_eof_closes_without_an_answer(served: Served) -> None:
    raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        writer.write(raw[:-3])
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert served.lane.answered == 0


async def test_many_votes_on_one_connection(served: Served) -> None:
    path = f"/features/{served.feature}/vote"
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        for i in range(200):
            writer.write(
                vote_request(path, b'{"value":%d}' % (1 if i % 2 else -1), token=served.voter)
            )
            answer = await read_answer(reader)
            assert answer.status == 200
            assert json.loads(answer.body)["value"] == (1 if i % 2 else -1)
    finally:
        writer.close()
    assert served.lane.answered == 200 and served.lane.handed_over == 0


async def test_a_websocket_through_the_lane_port_is_handed_over(served: Served) -> None:
    url = f"http://{HOST}:{served.lane_port}/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        first = await ws.receive_json(timeout=5)
        assert "seq" in first
    assert served.lane.handed_over == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
async def test_the_access_line_and_metrics_match_the_aiohttp_path(
    served: Served, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """A vote, a retraction, a token request: the same access line and counters either way."""
    caplog.set_level(logging.INFO, logger="service.access")
    same_id = {"X-Request-ID": "same-id"}
    path, route = f"/features/{served.feature}/vote", "/features/{id}/vote"
    if method == "PUT":
        raw = vote_request(path, token=served.voter, headers=same_id)
    elif method == "DELETE":
        raw = get_request(
            path, {"Authorization": f"Bearer {served.voter}", **same_id}, method=method
        )
    else:
        path = route = "/auth/token"
        raw = get_request(path, same_id, method=method)
    await exchange(served.plain_port, raw)
    await exchange(served.lane_port, raw)
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 2
    fields = [
        {
            k: getattr(r, k, None)
            for k in ("request_id", "method", "route", "status", "remote", "voter")
        }
        | {"msg": r.getMessage()}
        for r in lines
    ]
    assert fields[0] == fields[1]
    assert fields[1]["route"] == route and fields[1]["request_id"] == "same-id"
    if method == "POST":
        assert fields[1]["voter"] is None and fields[1]["status"] == 201
    else:  # the voter's id, hashed
        assert fields[1]["voter"] not in (None, served.app[keys.TOKENS].verify(served.voter).sub)
    text = (await fetch(served.plain_port, "/metrics")).decode()
    status = fields[1]["status"]
    counted = re.search(
        rf'fv_http_requests_total\{{method="{method}",route="{re.escape(route)}",'
        rf'status="{status}"\}} (\S+)',
        text,
    )
    assert counted is not None and float(counted.group(1)) == 2.0
    if method != "POST":
        action = "vote" if method == "PUT" else "retract"
        assert re.search(rf'fv_votes_total\{{action="{action}"\}} 2\.0', text)


async def test_rate_limited_votes_get_429_from_the_lane() -> None:
    runner, served = await serve_both(make_settings(vote_rate=60.0, vote_burst=2))
    try:
        raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
        statuses = [(await exchange(served.lane_port, raw))[0] for _ in range(3)]
        assert [a.status for a in statuses] == [200, 200, 429]
        assert statuses[2].header("Retry-After") == "1"
        assert served.lane.answered == 3
    finally:
        await runner.cleanup()


async def test_a_voting_script_stays_in_the_lane(served: Served) -> None:
    """What a script does on one keep-alive connection — a token, a vote, the stats, a
    retraction, the stats again — is all answered by the lane."""
    path = f"/features/{served.feature}/vote"
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        writer.write(get_request("/auth/token", method="POST"))
        token = json.loads((await read_answer(reader)).body)["token"]
        steps = [
            vote_request(path, b'{"value":-1}', token=token),
            get_request("/features/stats"),
            get_request(path, {"Authorization": f"Bearer {token}"}, method="DELETE"),
            get_request("/stats"),
        ]
        answers = []
        for raw in steps:
            writer.write(raw)
            answers.append(await read_answer(reader))
    finally:
        writer.close()
    assert [a.status for a in answers] == [200] * 4
    assert json.loads(answers[0].body)["value"] == -1 and json.loads(answers[2].body)["value"] == 0
    downs = [next(f["down"] for f in json.loads(a.body)["top"]) for a in answers[1::2]]
    assert downs == [1, 0]
    assert (served.lane.answered, served.lane.handed_over) == (5, 0)


async def test_token_requests_are_limited_per_client_address_in_the_lane() -> None:
    """token_rate counts per address: the peer's, or the X-Forwarded-For of a trusted proxy."""
    settings = make_settings(token_rate=60.0, token_burst=1, trusted_proxies=(HOST,))
    runner, served = await serve_both(settings)
    try:

        def ask(address: str) -> bytes:
            return get_request("/auth/token", {"X-Forwarded-For": address}, method="POST")

        answers = [
            (await exchange(served.lane_port, ask(a)))[0]
            for a in ("10.0.0.1", "10.0.0.1", "10.0.0.2")
        ]
        assert [a.status for a in answers] == [201, 429, 201]
        assert answers[1].header("Content-Type") == "application/problem+json"
        assert answers[1].header("Retry-After") is not None
        assert (served.lane.answered, served.lane.handed_over) == (3, 0)
    finally:
        await runner.cleanup()


async def test_idle_lane_connections_close_after_the_keep_alive_setting() -> None:
    runner, served = await serve_both(make_settings(http_keepalive_timeout=0.3))
    try:
        raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
        reader, writer = await asyncio.open_connection(HOST, served.lane_port)
        try:
            writer.write(raw)
            assert (await read_answer(reader)).status == 200
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert asyncio.get_running_loop().time() - started >= 0.25
            # A head that never completes is closed the same way.
            reader, writer2 = await asyncio.open_connection(HOST, served.lane_port)
            writer2.write(raw[:20])
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer2.close()
        finally:
            writer.close()
    finally:
        await runner.cleanup()


async def test_a_slow_body_is_not_cut_by_the_keep_alive_timer() -> None:
    """As with aiohttp: the keep-alive timer closes connections waiting for a head, not a
    request whose body is still coming."""
    runner, served = await serve_both(make_settings(http_keepalive_timeout=0.3))
    try:
        raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
        reader, writer = await asyncio.open_connection(HOST, served.lane_port)
        writer.write(raw[:-4])
        await asyncio.sleep(0.8)
        writer.write(raw[-4:])
        assert (await read_answer(reader)).status == 200
        writer.close()
    finally:
        await runner.cleanup()


async def test_draining_finishes_a_vote_in_flight_and_closes_idle_connections() -> None:
    runner, served = await serve_both(make_settings())
    store = served.app[keys.STORE]
    release = asyncio.Event()
    entered = asyncio.Event()
    set_vote = store.set_vote

    async def held_set_vote(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await set_vote(*args, **kwargs)

    try:
        idle_reader, idle_writer = await asyncio.open_connection(HOST, served.lane_port)
        idle_writer.write(vote_request(f"/features/{served.feature}/vote", token=served.token()))
        assert (await read_answer(idle_reader)).status == 200
        store.set_vote = held_set_vote  # type: ignore[method-assign]
        reader, writer = await asyncio.open_connection(HOST, served.lane_port)
        writer.write(vote_request(f"/features/{served.feature}/vote", token=served.voter))
        await asyncio.wait_for(entered.wait(), 5)
        assert served.app[keys.LIFECYCLE].inflight == 1
        for site in list(runner.sites):
            await site.stop()
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
        release.set()
        answer = await read_answer(reader)
        assert answer.status == 200 and json.loads(answer.body)["up"] == 2
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
        assert served.app[keys.LIFECYCLE].inflight == 0
        writer.close()
        idle_writer.close()
    finally:
        release.set()
        await runner.cleanup()


async def test_pipelined_flood_is_read_no_faster_than_it_is_answered(served: Served) -> None:
    """A client that pipelines far more than it reads: the lane stops reading (bounded buffer)
    and still answers every request in order once the client reads."""
    one = vote_request(f"/features/{served.feature}/vote", token=served.voter)
    count = 3 * (70_000 // len(one) + 1)
    reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    try:
        writer.write(one * count)
        answers = [await read_answer(reader) for _ in range(count)]
    finally:
        writer.close()
    assert all(a.status == 200 for a in answers)
    assert served.lane.answered == count


async def inflight_becomes(served: Served, count: int) -> int:
    """The app's count of requests in flight once it is `count`, or after about a second."""
    lifecycle = served.app[keys.LIFECYCLE]
    for _ in range(100):
        if lifecycle.inflight == count:
            break
        await asyncio.sleep(0.01)
    return lifecycle.inflight


async def test_draining_waits_for_the_body_of_a_vote_whose_head_came() -> None:
    """As with an aiohttp handler: a request whose head arrived is in flight; site.stop leaves
    its connection open until its body comes and it is answered."""
    runner, served = await serve_both(make_settings())
    try:
        raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
        reader, writer = await asyncio.open_connection(HOST, served.lane_port)
        writer.write(raw[:-4])
        assert await inflight_becomes(served, 1) == 1
        for site in list(runner.sites):
            await site.stop()
        await asyncio.sleep(0.1)
        writer.write(raw[-4:])
        answer = await read_answer(reader)
        assert answer.status == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert served.app[keys.LIFECYCLE].inflight == 0
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_body_that_never_comes_is_not_left_in_flight(served: Served) -> None:
    raw = vote_request(f"/features/{served.feature}/vote", token=served.voter)
    _reader, writer = await asyncio.open_connection(HOST, served.lane_port)
    writer.write(raw[:-4])
    assert await inflight_becomes(served, 1) == 1
    writer.close()
    assert await inflight_becomes(served, 0) == 0
    assert served.lane.answered == 0


async def test_the_lane_over_the_redis_store_counts_concurrent_votes_once() -> None:
    """Redis store and Redis rate limits: the lane's vote awaits real network round trips."""
    from .redis_support import REDIS_URL, delete_namespace, require_redis, unique_prefix

    require_redis()
    prefix = unique_prefix()
    runner, served = await serve_both(
        make_settings(store=REDIS_URL, redis_prefix=prefix, vote_rate=60.0, vote_burst=45)
    )
    try:
        path = f"/features/{served.feature}/vote"
        voters = [served.token() for _ in range(40)]
        answers = await asyncio.gather(
            *(exchange(served.lane_port, vote_request(path, token=t)) for t in voters)
        )
        assert [a[0].status for a in answers] == [200] * 40
        assert sorted(json.loads(a[0].body)["up"] for a in answers) == list(range(1, 41))
        assert served.lane.answered == 40
        # One voter over its burst: the Redis limiter's 429 comes from the lane too.
        burst = [
            (await exchange(served.lane_port, vote_request(path, token=voters[0])))[0]
            for _ in range(50)
        ]
        assert {a.status for a in burst} == {200, 429}
        for name in ("wrong value", "bad token", "unknown feature"):
            raw = next(r for n, r, _ in cases(served) if n == name)
            expected = (await exchange(served.plain_port, raw))[0]
            assert (await exchange(served.lane_port, raw))[0].comparable() == expected.comparable()
    finally:
        await runner.cleanup()
        delete_namespace(REDIS_URL, prefix)


@pytest.mark.parametrize("lane", ["true", "false"])
def test_python_m_service_serves_votes_in_the_lane_unless_turned_off(
    tmp_path: Path, lane: str
) -> None:
    """The real process (uvloop): votes on a keep-alive connection, then a GET on it."""
    from .test_main import SECRET, clean_env, http, serving, verifier

    env = clean_env(FV_SECRET=SECRET, FV_VOTE_LANE=lane)
    with serving(tmp_path, env) as srv:
        admin = {"Authorization": f"Bearer {verifier(SECRET).issue(Role.ADMIN, 'admin')[0]}"}
        feature = http("POST", srv.url + "/features", body={"title": "Dark"}, headers=admin)
        assert feature.status == 201
        path = f"/features/{feature.json()['id']}/vote"
        voter = verifier(SECRET).issue(Role.VOTER)[0]
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection((HOST, port), timeout=5) as sock:
            stream = sock.makefile("rb")
            for value in (1, -1, 1):
                sock.sendall(vote_request(path, b'{"value":%d}' % value, token=voter))
                status = stream.readline()
                assert status.startswith(b"HTTP/1.1 200"), status
                length = 0
                while (line := stream.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                assert json.loads(stream.read(length))["value"] == value
            sock.sendall(b"GET /features/stats HTTP/1.1\r\nHost: t\r\n\r\n")
            assert stream.readline().startswith(b"HTTP/1.1 200")
            while stream.readline() != b"\r\n":
                pass
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # (stats unread)
            assert b"HTTP/1.1 200" in stream.read1(65536) + stream.read1(65536)
        metrics = http("GET", srv.url + "/metrics").body.decode()
    answered = re.search(r"^fv_vote_lane_answered_total (\S+)$", metrics, re.M)
    assert answered is not None, metrics
    assert float(answered.group(1)) == (4.0 if lane == "true" else 0.0)  # 3 votes, 1 stats
    votes = re.search(r'^fv_votes_total\{action="vote"\} (\S+)$', metrics, re.M)
    assert votes is not None and float(votes.group(1)) == 3.0
