"""`etl daemon` as users run it: real processes, signals, replicas and a database outage.

The simulators are served from this process (their request counts are the truth about
polling); each daemon is `python -m etl daemon --config <tmp>.toml` with its own data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from typer.testing import CliRunner

from etl.cli import app
from etl.sim.bittap import BittapAccount, BittapSimulator
from etl.store.engine import make_engine
from etl.venues.bittap import ACCOUNT_INFO
from tests.helpers import rows, served, source_entry

pytestmark = pytest.mark.slow
INTERVAL = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, database_url: str, entries: list[dict[str, Any]]) -> Path:
    lines = [
        f'[database]\nurl = "{database_url}"\n',
        f'[schedule]\ninterval = "{INTERVAL}s"\ntimeout = "1s"\n',
    ]
    for entry in entries:
        lines.append("[[sources]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items()))
    path.write_text("\n".join(lines))
    return path


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def terminate(self, within: float = 8.0) -> float:
        """SIGTERM; returns the seconds it took to exit (0 expected as its code)."""
        t0 = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(within) == 0, "\n".join(self.lines()[-20:])
        return time.monotonic() - t0


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start_daemon(config: Path, name: str = "daemon", *options: str, **env: str) -> Daemon:
        log, port = tmp_path / f"{name}.log", free_port()
        environ = {k: v for k, v in os.environ.items() if k not in ("ETL_CONFIG", "ETL_DATABASE_URL")}
        environ.update(ETL_DATA_DIR=str(tmp_path / f"{name}-data"), **env)
        command = [
            sys.executable,
            "-m",
            "etl",
            "daemon",
            "--config",
            str(config),
            "--metrics-port",
            str(port),
            *options,
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ)
        daemon = Daemon(process, log, port)
        started.append(daemon)
        wait_for(lambda: "daemon started" in log.read_text(), 20, f"{name} to start", daemon)
        return daemon

    yield start_daemon
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def wait_for(condition: Callable[[], bool], seconds: float, what: str, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if daemon is not None and daemon.process.poll() is not None:
            pytest.fail(f"daemon exited while waiting for {what}:\n" + "\n".join(daemon.lines()[-20:]))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def sleep_until_mid_slot() -> None:
    """Half-way between two slots, where no poll is in flight."""
    time.sleep(INTERVAL - (time.time() % INTERVAL) + INTERVAL / 2)


def ok_slots(engine: Engine, source: str) -> list[datetime]:
    found = rows(
        engine,
        "SELECT snapshot_ts FROM ingestion_runs WHERE source = :s AND status = 'ok' ORDER BY 1",
        s=source,
    )
    return [r[0] for r in found]


def contiguous(slots: list[datetime]) -> bool:
    step = timedelta(seconds=INTERVAL)
    return bool(slots) and slots == [slots[0] + i * step for i in range(len(slots))]


@pytest.fixture
def two_accounts() -> Iterator[tuple[BittapSimulator, list[dict[str, Any]]]]:
    sim = BittapSimulator(seed=11)
    sim.add_account("alpha-key", "alpha-secret")
    sim.add_account("beta-key", "beta-secret", positions=3)
    with served(sim) as server:
        yield (
            sim,
            [
                source_entry("alpha", "bittap", server.url, "alpha-key", "alpha-secret"),
                source_entry("beta", "bittap", server.url, "beta-key", "beta-secret"),
            ],
        )


def test_a_two_second_daemon_loads_aligned_slots_and_exits_0_on_sigterm(
    engine, database_url, tmp_path, start, two_accounts, monkeypatch
):
    sim, entries = two_accounts
    config = write_config(tmp_path / "etl.toml", database_url, entries)
    daemon = start(config, ETL_LOG_FORMAT="json", ETL_LOG_LEVEL="debug")
    time.sleep(6)
    scraped = daemon.metrics()
    time.sleep(4)
    assert daemon.terminate() < 5.0

    for source in ("alpha", "beta"):
        slots = ok_slots(engine, source)
        assert len(slots) >= 4, slots
        assert contiguous(slots)
        assert all(s.microsecond == 0 and s.timestamp() % INTERVAL == 0 for s in slots)
        assert f'etl_last_success_timestamp_seconds{{source="{source}"}}' in scraped
    assert sim.requests[ACCOUNT_INFO] == len(ok_slots(engine, "alpha")) + len(ok_slots(engine, "beta"))
    assert "etl_spool_depth 0.0" in scraped and "etl_database_up 1.0" in scraped
    # durations by venue: both sources' polls in one histogram
    polls = re.search(r'^etl_poll_duration_seconds_count\{venue="bittap"\} (\S+)$', scraped, re.M)
    assert polls and float(polls.group(1)) >= 4, scraped
    assert 'etl_load_duration_seconds_count{venue="bittap"}' in scraped

    logged = [json.loads(line) for line in daemon.lines()]  # every line is one JSON object
    loaded = [entry for entry in logged if entry.get("status") == "ok"]  # debug: a line per source
    assert {(e["source"], e["slot"]) for e in loaded} == {
        (s, f"{slot:%Y-%m-%dT%H:%M:%SZ}") for s in ("alpha", "beta") for slot in ok_slots(engine, s)
    }
    summaries = {e["slot"]: (e["sources"], e["ok"]) for e in logged if e.get("event") == "slot"}
    assert summaries == {f"{slot:%Y-%m-%dT%H:%M:%SZ}": (2, 2) for slot in ok_slots(engine, "alpha")}
    assert logged[-1]["event"] == "stopped"

    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "daemon-data"))
    status = CliRunner().invoke(app, ["status", "--config", str(config)], terminal_width=200)
    assert status.exit_code == 0, status.output
    last = max(ok_slots(engine, "alpha"))
    alpha_line = next(line for line in status.output.splitlines() if "alpha" in line)
    assert f"{last:%Y-%m-%dT%H:%M:%SZ}" in alpha_line and "never" not in alpha_line


class SlotStampedBittap(BittapSimulator):
    """Serves a wallet that encodes the slot it is served in: rows can be checked against it."""

    def _data(self, account: BittapAccount) -> dict[str, Any]:
        account.wallet = wallet_in(int(time.time()) // INTERVAL * INTERVAL)
        return super()._data(account)


def wallet_in(slot_epoch: int) -> Decimal:
    return Decimal(slot_epoch) + Decimal("0.000000000000000000001")


@dataclass
class OwnPostgres:
    """A PostgreSQL of this test alone, which it may stop and start (the shared one it may not)."""

    server: Any
    url: str

    def pg_ctl(self, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user)

    def stop(self) -> None:
        self.pg_ctl("stop")

    def start(self) -> None:
        socket_dir = self.url.split("host=")[1]
        self.pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.server.log), "start")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        import pgserver

        # Under /tmp, not pytest's tmp_path: pgserver (as root) opens up the data dir's parents.
        parent = Path(tempfile.mkdtemp(prefix="etl-outage-"))
        server = pgserver.get_server(parent / "pg", cleanup_mode="delete")
    server.psql("CREATE DATABASE etl;")
    try:
        yield OwnPostgres(server, server.get_uri("etl"))
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def test_every_slot_of_a_database_outage_is_loaded_afterwards_with_the_values_of_its_time(
    tmp_path, start, own_postgres
):
    sim = SlotStampedBittap(seed=12)
    sim.add_account("outage-key", "outage-secret")
    with served(sim) as server:
        entry = source_entry("outage", "bittap", server.url, "outage-key", "outage-secret")
        daemon = start(write_config(tmp_path / "etl.toml", own_postgres.url, [entry]))
        engine = make_engine(own_postgres.url)
        try:
            wait_for(lambda: len(ok_slots(engine, "outage")) >= 2, 15, "two slots loaded", daemon)
            sleep_until_mid_slot()
            own_postgres.stop()
            down = datetime.now(UTC)
            time.sleep(3 * INTERVAL + 0.5)
            own_postgres.start()
            up = datetime.now(UTC)
            wait_for(
                lambda: (
                    (s := ok_slots(engine, "outage"))[-1] > up + timedelta(seconds=INTERVAL) and contiguous(s)
                ),
                20,
                "the outage's slots to load",
                daemon,
            )
            daemon.terminate()
            runs = rows(engine, "SELECT snapshot_ts, status FROM ingestion_runs ORDER BY 1")
            totals = rows(
                engine,
                "SELECT b.snapshot_ts, b.total FROM balance_snapshots b ORDER BY 1",
            )
        finally:
            engine.dispose()
    slots = [r[0] for r in runs]
    assert contiguous(slots) and {r[1] for r in runs} == {"ok"}, runs
    during = [s for s in slots if down <= s + timedelta(seconds=INTERVAL) and s <= up]
    assert len(during) >= 3, (down, up, slots)
    assert [t for _, t in totals] == [wallet_in(int(s.timestamp())) for s, _ in totals]  # served then
    assert [s for s, _ in totals] == slots
    spooled = [line for line in daemon.lines() if ": spooled (" in line]
    assert len(spooled) >= 3
    assert not list((tmp_path / "daemon-data" / "spool").glob("*.json"))


def handled(daemon: Daemon, source: str) -> float:
    """Slots of `source` this daemon loaded or found claimed by the other one."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(daemon.metrics())
        for sample in family.samples
        if sample.name == "etl_slots_total"
        and sample.labels["source"] == source
        and sample.labels["outcome"] in ("ok", "claimed_elsewhere")
    )


def test_two_daemons_poll_each_slot_once_and_one_carries_on_when_the_other_dies(
    engine, database_url, tmp_path, start, two_accounts
):
    sim, entries = two_accounts
    config = write_config(tmp_path / "etl.toml", database_url, entries)
    first, second = start(config, "first"), start(config, "second")
    time.sleep(3 * INTERVAL)
    for daemon in (first, second):  # both take part: each fires every slot and wins or loses its claim
        assert handled(daemon, "alpha") >= 2 and handled(daemon, "beta") >= 2
    sleep_until_mid_slot()
    first.process.kill()
    first.process.wait()
    killed = datetime.now(UTC)
    time.sleep(3 * INTERVAL)
    second.terminate()

    for source in ("alpha", "beta"):
        slots = ok_slots(engine, source)
        assert contiguous(slots), slots
        assert slots[-1] >= killed + timedelta(seconds=2 * INTERVAL - 1)  # the survivor carried on
    assert rows(engine, "SELECT DISTINCT status FROM ingestion_runs") == [("ok",)]
    loaded = len(ok_slots(engine, "alpha")) + len(ok_slots(engine, "beta"))
    assert sim.requests[ACCOUNT_INFO] == loaded  # no slot of either source polled twice


def test_processes_share_the_slots_and_a_killed_one_is_started_again(
    engine, database_url, tmp_path, start, two_accounts
):
    sim, entries = two_accounts
    config = write_config(tmp_path / "etl.toml", database_url, entries)
    parent = start(config, "parent", "--processes", "2")
    wait_for(lambda: parent.log.read_text().count("daemon started") == 2, 20, "both processes", parent)
    time.sleep(3 * INTERVAL)
    second = Daemon(parent.process, parent.log, parent.metrics_port + 1)  # process 1's metrics
    for daemon in (parent, second):  # each fires every slot, and wins or loses its claim
        assert handled(daemon, "alpha") >= 2 and handled(daemon, "beta") >= 2
    pids = [int(line.rsplit(" ", 1)[1]) for line in parent.lines() if "started: pid" in line]
    assert len(pids) == 2 and parent.process.pid not in pids
    sleep_until_mid_slot()
    os.kill(pids[1], signal.SIGKILL)
    killed = datetime.now(UTC)
    wait_for(lambda: "daemon process 1 (pid" in parent.log.read_text(), 10, "the exit to be logged", parent)
    wait_for(lambda: parent.log.read_text().count("daemon started") == 3, 20, "the restart", parent)
    time.sleep(2 * INTERVAL)
    assert parent.terminate(within=10) < 8.0

    lines = parent.lines()
    assert any("exited unasked with signal SIGKILL" in line for line in lines), lines[-20:]
    assert sum("daemon stopped" in line for line in lines) == 2  # both children, each cleanly
    assert lines[-1].endswith("every daemon process stopped")
    for source in ("alpha", "beta"):
        slots = ok_slots(engine, source)
        assert contiguous(slots), slots
        assert slots[-1] >= killed + timedelta(seconds=2 * INTERVAL - 1)
    assert rows(engine, "SELECT DISTINCT status FROM ingestion_runs") == [("ok",)]
    loaded = len(ok_slots(engine, "alpha")) + len(ok_slots(engine, "beta"))
    assert sim.requests[ACCOUNT_INFO] == loaded  # no slot polled by both processes
