"""Stores: the interface, the in-memory backend and the domain errors."""

from .base import Audience, Created, CursorKey, Page, StatsView, Store, etag_for, sort_key
from .errors import (
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    StoreError,
    StoreUnavailable,
    TooManyFeatures,
    VotingClosed,
)
from .memory import MemoryStore

__all__ = [
    "Audience",
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
    "TooManyFeatures",
    "VotingClosed",
    "etag_for",
    "sort_key",
]
