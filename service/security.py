"""Security headers on every answer, and CORS for the REST API from a configured allow-list."""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

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


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, including errors and static files."""
    headers = response.headers
    for name, value in COMMON_HEADERS.items():
        headers.setdefault(name, value)
    if headers.get(hdrs.CONTENT_TYPE, "").startswith("text/html"):
        headers.setdefault(
            "Content-Security-Policy", DOCS_CSP if request.path == "/docs" else PAGE_CSP
        )
        headers.setdefault("X-Frame-Options", "DENY")


def cors_middleware(allowed: tuple[str, ...]) -> Middleware:
    """Answer preflights and label answers for allowed origins; others get no CORS headers."""
    origins = frozenset(o.rstrip("/").lower() for o in allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not origins or request.path == "/ws":
            return await handler(request)
        permitted = origin.rstrip("/").lower() in origins or "*" in origins
        if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            if not permitted:
                return web.Response(status=204, headers={"Vary": "Origin"})
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
                    "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                    "Access-Control-Max-Age": CORS_MAX_AGE,
                    "Vary": "Origin",
                },
            )
        response = await handler(request)
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            response.headers.add("Vary", "Origin")
        return response

    return middleware
