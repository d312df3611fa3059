"""Config: every problem is one line naming the file and the key path; secrets never print."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import pytest

from etl.config import Settings, load_settings, parse_duration, parse_settings
from etl.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etl.toml"
    path.write_text(text)
    return path


GOOD = """
[schedule]
interval = "5m"

[[sources]]
name = "bittap-main"
venue = "bittap"
api_key = "env:T_KEY"
api_secret = "file:secret.txt"
params = { accountId = 10001 }
"""


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("T_KEY", "key-value-123")
    (tmp_path / "secret.txt").write_text("very-secret-value\n")
    return tmp_path


def test_a_good_config_resolves_env_and_file_secrets(env):
    settings = load_settings(write(env, GOOD))
    (source,) = settings.sources
    assert source.api_key.reveal() == "key-value-123"
    assert source.api_secret.reveal() == "very-secret-value"  # relative to the config file
    assert settings.interval_of(source) == timedelta(minutes=5)
    assert source.params == {"accountId": "10001"}


def test_secrets_never_show_in_repr_str_or_pickle(env):
    settings = load_settings(write(env, GOOD))
    shown = repr(settings) + str(settings) + repr(settings.sources[0]) + str(settings.model_dump())
    assert "key-value-123" not in shown and "very-secret-value" not in shown
    assert "Secret(env:T_KEY)" in repr(settings.sources[0])
    with pytest.raises(TypeError):
        pickle.dumps(settings.sources[0].api_key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("venue = \"bittap\"", "venue = \"kraken\""),
         "sources[0].venue: unknown venue 'kraken' (expected one of htx, bittap, ltp, treadfi)"),
        (("name = \"bittap-main\"", "name = \"bittap-main\"\ncolour = \"red\""), "sources[0].colour: unknown key"),
        (("env:T_KEY", "env:NOT_SET_ANYWHERE"),
         "sources[0].api_key: environment variable NOT_SET_ANYWHERE is not set"),
        (("env:T_KEY", "plain-literal-key"),
         "sources[0].api_key: secrets must be references 'env:NAME' or 'file:PATH', not literal values"),
        (("file:secret.txt", "file:missing.txt"), "sources[0].api_secret: cannot read secret file"),
        (("interval = \"5m\"", "interval = \"5 minutes\""),
         "schedule.interval: expected a duration like '60s', '5m', '1h' or '90d', got '5 minutes'"),
        (("api_secret = \"file:secret.txt\"\n", ""), "sources[0]: api_secret: required for venue bittap"),
        (("[schedule]", "[scheduel]"), "scheduel: unknown key"),
    ],
)
def test_a_bad_config_is_one_line_with_the_key_path(env, change, message):
    path = write(env, GOOD.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text
    assert "plain-literal-key" not in text


def test_duplicate_source_names_are_rejected(env):
    path = write(env, GOOD + GOOD.split("[[sources]]")[1].join(["[[sources]]", ""]))
    with pytest.raises(ConfigError, match="source name 'bittap-main' appears twice"):
        load_settings(path)


def test_broken_toml_and_missing_file_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[[sources]\nname="))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_no_config_means_no_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings(None) == Settings()


def test_unsigned_venue_needs_no_secret(monkeypatch):
    monkeypatch.setenv("T_TOKEN", "tok")
    settings = parse_settings({"sources": [{"name": "t", "venue": "treadfi", "api_key": "env:T_TOKEN"}]})
    assert settings.sources[0].api_secret is None


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60), ("5m", 300), ("1h", 3600), ("90d", 7776000),
                                                ("500ms", 0.5), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["0s", "-5s", "5", "5 mins", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_surrounding_whitespace_is_not_part_of_a_secret(monkeypatch, tmp_path):
    """A mounted secret or an env file line often ends in a newline: sent as is, it broke
    the request and leaked through the transport's error message."""
    monkeypatch.setenv("T_KEY", "  key-value-123\n")
    (tmp_path / "secret.txt").write_text("\tvery-secret-value\r\n")
    (source,) = load_settings(write(tmp_path, GOOD)).sources
    assert source.api_key.reveal() == "key-value-123"
    assert source.api_secret.reveal() == "very-secret-value"
    monkeypatch.setenv("T_KEY", " \n")
    with pytest.raises(ConfigError, match=r"sources\[0\].api_key: environment variable T_KEY is not set"):
        load_settings(write(tmp_path, GOOD))


@pytest.mark.parametrize(
    "url",
    ["postgresql://etl:hunter2-pw@db.internal:5432/etl", "postgresql://etl@db.internal/etl?password=hunter2-pw"],
)
def test_the_database_password_never_shows_in_repr_or_str(url):
    settings = parse_settings({"database": {"url": url}})
    shown = repr(settings) + str(settings) + repr(settings.database) + str(settings.database)
    assert "hunter2-pw" not in shown
    assert "db.internal" in shown and "***" in shown
    assert settings.database.url == url  # the engine still gets the real one


def test_without_secrets_the_references_are_checked_but_never_read(tmp_path, monkeypatch):
    monkeypatch.delenv("T_KEY", raising=False)  # and secret.txt does not exist
    settings = load_settings(write(tmp_path, GOOD), secrets=False)
    (source,) = settings.sources
    assert not source.api_key.resolved and repr(source.api_key) == "Secret(env:T_KEY)"
    with pytest.raises(ConfigError, match="not resolved"):
        source.api_key.reveal()
    with pytest.raises(ConfigError, match=r"sources\[0\].api_key: secrets must be references"):
        load_settings(write(tmp_path, GOOD.replace("env:T_KEY", "plain-literal-key")), secrets=False)
    with pytest.raises(ConfigError, match="environment variable T_KEY is not set"):
        load_settings(write(tmp_path, GOOD))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('interval = "1000000000d"', "schedule.interval: a duration must be at most 3650d, got '1000000000d'"),
        ('interval = "36500d"', "schedule.interval: a duration must be at most 3650d"),
        ('interval = "2d"', "schedule.interval: an interval must be at most 1d, got 2d"),
        ('timeout = "1h"', "schedule.timeout: a timeout must be at most 10m, got 1h"),
    ],
)
def test_durations_past_their_bounds_are_one_line(env, change, message):
    with pytest.raises(ConfigError) as err:
        load_settings(write(env, GOOD.replace('interval = "5m"', change)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_source_interval_is_bounded_too(env):
    with pytest.raises(ConfigError, match=r"sources\[0\].interval: an interval must be at most 1d"):
        load_settings(write(env, GOOD.replace('params =', 'interval = "7d"\nparams =')))
    assert load_settings(write(env, GOOD.replace('interval = "5m"', 'interval = "1d"'))).schedule.interval \
        == timedelta(days=1)
