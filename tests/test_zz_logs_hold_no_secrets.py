"""No token or secret in any log line of the whole test run (runs last; see tests/log_capture.py).

The in-process records (as the service's JSON and text formatters write them) and the output of
every `python -m service` the tests started are scanned for JWT-shaped strings and for every
configured secret. The one exception is the README's: the start-up admin token of a process
without FV_SECRET, once, in that process's own log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from . import log_capture
from .log_capture import STATE, CaptureHandler, read_lines, scan

# A full run sees thousands of in-process records and dozens of subprocess logs; these floors
# only say the capture was really on.
MIN_IN_PROCESS_RECORDS = 100
MIN_SUBPROCESS_LOGS = 1
PLANTED_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXBsYW50ZWQtaGVyZQ"
PLANTED_SECRET = "planted-secret-planted-secret-0123456789"


# --- the detector ---------------------------------------------------------------------------------


def test_scan_finds_a_planted_token_and_a_planted_secret() -> None:
    lines = [
        '{"msg": "GET /features 200", "route": "/features"}',
        f'{{"msg": "oops", "auth": "Bearer {PLANTED_JWT}"}}',
        f"2024-01-01 WARNING service: key={PLANTED_SECRET[:20]}",  # a prefix is not the secret
        f"2024-01-01 WARNING service: key={PLANTED_SECRET}",
    ]
    findings = scan("planted", lines, {PLANTED_SECRET}, startup_token_allowed=False)
    assert [(f.line_number, f.what) for f in findings] == [
        (2, "1 JWT-shaped token(s)"),
        (4, "1 configured secret(s)"),
    ]
    assert all(PLANTED_JWT not in str(f) and PLANTED_SECRET not in str(f) for f in findings)


def test_scan_allows_the_startup_admin_token_once_in_a_subprocess_log() -> None:
    startup = (
        "no FV_SECRET: a random secret signs tokens; admin token: "
        f"{PLANTED_JWT} (this process only)"
    )
    assert scan("sub", [startup], set(), startup_token_allowed=True) == []
    assert len(scan("in-process", [startup], set(), startup_token_allowed=False)) == 1
    twice = scan("sub", [startup, startup], set(), startup_token_allowed=True)
    assert [f.line_number for f in twice] == [2]
    reused = scan("sub", [startup, f"Bearer {PLANTED_JWT}"], set(), startup_token_allowed=True)
    assert [f.line_number for f in reused] == [2]


def test_capture_handler_writes_what_the_formatters_write(tmp_path: Path) -> None:
    """A private handler on a non-propagating logger: the session's capture never sees these."""
    logger = logging.getLogger("tests.log_capture.selftest")
    logger.propagate = False
    handler = CaptureHandler(tmp_path)
    logger.addHandler(handler)
    try:
        logger.warning("token %s", PLANTED_JWT, extra={"secret": PLANTED_SECRET})
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert handler.records == 1
    for name in (log_capture.IN_PROCESS_JSON, log_capture.IN_PROCESS_TEXT):
        found = scan(name, read_lines(tmp_path / name), {PLANTED_SECRET}, False)
        assert [f.what for f in found] == ["1 JWT-shaped token(s)", "1 configured secret(s)"]
        assert all(PLANTED_JWT not in str(f) and PLANTED_SECRET not in str(f) for f in found)


# --- the whole run: keep this test last in the file -----------------------------------------------


def whole_suite_ran() -> tuple[bool, str]:
    tests_dir = Path(__file__).parent
    every = {p.name for p in tests_dir.glob("test_*.py")}
    missing = sorted(every - STATE.collected_files)
    if missing or STATE.deselected:
        return False, (
            f"a subset ran ({len(missing)} of {len(every)} test files not collected, "
            f"{STATE.deselected} tests deselected): the capture counts are only asserted "
            "for the whole suite"
        )
    return True, ""


def test_logs_of_the_whole_run_hold_no_token_or_secret() -> None:
    handler = STATE.handler
    assert handler is not None, "the session log capture (tests/conftest.py) is not installed"
    assert handler in logging.getLogger().handlers, "something removed the capture handler"
    folder = log_capture.log_dir()
    with STATE.lock:
        handler.json_file.flush()
        handler.text_file.flush()
    secret_values = log_capture.secrets()
    findings = []
    for name in (log_capture.IN_PROCESS_JSON, log_capture.IN_PROCESS_TEXT):
        findings += scan(f"in-process/{name}", read_lines(folder / name), secret_values, False)
    subprocess_logs = sorted((folder / log_capture.SUBPROCESS_DIR).glob("*.log"))
    subprocess_lines = 0
    for path in subprocess_logs:
        lines = list(read_lines(path))
        subprocess_lines += len(lines)
        findings += scan(path.name, lines, secret_values, startup_token_allowed=True)
    STATE.summary = (
        f"log capture ({folder}): {handler.records} in-process records "
        f"({', '.join(f'{n} {c}' for n, c in handler.by_logger.most_common(4))}), "
        f"{len(subprocess_logs)} subprocess logs with {subprocess_lines} lines, "
        f"{len(secret_values)} secrets, {len(findings)} findings"
    )
    print(STATE.summary)
    listed = "\n".join(str(f) for f in findings[:50])
    assert not findings, f"{len(findings)} log lines hold a token or a secret:\n{listed}"
    full, why_not = whole_suite_ran()
    if not full:
        pytest.skip(f"no leak in what was captured, but {why_not}")
    assert handler.records > MIN_IN_PROCESS_RECORDS, STATE.summary
    assert len(subprocess_logs) >= MIN_SUBPROCESS_LOGS, STATE.summary
    assert subprocess_lines > 0, STATE.summary
    assert secret_values, "no secret was collected: make_settings and the helpers remember them"
