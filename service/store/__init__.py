"""Stores: the interface, the in-memory backend and the domain errors."""

from .base import Created, CursorKey, Page, StatsView, Store, etag_for, sort_key
from .errors import FeatureClosed, IdempotencyConflict, NotFound, StoreError, StoreUnavailable
from .memory import MemoryStore

__all__ = [
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
    "etag_for",
    "sort_key",
]
