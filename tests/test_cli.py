"""The command line as users drive it: exit codes, one-line errors, idempotent re-runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etl.cli import app
from etl.sim.base import Fault
from etl.sim.bittap import BittapSimulator
from tests.helpers import count, rows, served
from tests.venues.test_bittap import seed_body

runner = CliRunner()


@pytest.fixture
def bittap_config(tmp_path, monkeypatch, database_url):
    """A config with two Bittap sources on a served simulator: `seed` (the seed page's body) and `live`."""
    sim = BittapSimulator(seed=3)
    sim.add_account("seed-key", "seed-secret", body=seed_body())
    sim.add_account("live-key", "live-secret")
    monkeypatch.setenv("SEED_KEY", "seed-key")
    monkeypatch.setenv("SEED_SECRET", "seed-secret")
    monkeypatch.setenv("LIVE_KEY", "live-key")
    monkeypatch.setenv("LIVE_SECRET", "live-secret")
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    with served(sim) as server:
        path = tmp_path / "etl.toml"
        path.write_text(
            f"""
[schedule]
timeout = "1s"

[[sources]]
name = "seed"
venue = "bittap"
base_url = "{server.url}"
api_key = "env:SEED_KEY"
api_secret = "env:SEED_SECRET"

[[sources]]
name = "live"
venue = "bittap"
base_url = "{server.url}"
api_key = "env:LIVE_KEY"
api_secret = "env:LIVE_SECRET"
"""
        )
        yield path, sim


def test_run_once_twice_for_a_slot_gives_the_same_rows_and_rewrites_none(engine, bittap_config):
    path, sim = bittap_config
    sim.accounts["live-key"].body = {"code": "0", "success": True, "msg": "ok",
                                     "data": sim._data(sim.accounts["live-key"])}
    args = ["run", "--once", "--config", str(path), "--slot", "2026-01-01T00:00:00Z"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    counts = {t: count(engine, t) for t in ("balance_snapshots", "account_snapshots", "position_snapshots")}
    versions = rows(engine, "SELECT xmin::text FROM balance_snapshots UNION ALL SELECT xmin::text FROM "
                            "position_snapshots UNION ALL SELECT xmin::text FROM account_snapshots")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert {t: count(engine, t) for t in counts} == counts == {
        "balance_snapshots": 2, "account_snapshots": 2, "position_snapshots": 3}
    assert sorted(versions) == sorted(rows(engine, "SELECT xmin::text FROM balance_snapshots UNION ALL SELECT "
                                                   "xmin::text FROM position_snapshots UNION ALL SELECT xmin::text "
                                                   "FROM account_snapshots"))
    assert rows(engine, "SELECT DISTINCT snapshot_ts::text FROM balance_snapshots") == [("2026-01-01 00:00:00+00",)]
    assert "seed" in second.output and "ok" in second.output


def test_run_exits_1_when_a_source_fails_and_still_loads_the_others(engine, bittap_config):
    path, sim = bittap_config
    sim.accounts["seed-key"].body["data"]["assets"][0]["balance"] = "12,5 USDT"
    result = runner.invoke(app, ["run", "--once", "--config", str(path)])
    assert result.exit_code == 1
    assert "error: seed: bittap data.assets[0].balance: expected a number, got '12,5 USDT'" in result.output
    assert rows(engine, "SELECT source, status FROM ingestion_runs ORDER BY source") == [("live", "ok"),
                                                                                          ("seed", "error")]


def test_run_only_the_named_source(engine, bittap_config):
    path, _ = bittap_config
    result = runner.invoke(app, ["run", "--once", "--config", str(path), "--source", "live"])
    assert result.exit_code == 0, result.output
    assert rows(engine, "SELECT source FROM ingestion_runs") == [("live",)]
    unknown = runner.invoke(app, ["run", "--once", "--config", str(path), "--source", "nope"])
    assert unknown.exit_code == 2 and "unknown source nope" in unknown.output


def test_check_tries_each_source_without_writing(engine, bittap_config):
    path, sim = bittap_config
    sim.fail_next(*[Fault(401, '{"code":"410001","msg":"Invalid API key","success":false}',
                          content_type="application/json")])
    result = runner.invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "code 410001: Invalid API key" in result.output
    assert not re.search(r"(\w+): FAILED \1:", result.output)  # the source is named once
    assert ": ok (1 accounts, 1 balances" in result.output
    assert count(engine, "ingestion_runs") == 0 and count(engine, "accounts") == 0


def test_run_needs_once_and_a_valid_slot(bittap_config):
    path, _ = bittap_config
    assert runner.invoke(app, ["run", "--config", str(path)]).exit_code == 2
    bad = runner.invoke(app, ["run", "--once", "--config", str(path), "--slot", "yesterday"])
    assert bad.exit_code == 2 and "--slot: expected an ISO 8601 time" in bad.output


def test_a_bad_config_is_one_line_on_stderr_without_traceback(tmp_path):
    path = tmp_path / "etl.toml"
    path.write_text('[[sources]]\nname = "x"\nvenue = "nope"\napi_key = "env:HOME"\napi_secret = "env:HOME"\n')
    env = {**os.environ, "ETL_CONFIG": str(path)}
    proc = subprocess.run([sys.executable, "-m", "etl", "run", "--once"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}: sources[0].venue: unknown venue 'nope' "
                                   "(expected one of htx, bittap, ltp, treadfi)")
    assert "Traceback" not in proc.stderr


def test_a_bad_log_level_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_LOG_LEVEL", "loud")
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert result.output == "error: ETL_LOG_LEVEL='loud': expected one of debug, info, warning, error\n"


def test_an_unreachable_database_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("error: database: ") and result.output.count("\n") == 1


def test_db_current_names_the_head_revision(engine, database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0 and result.output.strip()[:4].isdigit()


def test_every_command_has_help():
    for args in (["--help"], ["run", "--help"], ["check", "--help"], ["demo", "--help"], ["db", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args


def test_python_dash_m_etl_works():
    proc = subprocess.run([sys.executable, "-m", "etl", "--help"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_run_refuses_a_slot_more_than_one_interval_ahead(engine, bittap_config):
    path, _ = bittap_config
    bad = runner.invoke(app, ["run", "--once", "--config", str(path), "--slot", "2030-01-01T00:00:00Z"])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --slot: 2030-01-01T00:00:00Z is more than one interval (60s) ahead")
    assert bad.output.count("\n") == 1
    assert count(engine, "ingestion_runs") == 0


def test_the_run_summary_fits_80_columns_uncropped(engine, bittap_config, monkeypatch):
    from etl import cli

    path, _ = bittap_config
    monkeypatch.setattr(cli.out, "width", 80)
    result = runner.invoke(app, ["run", "--once", "--config", str(path), "--slot", "2026-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "slot 2026-01-01T00:00:00Z" in result.output and "…" not in result.output
    assert "seed" in result.output and "live" in result.output


@pytest.mark.parametrize("command", [["run", "--once"], ["check"]])
def test_a_dripping_venue_cannot_hold_a_command_past_its_deadline(engine, bittap_config, command):
    path, sim = bittap_config
    sim.fail_next(*[Fault(200, "{" * 1000, content_type="application/json", drip=0.05)] * 20)
    t0 = time.monotonic()
    result = runner.invoke(app, [*command, "--config", str(path), "--deadline", "2s"])
    assert result.exit_code == 1 and time.monotonic() - t0 < 5
    assert "no answer before the deadline" in result.output
