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

from .auth import Forbidden, TokenInvalid, TokenMissing
from .ratelimit import LimiterUnavailable, RateLimited
from .schemas import Problem, ProblemItem, encoder
from .store import (
    BoardKept,
    FeatureClosed,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    TooManyBoards,
    TooManyFeatures,
    VotingClosed,
)

PROBLEM_JSON: Final = "application/problem+json"
RETRY_AFTER_SECONDS: Final = "1"
_LOC: Final = re.compile(r"`(\$[^`]*)`")
# RFC 9110 names where Python's http module still has the older ones.
TITLES: Final = {
    413: "Content Too Large",
    422: "Unprocessable Content",
    499: "Client Closed Request",  # nginx's, for a client that left before its answer
}
log = logging.getLogger(__name__)

# Domain error -> (status, extra headers). Subclasses map through their base.
DOMAIN_ERRORS: Final[Mapping[type[Exception], tuple[int, Mapping[str, str]]]] = {
    NotFound: (404, {}),
    FeatureClosed: (409, {}),
    VotingClosed: (409, {}),
    TooManyFeatures: (409, {}),
    TooManyBoards: (409, {}),
    BoardKept: (409, {}),
    IdempotencyConflict: (422, {}),
    StoreUnavailable: (503, {"Retry-After": RETRY_AFTER_SECONDS}),
    LimiterUnavailable: (503, {"Retry-After": RETRY_AFTER_SECONDS}),
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


def problem_from(exc: Exception) -> web.Response | None:
    """The problem answer for an error a handler raised; None for one nobody expected."""
    if isinstance(exc, ApiError):
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    if isinstance(exc, RateLimited):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return problem_response(429, str(exc), headers={"Retry-After": retry})
    if isinstance(exc, web.HTTPException):
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        return problem_response(exc.status, detail, headers=headers)
    return _from_exception(exc)


def internal_error(method: str, path: str) -> web.Response:
    """The 500 for an unexpected error, logged with its traceback (call inside `except`);
    service/context.py's middleware maps what handlers raise through here and problem_from."""
    log.exception("unhandled error on %s %s", method, path)
    return problem_response(500, "internal error; see the server log")


def client_closed() -> web.Response:
    """What a request whose client left gets (nobody reads it; its status is what is counted)."""
    return problem_response(499, "the client closed the connection before its answer")
