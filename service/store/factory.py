"""Build the store named by the `store` setting."""

from __future__ import annotations

import msgspec

from ..config import ConfigError, Secret, Settings
from .base import BoardDirectory, Store
from .memory import MemoryBoards, MemoryStore


def shared_by_instances(settings: Settings) -> bool:
    """Whether the store is one several instances share (Redis), or one process's own."""
    return settings.store.startswith(("redis://", "rediss://", "unix://"))


def check_one_process(settings: Settings) -> None:
    """The memory and SQLite stores live in one process: more workers need Redis."""
    workers = settings.workers
    if workers > 1:
        kind = "memory" if settings.store == "memory" else "SQLite"
        raise ConfigError(
            "store",
            f"the {kind} store lives in one process, but workers is {workers} "
            f"(WEB_CONCURRENCY={workers} or FV_WORKERS={workers}); set "
            "FV_STORE=redis://HOST:PORT/DB to run several",
        )


def store_from_settings(settings: Settings) -> Store:
    """`memory` (one process only), or a Redis URL shared by any number of instances."""
    if settings.store == "memory":
        check_one_process(settings)
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
    if settings.store.startswith("sqlite:///"):
        check_one_process(settings)
        from .sqlite import SqliteBoards, StoreFileError

        try:
            return SqliteBoards(
                settings.store,
                max_boards=settings.max_boards,
                top_n=settings.top_n,
                idempotency_ttl=settings.idempotency_ttl,
                max_features=settings.max_features,
                max_bytes=settings.sqlite_max_bytes,
            )
        except (StoreFileError, OSError) as exc:
            raise ConfigError("store", str(exc)) from None
    return boards_around(store_from_settings(settings), settings)


def with_kept_secret(settings: Settings) -> Settings:
    """Without FV_SECRET a durable store signs with the secret it keeps beside its file (made
    once, mode 0600), so tokens stay valid across restarts; any other store keeps the random
    one of this process."""
    if not settings.secret.generated or not settings.store.startswith("sqlite:///"):
        return settings
    from .sqlite import load_or_make_secret, path_of

    try:
        kept = load_or_make_secret(path_of(settings.store))
        secret = Secret((kept,))
    except OSError as exc:
        raise ConfigError("store", f"cannot keep the secret beside the file: {exc}") from None
    except ValueError as exc:  # an empty or short secret file: someone's edit, not ours
        raise ConfigError("store", f"the secret file beside the store is unusable: {exc}") from None
    return msgspec.structs.replace(settings, secret=secret)


def boards_around(main: Store, settings: Settings) -> BoardDirectory:
    """A directory of boards of the same kind as `main`, with `main` as its default board."""
    from .sqlite import DurableStore

    if isinstance(main, DurableStore) and main.directory is not None:
        return main.directory  # a SQLite store's boards are in its file
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
