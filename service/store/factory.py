"""Build the store named by the `store` setting."""

from __future__ import annotations

from ..config import ConfigError, Settings
from .base import BoardDirectory, Store
from .memory import MemoryBoards, MemoryStore


def store_from_settings(settings: Settings) -> Store:
    """`memory` (one process only), or a Redis URL shared by any number of instances."""
    if settings.store == "memory":
        workers = settings.workers
        if workers > 1:
            raise ConfigError(
                "store",
                f"the memory store lives in one process, but workers is {workers} "
                f"(WEB_CONCURRENCY={workers} or FV_WORKERS={workers}); set "
                "FV_STORE=redis://HOST:PORT/DB to run several",
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


def boards_from_settings(settings: Settings) -> BoardDirectory:
    """Every board of the deployment, in the store the `store` setting names."""
    return boards_around(store_from_settings(settings), settings)


def boards_around(main: Store, settings: Settings) -> BoardDirectory:
    """A directory of boards of the same kind as `main`, with `main` as its default board."""
    if isinstance(main, MemoryStore):
        return MemoryBoards(
            main,
            max_boards=settings.max_boards,
            top_n=settings.top_n,
            idempotency_ttl=settings.idempotency_ttl,
            max_features=settings.max_features,
        )
    from .redis import RedisBoards, RedisStore

    if not isinstance(main, RedisStore):
        raise TypeError(f"no board directory for a {type(main).__name__}")
    return RedisBoards(
        main=main,
        max_boards=settings.max_boards,
        top_n=settings.top_n,
        idempotency_ttl=settings.idempotency_ttl,
        max_features=settings.max_features,
    )
