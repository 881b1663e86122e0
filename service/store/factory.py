"""Build the store named by the `store` setting."""

from __future__ import annotations

from ..config import ConfigError, Settings
from .base import Store
from .memory import MemoryStore


def store_from_settings(settings: Settings) -> Store:
    """`memory`, or a Redis URL once the Redis store exists."""
    if settings.store == "memory":
        return MemoryStore(top_n=settings.top_n, idempotency_ttl=settings.idempotency_ttl)
    raise ConfigError("store", f"{settings.store.split(':')[0]} stores are not supported yet")
