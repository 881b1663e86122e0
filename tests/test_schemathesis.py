"""schemathesis against the running service's /openapi.json: every check, 100 examples an operation.

The service runs as `python -m service` in a subprocess (memory store), and the `st` CLI runs every
phase (examples, coverage, fuzzing, stateful) with `--checks all` three times: with a voter token,
with no token, and with an admin token (the only way PATCH/DELETE /features/{id} get past 403).
0 failures means: no 5xx, every status, header, content type and body is the one the document
describes, schema-invalid input is refused, schema-valid input is accepted, undeclared methods
get 405, auth is not ignored, and created features can be read back.

What schemathesis gets adjusted, and why (see tests/schemathesis_hooks.py):
- `GET /ws` (and `GET /boards/{slug}/ws`) is left out: the WebSocket handshake (Upgrade,
  Sec-WebSocket-Key) is not an OpenAPI parameter, so every fuzzed request is a plain GET
  answered 426; tests/test_ws.py covers it.
- positive list cursors are replaced by cursors the server made (any other one is 422, which
  JSON Schema cannot say), and generated Idempotency-Keys are made unique (a reused key is a
  correct 422 or replay a stateless fuzzer cannot foresee); the same for GET /boards' cursor.
  No check is disabled.
- the default board's operations copied under `/boards/{slug}/...` (the same handlers) are
  fuzzed in the admin pass only, which keeps the three passes within their time.

Every run is seeded: SEED by default, so a failure is reproducible by running this module again
(the three passes share one server, in order, so replay the module, not one pass). The seed is in
each failure's message; FV_SCHEMATHESIS_SEED=<n> runs another seed, FV_SCHEMATHESIS_SEED=random
draws a fresh one (printed too) to explore beyond the default.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth import Role, Tokens
from service.schemas import _W as WHITESPACE_CLASS
from service.schemas import (
    DESCRIPTION_MAX,
    DESCRIPTION_PATTERN,
    TITLE_MAX,
    TITLE_PATTERN,
    _check_text,
)

from .browser import ROOT, Server
from .conftest import make_settings

pytestmark = pytest.mark.slow

ST: Final = Path(sys.executable).with_name("st")
MAX_EXAMPLES: Final = 100
RUN_TIMEOUT: Final = 200.0  # seconds for one pass; a pass takes about 20 here
OUTPUT_TAIL: Final = 25_000
# Not fuzzable over plain HTTP: see the module docstring.
EXCLUDED_PATHS: Final = ("/ws", "/boards/{slug}/ws")
# The default board's operations again under /boards/{slug} (the same handlers, plus the slug):
# fuzzed in the admin pass only, so the three passes stay within their time.
BOARD_COPIES: Final = r"^/boards/\{slug\}/"
SEED: Final = 14  # the default: the same cases every run; FV_SCHEMATHESIS_SEED changes it
SEED_VARIABLE: Final = "FV_SCHEMATHESIS_SEED"


def run_seed() -> int:
    """The seed of this run: SEED, or the variable's integer, or a fresh one for "random"."""
    raw = os.environ.get(SEED_VARIABLE, "").strip()
    if not raw:
        return SEED
    if raw.lower() == "random":
        return secrets.randbelow(2**32)
    try:
        return int(raw)
    except ValueError:
        message = f"{SEED_VARIABLE} must be an integer or 'random', not {raw!r}"
        raise pytest.UsageError(message) from None


@pytest.fixture(scope="module")
def seed() -> int:
    """One seed for the module's three passes (they share one server), shown in the output."""
    value = run_seed()
    print(f"schemathesis seed {value} (replay: {SEED_VARIABLE}={value})")
    return value


class LoggedServer:
    """tests/browser.py's Server; its stderr goes to a file (Server.log), read here."""

    def __init__(self) -> None:
        # info: one access line a fuzzed request, for the whole run's no-secrets check
        self.server = Server(FV_LOG_LEVEL="info").start()

    def log_text(self) -> str:
        return self.server.log_text()

    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def log_tail(self, count: int = 40) -> str:
        return "".join(self.log_text().splitlines(keepends=True)[-count:])


@pytest.fixture(scope="module")
def service() -> Iterator[LoggedServer]:
    logged = LoggedServer()
    server = logged.server
    try:
        voter = server.token()
        ids = [
            server.feature(title, voter, description)
            for title, description in [
                ("Dark mode", "Easier on the eyes"),
                ("Export to CSV", ""),
                ("Keyboard shortcuts", "j/k to move"),
                ("Offline mode", ""),
            ]
        ]
        server.vote(ids[0], 1, voter)
        server.vote(ids[1], -1, voter)
        status, body = server.request(
            "PATCH", f"/features/{ids[3]}", {"status": "done"}, admin_token()
        )
        assert status == 200, body  # votes on it are 409: that path is exercised too
        yield logged
    finally:
        server.kill()


def admin_token() -> str:
    """An admin token signed with the test secret the subprocess runs with (FV_SECRET)."""
    config = make_settings()
    tokens = Tokens(
        config.secret,
        voter_ttl=config.voter_token_ttl,
        admin_ttl=config.admin_token_ttl,
        cache_size=1,
    )
    return tokens.issue(Role.ADMIN, "schemathesis-admin")[0]


def st_command(url: str, token: str | None, seed: int, *, every_board: bool = True) -> list[str]:
    command = [
        str(ST),
        "run",
        f"{url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",  # the service has the other core
        "--generation-database", "none",  # nothing written between runs, nor into the repo
        "--request-timeout", "10",
        "--no-color",
        "--seed", str(seed),
    ]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    if not every_board:
        command += ["--exclude-path-regex", BOARD_COPIES]
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    return command


# Admin last: it patches and deletes features the other passes would rather find.
@pytest.mark.parametrize("who", ["voter", "anonymous", "admin"])
def test_schemathesis_finds_nothing(
    service: LoggedServer, seed: int, who: str, tmp_path: Path
) -> None:
    server = service.server
    token = {"voter": server.token, "anonymous": lambda: None, "admin": admin_token}[who]()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / ".hypothesis"),
        "FV_SCHEMATHESIS_PASS": who,  # the hooks' Idempotency-Key suffix: per pass, not random
    }
    started = time.monotonic()
    result = subprocess.run(
        st_command(server.url, token, seed, every_board=who == "admin"),
        cwd=tmp_path,  # st keeps its crash files (for `st replay`) in the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr)[-OUTPUT_TAIL:]
    replay = f"replay: {SEED_VARIABLE}={seed} pytest {Path(__file__).relative_to(ROOT)}"
    print(f"schemathesis ({who}, seed {seed}) took {elapsed:.1f} s\n{output}")
    assert result.returncode == 0, (
        f"schemathesis ({who}, seed {seed}) exited {result.returncode} after {elapsed:.1f} s "
        f"({replay}):\n{output}\n--- service log (tail) ---\n{service.log_tail()}"
    )
    assert re.search(r"\d+ generated, \d+ passed", output), output
    assert service.alive(), service.log_tail()
    # Every 5xx the request context makes is logged as "unhandled error" (service/errors.py).
    # (aiohttp's own "Error handling request" tracebacks for unparseable requests, such as st's
    # NUL-in-header probe, come with a 400.)
    assert "unhandled error" not in service.log_text(), f"seed {seed}\n{service.log_tail(200)}"


# --- the text patterns in the document say what _check_text accepts ------------------------------

# What the patterns are about: str.strip() whitespace, control characters, and everything else.
SPECIAL: Final = "".join(
    c for c in map(chr, range(0x3100)) if c.isspace() or unicodedata.category(c) == "Cc"
)
texts = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")), max_size=140
) | st.builds(
    lambda pad, core, tail: pad + core + tail,
    st.text(st.sampled_from(SPECIAL), max_size=5),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=118, max_size=122),
    st.text(st.sampled_from(SPECIAL), max_size=5),
)


def accepted(value: str, low: int, high: int) -> bool:
    try:
        _check_text(value, "x", low, high)
    except ValueError:
        return False
    return True


# print_blob: a failure prints the @reproduce_failure(...) line that replays it exactly.
@settings(max_examples=1500, database=None, deadline=None, print_blob=True)
@given(texts)
def test_title_pattern_is_the_title_rule(value: str) -> None:
    matches = re.search(TITLE_PATTERN, value) is not None and len(value) <= 4 * TITLE_MAX
    assert matches == accepted(value, 1, TITLE_MAX), repr(value)


# print_blob: a failure prints the @reproduce_failure(...) line that replays it exactly.
@settings(max_examples=1500, database=None, deadline=None, print_blob=True)
@given(texts)
def test_description_pattern_is_the_description_rule(value: str) -> None:
    matches = re.search(DESCRIPTION_PATTERN, value) is not None and len(value) <= DESCRIPTION_MAX
    assert matches == accepted(value, 0, DESCRIPTION_MAX), repr(value)


def test_pattern_whitespace_is_exactly_what_strip_removes() -> None:
    whitespace = re.compile(WHITESPACE_CLASS)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(whitespace.fullmatch(char)) == char.isspace(), hex(code)
