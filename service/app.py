"""create_app(settings): the one place where the application is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import WSCloseCode, web
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from . import api, board_api, keys, ops, pages, ws
from .auth import Tokens
from .broadcaster import Broadcasts, Limits
from .config import PROJECT_ROOT, Settings
from .context import request_context
from .core import Core
from .lifecycle import Lifecycle
from .metrics import Metrics
from .openapi import document_bytes
from .ratelimit import (
    Limiter,
    MemoryLimiter,
    RateLimits,
    RedisLimiter,
    Rule,
    trusted_networks,
)
from .security import answer_headers, cors_preflight_middleware
from .store import BoardDirectory, Store, StoreUnavailable
from .store.factory import boards_around, boards_from_settings, shared_by_instances

WEB_ROOT: Final = PROJECT_ROOT / "web"
IDLE_SWEEP_MIN: Final = 1.0  # seconds between sweeps for idle boards: ttl / 10 within these
IDLE_SWEEP_MAX: Final = 60.0
log = logging.getLogger(__name__)


def rate_limits_from_settings(settings: Settings) -> RateLimits:
    """Shared Redis counters for a Redis store; this process's own for the others."""
    limiter: Limiter
    if not shared_by_instances(settings):
        limiter = MemoryLimiter()
    else:
        limiter = RedisLimiter(
            settings.store,
            prefix=settings.redis_prefix,
            socket_timeout=settings.redis_socket_timeout,
            connect_timeout=settings.redis_connect_timeout,
            max_connections=settings.redis_max_connections,
        )
    return RateLimits(
        limiter=limiter,
        token=Rule("token", settings.token_rate, settings.token_burst),
        vote=Rule("vote", settings.vote_rate, settings.vote_burst),
        create=Rule("create", settings.create_rate, settings.create_burst),
        ws_connect=Rule("ws_connect", settings.ws_connect_rate, settings.ws_connect_burst),
        auth_failure=Rule("auth_failure", settings.auth_failure_rate, settings.auth_failure_burst),
        board_create=Rule("board_create", settings.board_create_rate, settings.board_create_burst),
        trusted=trusted_networks(settings.trusted_proxies),
    )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    tokens: Tokens | None = None,
    rate_limits: RateLimits | None = None,
) -> web.Application:
    """Build the application; a given store is shared, not owned (the caller closes it), and
    given tokens or rate limits replace the ones the settings describe (a given limiter is
    closed with the app)."""
    metrics = Metrics()
    lifecycle = Lifecycle()
    app = web.Application(
        client_max_size=settings.max_body_size,
        # The request context is outermost: what any later layer or handler raises is
        # answered, counted and logged; preflights (when CORS is configured) included.
        middlewares=[
            request_context(metrics, lifecycle, access=settings.access_log),
            *([cors_preflight_middleware(settings.cors_origins)] if settings.cors_origins else []),
        ],
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics
    app[keys.LIFECYCLE] = lifecycle
    app[keys.TOKENS] = tokens or Tokens(
        settings.secret,
        voter_ttl=settings.voter_token_ttl,
        admin_ttl=settings.admin_token_ttl,
        cache_size=settings.token_cache_size,
        board_admin_ttl=settings.board_admin_token_ttl,
    )
    boards = boards_around(store, settings) if store is not None else boards_from_settings(settings)
    app[keys.BOARDS] = boards
    app[keys.STORE] = boards.main
    app[keys.RATE_LIMITS] = rate_limits or rate_limits_from_settings(settings)
    app[keys.CORE] = Core(
        boards=boards,
        tokens=app[keys.TOKENS],
        limits=app[keys.RATE_LIMITS],
        metrics=metrics,
        export_cache_size=settings.export_cache_size,
        board_creation=settings.board_creation,
    )
    app.cleanup_ctx.append(_close_rate_limits)
    # A given store is the caller's to open and close; its directory's own work (main's join
    # code, the deletion channel) starts with the app either way.
    app.cleanup_ctx.append(_open_boards if store is None else _start_boards)
    app[keys.BROADCASTER] = Broadcasts(
        metrics,
        Limits(
            push_interval=settings.push_interval,
            buffer_limit=settings.ws_buffer_limit,
            slow_client_timeout=settings.slow_client_timeout,
            close_timeout=settings.ws_close_timeout,
            heartbeat=settings.ws_heartbeat,
            idle_timeout=settings.ws_idle_timeout,
        ),
    )
    app.cleanup_ctx.append(_follow_seq)
    app.cleanup_ctx.append(_run_broadcaster)
    app.cleanup_ctx.append(_expire_idle_boards)
    app.on_shutdown.append(_start_draining)
    app.on_response_prepare.append(answer_headers(settings.cors_origins))

    app.add_routes(api.routes)
    app.add_routes(board_api.routes)
    app.add_routes(ops.routes)
    app.add_routes(ws.routes)
    app.add_routes(pages.routes)
    app.router.add_static("/static/swagger/", SWAGGER_UI_PY_ROOT / "static")
    app.router.add_static("/static/", WEB_ROOT / "static")
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(WEB_ROOT / "templates"))
    app[keys.OPENAPI_BODY] = document_bytes()
    return app


async def _open_boards(app: web.Application) -> AsyncIterator[None]:
    await app[keys.BOARDS].start()
    yield
    await app[keys.BOARDS].close()


async def _start_boards(app: web.Application) -> AsyncIterator[None]:
    """For a store the caller owns: the directory's start-up work, but no closing of it."""
    await app[keys.BOARDS].prepare()
    yield


async def _close_rate_limits(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[keys.RATE_LIMITS].limiter.close()


async def _follow_seq(app: web.Application) -> AsyncIterator[None]:
    unsubscribe = app[keys.STORE].subscribe(app[keys.METRICS].seq.set)
    yield
    unsubscribe()


async def _run_broadcaster(app: web.Application) -> AsyncIterator[None]:
    broadcasts = app[keys.BROADCASTER]
    # A board deleted here or on another instance: its sockets here close with 1001.
    stop_following = app[keys.BOARDS].on_deleted(broadcasts.close_board_later)
    # Every instance serves the default board's screens: its broadcaster is made on demand
    # like any other, so nothing runs for a board nobody watches.
    yield
    stop_following()
    await broadcasts.stop()


async def _expire_idle_boards(app: web.Application) -> AsyncIterator[None]:
    """With board_idle_ttl, boards nobody changed for that long are removed (never main)."""
    ttl = app[keys.SETTINGS].board_idle_ttl
    task = asyncio.create_task(_sweep_idle(app[keys.BOARDS], ttl)) if ttl > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_idle(boards: BoardDirectory, ttl: float) -> None:
    every = min(max(ttl / 10, IDLE_SWEEP_MIN), IDLE_SWEEP_MAX)
    while True:
        await asyncio.sleep(every)
        try:
            removed = await boards.expire_idle(ttl)
        except StoreUnavailable:
            continue
        if removed:
            log.info("removed %d board(s) idle for %g s or more", len(removed), ttl)


async def _start_draining(app: web.Application) -> None:
    """Shutdown: readiness fails, and every socket is closed with 1001 so clients move on
    (`serve` has done both before waiting for requests; this covers any other runner)."""
    app[keys.LIFECYCLE].draining = True
    await app[keys.BROADCASTER].close_all(WSCloseCode.GOING_AWAY, b"server shutdown")


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner `serve` uses: our own access log, header and keep-alive limits, no signals."""
    return web.AppRunner(
        app,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,  # our own structured access line: service/context.py
        handle_signals=False,
        max_line_size=settings.max_header_size,
        max_field_size=settings.max_header_size,
        keepalive_timeout=settings.http_keepalive_timeout,
    )
