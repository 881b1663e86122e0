"""The store interface every backend fills, so handlers never know which one runs."""

from __future__ import annotations

import abc
import enum
import math
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Final, NamedTuple

from ..schemas import (
    EPOCH,
    JOIN_CODE_ALPHABET,
    JOIN_CODE_LENGTH,
    MAIN_SLUG,
    Board,
    BoardPatch,
    CastVote,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Status,
    VoteOut,
    VoteValue,
)

# A position in a listing: the sort key of the last item returned.
CursorKey = tuple[int, ...]
ChangeListener = Callable[[int], None]
KEY_LENGTH: Final = {Sort.TOP: 3, Sort.NEW: 1, Sort.WILSON: 3, Sort.CONTROVERSIAL: 3}
# A ranked listing shown to a non-admin while results are hidden runs by id ascending (the rank
# would reveal the counts); its cursor key is then just (id,).
HIDDEN_KEY_LENGTH: Final = 1
# z for a two-sided 95 % interval: the Wilson lower bound of sort=wilson.
WILSON_Z: Final = 1.959963984540054
# Rank scores are floats; sort keys are integers: floor(score x scale + 0.5). A wilson bound is
# in [0, 1], so 10^15 keeps all but the last bits of a double; a controversy score is at most the
# number of votes on one feature, so 10^9 keeps it below the key range (+-10^15) up to a million
# votes on one feature. The Redis store computes the same keys in Lua (redis_scripts.py).
WILSON_SCALE: Final = 10**15
CONTROVERSY_SCALE: Final = 10**9


class Audience(enum.StrEnum):
    """Who reads: while results are hidden, only an admin sees vote counts and ranks."""

    PUBLIC = "public"
    ADMIN = "admin"


def scaled(score: float, scale: int) -> int:
    """A rank score as an integer key part (half up, as the Lua twin does)."""
    return math.floor(score * scale + 0.5)


def wilson_lower_bound(up: int, down: int) -> float:
    """Lower bound of the 95 % Wilson score interval of up / (up + down); 0 without votes."""
    n = up + down
    if n <= 0:
        return 0.0
    z2 = WILSON_Z * WILSON_Z
    p = up / n
    spread = WILSON_Z * math.sqrt((p * (1 - p) + z2 / (4 * n)) / n)
    return max(0.0, (p + z2 / (2 * n) - spread) / (1 + z2 / n))


def controversy(up: int, down: int) -> float:
    """(up + down) ** (min / max): many votes, evenly split; 0 unless both sides have votes."""
    if up <= 0 or down <= 0:
        return 0.0
    return float((up + down) ** (min(up, down) / max(up, down)))


def sort_key(sort: Sort, feature_id: int, up: int, down: int) -> CursorKey:
    """Ascending key of each order (ADR-007); the feature id is the last part of a ranked key.

    top = score desc, up desc, id asc; new = id desc; wilson = features with votes first, then
    Wilson lower bound desc, id asc; controversial = controversy desc, votes desc, id asc.
    """
    if sort is Sort.TOP:
        return (down - up, -up, feature_id)
    if sort is Sort.NEW:
        return (-feature_id,)
    if sort is Sort.WILSON:
        unvoted = 0 if up + down else 1
        return (unvoted, -scaled(wilson_lower_bound(up, down), WILSON_SCALE), feature_id)
    return (-scaled(controversy(up, down), CONTROVERSY_SCALE), -(up + down), feature_id)


DEFAULT_MAX_FEATURES: Final = 1000  # the max_features setting's default (service/config.py)


def full_board(max_features: int) -> str:
    """TooManyFeatures' message."""
    return (
        f"the board holds {max_features} features, its max_features; delete one (an admin) "
        "before proposing another"
    )


class Page(NamedTuple):
    items: list[Feature]
    next_key: CursorKey | None


class Created(NamedTuple):
    feature: Feature
    replayed: bool  # True when an Idempotency-Key matched an earlier identical request


class StatsView(NamedTuple):
    """Stats of one seq, encoded once and shared by every reader until the next change."""

    seq: int
    body: bytes
    etag: str


def etag_for(seq: int, audience: Audience | None = None, epoch: str = "") -> str:
    """W/"<epoch>.<seq>"; while results are hidden each audience has its own:
    W/"<epoch>.<seq>-public" etc. The epoch keeps a tag of lost data (a seq counted again from
    0) from confirming a body it never described.

    Weak: instances sharing a store agree on seq but not on generated_at. Two audiences never
    share a tag for different bodies, so a 304 cannot confirm a body its reader may not see.
    """
    tag = f"{epoch}.{seq}" if epoch else str(seq)
    return f'W/"{tag}"' if audience is None else f'W/"{tag}-{audience.value}"'


class Identity(NamedTuple):
    """What names a board and never changes: its slug, join code and when it was made."""

    slug: str = MAIN_SLUG
    join_code: str = ""
    created_at: datetime = EPOCH


MAIN: Final = Identity()
SLUG_BYTES: Final = 10  # 80 random bits: 16 characters of base32


def new_slug() -> str:
    """A server-made, unguessable slug: 16 characters of lower-case base32."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    n = int.from_bytes(secrets.token_bytes(SLUG_BYTES))
    return "".join(alphabet[(n >> (5 * i)) & 31] for i in range(SLUG_BYTES * 8 // 5))


def new_join_code() -> str:
    return "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(JOIN_CODE_LENGTH))


def normal_join_code(code: str) -> str | None:
    """A typed code as stored (upper case, no spaces or dashes), or None when it cannot be one."""
    code = code.strip().replace(" ", "").replace("-", "").upper()
    if len(code) != JOIN_CODE_LENGTH or any(c not in JOIN_CODE_ALPHABET for c in code):
        return None
    return code


class Store(abc.ABC):
    """One board: its features, one vote per (voter, feature), its controls and cached stats;
    every mutation atomic. A BoardDirectory hands out one Store per board.

    Reads that carry vote counts take the reader's audience: while the board's results are
    hidden, a PUBLIC reader gets counts as null and ranked orders by id, decided from the same
    consistent read as the data itself (never from a separate look at the board).
    """

    @abc.abstractmethod
    async def create_feature(
        self,
        new: FeatureCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        audience: Audience = Audience.PUBLIC,
    ) -> Created: ...

    @abc.abstractmethod
    async def get_feature(
        self, feature_id: int, *, audience: Audience = Audience.PUBLIC
    ) -> Feature: ...

    @abc.abstractmethod
    async def list_features(
        self,
        *,
        sort: Sort,
        status: Status | None,
        limit: int,
        after: CursorKey | None,
        audience: Audience = Audience.PUBLIC,
    ) -> Page: ...

    @abc.abstractmethod
    async def update_feature(self, feature_id: int, patch: FeaturePatch) -> Feature: ...

    @abc.abstractmethod
    async def delete_feature(self, feature_id: int) -> None: ...

    @abc.abstractmethod
    async def set_vote(
        self,
        voter: str,
        feature_id: int,
        value: VoteValue,
        *,
        audience: Audience = Audience.PUBLIC,
    ) -> VoteOut:
        """Set the voter's vote to +1/-1, or retract it with 0; repeating is a no-op.

        VotingClosed while the board is locked, checked in the same atomic step as the vote.
        """

    @abc.abstractmethod
    async def votes_of(self, voter: str) -> dict[int, CastVote]: ...

    async def seq(self) -> int:
        """The current seq: what a cache of anything derived from the board is keyed by."""
        return (await self.stats()).seq

    @abc.abstractmethod
    async def stats(self, audience: Audience = Audience.PUBLIC) -> StatsView:
        """This audience's stats of the current seq, encoded once per audience per seq."""

    async def stats_by_audience(self) -> dict[Audience, StatsView]:
        """Every audience's stats (the broadcaster pushes them together); a backend that can
        read them in one step overrides this. Audiences that see the same body share one view."""
        return {audience: await self.stats(audience) for audience in Audience}

    # --- the board: rounds and presenter controls (ADR-007) ---------------------------------------

    @abc.abstractmethod
    async def board(self) -> Board: ...

    @abc.abstractmethod
    async def update_board(self, patch: BoardPatch) -> Board:
        """Apply the given fields; a change bumps seq, an empty or same-value patch does not."""

    @abc.abstractmethod
    async def reset_board(self) -> Board:
        """Archive the round's standings, clear every vote, start the next round: one step."""

    @abc.abstractmethod
    async def rounds(self) -> list[RoundSummary]:
        """The closed rounds, newest first."""

    @abc.abstractmethod
    async def standings(
        self, round_no: int | None = None, *, audience: Audience = Audience.PUBLIC
    ) -> Standings:
        """A closed round's archived standings, or the current round's (None or its number)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot answer."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work (e.g. a change subscription); default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections and stop background work; the default has none."""

    @abc.abstractmethod
    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call listener(seq) after every change; returns the unsubscribe function."""

    identity: Identity = MAIN
    deleted: bool = False  # the board was deleted (a request may still hold its store)

    @property
    def slug(self) -> str:
        return self.identity.slug


DeletionListener = Callable[[str], None]
DEFAULT_MAX_BOARDS: Final = 10_000


class BoardPage(NamedTuple):
    items: list[Board]
    next_after: str | None  # the slug to go on after, when there are more


class BoardDirectory(abc.ABC):
    """Every board of a deployment, each a Store of its own (its own lock, seq and channel).

    `main` always exists and cannot be deleted. Looking a board up is what every request on it
    does first, so `get` costs a dictionary look-up once a board is known to this instance.
    """

    @property
    @abc.abstractmethod
    def main(self) -> Store: ...

    @abc.abstractmethod
    async def get(self, slug: str) -> Store:
        """The board's store; BoardNotFound for a slug no live board has."""

    @abc.abstractmethod
    async def by_code(self, code: str) -> Store:
        """The board whose join code this is (already normalised); BoardNotFound else."""

    @abc.abstractmethod
    async def create(self, title: str) -> Store:
        """A new board with a fresh slug and a join code unique among live boards;
        TooManyBoards at max_boards."""

    @abc.abstractmethod
    async def delete(self, slug: str) -> None:
        """Remove a board with everything on it; BoardKept for main, BoardNotFound for none.
        Deletion listeners are called (on every instance) with the slug."""

    @abc.abstractmethod
    async def listing(self, *, limit: int, after: str | None) -> BoardPage:
        """Boards in the order they were made (main first)."""

    @abc.abstractmethod
    async def count(self) -> int: ...

    @abc.abstractmethod
    async def expire_idle(self, idle_for: float) -> list[str]:
        """Delete the boards (never main) with no change for `idle_for` seconds; their slugs."""

    def __init__(self) -> None:
        self._deletion_listeners: list[DeletionListener] = []

    def on_deleted(self, listener: DeletionListener) -> Callable[[], None]:
        """Call listener(slug) when a board is deleted here or on another instance."""
        self._deletion_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._deletion_listeners:
                self._deletion_listeners.remove(listener)

        return unsubscribe

    def _announce_deleted(self, slug: str) -> None:
        for listener in tuple(self._deletion_listeners):  # a listener may unsubscribe itself
            listener(slug)

    async def start(self) -> None:
        """Connect, start background work, and prepare() the stored boards."""
        await self.prepare()

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Bring what is stored to this version's layout (on a store that is already open)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; default: nothing."""

    async def ping(self) -> None:
        await self.main.ping()
