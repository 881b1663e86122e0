"""The store property test's model, run against the SQLite store; at the end of every run the
file is loaded again and must answer exactly what the live store answered (nothing on disk
differs from memory)."""

from __future__ import annotations

import json
import shutil
import tempfile

from hypothesis import settings

from service.schemas import Sort
from service.store import Audience, Store
from service.store.sqlite import SqliteBoards

from .test_store_property import TOP_N, StoreMachine


async def answers(store: Store) -> tuple[object, ...]:
    """What a reader of the board gets, less the instant the stats were made."""
    stats = json.loads((await store.stats(Audience.ADMIN)).body)
    stats.pop("generated_at")
    listing = await store.list_features(
        sort=Sort.TOP, status=None, limit=1000, after=None, audience=Audience.ADMIN
    )
    return stats, listing.items, await store.rounds()


class SqliteStoreMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.run(self.store.close())  # the parent's memory store
        self.folder = tempfile.mkdtemp(prefix="fv-sqlite-property-")
        self.url = f"sqlite:///{self.folder}/store.sqlite3"
        self.boards = SqliteBoards(self.url, top_n=TOP_N, clock=lambda: 0.0)
        self.store = self.boards.main
        self.last_seq = self.seq()

    def teardown(self) -> None:
        try:
            live = self.run(answers(self.store))
            self.run(self.boards.close())
            again = SqliteBoards(self.url, top_n=TOP_N, clock=lambda: 0.0)
            try:
                assert self.run(answers(again.main)) == live, "the file differs from memory"
            finally:
                self.run(again.close())
            self.loop.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


SqliteStoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestSqliteStoreAgainstModel = SqliteStoreMachine.TestCase
