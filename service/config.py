"""Settings: code defaults < config/*.toml < environment < command-line flags."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE: Final = PROJECT_ROOT / "config" / "default.toml"
# Environment names fixed by the public contract; every other setting is FV_<NAME>.
CONTRACT_ENV: Final = {"PORT": "port"}
# Names process managers set (gunicorn, Heroku-style platforms): read like the contract's, and
# FV_<NAME> still wins; a blank value counts as unset.
CONVENTION_ENV: Final = {"WEB_CONCURRENCY": "workers"}
# HS256 keys shorter than the hash output weaken the MAC (RFC 7518 3.2).
MIN_SECRET_LENGTH: Final = 32
# msgspec checks a pattern with re.search, where "$" also matches before a trailing newline
# ("info\n" would pass): every pattern here ends in \Z, the very end of the string.
_STORE_RE: Final = re.compile(r"^(memory|(redis|rediss|unix)://\S+|sqlite:///\S+)\Z")
DEFAULT_STORE: Final = "sqlite:///data/feature-votes.sqlite3"  # durable by default (ADR-002)


class ConfigError(Exception):
    """A setting that cannot be used; str() is the one-line message for the operator."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"bad setting {setting}: {message}")
        self.setting = setting


class Secret:
    """Token signing keys; the first signs, all verify. Never shows its value."""

    __slots__ = ("generated", "keys")

    def __init__(self, keys: tuple[str, ...], generated: bool = False) -> None:
        if not keys or any(len(k) < MIN_SECRET_LENGTH for k in keys):
            raise ValueError(f"every secret must be at least {MIN_SECRET_LENGTH} characters")
        self.keys = keys
        self.generated = generated

    @classmethod
    def parse(cls, value: str | list[str] | tuple[str, ...]) -> Secret:
        """Accept 'a,b' or a list; blanks around commas are ignored."""
        parts = value.split(",") if isinstance(value, str) else list(value)
        return cls(tuple(p.strip() for p in parts if p.strip()))

    @classmethod
    def random(cls) -> Secret:
        return cls((_secrets.token_urlsafe(32),), generated=True)

    def __repr__(self) -> str:
        return f"Secret(<{len(self.keys)} key(s) hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(self.keys)


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every tunable of one instance; documented in config/default.toml and the README."""

    host: str = "0.0.0.0"
    port: Port = 8080
    secret: Secret = msgspec.field(default_factory=Secret.random)
    store: Annotated[str, msgspec.Meta(pattern=_STORE_RE.pattern)] = DEFAULT_STORE
    # The SQLite store's file may grow to this many bytes (0: no bound); beyond it a change is
    # a 503 and nothing is lost.
    sqlite_max_bytes: NonNegativeInt = 0
    # Processes serving this board side by side (WEB_CONCURRENCY): more than one needs a shared
    # store, so the memory store refuses it (store/factory.py).
    workers: PositiveInt = 1
    allowed_origins: tuple[str, ...] = ()
    top_n: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    max_features: PositiveInt = 1000
    # Boards (ADR-012): how many a deployment holds, who may make one, and how long one nobody
    # changes lives (0: for ever; main is never removed).
    max_boards: PositiveInt = 10_000
    board_creation: Annotated[str, msgspec.Meta(pattern=r"^(anyone|admin)\Z")] = "anyone"
    board_idle_ttl: NonNegativeFloat = 0.0
    export_cache_size: NonNegativeInt = 8
    voter_token_ttl: PositiveInt = 30 * 24 * 3600
    admin_token_ttl: PositiveInt = 12 * 3600
    board_admin_token_ttl: PositiveInt = 30 * 24 * 3600  # a presenter's laptop keeps it
    token_cache_size: PositiveInt = 10_000
    max_body_size: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    idempotency_ttl: PositiveInt = 24 * 3600
    shutdown_timeout: PositiveFloat = 10.0
    drain_delay: NonNegativeFloat = 0.5
    public_url: Annotated[str, msgspec.Meta(pattern=r"^(https?://\S+)?\Z")] = ""
    push_interval: PositiveFloat = 0.02
    ws_max_msg_size: Annotated[int, msgspec.Meta(ge=64)] = 4096
    ws_heartbeat: NonNegativeFloat = 30.0
    ws_idle_timeout: NonNegativeFloat = 75.0
    http_keepalive_timeout: PositiveFloat = 75.0
    ws_buffer_limit: Annotated[int, msgspec.Meta(ge=1024)] = 256 * 1024
    ws_send_buffer: Annotated[int, msgspec.Meta(ge=0, le=16 * 1024 * 1024)] = 64 * 1024
    slow_client_timeout: PositiveFloat = 5.0
    ws_close_timeout: PositiveFloat = 2.0
    ws_auth_failures_max: PositiveInt = 5
    log_level: Annotated[str, msgspec.Meta(pattern=r"^(debug|info|warning|error)\Z")] = "info"
    log_format: Annotated[str, msgspec.Meta(pattern=r"^(auto|json|text)\Z")] = "auto"
    access_log: bool = True
    cors_origins: tuple[str, ...] = ()
    max_header_size: Annotated[int, msgspec.Meta(ge=1024, le=65536)] = 8190
    # A room behind one NAT shares an address: 1,000 people join within 30 s (ADR-011).
    token_rate: NonNegativeFloat = 1800.0
    token_burst: NonNegativeInt = 200
    vote_rate: NonNegativeFloat = 60.0
    vote_burst: NonNegativeInt = 20
    create_rate: NonNegativeFloat = 10.0
    create_burst: NonNegativeInt = 5
    board_create_rate: NonNegativeFloat = 10.0
    board_create_burst: NonNegativeInt = 5
    # The same room's screens: 1,000 sockets within 30 s, retrying on live.js's backoff (ADR-011).
    ws_connect_rate: NonNegativeFloat = 3600.0
    ws_connect_burst: NonNegativeInt = 200
    auth_failure_rate: NonNegativeFloat = 60.0
    auth_failure_burst: NonNegativeInt = 20
    trusted_proxies: tuple[str, ...] = ()
    redis_prefix: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,64}\Z")] = "fv:"
    redis_socket_timeout: PositiveFloat = 1.0
    redis_connect_timeout: PositiveFloat = 0.5
    redis_max_connections: Annotated[int, msgspec.Meta(ge=2)] = 50

    def __post_init__(self) -> None:
        idle, beat = self.ws_idle_timeout, self.ws_heartbeat
        if idle and not (beat and idle > beat):
            raise ConfigError(
                "ws_idle_timeout",
                f"{idle:g} s needs ws_heartbeat pings more often than that (ws_heartbeat is "
                f"{beat:g}): a dashboard only talks when pinged; set ws_idle_timeout = 0 to "
                "never close silent sockets",
            )


FIELDS: Final = {f.name: f for f in msgspec.structs.fields(Settings)}


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret:
        return Secret.parse(obj)
    raise NotImplementedError(type_)


def _convert(name: str, value: Any, source: str) -> Any:
    field = FIELDS.get(name)
    if field is None:
        raise ConfigError(name, f"unknown setting (from {source})")
    if isinstance(value, str) and name in ("allowed_origins", "cors_origins", "trusted_proxies"):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        converted = msgspec.convert(value, field.type, strict=False, dec_hook=_dec_hook)
        if name == "trusted_proxies":
            for network in converted:
                ipaddress.ip_network(network, strict=False)
        return converted
    except (msgspec.ValidationError, ValueError) as exc:
        shown = "<hidden>" if name == "secret" else repr(value)
        raise ConfigError(name, f"{exc} (from {source}, value {shown})") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _env_values(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for var, name in CONTRACT_ENV.items():
        if var in env:
            found[name] = (env[var], var)
    for var, name in CONVENTION_ENV.items():
        if env.get(var, "").strip():
            found[name] = (env[var], var)
    for name in FIELDS:
        var = f"FV_{name.upper()}"
        if var in env:
            found[name] = (env[var], var)
    return found


def load_settings(
    *,
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    use_default_file: bool = True,
) -> Settings:
    """Merge every layer; raise ConfigError naming the first bad setting."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    files: list[Path] = []
    if use_default_file and DEFAULT_CONFIG_FILE.exists():
        files.append(DEFAULT_CONFIG_FILE)
    extra = config_file if config_file is not None else env.get("FV_CONFIG")
    if extra:
        files.append(Path(extra))
    for path in files:
        for name, value in _read_toml(path).items():
            values[name] = _convert(name, value, str(path))
    for name, (value, var) in _env_values(env).items():
        values[name] = _convert(name, value, var)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values)
