"""Command line: `python -m service [serve]` runs an instance; `token --admin` mints a token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import WSCloseCode, web

from . import keys
from .addresses import is_loopback, reachable_hosts
from .app import create_app, make_runner
from .auth import Role, Tokens
from .config import ConfigError, Settings, load_settings
from .logs import SHOWS_TOKEN, setup_logging
from .store.factory import with_kept_secret

log = logging.getLogger("service")
MIN_WAIT: Final = 0.01  # seconds; the shortest wait handed to aiohttp's shutdown
PAGE_LINES: Final = (("start a board", "/new"), ("dashboard", "/"), ("presenter", "/present"))


_SERVE_FLAGS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--config",), {"help": "a TOML file read after config/default.toml"}),
    (("--host",), {"help": "listening address (FV_HOST)"}),
    (("--port",), {"type": int, "help": "listening port (PORT)"}),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for flags, kwargs in _SERVE_FLAGS:
        parser.add_argument(*flags, **kwargs)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run one instance (the default)")
    for flags, kwargs in _SERVE_FLAGS:
        # SUPPRESS: a flag given before `serve` is not reset to None by the subcommand.
        serve.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
    token = commands.add_parser("token", help="print a token signed with the configured secret")
    token.add_argument("--admin", action="store_true", help="an admin token (required for now)")
    backup = commands.add_parser(
        "backup", help="write a consistent copy of the SQLite store's file (also while serving)"
    )
    backup.add_argument("path", help="the file to write")
    return parser


def _backup(settings: Settings, target: str) -> int:
    if not settings.store.startswith("sqlite:///"):
        print("feature-votes: backup copies the SQLite store; FV_STORE is another", file=sys.stderr)
        return 2
    from .store.sqlite import StoreFileError, backup_file, path_of

    try:
        backup_file(path_of(settings.store), Path(target))
    except (StoreFileError, OSError, sqlite3.Error) as exc:
        print(f"feature-votes: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"feature-votes: wrote {target}", file=sys.stderr)
    return 0


def _tokens(settings: Settings) -> Tokens:
    return Tokens(
        settings.secret,
        voter_ttl=settings.voter_token_ttl,
        admin_ttl=settings.admin_token_ttl,
        cache_size=1,
    )


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain: readyz 503, sockets closed, requests finished."""
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "serving on http://%s:%d (store: %s)",
            settings.host,
            settings.port,
            settings.store.split("@")[-1],
        )
        for line in startup_urls(settings):
            log.info("%s", line)
        if settings.secret.generated:
            token, _ = _tokens(settings).issue(Role.ADMIN, "admin")
            log.warning(
                "no FV_SECRET: a random secret signs tokens; admin token: %s (this process only)",
                token,
                extra={SHOWS_TOKEN: True},  # the one line allowed to show a token
            )
        await stop.wait()
        await _drain(app, runner, site, settings)
    finally:
        await runner.cleanup()  # the app's cleanup (broadcaster, store); no connection is left
    log.info("stopped")


def startup_urls(settings: Settings, hosts: Sequence[str] | None = None) -> list[str]:
    """Where to open the pages: on public_url when set, and on every address of this machine
    another one can reach (loopback, with a warning, when there is none)."""
    found = reachable_hosts(settings.host) if hosts is None else list(hosts)
    bases = [settings.public_url.rstrip("/")] if settings.public_url else []
    bases += [f"http://{host}:{settings.port}" for host in found]
    lines = [f"{name}: {base}{path}" for base in bases for name, path in PAGE_LINES]
    if all(is_loopback(host) for host in found):
        lines.append(
            "only a loopback address serves here: phones cannot reach it; listen on every "
            "address (FV_HOST=0.0.0.0) and set FV_PUBLIC_URL to an address phones can open"
        )
    return lines


async def _drain(
    app: web.Application, runner: web.AppRunner, site: web.TCPSite, settings: Settings
) -> None:
    """readyz 503 for drain_delay; then, within one shutdown_timeout: sockets closed with 1001
    first (a dashboard need not wait for a slow upload), the listener closed, in-flight requests
    finished, and the ones still running after the deadline cancelled."""
    loop = asyncio.get_running_loop()
    lifecycle = app[keys.LIFECYCLE]
    log.info("draining: readyz answers 503 for %.1fs, then sockets close", settings.drain_delay)
    lifecycle.draining = True
    await asyncio.sleep(settings.drain_delay)
    deadline = loop.time() + settings.shutdown_timeout

    def left() -> float:
        return max(0.0, deadline - loop.time())

    with contextlib.suppress(TimeoutError):  # sockets still open are cut by the server below
        await asyncio.wait_for(
            app[keys.BROADCASTER].close_all(WSCloseCode.GOING_AWAY, b"server shutdown"), left()
        )
    await site.stop()  # no new connections; requests already in flight may finish
    await lifecycle.wait_idle(left())
    if lifecycle.inflight:
        log.warning("shutdown_timeout passed: %d request(s) are cancelled", lifecycle.inflight)
    server = runner.server
    if server is not None:
        # Cancel what still runs now, so runner.cleanup() does not wait a whole
        # shutdown_timeout again for it. aiohttp reads a timeout of 0 as "none": keep it > 0.
        server.pre_shutdown()
        await server.shutdown(max(left(), MIN_WAIT))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            config_file=args.config, flags={"host": args.host, "port": args.port}
        )
        settings = with_kept_secret(settings)
    except ConfigError as exc:
        print(f"feature-votes: {exc}", file=sys.stderr)
        return 2
    if args.command == "backup":
        return _backup(settings, args.path)
    if args.command == "token":
        if not args.admin:
            print("feature-votes: only admin tokens are minted here (--admin)", file=sys.stderr)
            return 2
        if settings.secret.generated:
            print(
                "feature-votes: no FV_SECRET and no durable store to keep one: this token is "
                "signed with a random secret no running server accepts; set FV_SECRET (the "
                "server's) or use the default SQLite store",
                file=sys.stderr,
            )
            return 2
        token, _ = _tokens(settings).issue(Role.ADMIN, "admin")
        print(token)
        return 0
    setup_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except ConfigError as exc:
        print(f"feature-votes: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"feature-votes: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
