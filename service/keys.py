"""Every web.AppKey of the application, and nothing else (breaks import cycles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from .auth import Tokens
from .config import Settings
from .metrics import Metrics
from .store import Store


@dataclass(slots=True)
class Lifecycle:
    """Instance lifecycle, not client state: set once when the instance starts draining."""

    draining: bool = False


SETTINGS: Final = web.AppKey("settings", Settings)
STORE: Final = web.AppKey("store", Store)
TOKENS: Final = web.AppKey("tokens", Tokens)
METRICS: Final = web.AppKey("metrics", Metrics)
LIFECYCLE: Final = web.AppKey("lifecycle", Lifecycle)
OPENAPI_BODY: Final = web.AppKey("openapi_body", bytes)
