"""Domain errors raised by every store; the HTTP layer maps them in one place."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every domain error."""


class NotFound(StoreError):
    """The feature (or other object) does not exist."""


class FeatureClosed(StoreError):
    """The feature is done or declined; its votes are frozen."""


class IdempotencyConflict(StoreError):
    """An Idempotency-Key was reused with a different request body."""


class StoreUnavailable(StoreError):
    """The backing store cannot be reached; the caller may retry later."""


class TooManyFeatures(StoreError):
    """The board holds max_features features already; a new one needs another removed first."""


class VotingClosed(StoreError):
    """The presenter has locked the board: no vote may be set, moved or retracted."""


class BoardNotFound(NotFound):
    """No live board has this slug or join code (never made, or deleted)."""


class TooManyBoards(StoreError):
    """The deployment holds max_boards boards already."""


class BoardKept(StoreError):
    """The default board (main) cannot be deleted."""
