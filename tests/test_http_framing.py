"""HTTP/1.1 framing on real sockets: what the served app (aiohttp's parser) answers to raw bytes.

The behavioural cases of the retired vote lane's differential table (ADR-010): keep-alive,
pipelining, a request trickled byte by byte, half-close, partial requests, and odd or hostile
framing (repeated or conflicting lengths, Transfer-Encoding tricks, request smuggling, a head
trickled forever). Votes are checked through `GET /stats`: a refused request moves no vote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from service import keys
from service.app import create_app, make_runner
from service.auth import Role
from service.config import Settings

from .conftest import make_settings

HOST = "127.0.0.1"
WAIT = 10.0  # bound of every read: generous, so a busy host does not fail a test


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        loaded = json.loads(self.body)
        assert isinstance(loaded, dict)
        return loaded


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next final answer on the connection (an interim 100 Continue is skipped)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    while head.startswith(b"HTTP/1.1 1"):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    return Answer(int(lines[0].split()[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sends before it closes the connection (bounded wait)."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b""


@dataclass
class Served:
    app: web.Application
    port: int
    feature: int
    admin: str

    @property
    def path(self) -> str:
        return f"/features/{self.feature}/vote"

    def voter(self) -> str:
        """A fresh voter's token (each test's votes are its own)."""
        return self.app[keys.TOKENS].issue(Role.VOTER)[0]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port)

    async def exchange(self, raw: bytes, answers: int = 1) -> list[Answer]:
        reader, writer = await self.connect()
        try:
            writer.write(raw)
            return [await read_answer(reader) for _ in range(answers)]
        finally:
            writer.close()

    async def up_votes(self) -> int:
        """The board's `up` total, read through GET /stats on a connection of its own."""
        (answer,) = await self.exchange(get_request("/stats"))
        assert answer.status == 200
        up = answer.json()["up"]
        assert isinstance(up, int)
        return up


async def serve(settings: Settings) -> tuple[web.AppRunner, Served]:
    """The app as `python -m service` serves it: make_runner + a TCPSite on 127.0.0.1, port 0."""
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    admin = app[keys.TOKENS].issue(Role.ADMIN, "admin")[0]
    served = Served(app, site.port, 0, admin)
    body = b'{"title":"Dark mode"}'
    (created,) = await served.exchange(vote_request("/features", body, method="POST", token=admin))
    assert created.status == 201, created.body
    feature = created.json()["id"]
    assert isinstance(feature, int)
    served.feature = feature
    return runner, served


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    runner, served = await serve(make_settings())
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
    headers: dict[str, str | None] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request with a JSON body and its Content-Length; a header given None is left out."""
    fields: dict[str, str | None] = {"Host": "votes.test", "Content-Type": "application/json"}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} {version}\r\n{head}\r\n".encode() + body


def get_request(path: str, headers: dict[str, str] | None = None, *, method: str = "GET") -> bytes:
    fields = {"Host": "votes.test", **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode()


def chunked_vote(path: str, token: str, chunks: list[bytes]) -> bytes:
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: votes.test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + b"0\r\n\r\n"


# --- keep-alive and pipelining ------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    """Three votes, a stats read and a feature read in one write: five answers, in order."""
    raw = b"".join(vote_request(served.path, token=served.voter()) for _ in range(3))
    raw += get_request("/features/stats") + get_request(f"/features/{served.feature}")
    answers = await served.exchange(raw, answers=5)
    assert [a.status for a in answers] == [200] * 5
    assert [a.json()["up"] for a in answers[:3]] == [1, 2, 3]
    assert answers[3].json()["total_votes"] == 3
    assert answers[4].json()["up"] == 3


async def test_many_votes_on_one_keep_alive_connection(served: Served) -> None:
    token = served.voter()
    reader, writer = await served.connect()
    try:
        for i in range(200):
            value = 1 if i % 2 else -1
            writer.write(vote_request(served.path, b'{"value":%d}' % value, token=token))
            answer = await read_answer(reader)
            assert answer.status == 200
            assert answer.json()["value"] == value
            assert answer.headers.get("connection", "keep-alive").lower() != "close"
    finally:
        writer.close()
    assert await served.up_votes() == 1  # the last of the 200 was +1


async def test_a_pipelined_flood_is_answered_in_full_once_the_client_reads(
    served: Served,
) -> None:
    """A client that writes far more than it reads still gets every answer, in order."""
    tokens = [served.voter() for _ in range(3)]
    one = [vote_request(served.path, token=t) for t in tokens]
    rounds = 70_000 // sum(map(len, one)) + 1
    reader, writer = await served.connect()
    try:
        writer.write(b"".join(one) * rounds)
        answers = [await read_answer(reader) for _ in range(3 * rounds)]
    finally:
        writer.close()
    assert all(a.status == 200 for a in answers)
    assert [a.json()["up"] for a in answers[:3]] == [1, 2, 3]
    assert {a.json()["up"] for a in answers[3:]} == {3}  # repeats change nothing


async def test_a_request_arriving_byte_by_byte_is_answered(served: Served) -> None:
    raw = vote_request(served.path, token=served.voter())
    reader, writer = await served.connect()
    try:
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # pacing, so bytes leave in separate segments
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and answer.json()["up"] == 1


async def test_expect_100_continue_gets_the_interim_answer_then_the_vote(served: Served) -> None:
    raw = vote_request(served.path, token=served.voter(), headers={"Expect": "100-continue"})
    head, body = raw.split(b"\r\n\r\n", 1)
    reader, writer = await served.connect()
    try:
        writer.write(head + b"\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and answer.json()["up"] == 1


# --- half-close and partial requests ------------------------------------------------------------


async def test_a_client_that_half_closes_after_its_request(served: Served) -> None:
    """aiohttp takes EOF from the client as the end of the connection: it closes it without an
    answer, yet the complete request before the EOF is served (the vote counts, once). A client
    that must hear the answer keeps its side open until it has read it."""
    raw = vote_request(served.path, token=served.voter())
    reader, writer = await served.connect()
    try:
        writer.write(raw)
        writer.write_eof()
        assert await closed(reader) == b""
    finally:
        writer.close()
    assert await up_votes_become(served, 1) == 1


async def up_votes_become(served: Served, count: int) -> int:
    """The board's `up` total once it is `count`, or after about WAIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    up = await served.up_votes()
    while up != count and loop.time() < deadline:
        await asyncio.sleep(0.02)
        up = await served.up_votes()
    return up


@pytest.mark.parametrize("cut", [3, 20, -3], ids=["in the method", "in the head", "in the body"])
async def test_a_partial_request_then_eof_is_closed_without_an_answer(
    served: Served, cut: int
) -> None:
    raw = vote_request(served.path, token=served.voter())
    reader, writer = await served.connect()
    try:
        writer.write(raw[:cut])
        writer.write_eof()
        assert await closed(reader) == b""
    finally:
        writer.close()
    assert await served.up_votes() == 0


# --- odd and hostile framing --------------------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    name: str
    build: Callable[[str, str], bytes]  # (vote path, token) -> the raw request
    status: int
    applied: bool  # does the vote count?


def _with(headers: dict[str, str | None]) -> Callable[[str, str], bytes]:
    return lambda path, token: vote_request(path, token=token, headers=headers)


def _replace(old: bytes, new: bytes) -> Callable[[str, str], bytes]:
    return lambda path, token: vote_request(path, token=token, headers={"X-A": "1"}).replace(
        old, new
    )


FRAMINGS = [
    Framing("plain", _with({}), 200, True),
    Framing("charset", _with({"Content-Type": "application/json; charset=utf-8"}), 200, True),
    Framing("tab and spaces around a value", _with({"X-A": "\t b \t"}), 200, True),
    Framing("chunked", lambda p, t: chunked_vote(p, t, [b'{"value":1}']), 200, True),
    Framing("chunked in pieces", lambda p, t: chunked_vote(p, t, [b'{"val', b'ue":1}']), 200, True),
    Framing("Content-Length twice, same value", _with({"content-length": "11"}), 400, False),
    Framing("Content-Length twice, two values", _with({"content-length": "12"}), 400, False),
    Framing("Content-Length as a list", _with({"Content-Length": "11, 11"}), 400, False),
    Framing("signed Content-Length", _with({"Content-Length": "+11"}), 400, False),
    Framing(
        "Content-Length and Transfer-Encoding: identity",
        _with({"Transfer-Encoding": "identity"}),
        400,
        False,
    ),
    Framing(
        "Content-Length and Transfer-Encoding: chunked",
        _with({"Transfer-Encoding": "chunked"}),
        400,
        False,
    ),
    Framing(
        "Transfer-Encoding: identity alone",
        _with({"Transfer-Encoding": "identity", "Content-Length": None}),
        400,
        False,
    ),
    Framing("two Hosts", _with({"host": "b"}), 400, False),
    Framing("space before the colon", _with({"X-Thing ": "1"}), 400, False),
    Framing("bare LF", _replace(b"X-A: 1\r\n", b"X-A: 1\n"), 400, False),
    Framing("obs-fold", _replace(b"X-A: 1\r\n", b"X-A: 1\r\n 2\r\n"), 400, False),
    Framing("line without a colon", _replace(b"X-A: 1", b"X-A 1"), 400, False),
    Framing("DEL in a value", _with({"X-A": "a\x7fb"}), 400, False),
    Framing("a field over max_header_size", _with({"X-A": "a" * 9000}), 400, False),
]


@pytest.mark.parametrize("case", FRAMINGS, ids=[f.name for f in FRAMINGS])
async def test_odd_framing(served: Served, case: Framing) -> None:
    """Each request alone on a connection: its answer, whether its vote counts, and that a
    refused request ends the connection (nothing after it can be read as a request)."""
    reader, writer = await served.connect()
    try:
        writer.write(case.build(served.path, served.voter()))
        answer = await read_answer(reader)
        assert answer.status == case.status, answer.body
        if case.status >= 400:
            assert answer.status < 500
            assert await closed(reader) == b""
    finally:
        writer.close()
    assert await served.up_votes() == (1 if case.applied else 0)


async def test_te_cl_smuggling_applies_no_hidden_vote(served: Served) -> None:
    """TE.CL: a Content-Length covering only the chunk-size line, Transfer-Encoding: chunked,
    and a complete second vote inside the chunk. One 400, the connection closed, no vote."""
    outer, hidden = served.voter(), served.voter()
    inner = vote_request(served.path, token=hidden)
    size = b"%x\r\n" % len(inner)
    raw = (
        (
            f"PUT {served.path} HTTP/1.1\r\nHost: votes.test\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {outer}\r\nContent-Length: {len(size)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + size
        + inner
        + b"\r\n0\r\n\r\n"
    )
    reader, writer = await served.connect()
    try:
        writer.write(raw)
        answer = await read_answer(reader)
        assert answer.status == 400
        assert await closed(reader) == b""  # one answer only: no queue of answers to poison
    finally:
        writer.close()
    assert await served.up_votes() == 0


async def test_cl_te_smuggling_applies_no_hidden_vote(served: Served) -> None:
    """CL.TE: Transfer-Encoding: chunked ends the body at `0`, a Content-Length covers a second
    vote behind it. One 400, the connection closed, no vote."""
    outer, hidden = served.voter(), served.voter()
    inner = vote_request(served.path, token=hidden)
    body = b"0\r\n\r\n" + inner
    raw = (
        f"PUT {served.path} HTTP/1.1\r\nHost: votes.test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {outer}\r\nContent-Length: {len(body)}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + body
    reader, writer = await served.connect()
    try:
        writer.write(raw)
        answer = await read_answer(reader)
        assert answer.status == 400
        assert await closed(reader) == b""
    finally:
        writer.close()
    assert await served.up_votes() == 0


# --- the keep-alive timer -----------------------------------------------------------------------

KEEPALIVE = 0.5


@pytest.fixture
async def short_keepalive() -> AsyncIterator[Served]:
    runner, served = await serve(make_settings(http_keepalive_timeout=KEEPALIVE))
    try:
        yield served
    finally:
        await runner.cleanup()


async def test_an_idle_connection_is_closed_after_the_keep_alive_setting(
    short_keepalive: Served,
) -> None:
    served = short_keepalive
    reader, writer = await served.connect()
    try:
        writer.write(vote_request(served.path, token=served.voter()))
        assert (await read_answer(reader)).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await closed(reader) == b""
        assert loop.time() - started >= KEEPALIVE / 2  # closed by the timer, not at once
    finally:
        writer.close()


async def test_a_head_trickled_byte_by_byte_is_closed_by_the_keep_alive_timer(
    short_keepalive: Served,
) -> None:
    """Slowloris: a byte every 50 ms does not keep a head alive; the connection is closed
    without an answer long before the head would reach max_header_size."""
    served = short_keepalive
    reader, writer = await served.connect()
    head = f"PUT {served.path} HTTP/1.1\r\nHost: votes.test\r\nX-Pad: ".encode()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for byte in head + b"a" * 8000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the attack's pace, not a synchronisation

    sender = asyncio.create_task(trickle())
    try:
        assert await closed(reader) == b""  # within WAIT: about 200 of its 8,000 bytes
    finally:
        sender.cancel()
        writer.close()


async def test_a_slow_body_is_not_cut_by_the_keep_alive_timer(short_keepalive: Served) -> None:
    """The timer closes connections waiting for a head, not a request whose body is coming."""
    served = short_keepalive
    raw = vote_request(served.path, token=served.voter())
    reader, writer = await served.connect()
    try:
        writer.write(raw[:-4])
        await asyncio.sleep(KEEPALIVE * 2)  # longer than the keep-alive setting, on purpose
        writer.write(raw[-4:])
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and answer.json()["up"] == 1
