"""Stores: the interface, the in-memory backend and the domain errors."""

from .base import (
    Audience,
    BoardDirectory,
    Created,
    CursorKey,
    Page,
    StatsView,
    Store,
    etag_for,
    sort_key,
)
from .errors import (
    BoardKept,
    BoardNotFound,
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    StoreError,
    StoreUnavailable,
    TooManyBoards,
    TooManyFeatures,
    VotingClosed,
)
from .memory import MemoryStore

__all__ = [
    "Audience",
    "BoardDirectory",
    "BoardKept",
    "BoardNotFound",
    "Created",
    "CursorKey",
    "FeatureClosed",
    "IdempotencyConflict",
    "MemoryStore",
    "NotFound",
    "Page",
    "StatsView",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TooManyBoards",
    "TooManyFeatures",
    "VotingClosed",
    "etag_for",
    "sort_key",
]
