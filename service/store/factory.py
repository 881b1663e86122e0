"""Build the store named by the `store` setting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from ..config import ConfigError, Settings
from .base import Store
from .memory import MemoryStore

# The usual way process managers (gunicorn, Heroku-style platforms) ask for several workers.
WORKERS_ENV: Final = "WEB_CONCURRENCY"


def _workers(env: Mapping[str, str]) -> int:
    raw = env.get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(WORKERS_ENV, f"must be a whole number, not {raw!r}") from None


def store_from_settings(settings: Settings, env: Mapping[str, str] | None = None) -> Store:
    """`memory` (one process only), or a Redis URL shared by any number of instances."""
    env = os.environ if env is None else env
    if settings.store == "memory":
        workers = _workers(env)
        if workers > 1:
            raise ConfigError(
                "store",
                f"the memory store lives in one process, but {WORKERS_ENV}={workers} asks for "
                "more; set FV_STORE=redis://HOST:PORT/DB to run several",
            )
        return MemoryStore(
            top_n=settings.top_n,
            idempotency_ttl=settings.idempotency_ttl,
            max_features=settings.max_features,
        )
    if settings.store.startswith("unix://") or settings.store.startswith("redis"):
        from .redis import RedisStore  # imported only when used

        try:
            return RedisStore(
                settings.store,
                prefix=settings.redis_prefix,
                top_n=settings.top_n,
                idempotency_ttl=settings.idempotency_ttl,
                max_features=settings.max_features,
                socket_timeout=settings.redis_socket_timeout,
                connect_timeout=settings.redis_connect_timeout,
                max_connections=settings.redis_max_connections,
            )
        except ValueError as exc:  # redis-py's URL parser; its messages hold no password
            raise ConfigError("store", f"not a usable Redis URL: {exc}") from None
    raise ConfigError("store", f"{settings.store.split(':')[0]} stores are not supported")
