"""Every web.AppKey of the application, and nothing else (breaks import cycles)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .auth import Tokens
from .broadcaster import Broadcasts
from .config import Settings
from .core import Core
from .lifecycle import Lifecycle
from .metrics import Metrics
from .ratelimit import RateLimits
from .store import BoardDirectory, Store

SETTINGS: Final = web.AppKey("settings", Settings)
STORE: Final = web.AppKey("store", Store)  # the default board's
BOARDS: Final = web.AppKey("boards", BoardDirectory)
TOKENS: Final = web.AppKey("tokens", Tokens)
METRICS: Final = web.AppKey("metrics", Metrics)
LIFECYCLE: Final = web.AppKey("lifecycle", Lifecycle)
BROADCASTER: Final = web.AppKey("broadcaster", Broadcasts)
RATE_LIMITS: Final = web.AppKey("rate_limits", RateLimits)
OPENAPI_BODY: Final = web.AppKey("openapi_body", bytes)
CORE: Final = web.AppKey("core", Core)
