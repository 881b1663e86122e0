"""The use cases of a board, whatever carries them: plain, already-parsed values in (claims, a
feature id as an int, decoded request structs, the client's address), domain values out.

HTTP (api.py, board_api.py) and WebSocket (ws.py) handlers parse their request, call one of
these, and render what it returns; none of them talks to the store, the token signer or the
rate limits directly. The collaborators are given to `Core` explicitly (ADR-010).

Rate limits are steps of their own where a request must be refused before it is parsed any
further: `admit_vote` and `admit_proposal` count the voter's request and hand back a ticket,
which is what `vote`, `retract` and `propose` take. A handler can parse the feature id and read
the body in between (a flood gets its 429 before its body is read), but cannot reach the store
without the limit having been counted.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import io
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Final, NamedTuple

from .auth import (
    Claims,
    Forbidden,
    Role,
    TokenInvalid,
    TokenMissing,
    Tokens,
    bearer_token,
    require_admin,
    require_role,
)
from .metrics import Metrics
from .ratelimit import RateLimited, RateLimits
from .schemas import (
    MAIN_SLUG,
    Board,
    BoardCreated,
    BoardPatch,
    CastVote,
    Feature,
    FeatureCreate,
    FeaturePatch,
    RoundSummary,
    Sort,
    Standings,
    Status,
    TokenOut,
    VoteOut,
    VoteValue,
    encoder,
)
from .store import (
    Audience,
    BoardDirectory,
    BoardNotFound,
    Created,
    CursorKey,
    NotFound,
    Page,
    StatsView,
    Store,
)
from .store.base import BoardPage, normal_join_code

CSV_COLUMNS: Final = (
    "rank",
    "id",
    "title",
    "status",
    "up",
    "down",
    "score",
    "created_at",
    "description",
)
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such
# user text is exported with a leading apostrophe, which spreadsheets show as plain text.
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class VoteTicket(NamedTuple):
    """A voter's vote request that passed the vote rate limit (admit_vote)."""

    claims: Claims


class ProposalTicket(NamedTuple):
    """A request to propose a feature that passed the create rate limit (admit_proposal)."""

    claims: Claims


class ExportFormat(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


MEDIA_TYPES: Final = {ExportFormat.JSON: "application/json", ExportFormat.CSV: "text/csv"}


class Export(NamedTuple):
    """A rendered standings file: its bytes, media type and the file name to save it under."""

    round: int
    body: bytes
    media_type: str
    filename: str


def audience_for(claims: Claims, slug: str) -> Audience:
    """ADMIN for an admin of this board (a site admin, or this board's admin token)."""
    return Audience.ADMIN if claims.admin_of(slug) else Audience.PUBLIC


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _count_cell(value: int | None) -> str:
    return "" if value is None else str(value)


def standings_csv(standings: Standings) -> str:
    """One header row, then a row per feature in standings order (RFC 4180, CRLF).

    Hidden counts are empty cells, and so is the rank, since the rows then run by id.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for rank, f in enumerate(standings.standings, start=1):
        writer.writerow(
            (
                "" if f.score is None else rank,
                f.id,
                _text_cell(f.title),
                f.status.value,
                _count_cell(f.up),
                _count_cell(f.down),
                _count_cell(f.score),
                f.created_at.isoformat(),
                _text_cell(f.description),
            )
        )
    return out.getvalue()


def render_export(standings: Standings, fmt: ExportFormat, slug: str = MAIN_SLUG) -> Export:
    body = (
        encoder.encode(standings) if fmt is ExportFormat.JSON else standings_csv(standings).encode()
    )
    board = "" if slug == MAIN_SLUG else f"-{slug}"
    name = f"feature-votes{board}-round-{standings.round}.{fmt.value}"
    return Export(standings.round, body, MEDIA_TYPES[fmt], name)


class Core:
    """Every use case, over the collaborators it is given (built once, in create_app).

    A use case on a board takes that board's Store, found first by `board_store` (or
    `board_store_by_code`); nothing here reaches another board than the one it was given.
    """

    def __init__(
        self,
        *,
        boards: BoardDirectory,
        tokens: Tokens,
        limits: RateLimits,
        metrics: Metrics,
        export_cache_size: int = 0,
        board_creation: str = "anyone",
    ) -> None:
        self.boards = boards
        self.tokens = tokens
        self.limits = limits
        self.metrics = metrics
        self.board_creation = board_creation
        # (slug, format, audience, round or None) -> the export rendered at a seq; LRU-bounded.
        self._exports: OrderedDict[
            tuple[str, ExportFormat, Audience, int | None], tuple[int, Export]
        ] = OrderedDict()
        self._export_cache_size = export_cache_size

    @property
    def store(self) -> Store:
        """The default board's store."""
        return self.boards.main

    # --- boards ---------------------------------------------------------------------------------

    async def board_store(self, slug: str) -> Store:
        """The board's store; BoardNotFound for one that does not exist."""
        return await self.boards.get(slug)

    async def board_store_by_code(self, code: str) -> Store:
        """The board a join code names (typed in any case, spaces and dashes ignored)."""
        normal = normal_join_code(code)
        if normal is None:
            raise BoardNotFound(f"{code!r} is not a join code")
        return await self.boards.by_code(normal)

    async def admit_board(self, authorization: str | None, address: str) -> None:
        """Whether this caller may make a board now: anyone within the per-address budget, or,
        with board_creation = "admin", a site admin only."""
        if self.board_creation == "admin":
            claims = await self.claims(authorization, address, Role.ADMIN)
            if claims.board is not None:
                raise Forbidden("only a site admin token makes boards here")
        await self.limits.check(self.limits.board_create, address)

    async def create_board(self, title: str) -> BoardCreated:
        """A new board and the admin token that administers it (and only it)."""
        store = await self.boards.create(title)
        token, _ = self.tokens.issue(Role.ADMIN, board=store.slug)
        self.metrics.boards_created.inc()
        return BoardCreated(board=await store.board(), admin_token=token)

    async def delete_board(self, admin: Claims, slug: str) -> None:
        require_admin(admin, slug)
        await self.boards.delete(slug)
        self.metrics.boards_deleted.inc()

    async def list_boards(self, admin: Claims, *, limit: int, after: str | None) -> BoardPage:
        """Every board, for site admins only (knowing a slug or code is what lets one in)."""
        if admin.role is not Role.ADMIN or admin.board is not None:
            raise Forbidden("only a site admin token lists the boards")
        return await self.boards.listing(limit=limit, after=after)

    # --- identity -------------------------------------------------------------------------------

    async def verify(self, token: str, address: str) -> Claims:
        """The claims of a token (TokenInvalid for a forged, expired or malformed one).

        A token not verified before costs a signature check (~70 us): failed checks are counted
        per address (the auth_failure rule), and an address over that budget gets RateLimited
        before its next new token is checked at all. A token already verified (remembered by
        Tokens) is neither limited nor counted, so good tokens are never slowed.
        """
        tokens, limits = self.tokens, self.limits
        if tokens.known(token):
            return tokens.verify(token)  # no signature check; only expiry can fail it
        wait = await limits.blocked(limits.auth_failure, address)
        if wait > 0:
            raise RateLimited(limits.auth_failure.name, wait)
        try:
            return tokens.verify(token)
        except TokenInvalid:
            with contextlib.suppress(RateLimited):  # counted; the next new token will wait
                await limits.check(limits.auth_failure, address)
            raise

    async def claims(
        self, authorization: str | None, address: str, role: Role = Role.VOTER
    ) -> Claims:
        """Verified claims of an `Authorization: Bearer` value that may act as `role`."""
        return require_role(await self.verify(bearer_token(authorization), address), role)

    async def audience(self, authorization: str | None, address: str, slug: str) -> Audience:
        """ADMIN for a valid admin token of this board; anyone else (no, bad or voter token, or
        another board's admin token) reads as PUBLIC.

        Public reads never fail on a token: one that is not a valid admin token just gets the
        view everyone gets (with hidden results: no numbers), and so does a new token from an
        address over its failed-token budget, unchecked.
        """
        if not authorization:
            return Audience.PUBLIC
        try:
            claims = await self.verify(bearer_token(authorization), address)
        except (TokenMissing, TokenInvalid, RateLimited):
            return Audience.PUBLIC
        return audience_for(claims, slug)

    async def new_voter(self, address: str) -> TokenOut:
        """A new anonymous voter's token, within the per-address token budget."""
        await self.limits.check(self.limits.token, address)
        token, claims = self.tokens.issue(Role.VOTER)
        return TokenOut(token=token, voter_id=claims.sub, expires_at=_utc(claims.exp))

    async def admit_socket(self, address: str) -> None:
        """Count a new live connection against the address's ws_connect budget."""
        await self.limits.check(self.limits.ws_connect, address)

    # --- votes ----------------------------------------------------------------------------------

    async def admit_vote(self, board: Store, claims: Claims) -> VoteTicket:
        """Count one vote request (set or retract) against the voter's budget on this board."""
        await self.limits.check(self.limits.vote, _per_board(board, claims))
        return VoteTicket(claims)

    async def vote(
        self, board: Store, ticket: VoteTicket, feature_id: int, value: CastVote
    ) -> VoteOut:
        result = await self._set_vote(board, ticket, feature_id, value)
        self.metrics.votes_set.inc()
        return result

    async def retract(self, board: Store, ticket: VoteTicket, feature_id: int) -> VoteOut:
        """The voter takes their vote back (value 0); retracting no vote is no error."""
        result = await self._set_vote(board, ticket, feature_id, 0)
        self.metrics.votes_retracted.inc()
        return result

    async def _set_vote(
        self, board: Store, ticket: VoteTicket, feature_id: int, value: VoteValue
    ) -> VoteOut:
        claims = ticket.claims
        return await board.set_vote(
            claims.sub, feature_id, value, audience=audience_for(claims, board.slug)
        )

    async def my_votes(self, board: Store, claims: Claims) -> dict[int, CastVote]:
        return await board.votes_of(claims.sub)

    # --- features -------------------------------------------------------------------------------

    async def admit_proposal(self, board: Store, claims: Claims) -> ProposalTicket:
        await self.limits.check(self.limits.create, _per_board(board, claims))
        return ProposalTicket(claims)

    async def propose(
        self,
        board: Store,
        ticket: ProposalTicket,
        new: FeatureCreate,
        idempotency_key: str | None,
    ) -> Created:
        """A new feature; the same key and body again replays the first answer."""
        claims = ticket.claims
        created = await board.create_feature(
            new,
            owner=claims.sub,
            idempotency_key=idempotency_key,
            audience=audience_for(claims, board.slug),
        )
        if not created.replayed:
            self.metrics.features_created.inc()
        return created

    async def feature(self, board: Store, feature_id: int, audience: Audience) -> Feature:
        return await board.get_feature(feature_id, audience=audience)

    async def features(
        self,
        board: Store,
        *,
        sort: Sort,
        status: Status | None,
        limit: int,
        after: CursorKey | None,
        audience: Audience,
    ) -> Page:
        return await board.list_features(
            sort=sort, status=status, limit=limit, after=after, audience=audience
        )

    async def patch_feature(
        self, board: Store, admin: Claims, feature_id: int, patch: FeaturePatch
    ) -> Feature:
        require_admin(admin, board.slug)
        feature = await board.update_feature(feature_id, patch)
        self.metrics.features_updated.inc()
        return feature

    async def delete_feature(self, board: Store, admin: Claims, feature_id: int) -> None:
        require_admin(admin, board.slug)
        await board.delete_feature(feature_id)
        self.metrics.features_deleted.inc()

    async def stats(self, board: Store, audience: Audience) -> StatsView:
        """This audience's stats of the current seq (encoded once per seq by the store)."""
        return await board.stats(audience)

    # --- the board and its rounds ---------------------------------------------------------------

    async def board(self, board: Store) -> Board:
        return await board.board()

    async def patch_board(self, board: Store, admin: Claims, patch: BoardPatch) -> Board:
        require_admin(admin, board.slug)
        return await board.update_board(patch)

    async def next_round(self, board: Store, admin: Claims) -> Board:
        """Close the round (its standings archived, every vote cleared) and open the next."""
        require_admin(admin, board.slug)
        return await board.reset_board()

    async def rounds(self, board: Store) -> list[RoundSummary]:
        return await board.rounds()

    async def closed_round(self, board: Store, round_no: int, audience: Audience) -> Standings:
        """A closed round's standings; NotFound for one that does not exist or is still open."""
        standings = await board.standings(round_no, audience=audience)
        if standings.closed_at is None:
            raise NotFound(f"round {round_no} is still open: its standings are at /export.json")
        return standings

    async def export(
        self, board: Store, fmt: ExportFormat, round_no: int | None, audience: Audience
    ) -> Export:
        """The standings now (None) or of a round, rendered as a file.

        An export is O(features) to read and render, so the rendered file is kept until the
        next change: the seq is read first, so what is cached under a seq is at least that new
        (a change in between makes the next read at the newer seq render again).
        """
        slug = board.slug
        if self._export_cache_size <= 0:
            standings = await board.standings(round_no, audience=audience)
            return render_export(standings, fmt, slug)
        seq = await board.seq()
        key = (slug, fmt, audience, round_no)
        cached = self._exports.get(key)
        if cached is not None and cached[0] == seq:
            self._exports.move_to_end(key)
            return cached[1]
        standings = await board.standings(round_no, audience=audience)
        export = render_export(standings, fmt, slug)
        self._exports[key] = (seq, export)
        self._exports.move_to_end(key)
        while len(self._exports) > self._export_cache_size:
            self._exports.popitem(last=False)
        return export


def _per_board(board: Store, claims: Claims) -> str:
    """A per-voter limit's key on one board: a voter's budget on one board is its own."""
    return claims.sub if board.slug == MAIN_SLUG else f"{board.slug}:{claims.sub}"
