"""Every wire shape as a msgspec Struct, and the encoder/decoders built once."""

from __future__ import annotations

import enum
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

import msgspec

TITLE_MAX: Final = 120
DESCRIPTION_MAX: Final = 2000
# Stats and pushes carry what a board shows: each top feature's description is cut to this
# many characters (the last one an ellipsis), so /stats stays small whatever the descriptions.
EXCERPT_MAX: Final = 100
EXCERPT_MARK: Final = "\u2026"  # …
PAGE_DEFAULT: Final = 50
PAGE_MAX: Final = 200
IDEMPOTENCY_KEY_MAX: Final = 255
TOKEN_MAX: Final = 2048  # the longest bearer token accepted
DEFAULT_BOARD_TITLE: Final = "What should we build next?"
CURSOR_PATTERN: Final = "^[A-Za-z0-9_-]*$"  # next_cursor is unpadded base64url


class Status(enum.StrEnum):
    OPEN = "open"
    PLANNED = "planned"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    DECLINED = "declined"


CLOSED_STATUSES: Final = frozenset({Status.DONE, Status.DECLINED})


class Sort(enum.StrEnum):
    TOP = "top"
    NEW = "new"
    WILSON = "wilson"
    CONTROVERSIAL = "controversial"


# The orders that depend on vote counts: hidden from non-admins while results are hidden.
RANKED_SORTS: Final = frozenset({Sort.TOP, Sort.WILSON, Sort.CONTROVERSIAL})


def _check_text(value: str, field: str, low: int, high: int) -> str:
    """Trim, then enforce the length and refuse control characters (newlines allowed)."""
    value = value.strip()
    if not low <= len(value) <= high:
        raise ValueError(f"must be {low}..{high} characters after trimming - at `$.{field}`")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        raise ValueError(f"must not contain control characters - at `$.{field}`")
    return value


# The same rules as JSON Schema patterns for the OpenAPI document (ECMA-262 and Python agree on
# these): W is what str.strip() removes, E a character that may start or end the trimmed text
# (neither whitespace nor a control character), I one inside it (no control character but tab
# and newline). tests/test_schemathesis.py checks them against _check_text.
_W: Final = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_E: Final = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_I: Final = r"[^\x00-\x08\x0b-\x1f\x7f-\x9f]"
TITLE_PATTERN: Final = rf"^{_W}*{_E}(?:{_I}{{0,{TITLE_MAX - 2}}}{_E})?{_W}*$"
DESCRIPTION_PATTERN: Final = rf"^{_W}*(?:{_E}(?:{_I}*{_E})?)?{_W}*$"
Title = Annotated[
    str,
    msgspec.Meta(
        max_length=4 * TITLE_MAX,
        description=f"1..{TITLE_MAX} characters after trimming; no control characters",
        extra_json_schema={"pattern": TITLE_PATTERN},
    ),
]
Description = Annotated[
    str,
    msgspec.Meta(
        max_length=DESCRIPTION_MAX,
        description="trimmed; no control characters but tab and newline",
        extra_json_schema={"pattern": DESCRIPTION_PATTERN},
    ),
]


# --- requests -------------------------------------------------------------------------------


class FeatureCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /features."""

    title: Title
    description: Description = ""

    def __post_init__(self) -> None:
        self.title = _check_text(self.title, "title", 1, TITLE_MAX)
        self.description = _check_text(self.description, "description", 0, DESCRIPTION_MAX)


class FeaturePatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PATCH /features/{id}; absent fields stay as they are."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    status: Status | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.title, str):
            self.title = _check_text(self.title, "title", 1, TITLE_MAX)
        if isinstance(self.description, str):
            self.description = _check_text(self.description, "description", 0, DESCRIPTION_MAX)


# A voter's vote on a feature: +1 or -1 while it stands, 0 for none (retracted, or never cast).
VoteValue = Literal[-1, 0, 1]
CastVote = Literal[-1, 1]


class VoteIn(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PUT/POST /features/{id}/vote."""

    value: CastVote


class BoardPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PATCH /board; absent fields stay as they are."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    voting_open: bool | msgspec.UnsetType = msgspec.UNSET
    results_hidden: bool | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.title, str):
            self.title = _check_text(self.title, "title", 1, TITLE_MAX)


# --- responses ------------------------------------------------------------------------------


# Vote counts are null for everyone but an admin while the board's results are hidden.
Count = Annotated[int | None, msgspec.Meta(description="null while results are hidden")]


class Feature(msgspec.Struct, frozen=True):
    id: int
    title: str
    description: str
    status: Status
    created_at: datetime
    up: Count
    down: Count
    score: Count


class FeatureList(msgspec.Struct, frozen=True):
    items: list[Feature]
    next_cursor: str | None


class VoteOut(msgspec.Struct, frozen=True):
    feature_id: int
    value: VoteValue
    up: Count
    down: Count
    score: Count


class MyVotes(msgspec.Struct, frozen=True):
    votes: dict[str, CastVote]


MAIN_SLUG: Final = "main"  # the default board: the paths without /boards/{slug} are its own
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# A board's slug: "main", or what the server made (base32, lower case: 80 random bits).
SLUG_PATTERN: Final = r"[a-z2-7]{16}|main"
# Join codes: 6 characters of an alphabet with no 0/O, 1/I/L; typed in any case.
JOIN_CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
JOIN_CODE_LENGTH: Final = 6


class Board(msgspec.Struct, frozen=True):
    """One room: what it is called, its round, lock and reveal, and how people find it."""

    title: str
    round: int
    voting_open: bool
    results_hidden: bool
    slug: str = MAIN_SLUG
    join_code: Annotated[
        str, msgspec.Meta(description=f"{JOIN_CODE_LENGTH} characters of {JOIN_CODE_ALPHABET}")
    ] = ""
    created_at: datetime = EPOCH


DEFAULT_BOARD: Final = Board(DEFAULT_BOARD_TITLE, 1, voting_open=True, results_hidden=False)


class BoardCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /boards."""

    title: Title

    def __post_init__(self) -> None:
        self.title = _check_text(self.title, "title", 1, TITLE_MAX)


class BoardCreated(msgspec.Struct, frozen=True):
    """The new board and its admin token: shown once, kept by the creator's browser."""

    board: Board
    admin_token: str


class BoardList(msgspec.Struct, frozen=True):
    items: list[Board]
    next_cursor: str | None


class Stats(msgspec.Struct, frozen=True):
    seq: int
    total_features: int
    total_votes: int
    up: Count
    down: Count
    voters: int
    top: Annotated[
        list[Feature],
        msgspec.Meta(
            description=(
                f"The first N features in sort=top order, as a board shows them: a description "
                f"longer than {EXCERPT_MAX} characters is cut to its first {EXCERPT_MAX - 1} "
                f"and an ellipsis (\u2026); GET /features/{{id}} has the whole text."
            )
        ),
    ]
    generated_at: datetime
    board: Board
    epoch: Annotated[
        str,
        msgspec.Meta(
            description=(
                "The identity of the store's data: the same across restarts of a durable "
                "store, new when the data was lost (a memory store's restart, a Redis that came "
                "back empty). seq is comparable only within one epoch."
            )
        ),
    ] = ""


class RoundSummary(msgspec.Struct, frozen=True):
    """A closed round: when, how many votes and voters, and whether it closed hidden."""

    round: int
    title: str
    closed_at: datetime
    total_votes: int
    voters: int
    results_hidden: bool


class RoundList(msgspec.Struct, frozen=True):
    items: list[RoundSummary]


class Standings(msgspec.Struct, frozen=True):
    """Every feature of a round in top order with its counts: GET /rounds/{n} and exports.

    closed_at is null for the current round. Hidden results (the current round while
    results_hidden, or a round that closed hidden) reach non-admins ordered by id, counts null.
    """

    round: int
    title: str
    closed_at: datetime | None
    results_hidden: bool
    total_votes: int
    voters: int
    standings: list[Feature]


class TokenOut(msgspec.Struct, frozen=True):
    token: str
    voter_id: str
    expires_at: datetime


class Health(msgspec.Struct, frozen=True):
    status: str


class ProblemItem(msgspec.Struct, frozen=True):
    loc: str
    msg: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[ProblemItem] = []


# --- WebSocket messages ---------------------------------------------------------------------


class Ping(msgspec.Struct, tag="ping", tag_field="type", forbid_unknown_fields=True):
    """Answered with a pong."""


class Auth(msgspec.Struct, tag="auth", tag_field="type", forbid_unknown_fields=True):
    """An admin token, sent after the handshake (never in the URL, where logs would keep it)."""

    token: Annotated[str, msgspec.Meta(max_length=TOKEN_MAX)]


class Pong(msgspec.Struct, tag="pong", tag_field="type", frozen=True):
    pass


class AuthOk(msgspec.Struct, tag="auth", tag_field="type", frozen=True):
    """The socket now gets the frames of `role`: "admin" (real numbers while results are
    hidden) after an admin token, "public" again once that token expired."""

    role: Literal["admin", "public"]


class WsError(msgspec.Struct, tag="error", tag_field="type", frozen=True):
    detail: str


class StatsPush(msgspec.Struct, tag="stats", tag_field="type", frozen=True):
    """Documents the pushed frame; the server splices the cached stats bytes in (ADR-005)."""

    seq: int
    stats: Stats


# --- codecs, built once ---------------------------------------------------------------------

encoder: Final = msgspec.json.Encoder()
feature_create_decoder: Final = msgspec.json.Decoder(FeatureCreate)
feature_patch_decoder: Final = msgspec.json.Decoder(FeaturePatch)
vote_decoder: Final = msgspec.json.Decoder(VoteIn)
board_patch_decoder: Final = msgspec.json.Decoder(BoardPatch)
board_create_decoder: Final = msgspec.json.Decoder(BoardCreate)
client_message_decoder: Final = msgspec.json.Decoder(Ping | Auth)

RESPONSE_TYPES: Final = (
    Feature,
    FeatureList,
    VoteOut,
    MyVotes,
    Stats,
    TokenOut,
    Health,
    Problem,
    Board,
    RoundList,
    Standings,
    BoardCreated,
    BoardList,
)
REQUEST_TYPES: Final = (FeatureCreate, FeaturePatch, VoteIn, BoardPatch, BoardCreate)
