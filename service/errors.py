"""Every failure becomes an RFC 9457 application/problem+json answer, built here and only here."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from .auth import Forbidden, TokenInvalid, TokenMissing
from .ratelimit import RateLimited
from .schemas import Problem, ProblemItem, encoder
from .store import (
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    VotingClosed,
)

PROBLEM_JSON: Final = "application/problem+json"
RETRY_AFTER_SECONDS: Final = "1"
_LOC: Final = re.compile(r"`(\$[^`]*)`")
# RFC 9110 names where Python's http module still has the older ones.
TITLES: Final = {413: "Content Too Large", 422: "Unprocessable Content"}
log = logging.getLogger(__name__)

# Domain error -> (status, extra headers). Subclasses map through their base.
DOMAIN_ERRORS: Final[Mapping[type[Exception], tuple[int, Mapping[str, str]]]] = {
    NotFound: (404, {}),
    FeatureClosed: (409, {}),
    VotingClosed: (409, {}),
    IdempotencyConflict: (422, {}),
    StoreUnavailable: (503, {"Retry-After": RETRY_AFTER_SECONDS}),
    TokenMissing: (401, {"WWW-Authenticate": "Bearer"}),
    TokenInvalid: (401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}),
    Forbidden: (403, {}),
}


class ApiError(Exception):
    """An HTTP failure raised by a handler."""

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        errors: Iterable[ProblemItem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str = "",
    *,
    errors: list[ProblemItem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The one place a problem body is built."""
    body = Problem(
        type="about:blank",
        title=TITLES.get(status) or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        errors=errors or [],
    )
    return web.Response(
        status=status, body=encoder.encode(body), content_type=PROBLEM_JSON, headers=headers
    )


def invalid_input(exc: msgspec.DecodeError) -> ApiError:
    """400 for bytes that are not JSON, 422 for JSON of the wrong shape or value."""
    message = str(exc)
    match = _LOC.search(message)
    loc = match.group(1) if match else "$"
    msg = message.split(" - at `")[0]
    status = 422 if isinstance(exc, msgspec.ValidationError) else 400
    return ApiError(status, message, errors=[ProblemItem(loc=loc, msg=msg)])


def _from_exception(exc: Exception) -> web.Response | None:
    for cls in type(exc).__mro__:
        mapped = DOMAIN_ERRORS.get(cls)
        if mapped is not None:
            return problem_response(mapped[0], str(exc), headers=mapped[1])
    return None


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error a handler raises into problem+json; nothing escapes as a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    except RateLimited as exc:
        retry = str(max(1, math.ceil(exc.retry_after)))
        return problem_response(429, str(exc), headers={"Retry-After": retry})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        return problem_response(exc.status, detail, headers=headers)
    except Exception as exc:
        mapped = _from_exception(exc)
        if mapped is not None:
            return mapped
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal error; see the server log")
