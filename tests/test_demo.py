"""`etl demo` keeps to its own database; `etl sim` serves the simulators and a config that works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etl.cli import app
from tests.helpers import count

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_data_dir(tmp_path, monkeypatch):
    """The data dir of a demo run in this process; its embedded server is stopped with the
    test (left to the process's exit, pg_ctl found the test's temp dir gone or closed)."""
    from etl.store import engine as embedded

    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"
    server = embedded._servers.pop(tmp_path / "data" / "pgdata", None)
    if server is not None:
        server.cleanup()


@pytest.mark.slow
def test_the_demo_writes_into_its_own_database_and_drop_removes_it(
    engine, database_url, tmp_path, monkeypatch, demo_data_dir
):
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)  # the user's database: the demo must keep out
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--cycles", "1", "--interval", "2s"])
    assert result.exit_code == 0, result.output
    assert "/etl_demo?host=" in result.output and "etl demo --drop" in result.output
    assert count(engine, "accounts") == 0 and count(engine, "ingestion_runs") == 0
    assert (tmp_path / "equity.png").exists()
    assert runner.invoke(app, ["demo", "--drop"]).output.strip() == "dropped database etl_demo"
    assert runner.invoke(app, ["demo", "--drop"]).output.strip() == "no database etl_demo: nothing to drop"


@pytest.mark.slow
def test_etl_sim_prints_a_config_that_run_once_loads(engine, database_url, tmp_path, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-m", "etl.sim.serve", "--interval", "30s"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            if line.startswith("# end of config"):
                break
            lines.append(line)
        env = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines if line.startswith("export "))
        assert len(env) >= 8 and all(name.startswith("ETL_DEMO_") for name in env)
        config = tmp_path / "sim.toml"
        config.write_text("".join(line for line in lines if not line.startswith("export ")))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("ETL_DATABASE_URL", database_url)
        result = runner.invoke(app, ["run", "--once", "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert count(engine, "ingestion_runs") == config.read_text().count("[[sources]]") == 8
        assert count(engine, "accounts") > count(engine, "ingestion_runs")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # and closes the pipe
