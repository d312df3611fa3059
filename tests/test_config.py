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
