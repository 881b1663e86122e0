"""Settings: code defaults < config/default.toml < --config FILE (or FV_CONFIG) < env < flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.config import (
    DEFAULT_CONFIG_FILE,
    FIELDS,
    PROJECT_ROOT,
    ConfigError,
    Secret,
    Settings,
    load_settings,
)

SECRET_A = "alpha-secret-alpha-secret-alpha-secret-01"
SECRET_B = "bravo-secret-bravo-secret-bravo-secret-02"
README = PROJECT_ROOT / "README.md"


def write(tmp_path: Path, text: str, name: str = "extra.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def plain(settings: Settings) -> dict[str, Any]:
    """Every setting but the secret (random per Settings when not configured)."""
    values = msgspec.structs.asdict(settings)
    del values["secret"]
    return values


# --- precedence ---------------------------------------------------------------------------------


def test_code_defaults_without_any_layer() -> None:
    settings = load_settings(env={}, use_default_file=False)
    assert plain(settings) == plain(Settings())
    assert (settings.host, settings.port, settings.store, settings.top_n) == (
        "0.0.0.0",
        8080,
        "sqlite:///data/feature-votes.sqlite3",  # durable by default (issue 16)
        20,
    )
    assert settings.allowed_origins == ()
    assert settings.secret.generated is True


def test_default_file_shows_the_code_defaults() -> None:
    """config/default.toml promises 'the values shown are the code defaults'."""
    assert DEFAULT_CONFIG_FILE.exists()
    assert plain(load_settings(env={}, use_default_file=True)) == plain(Settings())


def test_config_file_wins_over_default_file(tmp_path: Path) -> None:
    extra = write(tmp_path, "top_n = 7\n")
    assert load_settings(config_file=extra, env={}, use_default_file=True).top_n == 7
    assert load_settings(config_file=extra, env={}, use_default_file=False).top_n == 7


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'host = "10.1.2.3"\nport = 1111\ntop_n = 5\nlog_level = "debug"\n'
        'allowed_origins = ["https://a.example", "https://b.example"]\n'
        f'secret = "{SECRET_A}"\n',
    )
    settings = load_settings(config_file=path, env={})
    assert settings.host == "10.1.2.3"
    assert settings.port == 1111
    assert settings.top_n == 5
    assert settings.log_level == "debug"
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.secret == Secret((SECRET_A,))
    assert settings.secret.generated is False
    # Untouched settings keep their code defaults.
    assert settings.store == "sqlite:///data/feature-votes.sqlite3"
    assert settings.voter_token_ttl == Settings().voter_token_ttl


def test_fv_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "top_n = 9\n")
    assert load_settings(env={"FV_CONFIG": str(path)}).top_n == 9


def test_config_argument_wins_over_fv_config(tmp_path: Path) -> None:
    by_env = write(tmp_path, "top_n = 9\n", "env.toml")
    by_arg = write(tmp_path, "top_n = 11\n", "arg.toml")
    settings = load_settings(config_file=by_arg, env={"FV_CONFIG": str(by_env)})
    assert settings.top_n == 11


def test_full_precedence_chain(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'host = "10.0.0.1"\nport = 1111\ntop_n = 5\nlog_level = "debug"\ndrain_delay = 2.5\n',
    )
    env = {"PORT": "2222", "FV_TOP_N": "6", "FV_HOST": "10.0.0.2", "FV_SECRET": SECRET_A}
    flags = {"port": 3333, "host": None}
    settings = load_settings(config_file=path, env=env, flags=flags)
    assert settings.port == 3333  # flag > env > file
    assert settings.host == "10.0.0.2"  # env > file; a flag of None is "not given"
    assert settings.top_n == 6  # env > file
    assert settings.log_level == "debug"  # file > default
    assert settings.drain_delay == 2.5  # file > default
    assert settings.secret == Secret((SECRET_A,))  # env
    assert settings.idempotency_ttl == Settings().idempotency_ttl  # code default


def test_env_port_and_fv_names() -> None:
    env = {
        "PORT": "9000",
        "FV_HOST": "127.0.0.1",
        "FV_STORE": "redis://127.0.0.1:6379/0",
        "FV_TOP_N": "3",
        "FV_MAX_BODY_SIZE": "2048",
        "FV_DRAIN_DELAY": "0",
        "FV_SHUTDOWN_TIMEOUT": "1.5",
        "FV_LOG_LEVEL": "warning",
    }
    settings = load_settings(env=env, use_default_file=False)
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"
    assert settings.store == "redis://127.0.0.1:6379/0"
    assert settings.top_n == 3
    assert settings.max_body_size == 2048
    assert settings.drain_delay == 0.0
    assert settings.shutdown_timeout == 1.5
    assert settings.log_level == "warning"


def test_fv_port_is_also_read() -> None:
    """config/default.toml documents 'PORT or FV_PORT'."""
    assert load_settings(env={"FV_PORT": "9100"}, use_default_file=False).port == 9100


def test_flags_override_env() -> None:
    settings = load_settings(
        env={"FV_HOST": "10.0.0.2", "PORT": "2222"},
        flags={"host": "127.0.0.1", "port": 4444},
        use_default_file=False,
    )
    assert (settings.host, settings.port) == ("127.0.0.1", 4444)


def test_environment_is_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FV_TOP_N", "13")
    monkeypatch.delenv("FV_CONFIG", raising=False)
    assert load_settings(use_default_file=False).top_n == 13


# --- secrets and origins ------------------------------------------------------------------------


def test_two_secrets_for_rotation() -> None:
    settings = load_settings(
        env={"FV_SECRET": f"{SECRET_A}, {SECRET_B}"}, use_default_file=False
    )
    assert len(settings.secret.keys) == 2
    assert settings.secret.keys == (SECRET_A, SECRET_B)
    assert settings.secret.generated is False


def test_allowed_origins_comma_list() -> None:
    env = {"FV_ALLOWED_ORIGINS": "https://a.example, https://b.example,,"}
    settings = load_settings(env=env, use_default_file=False)
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_without_a_secret_each_load_makes_a_random_one() -> None:
    one = load_settings(env={}, use_default_file=False).secret
    two = load_settings(env={}, use_default_file=False).secret
    assert one.generated and two.generated
    assert one != two
    assert all(len(k) >= 32 for k in one.keys + two.keys)


def test_secret_never_shown_by_settings() -> None:
    settings = load_settings(env={"FV_SECRET": f"{SECRET_A},{SECRET_B}"}, use_default_file=False)
    for text in (repr(settings), str(settings), repr(settings.secret), str(settings.secret)):
        assert SECRET_A not in text
        assert SECRET_B not in text
        assert "alpha-secret" not in text
        assert "bravo-secret" not in text


LEAKY = "leaky-leaky-leaky"  # shorter than 32: rejected, and must not be echoed


@pytest.mark.parametrize(
    ("env", "toml"),
    [
        ({"FV_SECRET": LEAKY}, None),
        ({"FV_SECRET": f"{SECRET_A},{LEAKY}"}, None),
        ({}, f'secret = "{LEAKY}"\n'),
        ({}, f'secret = ["{SECRET_A}", "{LEAKY}"]\n'),
        ({"FV_SECRET": SECRET_A, "PORT": "0"}, None),
        ({}, f'secret = "{SECRET_A}"\nport = 0\n'),
    ],
    ids=["env-short", "env-second-short", "toml-short", "toml-list", "env-other-bad", "toml-other"],
)
def test_secret_never_in_config_error(
    tmp_path: Path, env: dict[str, str], toml: str | None
) -> None:
    path = write(tmp_path, toml) if toml is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, env=env, use_default_file=False)
    message = str(info.value)
    assert LEAKY not in message
    assert SECRET_A not in message
    assert "leaky" not in message
    assert "alpha-secret" not in message
    assert len(message.splitlines()) == 1


# --- bad settings -------------------------------------------------------------------------------


def check_one_line_naming(error: ConfigError, setting: str) -> None:
    message = str(error)
    assert message.strip(), "empty message"
    assert len(message.splitlines()) == 1, f"not one line: {message!r}"
    assert re.search(rf"\b{re.escape(setting)}\b", message), f"{setting!r} not in {message!r}"
    assert error.setting == setting


@pytest.mark.parametrize(
    ("env", "flags", "setting"),
    [
        ({"PORT": "0"}, {}, "port"),
        ({"PORT": "70000"}, {}, "port"),
        ({"PORT": "abc"}, {}, "port"),
        ({"FV_PORT": "-1"}, {}, "port"),
        ({}, {"port": 0}, "port"),
        ({}, {"port": 70000}, "port"),
        ({"FV_STORE": "mysql://x"}, {}, "store"),
        ({"FV_STORE": ""}, {}, "store"),
        ({"FV_TOP_N": "0"}, {}, "top_n"),
        ({"FV_TOP_N": "many"}, {}, "top_n"),
        ({"FV_SECRET": "x" * 31}, {}, "secret"),
        ({"FV_SECRET": ""}, {}, "secret"),
        ({"FV_LOG_LEVEL": "loud"}, {}, "log_level"),
        ({"FV_MAX_BODY_SIZE": "10"}, {}, "max_body_size"),
        ({"FV_DRAIN_DELAY": "-1"}, {}, "drain_delay"),
        ({"FV_SHUTDOWN_TIMEOUT": "0"}, {}, "shutdown_timeout"),
        ({"FV_VOTER_TOKEN_TTL": "0"}, {}, "voter_token_ttl"),
        ({"FV_TOKEN_CACHE_SIZE": "0"}, {}, "token_cache_size"),
    ],
)
def test_bad_setting_from_env_or_flags(
    env: dict[str, str], flags: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, flags=flags, use_default_file=False)
    check_one_line_naming(info.value, setting)


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ("port = 0\n", "port"),
        ("port = 70000\n", "port"),
        ('port = "abc"\n', "port"),
        ('store = "mysql://x"\n', "store"),
        ("top_n = 0\n", "top_n"),
        ('log_level = "loud"\n', "log_level"),
        ("max_body_size = 10\n", "max_body_size"),
        ('secret = "too-short"\n', "secret"),
        ("colour = 1\n", "colour"),
        ("[server]\nport = 8080\n", "server"),
        ("port = \n", "config"),
        ("port = 8080\nport = 8081\n", "config"),
        ('host = "unterminated\n', "config"),
    ],
    ids=[
        "port-0",
        "port-70000",
        "port-abc",
        "store-mysql",
        "top_n-0",
        "log_level-loud",
        "max_body_size-10",
        "secret-short",
        "unknown-key",
        "unknown-table",
        "invalid-toml-missing-value",
        "invalid-toml-duplicate",
        "invalid-toml-unterminated",
    ],
)
def test_bad_setting_from_toml(tmp_path: Path, toml: str, setting: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, env={}, use_default_file=False)
    check_one_line_naming(info.value, setting)


def test_unknown_key_message_says_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "colour = 1\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_settings(config_file=path, env={}, use_default_file=False)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=missing, env={}, use_default_file=False)
    check_one_line_naming(info.value, "config")
    assert str(missing) in str(info.value)


def test_missing_config_file_from_fv_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"FV_CONFIG": str(tmp_path / "nope.toml")}, use_default_file=False)
    check_one_line_naming(info.value, "config")


def test_unreadable_config_file(tmp_path: Path) -> None:
    """A directory is unreadable as a file even for root (chmod 000 is not, for root)."""
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=tmp_path, env={}, use_default_file=False)
    check_one_line_naming(info.value, "config")


def test_invalid_utf8_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'host = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, env={}, use_default_file=False)
    check_one_line_naming(info.value, "config")


def test_error_says_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PORT"):
        load_settings(env={"PORT": "70000"}, use_default_file=False)
    path = write(tmp_path, "top_n = 0\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_settings(config_file=path, env={}, use_default_file=False)
    with pytest.raises(ConfigError, match="--port"):
        load_settings(env={}, flags={"port": 0}, use_default_file=False)


# --- documentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_setting_documented_in_default_toml(name: str) -> None:
    """Every setting appears as a key (possibly commented out, like the secret)."""
    text = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")
    assert re.search(rf"^#?\s*{re.escape(name)}\s*=", text, re.MULTILINE), (
        f"{name} is not documented in {DEFAULT_CONFIG_FILE}"
    )


def test_default_toml_has_no_stale_keys() -> None:
    text = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")
    keys = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    assert keys == set(FIELDS)


def readme_table_rows() -> list[str]:
    assert README.exists(), f"{README} does not exist"
    lines = README.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.lstrip().startswith("|")]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_setting_documented_in_readme_table(name: str) -> None:
    rows = readme_table_rows()
    assert any(f"`{name}`" in row for row in rows), (
        f"README.md has no configuration table row naming `{name}`"
    )


@pytest.mark.parametrize(
    "env",
    [
        {"FV_WS_HEARTBEAT": "30", "FV_WS_IDLE_TIMEOUT": "30"},
        {"FV_WS_HEARTBEAT": "30", "FV_WS_IDLE_TIMEOUT": "10"},
        {"FV_WS_HEARTBEAT": "0"},  # the default idle timeout would close every quiet dashboard
    ],
    ids=["idle-equals-heartbeat", "idle-below-heartbeat", "idle-without-pings"],
)
def test_idle_timeout_must_outlast_the_heartbeat(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, use_default_file=False)
    check_one_line_naming(info.value, "ws_idle_timeout")
    assert "ws_heartbeat" in str(info.value)


def test_idle_timeout_off_allows_no_heartbeat() -> None:
    settings = load_settings(
        env={"FV_WS_HEARTBEAT": "0", "FV_WS_IDLE_TIMEOUT": "0"}, use_default_file=False
    )
    assert (settings.ws_heartbeat, settings.ws_idle_timeout) == (0, 0)
