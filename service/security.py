"""Headers on every answer (request id, security, CORS labels), and CORS preflights for the REST
API from a configured allow-list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

from .context import REQUEST_ID_HEADER, REQUEST_ID_KEY, Handler, Middleware

# Pages load only our own scripts, styles and sockets; no inline script, no framing.
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on its elements; it still runs no inline script.
DOCS_CSP: Final = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
COMMON_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CORS_ALLOW_METHODS: Final = "GET, POST, PUT, PATCH, DELETE"
CORS_ALLOW_HEADERS: Final = (
    "Authorization, Content-Type, Idempotency-Key, If-None-Match, X-Request-ID"
)
CORS_EXPOSE_HEADERS: Final = (
    "ETag, Location, Retry-After, X-Request-ID, Idempotent-Replayed, Content-Disposition"
)
CORS_MAX_AGE: Final = "600"


AnswerHeaders = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def answer_headers(cors_origins: tuple[str, ...] = ()) -> AnswerHeaders:
    """The on_response_prepare handler: headers every answer carries, whatever made it (a
    handler, a problem answer of service/context.py, a static file, a WebSocket's 101).

    - X-Request-ID: the id service/context.py's middleware picked for the request;
    - the security headers (and CSP and framing for HTML);
    - with `cors_origins` configured, for a request with an Origin: `Vary: Origin` always
      (allowed or not, preflight or not: a cache must not hand one origin's answer to
      another), and for an allowed origin Access-Control-Allow-Origin and -Expose-Headers
      (preflights are answered by cors_preflight_middleware).
    """
    origins = _origins(cors_origins)

    async def add_answer_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        rid = request.get(REQUEST_ID_KEY)
        if rid is not None:
            headers[REQUEST_ID_HEADER] = rid
        for name, value in COMMON_HEADERS.items():
            headers.setdefault(name, value)
        if headers.get(hdrs.CONTENT_TYPE, "").startswith("text/html"):
            headers.setdefault(
                "Content-Security-Policy", DOCS_CSP if request.path == "/docs" else PAGE_CSP
            )
            headers.setdefault("X-Frame-Options", "DENY")
        if origins:
            origin = request.headers.get(hdrs.ORIGIN)
            if origin is not None:
                headers.add(hdrs.VARY, hdrs.ORIGIN)
                if (
                    _permitted(origin, origins)
                    and request.path != "/ws"
                    and hdrs.ACCESS_CONTROL_ALLOW_ORIGIN not in headers  # (a preflight's own)
                ):
                    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
                    headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = CORS_EXPOSE_HEADERS

    return add_answer_headers


def _origins(allowed: tuple[str, ...]) -> frozenset[str]:
    return frozenset(o.rstrip("/").lower() for o in allowed)


def _permitted(origin: str, origins: frozenset[str]) -> bool:
    return "*" in origins or origin.rstrip("/").lower() in origins


def cors_preflight_middleware(allowed: tuple[str, ...]) -> Middleware:
    """Answer CORS preflights (OPTIONS with Access-Control-Request-Method): an allowed origin
    gets the methods, headers and max age; any other a bare 204 (the browser then refuses).
    Every other request passes; answer_headers labels the answers."""
    origins = _origins(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            request.method != "OPTIONS"
            or origin is None
            or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
            or request.path == "/ws"
        ):
            return await handler(request)
        if not _permitted(origin, origins):
            return web.Response(status=204)
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: CORS_ALLOW_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: CORS_ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: CORS_MAX_AGE,
            },
        )

    return middleware
