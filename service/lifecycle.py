"""Instance lifecycle for draining: the drain flag and the count of HTTP requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(slots=True)
class Lifecycle:
    """Not client state: set once when the instance starts draining, and a request counter
    (kept by service/context.py's middleware)."""

    draining: bool = False
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def end(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    async def wait_idle(self, limit: float) -> None:
        """Wait until no HTTP request is in flight, at most `limit` seconds."""
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), limit)
