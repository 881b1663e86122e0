"""Ports for servers a test starts in a subprocess (the service, redis-server, nginx).

A port found free here is free only until someone else binds it: between this check and the
child's own bind, another process may take it. Two things make that rare and harmless:
- ports come from below the kernel's ephemeral range, which outgoing connections (redis-py,
  urllib, aiohttp clients of every parallel test run) draw their local ports from, so only
  another listener picking at random can collide;
- `start_on_free_port` starts again on another port when the child failed for that reason
  (its log says "address already in use"), up to START_ATTEMPTS times.
A restart on the same port (a test that kills and restarts its server) cannot move, so it keeps
the first risk only; that window is a kill and a start long.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

T = TypeVar("T")
START_ATTEMPTS: Final = 5
LOWEST: Final = 20_000
IN_USE: Final = "address already in use"  # strerror(EADDRINUSE), in every server's message


class PortTaken(Exception):
    """The child could not bind its port: someone else had it. Try another."""


def _ephemeral_low() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32_768


def _binds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nobody is bound to right now, outside the ephemeral range if possible."""
    high = _ephemeral_low()
    if high - LOWEST > 1000:
        for _ in range(50):
            port = random.randrange(LOWEST, high)
            if _binds(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def port_taken(output: str) -> bool:
    """Whether a server's output says its bind failed because the address was in use."""
    return IN_USE in output.lower()


def start_on_free_port(start: Callable[[int], T], *, attempts: int = START_ATTEMPTS) -> T:
    """start(port) on a free port; on PortTaken, again on another one (at most `attempts`)."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
