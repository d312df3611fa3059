"""The daemon under faults, in-process: supervised tasks, a hostile spool, a poisoned
entry, a full disk, and the rule that every (source, slot) ends with a run row.

The database is the test PostgreSQL; venues are simulators; no mock stands in for either.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import string
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import psycopg
import pytest

from etl.daemon import drain
from etl.daemon.supervisor import Supervisor
from etl.metrics import Metrics
from etl.records import RawResponse
from etl.scheduler import Daemon, missed_between
from etl.sim.bittap import BittapSimulator
from etl.slots import floor_to_slot
from etl.spool import Spool, SpooledMissed, SpooledPoll
from etl.venues import bittap
from tests.helpers import count, rows, served, settings_for, source_entry
from tests.venues.test_bittap import seed_body

S = timedelta(seconds=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def restarts(metrics: Metrics, task: str) -> float:
    value = metrics.registry.get_sample_value("etl_task_restarts_total", {"task": task})
    return value or 0.0


def entry_for(source: str, slot: datetime, body: dict[str, Any] | None = None) -> SpooledPoll:
    body = body or seed_body()
    return SpooledPoll(
        source=source,
        venue="bittap",
        slot=slot,
        started_at=slot,
        attempts=1,
        error=None,
        responses=(RawResponse(bittap.ACCOUNT_INFO, 200, body, slot),),
    )


def two_sources(url: str = "http://x.test", interval: str = "60s"):
    return settings_for(
        source_entry("alpha", "bittap", url, "alpha-key", "alpha-secret"),
        source_entry("beta", "bittap", url, "beta-key", "beta-secret"),
        interval=interval,
        timeout="2s",
    )


def inside(daemon: Daemon, work: Callable[[], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with daemon.running():
            return await work()

    return asyncio.run(go())


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """A wait, not a speed check: long enough for a loaded CI machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# -- supervision --------------------------------------------------------------------------


def test_a_crashing_loop_is_logged_with_its_traceback_counted_and_restarted(caplog):
    metrics = Metrics()
    supervisor = Supervisor(metrics.task_restarts, backoff=(0.01, 0.02))
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    async def go() -> None:
        await asyncio.wait_for(supervisor.supervise("flaky", flaky), 5)

    with caplog.at_level(logging.ERROR):
        asyncio.run(go())
    assert len(runs) == 3
    assert restarts(metrics, "flaky") == 2
    crashed = [r for r in caplog.records if getattr(r, "event", None) == "task_crashed"]
    assert len(crashed) == 2 and crashed[0].exc_info is not None
    assert "RuntimeError: crash 1" in caplog.text and "Traceback" in caplog.text


def test_each_supervised_task_of_the_daemon_is_restarted_after_it_is_killed(engine, tmp_path, monkeypatch):
    daemon = Daemon(two_sources(), engine, Spool(tmp_path))
    daemon.supervisor.backoff = (0.01, 0.02)
    for part in (daemon.database, daemon.drainer, daemon.ledger):
        part.tick = 0.02
    calls: dict[str, int] = {}

    def killed_once(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                raise RuntimeError(f"{name} killed")
            return real(*args, **kwargs)

        return call

    # each loop calls these once per turn: the first call raises out of the loop
    monkeypatch.setattr(daemon.spool, "depth", killed_once("drain", daemon.spool.depth))
    monkeypatch.setattr(daemon.ledger, "flush", killed_once("ledger", daemon.ledger.flush))

    async def go() -> None:
        monkeypatch.setattr(daemon.database, "connect", killed_once("database", daemon.database.connect))
        daemon.database.up = False  # the watcher now tries to reconnect every tick
        daemon.ledger.owe("alpha", [T0], "missed", "a test")  # the ledger now has work
        await until(lambda: all(calls.get(n, 0) >= 2 for n in ("drain", "ledger", "database")))
        await until(lambda: bool(rows(engine, "SELECT 1 FROM ingestion_runs")))

    inside(daemon, go)
    for task in ("drain", "ledger", "database"):
        assert restarts(daemon.metrics, task) == 1, task
    assert daemon.database.up  # the restarted watcher reconnected
    assert rows(engine, "SELECT source, snapshot_ts, status, error FROM ingestion_runs") == [
        ("alpha", T0, "missed", "a test")
    ]


def test_a_bug_in_a_slot_is_counted_and_the_slot_recorded_as_an_error(engine, tmp_path, monkeypatch):
    daemon = Daemon(two_sources(), engine, Spool(tmp_path))
    slot = floor_to_slot(datetime.now(UTC), 60 * S)

    async def broken(*args: Any) -> str:
        raise KeyError("oops")

    monkeypatch.setattr(daemon.runner, "_slot", broken)

    async def go() -> str:
        outcome = await daemon.run_slot(daemon.sources["alpha"], slot, time.monotonic() + 5)
        await until(lambda: bool(rows(engine, "SELECT 1 FROM ingestion_runs")))
        return outcome

    assert inside(daemon, go) == "error"
    ((status, error),) = rows(engine, "SELECT status, error FROM ingestion_runs")
    assert status == "error" and "internal error in the daemon (bug): KeyError" in error
    assert restarts(daemon.metrics, "slot") == 1


# -- the spool drain ------------------------------------------------------------------------


def test_an_unreadable_spool_file_is_rejected_and_the_drain_goes_on(engine, tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / "20250101T000000000000Z@alpha@poll@bad.json").write_bytes(b'{"format": 1, "x": "\xff\xfe"}')
    (tmp_path / "20250101T000001000000Z@alpha@poll@dir.json").mkdir()
    behind = spool.put(SpooledMissed("alpha", (T0,), "behind the bad files"))
    daemon = Daemon(two_sources(), engine, Spool(tmp_path))
    inside(daemon, daemon.drain)
    assert rows(engine, "SELECT snapshot_ts, status, error FROM ingestion_runs") == [
        (T0, "missed", "behind the bad files")
    ]
    assert sorted(os.listdir(tmp_path / "rejected")) == [
        "20250101T000000000000Z@alpha@poll@bad.json",
        "20250101T000001000000Z@alpha@poll@dir.json",
    ]
    assert not behind.exists() and Spool(tmp_path).oldest(10) == []
    assert daemon.database.up


def test_a_poisoned_entry_is_its_sources_error_and_never_blocks_the_entries_behind_it(engine, tmp_path):
    body = seed_body()
    # too long for a btree index row (SQLSTATE 54000), and random so it does not compress
    body["data"]["assets"][0]["coin"] = "".join(random.Random(1).choices(string.ascii_letters, k=9000))
    spool = Spool(tmp_path)
    spool.put(entry_for("alpha", T0, body))  # first in the spool
    spool.put(entry_for("beta", T0 + 60 * S))
    daemon = Daemon(two_sources(), engine, Spool(tmp_path))
    inside(daemon, daemon.drain)
    runs = rows(engine, "SELECT source, status, error FROM ingestion_runs ORDER BY source")
    assert [r[:2] for r in runs] == [("alpha", "error"), ("beta", "ok")]
    assert "index row" in runs[0][2]
    assert daemon.database.up  # a refused value is never an outage
    assert daemon.metrics.registry.get_sample_value(
        "etl_errors_total", {"source": "alpha", "kind": "source_data"}
    )
    assert Spool(tmp_path).oldest(10) == []


def test_the_drain_lists_a_few_entries_at_a_time_and_loads_them_all(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(drain, "DRAIN_BATCH", 2)
    spool = Spool(tmp_path)
    for i in range(5):
        spool.put(SpooledMissed("alpha", (T0 + i * S,), "gap"))
    seen: list[int] = []
    oldest = Spool.oldest

    def counted(self: Spool, n: int, skip: Any = None) -> list[Path]:
        found = oldest(self, n, skip)
        seen.append(len(found))
        return found

    monkeypatch.setattr(Spool, "oldest", counted)
    daemon = Daemon(two_sources(), engine, spool)
    inside(daemon, daemon.drain)
    assert count(engine, "ingestion_runs") == 5
    assert max(seen) == 2 and spool.depth() == 0


def test_a_gap_is_capped_without_being_built_whole():
    t0 = time.perf_counter()
    slots, earlier = missed_between(T0, T0 + 10**9 * S, S, limit=3)
    assert time.perf_counter() - t0 < 0.1  # a billion slots are counted, not listed
    assert slots == [T0 + (10**9 - 3 + i) * S for i in range(3)] and earlier == 10**9 - 3


# -- the spool write path -------------------------------------------------------------------


class FullDisk(Spool):
    """A spool on a disk that fills up half-way through each write."""

    def _write(self, out: TextIO, text: str) -> None:
        out.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def venue():
    sim = BittapSimulator(seed=21)
    sim.add_account("alpha-key", "alpha-secret")
    sim.add_account("beta-key", "beta-secret")
    with served(sim) as server:
        yield sim, server.url


def test_a_slot_neither_loaded_nor_spooled_is_recorded_as_missed_with_the_reason(engine, tmp_path, venue):
    _, url = venue
    daemon = Daemon(two_sources(url), engine, FullDisk(tmp_path))
    daemon.database.tick = 1.0  # reconnects a second after the slot found it down
    slot = floor_to_slot(datetime.now(UTC), 60 * S)

    async def go() -> str:
        await asyncio.sleep(0.1)  # the watcher has started, and waits a tick
        daemon.database.failed(TimeoutError(), "a test")  # down: the slot has to be spooled
        outcome = await daemon.run_slot(daemon.sources["alpha"], slot, time.monotonic() + 10)
        await until(lambda: bool(rows(engine, "SELECT 1 FROM ingestion_runs")))  # once it answers
        return outcome

    assert inside(daemon, go) == "missed"
    ((status, error),) = rows(engine, "SELECT status, error FROM ingestion_runs")
    assert status == "missed"
    assert (
        error
        == "neither loaded (the database is down) nor spooled (the spool write failed: No space left on device)"
    )
    assert os.listdir(tmp_path) == []  # the failed write left no temp file to keep the disk full


def test_a_slot_cancelled_at_shutdown_on_a_full_disk_still_gets_its_row(engine, tmp_path, venue):
    sim, url = venue
    sim.latency = 3.0  # the poll outlives the shutdown grace
    settings = settings_for(source_entry("alpha", "bittap", url, "alpha-key", "alpha-secret"), interval="4s")
    daemon = Daemon(settings, engine, FullDisk(tmp_path), shutdown_grace=0.3)

    async def go() -> None:
        task = asyncio.create_task(daemon.run(signals=False))
        await until(lambda: bool(daemon.runner.inflight), 10)
        await asyncio.sleep(0.2)
        daemon.stop()
        await task

    asyncio.run(go())
    runs = rows(engine, "SELECT status, error FROM ingestion_runs")
    assert [r[0] for r in runs] == ["missed"]
    assert runs[0][1].startswith("neither loaded (the daemon stopped) nor spooled")


def test_a_spool_holding_what_cannot_be_removed_never_stops_the_start(engine, tmp_path, caplog):
    stuck = tmp_path / ".tmp-20250101T000000000000Z@alpha@poll@x.json"
    stuck.mkdir()  # unlink fails on it, as on a read-only disk; root too
    (stuck / "inside").write_text("x")
    daemon = Daemon(two_sources(), engine, Spool(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert inside(daemon, lambda: asyncio.sleep(0)) is None
    assert "1 temp file(s) of interrupted writes left in place" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_a_read_only_spool_with_temp_files_never_stops_the_start(engine, tmp_path, caplog):
    (tmp_path / ".tmp-20250101T000000000000Z@alpha@poll@x.json").write_text('{"trunc')
    tmp_path.chmod(0o500)
    try:
        daemon = Daemon(two_sources(), engine, Spool(tmp_path))
        with caplog.at_level(logging.WARNING):
            inside(daemon, lambda: asyncio.sleep(0))
    finally:
        tmp_path.chmod(0o700)
    assert "left in place" in caplog.text


# -- first load wins --------------------------------------------------------------------------


def test_a_claimed_live_load_never_overwrites_a_slot_another_replica_drained_first(engine, tmp_path, venue):
    sim, url = venue
    sim.latency = 1.0  # A's poll is in flight while B drains
    settings = two_sources(url)
    slot = floor_to_slot(datetime.now(UTC), 60 * S)
    drained = seed_body()
    drained["data"]["assets"][0]["balance"] = "1.5"
    Spool(tmp_path / "b").put(entry_for("alpha", slot, drained))  # B polled it while its database was down
    a = Daemon(settings, engine, Spool(tmp_path / "a"), worker="host-a:1:x")
    b = Daemon(settings, engine, Spool(tmp_path / "b"), worker="host-b:2:y")

    async def go() -> str:
        async with a.running():
            live = asyncio.create_task(a.run_slot(a.sources["alpha"], slot, time.monotonic() + 20))
            await until(lambda: bool(rows(engine, "SELECT 1 FROM ingestion_runs WHERE status = 'running'")))
            async with b.running():  # which drains its spool
                await b.drain()
            return await live

    assert asyncio.run(go()) == "claimed_elsewhere"
    assert rows(engine, "SELECT status FROM ingestion_runs") == [("ok",)]
    totals = rows(
        engine, "SELECT total FROM balance_snapshots WHERE currency = 'USDT' AND account_type = 'futures'"
    )
    assert totals == [(Decimal("1.5"),)]


def test_the_slots_no_daemon_ran_are_recorded_as_missed_at_start(engine, tmp_path, venue):
    _, url = venue
    settings = settings_for(source_entry("alpha", "bittap", url, "alpha-key", "alpha-secret"), interval="2s")
    before = floor_to_slot(datetime.now(UTC), 2 * S) - 5 * 2 * S  # the last slot of a daemon stopped then
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ingestion_runs (source, snapshot_ts, started_at, finished_at, status) "
            "VALUES ('alpha', %s, now(), now(), 'ok')",
            (before,),
        )
    daemon = Daemon(settings, engine, Spool(tmp_path))

    async def go() -> None:
        task = asyncio.create_task(daemon.run(signals=False))
        await until(lambda: count(engine, "ingestion_runs") >= 6 and daemon.ledger.owed == {}, 12)
        daemon.stop()
        await task

    asyncio.run(go())
    runs = rows(engine, "SELECT snapshot_ts, status, error FROM ingestion_runs ORDER BY 1")
    slots = [r[0] for r in runs]
    assert slots == [before + i * 2 * S for i in range(len(slots))]  # no slot without a row
    assert {r[1] for r in runs[1:4]} == {"missed"}
    assert all("the daemon did not run" in r[2] for r in runs if r[1] == "missed")


def test_a_claimed_slot_whose_load_and_spool_both_fail_ends_missed_not_running(
    engine, tmp_path, venue, monkeypatch
):
    _, url = venue
    daemon = Daemon(two_sources(url), engine, FullDisk(tmp_path))
    daemon.database.tick = 0.2
    slot = floor_to_slot(datetime.now(UTC), 60 * S)

    def connection_lost(polled: Any) -> Any:  # the server went away between the claim and the load
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(daemon.loads, "store", connection_lost)
    monkeypatch.setattr(daemon.loads, "store_together", connection_lost)  # a poll with a batch

    async def go() -> str:
        outcome = await daemon.run_slot(daemon.sources["alpha"], slot, time.monotonic() + 10)
        await until(lambda: rows(engine, "SELECT status FROM ingestion_runs") == [("missed",)])
        return outcome

    assert inside(daemon, go) == "missed"
    ((worker, error),) = rows(engine, "SELECT worker, error FROM ingestion_runs")
    assert worker is None and error.startswith("neither loaded (database: server closed the connection")
    assert daemon.metrics.registry.get_sample_value(
        "etl_errors_total", {"source": "alpha", "kind": "database_down"}
    )
