"""The commands that read the store: no venue secret needed, no schema change, one-line refusals."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from etl.cli import app
from etl.store import migrate

runner = CliRunner()

UNSET_SECRETS = """
[schedule]
interval = "60s"

[[sources]]
name = "bittap-main"
venue = "bittap"
api_key = "env:OPS_TEST_UNSET_KEY"
api_secret = "file:/nonexistent/bittap.secret"
"""


@pytest.fixture
def unset_secrets(tmp_path, monkeypatch, database_url):
    monkeypatch.delenv("OPS_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "etl.toml"
    path.write_text(UNSET_SECRETS)
    return path


@pytest.mark.parametrize(
    "args",
    [["status"], ["report", "balances"], ["db", "current"], ["prune"],
     ["replay"], ["rollup", "--rebuild"]],
)
def test_reading_the_store_needs_no_venue_secret(engine, unset_secrets, args):
    result = runner.invoke(app, [*args, "--config", str(unset_secrets)])
    assert result.exit_code == 0, result.output
    assert "OPS_TEST_UNSET_KEY" not in result.output


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_command_that_talks_to_the_venue_needs_its_secrets_in_one_line(unset_secrets, command):
    args = [command, "--config", str(unset_secrets)] + (["--once"] if command == "run" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output == (f"error: {unset_secrets}: sources[0].api_key: environment variable "
                             "OPS_TEST_UNSET_KEY is not set; sources[0].api_secret: cannot read secret file "
                             "/nonexistent/bittap.secret: No such file or directory\n")


def test_check_refuses_an_interval_the_daemon_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("OPS_TEST_KEY", "k")
    path = tmp_path / "etl.toml"
    path.write_text(UNSET_SECRETS.replace('"60s"', '"1s"').replace("OPS_TEST_UNSET_KEY", "OPS_TEST_KEY")
                    .replace("file:/nonexistent/bittap.secret", "env:OPS_TEST_KEY"))
    result = runner.invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output == (f"error: {path}: sources[0] (bittap-main): the daemon needs an interval "
                             "of at least 2s\n")


def test_reading_never_changes_the_schema(scratch, monkeypatch, tmp_path):
    monkeypatch.setenv("ETL_DATABASE_URL", scratch.url.render_as_string(hide_password=False))
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    empty = runner.invoke(app, ["report", "balances"])
    assert empty.exit_code == 2
    assert empty.output == "error: the database has no schema yet: run `etl db upgrade`\n"
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["db", "downgrade", "0002"]).exit_code == 0
    for args in (["report", "balances"], ["report", "equity"], ["prune"], ["replay"], ["rollup", "--rebuild"]):
        behind = runner.invoke(app, args)
        assert behind.exit_code == 2, args
        assert behind.output == (f"error: the database is at revision 0002, this etl needs {migrate.head()}: "
                                 "run `etl db upgrade`\n")
    assert migrate.current(scratch) == "0002"
    assert runner.invoke(app, ["db", "current"]).output.strip() == "0002"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["db", "upgrade", "0099"], "error: database migration: Can't locate revision identified by '0099'\n"),
        (["db", "downgrade", "zzz"], "error: database migration: Can't locate revision identified by 'zzz'\n"),
    ],
)
def test_an_unknown_revision_is_one_line(scratch, monkeypatch, tmp_path, args, message):
    monkeypatch.setenv("ETL_DATABASE_URL", scratch.url.render_as_string(hide_password=False))
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert (result.exit_code, result.output) == (2, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--older-than", "1000000000d"],
         "error: --older-than: a duration must be at most 3650d, got '1000000000d'\n"),
        (["report", "equity", "--since", "1000000000d"], "error: --since: expected an ISO 8601 time"),
        (["report", "balances", "--at", "1000000000d"], "error: --at: expected an ISO 8601 time"),
    ],
)
def test_durations_on_the_command_line_are_bounded_in_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.setenv("ETL_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1


def test_a_data_dir_under_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.delenv("ETL_DATABASE_URL", raising=False)
    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "afile" / "etl"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 2
    assert result.output == (f"error: data dir {tmp_path}/afile/etl: cannot create it (Not a directory); "
                             "set ETL_DATA_DIR to a folder you can write, or configure a database\n")
