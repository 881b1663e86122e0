"""schemathesis hooks for tests/test_schemathesis.py, loaded by `st` through SCHEMATHESIS_HOOKS.

Kept apart from the test module so the schemathesis process imports no pytest fixtures.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
from typing import Any

import schemathesis

from service.api import encode_cursor
from service.board_api import encode_board_cursor
from service.schemas import CURSOR_PATTERN, IDEMPOTENCY_KEY_MAX, MAIN_SLUG, Sort, Status
from service.store.base import KEY_LENGTH

_KEY_COUNTER = itertools.count()
# st runs against one server must not share keys either: tests/test_schemathesis.py names each
# pass (so a seeded run sends the same keys again); run by hand, a random tag does it.
_RUN = os.environ.get("FV_SCHEMATHESIS_PASS") or secrets.token_hex(4)
IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")


def server_cursor(raw: str, sort: Sort, status: Status | None) -> str:
    """A cursor as this server makes them, at a position derived from the generated string.

    A list cursor is opaque: the only valid ones are those the server made (the document says
    so; JSON Schema cannot). Any string of the documented alphabet is schema-valid, so a fuzzer's
    own strings are "positive" data the server must refuse with 422. Positive cases therefore get
    a real cursor at an arbitrary position instead; cursors outside the alphabet are left alone
    and must still be refused.
    """
    digest = hashlib.sha256(raw.encode()).digest()
    key = tuple(
        int.from_bytes(digest[i * 4 : i * 4 + 4], "big", signed=True) >> (16 if i % 2 else 26)
        for i in range(KEY_LENGTH[sort])
    )
    return encode_cursor(sort, status, key)


def fresh_key(key: str) -> str:
    """The generated Idempotency-Key, made unique to this request.

    A key is remembered with its first answer: the same key with another body is refused with
    422 (as the IETF Idempotency-Key draft says), and with the same body it replays the first
    201, even for a feature deleted since (API.md: "same response, no second feature"). A
    stateless fuzzer can foresee neither: hypothesis reuses small keys such as "0" all the time,
    so a schema-valid request would get a correct 422, and a replayed 201 would name a feature
    that the stateful phase deleted. A unique suffix makes every generated request a new one;
    test_api covers replays and conflicts.
    """
    suffix = f".{_RUN}.{next(_KEY_COUNTER)}"
    return key[: IDEMPOTENCY_KEY_MAX - len(suffix)] + suffix


@schemathesis.hook
def map_case(ctx: schemathesis.HookContext, case: Any) -> Any:
    operation = ctx.operation
    if operation is None:
        return case
    target = (operation.method.upper(), operation.path)
    if target in (("GET", "/features"), ("GET", "/boards/{slug}/features")) and isinstance(
        case.query, dict
    ):
        _map_list_query(case.query)
    elif (
        target in (("POST", "/features"), ("POST", "/boards/{slug}/features"))
        and case.headers is not None  # a CaseInsensitiveDict
    ):
        key = case.headers.get("Idempotency-Key")
        if isinstance(key, str) and IDEMPOTENCY_KEY.fullmatch(key):
            case.headers["Idempotency-Key"] = fresh_key(key)
    elif target == ("GET", "/boards") and isinstance(case.query, dict):
        cursor = case.query.get("cursor")
        if isinstance(cursor, str) and cursor and re.fullmatch(CURSOR_PATTERN, cursor):
            # A board listing's cursor is opaque too: one the server made (after main).
            case.query["cursor"] = encode_board_cursor(MAIN_SLUG)
    return case


def _map_list_query(query: dict[str, Any]) -> None:
    cursor = query.get("cursor")
    if not isinstance(cursor, str) or not cursor or not re.fullmatch(CURSOR_PATTERN, cursor):
        return
    try:
        sort = Sort(query.get("sort", Sort.TOP.value))
        raw_status = query.get("status")
        status = None if raw_status is None else Status(raw_status)
    except (ValueError, TypeError):
        return  # a negative case already: the request must be refused anyway
    query["cursor"] = server_cursor(cursor, sort, status)
