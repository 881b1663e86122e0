"""Every log line of the test run, kept for tests/test_zz_logs_hold_no_secrets.py to scan.

- In-process: a handler on the root logger (installed for the session by tests/conftest.py)
  writes each record as the service would, once with JsonFormatter and once with TextFormatter.
- Subprocesses: every helper that starts `python -m service` writes its output to `log_path()`.
- Secrets: every `Secret` made during the run, every FV_SECRET given to a subprocess, and the
  tests' own `*SECRET*` constants. Tokens are JWTs: anything of the JWT shape is one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from service.logs import SHOWS_TOKEN, JsonFormatter, TextFormatter

JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# The one token the service logs on purpose (README, "Security and limits"): the start-up admin
# token of a process without FV_SECRET. Allowed once per subprocess log, nowhere else.
STARTUP_ADMIN_TOKEN: Final = re.compile(
    r"no FV_SECRET: a random secret signs tokens; admin token: (eyJ[\w.-]+) \(this process only\)"
)
IN_PROCESS_JSON: Final = "in-process.jsonl"
IN_PROCESS_TEXT: Final = "in-process.log"
SUBPROCESS_DIR: Final = "subprocess"
# Shorter or near-constant strings are not secrets anyone could spot in a line ("short", "x"*31).
MIN_SECRET_LENGTH: Final = 12
MIN_DISTINCT_CHARS: Final = 5


class _State:
    def __init__(self) -> None:
        self.log_dir: Path | None = None
        self.secrets: set[str] = set()
        self.handler: CaptureHandler | None = None
        self.lock = threading.Lock()
        self.counter = itertools.count(1)
        # Filled by conftest's collection hooks and the final check.
        self.collected_files: set[str] = set()
        self.deselected = 0
        self.summary = ""


STATE: Final = _State()


def log_dir() -> Path:
    """The session's log directory (set by conftest); a temporary one outside a pytest session."""
    if STATE.log_dir is None:
        STATE.log_dir = Path(tempfile.mkdtemp(prefix="fv-test-logs-"))
    return STATE.log_dir


def remember_secret(*values: str) -> None:
    """Values as FV_SECRET takes them: comma-separated, blanks ignored."""
    for value in values:
        for part in value.split(","):
            key = part.strip()
            if len(key) >= MIN_SECRET_LENGTH and len(set(key)) >= MIN_DISTINCT_CHARS:
                STATE.secrets.add(key)


def log_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    """A new file for one subprocess's output; remembers the FV_SECRET it is given in `env`."""
    if env is not None and env.get("FV_SECRET"):
        remember_secret(env["FV_SECRET"])
    folder = log_dir() / SUBPROCESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with STATE.lock:
        number = next(STATE.counter)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rsplit("::", 1)[-1]
    safe = re.sub(r"[^\w.-]+", "_", f"{test}-{name}" if test else name)[:100]
    return folder / f"{number:04d}-{safe}.log"


def save_log(name: str, text: str | bytes, env: Mapping[str, str] | None = None) -> Path:
    """Keep output a helper already read (a pipe, capture_output) with the other logs."""
    path = log_path(name, env)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def secrets() -> set[str]:
    """Every secret seen so far, plus the tests' module constants named *SECRET*."""
    found = set(STATE.secrets)
    for module_name, module in list(sys.modules.items()):
        if module_name == "tests" or module_name.startswith("tests."):
            for name, value in list(vars(module).items()):
                if "SECRET" in name and isinstance(value, str):
                    found.add(value)
    result: set[str] = set()
    for value in found:
        for part in value.split(","):
            key = part.strip()
            if len(key) >= MIN_SECRET_LENGTH and len(set(key)) >= MIN_DISTINCT_CHARS:
                result.add(key)
    return result


# --- in-process capture ---------------------------------------------------------------------------


class CaptureHandler(logging.Handler):
    """Writes every record with the service's own formatters: one JSON file, one text file."""

    def __init__(self, folder: Path) -> None:
        super().__init__(logging.NOTSET)
        self.json_formatter = JsonFormatter()
        self.text_formatter = TextFormatter()
        self.json_file = (folder / IN_PROCESS_JSON).open("a", encoding="utf-8")
        self.text_file = (folder / IN_PROCESS_TEXT).open("a", encoding="utf-8")
        self.records = 0
        self.by_logger: Counter[str] = Counter()
        self.unformattable = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = [
                self._format(self.json_formatter, record),
                self._format(self.text_formatter, record),
            ]
            with STATE.lock:
                self.records += 1
                self.by_logger[record.name] += 1
                self.json_file.write(lines[0].replace("\n", "\\n") + "\n")
                self.text_file.write(lines[1] + "\n")
        except Exception:  # a capture problem must never fail the test that logged
            self.handleError(record)

    def _format(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        # A copy without what other handlers' formatters added (message, asctime): the line as
        # the service's only handler would write it, and the record left as the others see it.
        own = logging.makeLogRecord(
            {k: v for k, v in vars(record).items() if k not in ("message", "asctime")}
        )
        # Unmasked: the check must see what the code tried to log, not what the formatters' own
        # token mask (service/logs.py, redact) would hide; that mask has its own test.
        setattr(own, SHOWS_TOKEN, True)
        try:
            return formatter.format(own)
        except Exception:  # what the service's formatter cannot write: keep the text to scan
            self.unformattable += 1
            return f"<unformattable> {record.name} {record.msg!r} {record.args!r} {vars(record)!r}"

    def close(self) -> None:
        with STATE.lock:
            self.json_file.close()
            self.text_file.close()
        super().close()


def install(folder: Path, levels: Mapping[str, int]) -> Callable[[], None]:
    """Start the session capture; returns the function that undoes it."""
    from service.config import Secret

    STATE.log_dir = folder
    handler = CaptureHandler(folder)
    STATE.handler = handler
    root = logging.getLogger()
    root.addHandler(handler)
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    original: Callable[..., None] | None = Secret.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        assert original is not None
        original(self, *args, **kwargs)
        remember_secret(*getattr(self, "keys", ()))

    try:
        Secret.__init__ = recording_init  # type: ignore[method-assign]
    except (AttributeError, TypeError):  # a Secret that cannot be patched: make_settings remembers
        original = None

    def uninstall() -> None:
        if original is not None:
            Secret.__init__ = original  # type: ignore[method-assign]
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
        root.removeHandler(handler)
        handler.close()

    return uninstall


# --- scanning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    source: str
    line_number: int
    what: str
    line: str  # with the token or secret masked, so the report does not leak it again

    def __str__(self) -> str:
        return f"{self.source}:{self.line_number}: {self.what}: {self.line[:300]}"


def scan(
    source: str, lines: Iterable[str], secret_values: Iterable[str], startup_token_allowed: bool
) -> list[Finding]:
    """Every line holding a JWT-shaped string or one of `secret_values`.

    With `startup_token_allowed` (a subprocess's own log), the first start-up admin-token line
    may hold its one token; any other JWT, including that token elsewhere, is a finding.
    """
    keys = sorted({s for s in secret_values if s}, key=len, reverse=True)
    findings: list[Finding] = []
    allowed_used = False
    for number, line in enumerate(lines, 1):
        jwts = JWT.findall(line)
        if jwts and startup_token_allowed and not allowed_used:
            match = STARTUP_ADMIN_TOKEN.search(line)
            if match and len(jwts) == 1 and jwts[0] == match.group(1):
                allowed_used = True
                jwts = []
                line = line.replace(match.group(1), "<startup admin token>")
        hit = [k for k in keys if k in line]
        masked = JWT.sub("<JWT>", line)
        for key in hit:
            masked = masked.replace(key, "<SECRET>")
        if jwts:
            findings.append(Finding(source, number, f"{len(jwts)} JWT-shaped token(s)", masked))
        if hit:
            findings.append(Finding(source, number, f"{len(hit)} configured secret(s)", masked))
    return findings


def read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            yield line.rstrip("\n")
