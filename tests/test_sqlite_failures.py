"""The SQLite store when its file fails it (issue 16): a full file, a file that is not ours, one
from a newer version, and a backup taken while the server writes.

A full file (sqlite_max_bytes, SQLite's max_page_count: the commit fails as on a full disk):
the change is refused with 503, reads keep answering, memory is rebuilt from the file, and no
answer (2xx or a read) ever shows a change the file does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import sqlite3
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from service.app import create_app
from service.auth import Role
from service.config import PROJECT_ROOT
from service.keys import TOKENS
from service.schemas import DESCRIPTION_MAX, Sort
from service.store.base import Audience
from service.store.sqlite import APPLICATION_ID, SqliteBoards, open_file

from .conftest import AiohttpClient, Client, bearer, make_settings
from .ports import free_port, start_on_free_port
from .test_main import SECRET, clean_env, http, run_cli, start_serving, stop, verifier
from .test_sqlite_crash import NO_RATE_LIMITS_ENV, read_file, sqlite_env
from .waiting import eventually

PROBLEM: Final = "application/problem+json"
MAX_BYTES: Final = 200 * 1024
BATCHES: Final = 80  # of concurrent proposals: far more than fit in MAX_BYTES
Auth = dict[str, str]


def text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_letters + " ", k=size))


async def answer(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    body = await resp.json() if resp.content_type in ("application/json", PROBLEM) else None
    if resp.status >= 500:
        assert resp.status == 503, (resp.status, body)
        assert resp.content_type == PROBLEM
        assert resp.headers["Retry-After"].isdigit()
        assert isinstance(body, dict) and body["status"] == 503
    return resp.status, body


def file_features(db: Path) -> dict[int, tuple[str, int, int]]:
    """id -> (title, up, down) as the file holds main's features."""
    found = read_file(db)
    counts = found.counts("main")
    return {fid: (title, *counts[fid]) for fid, (title, _) in found.features["main"].items()}


async def served_features(client: Client) -> dict[int, tuple[str, int, int]]:
    resp = await client.get("/features?limit=200")
    status, body = await answer(resp)
    assert status == 200
    assert body["next_cursor"] is None
    return {f["id"]: (f["title"], f["up"], f["down"]) for f in body["items"]}


async def test_a_full_file_refuses_writes_with_503_and_keeps_reads(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    db = tmp_path / "f.sqlite3"
    url = f"sqlite:///{db}"
    rng = random.Random(16)
    client = await aiohttp_client(create_app(make_settings(store=url, sqlite_max_bytes=MAX_BYTES)))
    tokens = client.app[TOKENS]
    admin = bearer(tokens.issue(Role.ADMIN, "admin")[0])
    acked: dict[str, int] = {}  # title -> id
    refused: set[str] = set()
    votes: dict[str, tuple[Auth, int]] = {}  # acknowledged: voter -> (auth, feature)
    shown: set[str] = set()  # every title a 200 read showed
    read_statuses: list[int] = []
    stopping = False

    async def propose(title: str) -> None:
        body = {"title": title, "description": text(rng, DESCRIPTION_MAX)}
        status, out = await answer(await client.post("/features", json=body, headers=admin))
        if status == 201:
            assert out["title"] == title
            acked[title] = out["id"]
        else:
            assert status == 503, (status, out)
            refused.add(title)

    async def vote() -> None:
        if not acked:
            return
        auth = bearer(tokens.issue(Role.VOTER)[0])
        fid = rng.choice(list(acked.values()))
        resp = await client.put(f"/features/{fid}/vote", json={"value": 1}, headers=auth)
        status, _ = await answer(resp)
        assert status in (200, 503)
        if status == 200:
            votes[auth["Authorization"]] = (auth, fid)

    async def reader() -> None:
        while not stopping:
            for path in ("/features?limit=200", "/features/stats"):
                status, body = await answer(await client.get(path))
                read_statuses.append(status)
                if status == 200:
                    shown.update(f["title"] for f in body.get("items", body.get("top", [])))
            await asyncio.sleep(0)  # let the writers in between reads

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    try:
        # Concurrent proposals (several in one commit) until some are refused.
        for batch in range(BATCHES):
            jobs = [propose(f"b{batch}-{i}") for i in range(4)] + [vote() for _ in range(4)]
            await asyncio.gather(*jobs)
            if refused:
                break
        assert refused, "the file never filled up"
        # One at a time, until a lone proposal is refused.
        for n in range(40):
            before = len(refused)
            await propose(f"lone-{n}")
            if len(refused) > before:
                break
        else:
            raise AssertionError("a lone proposal was never refused")
        # More changes at the limit: each is either refused (503) or on disk, whichever the
        # file's free pages allow at that moment (a smaller batch, or a page a WAL checkpoint
        # freed, may fit) — what follows checks that memory and the file agree on every one.
        for n in range(5):
            await propose(f"after-{n}")
            await vote()
    finally:
        stopping = True
        await asyncio.gather(*readers)

    # Reads kept working: all of them 200 (a read never waits on a failed write for an answer).
    assert read_statuses and set(read_statuses) == {200}, set(read_statuses)
    # Memory is the file again: the same features with the same counts.
    async def agree() -> bool:
        return await served_features(client) == file_features(db)

    agreed: bool = await eventually(agree, what="memory equal to the file")
    assert agreed
    on_disk = file_features(db)
    titles = {title for title, _, _ in on_disk.values()}
    assert set(acked) <= titles, f"acknowledged but not on disk: {set(acked) - titles}"
    assert not refused & titles, f"refused but on disk: {refused & titles}"
    assert shown <= titles, f"a read showed what the file never held: {shown - titles}"
    status, body = await answer(await client.get("/features/stats"))
    assert status == 200
    assert body["up"] == sum(up for _, up, _ in on_disk.values()) >= len(votes)
    await client.close()

    # A new process on the same file, with room: every acknowledged change and nothing else.
    bigger = make_settings(store=url, sqlite_max_bytes=MAX_BYTES * 10)
    again = await aiohttp_client(create_app(bigger))
    served = await served_features(again)
    assert {title: fid for fid, (title, _, _) in served.items()} == acked
    assert served == on_disk
    for auth, fid in votes.values():
        resp = await again.get("/me/votes", headers=auth)
        assert (await resp.json())["votes"] == {str(fid): 1}
    resp = await again.post("/features", json={"title": "room again"}, headers=admin)
    assert resp.status == 201, await resp.text()


# --- files that are not this store's ----------------------------------------------------------


def foreign_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
        conn.commit()


def text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 20)


def newer_store(path: Path) -> None:
    conn, _epoch = open_file(path)
    with contextlib.closing(conn):
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        conn.execute("PRAGMA user_version=99")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")  # one file, as a copied-in file would be


def empty_application_id_with_tables(path: Path) -> None:
    """Ours in all but the application_id: still not ours."""
    newer_store(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version=1")
        conn.execute("PRAGMA application_id=0")
        conn.commit()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (foreign_sqlite, "not a Feature Votes store"),
        (text_file, "not a readable SQLite file"),
        (newer_store, "newer version"),
        (empty_application_id_with_tables, "not a Feature Votes store"),
    ],
    ids=["another-sqlite-db", "text-file", "newer-schema", "no-application-id"],
)
def test_a_file_that_is_not_ours_stops_the_start_and_stays_as_it_is(
    tmp_path: Path, make: Any, words: str
) -> None:
    db = tmp_path / "store.sqlite3"
    make(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    files_before = sorted(p.name for p in tmp_path.iterdir())
    env = sqlite_env(db, FV_HOST="127.0.0.1", PORT=str(free_port()))
    result = run_cli(env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("feature-votes:")]
    assert len(errors) == 1, result.stderr
    assert words in errors[0] and str(db) in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, "the file was changed"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == files_before or set(leftovers) - set(files_before) <= {
        db.name + "-wal", db.name + "-shm"}
    for extra in set(leftovers) - set(files_before):  # a WAL beside it must hold nothing
        assert (tmp_path / extra).stat().st_size == 0 or extra.endswith("-shm")


# --- backup while serving -----------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_server(db: Path) -> Iterator[Any]:
    env = sqlite_env(db)
    server = start_on_free_port(lambda port: start_serving(env, (), port, False))
    try:
        yield server
    finally:
        stop(server.proc)


async def backup(db: Path, out: Path) -> None:
    env = {**clean_env(FV_STORE=f"sqlite:///{db}", FV_SECRET=SECRET, **NO_RATE_LIMITS_ENV)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "backup", str(out), cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()


async def store_answers(path: Path, voters: list[tuple[str, str]]) -> dict[str, Any]:
    """What a store loaded from `path` answers: every board's stats, features, each voter's."""
    boards = SqliteBoards(f"sqlite:///{path}")
    try:
        out: dict[str, Any] = {}
        for slug in await board_slugs(boards):
            store = await boards.get(slug)
            stats = (await store.stats(Audience.PUBLIC)).body
            page = await store.list_features(sort=Sort.TOP, status=None, limit=200, after=None)
            out[slug] = {
                "stats": strip_time(stats),
                "features": [(f.id, f.title, f.up, f.down) for f in page.items],
                "votes": {sub: {str(k): v for k, v in (await store.votes_of(sub)).items()}
                          for sub, _ in voters},
            }
        return out
    finally:
        await boards.close()


async def board_slugs(boards: SqliteBoards) -> list[str]:
    page = await boards.listing(limit=100, after=None)
    return sorted(board.slug for board in page.items)


def strip_time(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(body) if isinstance(body, bytes | str) else dict(body)
    data.pop("generated_at", None)
    return data


async def served_answers(session: aiohttp.ClientSession, base: str, slugs: list[str],
                         voters: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for slug in slugs:
        async with session.get(f"{base}/boards/{slug}/stats") as resp:
            stats = strip_time(await resp.json())
        async with session.get(f"{base}/boards/{slug}/features?limit=200") as resp:
            items = (await resp.json())["items"]
        mine = {}
        for sub, token in voters:
            async with session.get(f"{base}/boards/{slug}/me/votes",
                                   headers=bearer(token)) as resp:
                mine[sub] = (await resp.json())["votes"]
        out[slug] = {
            "stats": stats,
            "features": [(f["id"], f["title"], f["up"], f["down"]) for f in items],
            "votes": mine,
        }
    return out


def state_after(changes: list[tuple[str, str, int, int]]) -> dict[tuple[str, str], int]:
    state: dict[tuple[str, str], int] = {}
    for slug, _sub, fid, value in changes:
        state[(slug, str(fid))] = value
    return state


async def test_backup_while_the_server_writes_is_a_consistent_store(tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite3"
    tokens = verifier(SECRET)
    admin = bearer(tokens.issue(Role.ADMIN, "admin")[0])
    voters = [(claims.sub, token) for token, claims in
              (tokens.issue(Role.VOTER) for _ in range(6))]
    rng = random.Random(7)
    acked: list[tuple[str, str, int, int]] = []  # (board, voter, feature, value), in order
    running = True
    with sqlite_server(db) as server:
        base = server.url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(f"{base}/boards", json={"title": "Other"}) as resp:
                assert resp.status == 201
                slugs = sorted(["main", (await resp.json())["board"]["slug"]])
            fids: dict[str, list[int]] = {}
            for slug in slugs:
                fids[slug] = []
                for i in range(3):
                    async with session.post(f"{base}/boards/{slug}/features",
                                            json={"title": f"{slug}-{i}"},
                                            headers=admin) as resp:
                        assert resp.status == 201
                        fids[slug].append((await resp.json())["id"])

            async def writer(index: int) -> None:
                sub, token = voters[index]
                while running:
                    slug = rng.choice(slugs)
                    fid = rng.choice(fids[slug])
                    value = rng.choice((1, -1))
                    async with session.put(f"{base}/boards/{slug}/features/{fid}/vote",
                                           json={"value": value},
                                           headers=bearer(token)) as resp:
                        assert resp.status == 200, await resp.text()
                    acked.append((slug, sub, fid, value))

            writers = [asyncio.create_task(writer(i)) for i in range(len(voters))]
            try:
                await eventually(lambda: len(acked) >= 30, what="votes before the backup")
                during = tmp_path / "during.sqlite3"
                acked_at_start = len(acked)
                await backup(db, during)
                acked_at_end = len(acked)
                await eventually(lambda: len(acked) >= 60, what="votes after the backup")
            finally:
                running = False
                await asyncio.gather(*writers)
            # Taken while votes were being written: each voter's votes in it are what that
            # voter's votes were after some prefix of its own changes, from those acknowledged
            # before the backup began to those sent before it ended (no change half-copied).
            copy = read_file(during)
            for sub, _ in voters:
                mine = [a for a in acked if a[1] == sub]
                low = sum(1 for a in acked[:acked_at_start] if a[1] == sub)
                high = sum(1 for a in acked[:acked_at_end] if a[1] == sub) + 1
                states = [state_after(mine[:k]) for k in range(low, min(high, len(mine)) + 1)]
                held = {(b, str(f)): v for (b, who, f), v in copy.votes.items() if who == sub}
                assert held in states, f"{sub}: {held} is none of {states}"
            loaded = await store_answers(during, voters)
            assert sorted(loaded) == slugs
            # Now quiet: a backup equals what the running server answers.
            after = tmp_path / "after.sqlite3"
            await backup(db, after)
            served = await served_answers(session, base, slugs, voters)
            assert await store_answers(after, voters) == served
            # Every board's last acknowledged vote of every voter is in it.
            last: dict[tuple[str, str], dict[str, int]] = {}
            for slug, sub, fid, value in acked:
                last.setdefault((slug, sub), {})[str(fid)] = value
            for slug in slugs:
                for sub, _ in voters:
                    assert served[slug]["votes"][sub] == last.get((slug, sub), {})
        assert http("GET", base + "/healthz").status == 200
