"""What a reader may see of what a store read: the one place `results_hidden` is applied.

Both stores read the board's flag in the same consistent step as the data (a Lua script, or
under the memory store's lock) and hand both here; nothing else masks counts or re-sorts.
While results are hidden, everyone but an admin sees up, down and score as null, ranked orders
by id, and stats without the up/down totals and with the first features by id as their top.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import overload

import msgspec

from ..schemas import (
    EXCERPT_MARK,
    EXCERPT_MAX,
    RANKED_SORTS,
    Feature,
    Sort,
    Standings,
    Stats,
    VoteOut,
    encoder,
)
from .base import Audience, StatsView, etag_for


def hides(results_hidden: bool, audience: Audience) -> bool:
    """Whether this audience must not see counts (and count-based orders) now."""
    return results_hidden and audience is Audience.PUBLIC


def hides_order(sort: Sort, results_hidden: bool, audience: Audience) -> bool:
    """Whether a listing in `sort` runs by id ascending instead, so its order reveals nothing."""
    return sort in RANKED_SORTS and hides(results_hidden, audience)


def masked(feature: Feature) -> Feature:
    """The feature as a non-admin sees it while results are hidden."""
    return msgspec.structs.replace(feature, up=None, down=None, score=None)


@overload
def visible(value: Feature, results_hidden: bool, audience: Audience) -> Feature: ...
@overload
def visible(value: VoteOut, results_hidden: bool, audience: Audience) -> VoteOut: ...
@overload
def visible(value: Standings, results_hidden: bool, audience: Audience) -> Standings: ...
@overload
def visible(value: list[Feature], results_hidden: bool, audience: Audience) -> list[Feature]: ...
def visible(
    value: Feature | VoteOut | Standings | list[Feature], results_hidden: bool, audience: Audience
) -> Feature | VoteOut | Standings | list[Feature]:
    """`value` as `audience` may see it, read while the board's flag was `results_hidden`
    (for a closed round: the flag it closed with). Features, a listing's items and a vote
    lose their counts; standings run by id with counts null."""
    if not hides(results_hidden, audience):
        return value
    if isinstance(value, Feature):
        return masked(value)
    if isinstance(value, VoteOut):
        return msgspec.structs.replace(value, up=None, down=None, score=None)
    if isinstance(value, Standings):
        by_id = sorted((masked(f) for f in value.standings), key=lambda f: f.id)
        return msgspec.structs.replace(value, standings=by_id)
    return [masked(f) for f in value]


def excerpt(text: str, limit: int = EXCERPT_MAX) -> str:
    """At most `limit` characters: a longer text is cut (between code points, never inside
    one) to limit - 1 of them, trailing blanks dropped, and marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + EXCERPT_MARK


def on_board(feature: Feature) -> Feature:
    """A feature as stats and pushes carry it: its description cut to an excerpt."""
    if len(feature.description) <= EXCERPT_MAX:
        return feature
    return msgspec.structs.replace(feature, description=excerpt(feature.description))


def stats_views(stats: Stats, first_by_id: Iterable[Feature]) -> tuple[StatsView, StatsView]:
    """(public, admin) views of one seq's stats, each encoded once.

    `stats` is the admin's truth (top = the first top_n in top order); `first_by_id`, the
    first top_n features by id, is read only while results are hidden, when it becomes the
    public top with counts null, and the public totals up/down are null too. Otherwise both
    audiences share one view and one ETag.
    """
    seq, epoch = stats.seq, stats.epoch
    stats = msgspec.structs.replace(stats, top=[on_board(f) for f in stats.top])
    if not stats.board.results_hidden:
        view = StatsView(seq, encoder.encode(stats), etag_for(seq, epoch=epoch))
        return view, view
    hidden = msgspec.structs.replace(
        stats, up=None, down=None, top=[on_board(masked(f)) for f in first_by_id]
    )
    return (
        StatsView(seq, encoder.encode(hidden), etag_for(seq, Audience.PUBLIC, epoch)),
        StatsView(seq, encoder.encode(stats), etag_for(seq, Audience.ADMIN, epoch)),
    )
