"""The daemon in-process: slot timing, claims, retries inside a slot, missed slots, shutdown.

The venue is a simulator served on loopback and the database is the test PostgreSQL;
the real APScheduler runs the slots. Process-level behaviour (signals, replicas, a
database outage) is in test_daemon.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from etl.config import parse_settings
from etl.daemon import loads
from etl.errors import ConfigError
from etl.pipeline import close_rollups
from etl.scheduler import Daemon, Timing, missed_between
from etl.sim.base import Fault
from etl.sim.bittap import BittapSimulator
from etl.slots import floor_to_slot
from etl.spool import Spool, SpooledMissed, SpooledPoll
from etl.venues.bittap import ACCOUNT_INFO, RATE_LIMIT
from tests.helpers import count, rows, served, settings_for, source_entry

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


def test_a_short_interval_gets_a_whole_second_grace_and_short_backoffs():
    two = Timing.of(2 * S)
    assert (two.grace, two.poll_budget, two.backoff_initial) == (1, 1.5 * S, 0.05)
    minute = Timing.of(60 * S)
    assert (minute.grace, minute.poll_budget, minute.backoff_initial) == (15, 45 * S, 0.25)


def test_slots_jumped_over_are_the_missed_ones():
    assert missed_between(None, T0, 2 * S) == ([], 0)
    assert missed_between(T0, T0, 2 * S) == ([], 0)
    assert missed_between(T0, T0 + 6 * S, 2 * S) == ([T0, T0 + 2 * S, T0 + 4 * S], 0)


def test_an_interval_under_two_seconds_is_refused(tmp_path, session_engine):
    settings = settings_for(source_entry("fast", "bittap", "http://x.test", "k", "s", interval="1s"))
    with pytest.raises(
        ConfigError, match=r"sources\[0\] \(fast\): the daemon needs an interval of at least 2s"
    ):
        Daemon(settings, session_engine, Spool(tmp_path))


def test_sources_with_one_key_share_one_limiter_at_the_venues_limit(tmp_path, session_engine):
    settings = settings_for(
        source_entry("a", "bittap", "http://x.test", "same-key", "s"),
        source_entry("b", "bittap", "http://x.test", "same-key", "s", params={"x": "1"}),
        source_entry("c", "bittap", "http://x.test", "other-key", "s"),
    )
    daemon = Daemon(settings, session_engine, Spool(tmp_path))
    a, b, c = (daemon.limiter_for(s) for s in settings.sources)
    assert a is b and a is not c
    assert (a.max_rate, a.time_period) == RATE_LIMIT


def test_the_connections_stay_open_from_one_slot_to_the_next(tmp_path, session_engine):
    minute = source_entry("minute", "bittap", "http://x.test", "k1", "s", interval="60s")
    daily = source_entry("daily", "bittap", "http://x.test", "k2", "s", interval="1d")
    # the pools' default is 5 s
    assert Daemon(settings_for(minute), session_engine, Spool(tmp_path))._keepalive() == 65.0
    # no venue keeps one open a day
    assert Daemon(settings_for(minute, daily), session_engine, Spool(tmp_path))._keepalive() == 300.0


@pytest.fixture
def venue():
    sim = BittapSimulator(seed=5)
    sim.add_account("sched-key", "sched-secret")
    with served(sim) as server:
        yield sim, server.url


def one_source(url: str, interval: str = "2s", timeout: str = "1s"):
    entry = source_entry("sched", "bittap", url, "sched-key", "sched-secret")
    return settings_for(entry, interval=interval, timeout=timeout)


def run_daemon(daemon: Daemon, until: Callable[[], Awaitable[bool]], limit: float = 12.0) -> None:
    """Run the daemon with its real schedule until `until()` holds (checked every 0.1 s)."""

    async def go() -> None:
        task = asyncio.create_task(daemon.run(signals=False))
        deadline = time.monotonic() + limit
        while not await until() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        daemon.stop()
        await task

    asyncio.run(go())


def runs_ok(engine, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await asyncio.to_thread(
            rows, engine, "SELECT count(*) FROM ingestion_runs WHERE status = 'ok'"
        )
        return bool(found[0][0] >= n)

    return check


def test_a_venue_failing_three_times_then_recovering_loads_the_slot_inside_its_interval(
    engine, tmp_path, venue
):
    sim, url = venue
    sim.fail_next(Fault(503, "busy"), Fault(502, "<html>bad gateway</html>"), Fault(500, "oops"))
    run_daemon(Daemon(one_source(url), engine, Spool(tmp_path)), runs_ok(engine, 1))
    (run,) = rows(engine, "SELECT snapshot_ts, status, attempts, finished_at, error FROM ingestion_runs")
    slot, status, attempts, finished_at, error = run
    assert (status, attempts, error) == ("ok", 4, None)
    assert slot == floor_to_slot(slot, 2 * S)
    assert finished_at < slot + 2 * S  # loaded before the next slot began
    assert sim.requests[ACCOUNT_INFO] == 4


def in_one_slot(daemon: Daemon, *slots_of: Daemon) -> Callable[..., list[str]]:
    """Run single slots (no schedule) of 60 s sources, with a long deadline."""

    def run(source_name: str = "sched") -> list[str]:
        async def go() -> list[str]:
            slot = floor_to_slot(datetime.now(UTC), 60 * S)
            outcomes = []
            for d in (daemon, *slots_of):
                async with d.running():
                    outcomes.append(await d.run_slot(d.sources[source_name], slot, time.monotonic() + 20))
            return outcomes

        return asyncio.run(go())

    return run


def test_a_429_with_retry_after_is_honoured(engine, tmp_path, venue):
    sim, url = venue
    sim.fail_next(
        Fault(429, '{"code":"429","msg":"slow down"}', {"Retry-After": "1"}, content_type="application/json")
    )
    daemon = Daemon(one_source(url, interval="60s"), engine, Spool(tmp_path))
    t0 = time.monotonic()
    assert in_one_slot(daemon)() == ["ok"]
    # A 60 s source backs off 0.25-0.5 s on its own: only Retry-After makes it wait a second.
    assert time.monotonic() - t0 >= 1.0
    assert sim.requests[ACCOUNT_INFO] == 2
    assert rows(engine, "SELECT status, attempts FROM ingestion_runs") == [("ok", 2)]


def test_a_401_is_not_retried(engine, tmp_path, venue):
    sim, url = venue
    refusal = '{"code":"410001","msg":"Invalid API key","success":false}'
    sim.fail_next(*[Fault(401, refusal, content_type="application/json")] * 3)
    daemon = Daemon(one_source(url, interval="60s"), engine, Spool(tmp_path))
    assert in_one_slot(daemon)() == ["error"]
    assert sim.requests[ACCOUNT_INFO] == 1
    ((status, attempts, error),) = rows(engine, "SELECT status, attempts, error FROM ingestion_runs")
    assert (status, attempts) == ("error", 1)
    assert "HTTP 401, code 410001: Invalid API key" in error


def test_a_slot_claimed_by_one_worker_is_not_polled_by_another(engine, tmp_path, venue):
    sim, url = venue
    settings = one_source(url, interval="60s")
    first = Daemon(settings, engine, Spool(tmp_path / "a"), worker="host-a:1:x")
    second = Daemon(settings, engine, Spool(tmp_path / "b"), worker="host-b:2:y")
    assert in_one_slot(first, second)() == ["ok", "claimed_elsewhere"]
    assert sim.requests[ACCOUNT_INFO] == 1
    assert rows(engine, "SELECT status, worker FROM ingestion_runs") == [("ok", None)]


def test_sources_firing_together_on_two_workers_are_each_polled_once(engine, tmp_path, venue):
    sim, url = venue
    names = ["sched", "sched-b", "sched-c"]
    settings = settings_for(
        *(source_entry(n, "bittap", url, "sched-key", "sched-secret") for n in names), interval="60s"
    )
    first = Daemon(settings, engine, Spool(tmp_path / "a"), worker="host-a:1:x")
    second = Daemon(settings, engine, Spool(tmp_path / "b"), worker="host-b:2:y")
    slot = floor_to_slot(datetime.now(UTC), 60 * S)

    async def go() -> list[str]:
        async with first.running(), second.running():
            deadline = time.monotonic() + 20
            return await asyncio.gather(  # both workers' claims of the slot in one turn
                *(d.run_slot(d.sources[n], slot, deadline) for n in names for d in (first, second))
            )

    outcomes = asyncio.run(go())
    assert sorted(outcomes) == ["claimed_elsewhere"] * 3 + ["ok"] * 3
    assert [sorted(outcomes[i : i + 2]) for i in range(0, 6, 2)] == [["claimed_elsewhere", "ok"]] * 3
    assert sim.requests[ACCOUNT_INFO] == 3
    assert rows(engine, "SELECT source, status FROM ingestion_runs ORDER BY 1") == [(n, "ok") for n in names]


def test_claims_cut_off_by_shutdown_leave_no_slot_waiting(tmp_path, session_engine):
    settings = settings_for(source_entry("a", "bittap", "http://x.test", "k", "s"), interval="60s")
    daemon = Daemon(settings, session_engine, Spool(tmp_path))
    daemon.database.up = True

    async def go() -> bool | None:
        claim = asyncio.create_task(daemon.claims.claim("a", T0, 60 * S, time.monotonic() + 20))
        await asyncio.sleep(0)  # the slot has asked; the batch has not gone out yet
        for task in daemon.supervisor.tasks:
            task.cancel()  # what shutdown does to background tasks that run late
        return await asyncio.wait_for(claim, 5)

    assert asyncio.run(go()) is None  # not claimed: the slot goes on as if the database were down
    assert daemon.claims.rounds == {}


def test_a_claim_left_by_a_dead_worker_is_marked_missed(engine, tmp_path, venue):
    _, url = venue
    slot = floor_to_slot(datetime.now(UTC), 60 * S)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ingestion_runs (source, snapshot_ts, started_at, status, worker) "
            "VALUES ('sched', %s, now(), 'running', 'dead-host:7:abc')",
            (slot - 180 * S,),
        )
    assert in_one_slot(Daemon(one_source(url, interval="60s"), engine, Spool(tmp_path)))() == ["ok"]
    assert rows(engine, "SELECT status, error FROM ingestion_runs ORDER BY snapshot_ts") == [
        ("missed", "claimed by worker dead-host:7:abc, which never finished it"),
        ("ok", None),
    ]


def test_slots_a_paused_process_could_not_run_are_recorded_as_missed(engine, tmp_path, venue):
    """The event loop blocked for 5 s (as under SIGSTOP or a laptop's sleep): no silent gap."""
    _, url = venue
    daemon = Daemon(one_source(url), engine, Spool(tmp_path))
    first_ok = runs_ok(engine, 1)
    paused = False

    async def until() -> bool:
        nonlocal paused
        if not paused and await first_ok():
            paused = True
            time.sleep(5.0)  # blocks the loop, scheduler included
            return False
        found = await asyncio.to_thread(
            rows, engine, "SELECT count(*) FROM ingestion_runs WHERE status = 'ok'"
        )
        return paused and found[0][0] >= 2

    run_daemon(daemon, until, limit=15.0)
    runs = rows(engine, "SELECT snapshot_ts, status, error FROM ingestion_runs ORDER BY snapshot_ts")
    slots = [r[0] for r in runs]
    assert slots == [slots[0] + i * 2 * S for i in range(len(slots))]  # every slot has a row
    missed = [r for r in runs if r[1] == "missed"]
    assert len(missed) >= 2, runs
    assert all("paused" in r[2] for r in missed), runs


def test_a_source_whose_last_slot_still_runs_misses_the_next_and_the_others_run_it(engine, tmp_path):
    """One interval, one job: a slow source does not hold up the others, nor run twice at once."""
    slow, fast = BittapSimulator(seed=3, latency=2.5), BittapSimulator(seed=4)
    slow.add_account("slow-key", "slow-secret")
    fast.add_account("fast-key", "fast-secret")
    with served(slow) as slow_server, served(fast) as fast_server:
        settings = settings_for(
            source_entry("slow", "bittap", slow_server.url, "slow-key", "slow-secret"),
            source_entry("fast", "bittap", fast_server.url, "fast-key", "fast-secret"),
            interval="60s",
            timeout="10s",
        )
        daemon = Daemon(settings, engine, Spool(tmp_path))
        first = floor_to_slot(datetime.now(UTC), 60 * S) - 60 * S

        async def go() -> tuple[dict[str, str], dict[str, str]]:
            async with daemon.running():
                deadline = time.monotonic() + 20
                earlier = asyncio.create_task(daemon.run_slots(["slow", "fast"], first, deadline))
                await asyncio.sleep(1.0)  # fast has loaded; slow waits for its venue
                later = await daemon.run_slots(["slow", "fast"], first + 60 * S, deadline)
                return await earlier, later

        earlier, later = asyncio.run(go())
    assert earlier == {"slow": "ok", "fast": "ok"}
    assert later == {"slow": "missed", "fast": "ok"}
    assert slow.requests[ACCOUNT_INFO] == 1
    sql = "SELECT source, snapshot_ts - :first, status, error FROM ingestion_runs ORDER BY 1, 2"
    assert rows(engine, sql, first=first) == [
        ("fast", 0 * S, "ok", None),
        ("fast", 60 * S, "ok", None),
        ("slow", 0 * S, "ok", None),
        ("slow", 60 * S, "missed", "the previous slot of this source was still running"),
    ]


def test_a_poll_cut_short_by_shutdown_is_kept_in_the_spool_and_recorded(engine, tmp_path, venue):
    sim, url = venue
    sim.fail_next(Fault(200, "{}", delay=2.5))  # a slow venue: the poll outlives the shutdown grace
    settings = one_source(url, interval="4s", timeout="3s")
    daemon = Daemon(settings, engine, Spool(tmp_path), shutdown_grace=0.3)

    async def polling() -> bool:
        return sim.requests[ACCOUNT_INFO] >= 1

    run_daemon(daemon, polling)
    (path,) = Spool(tmp_path).oldest(10)
    entry = Spool(tmp_path).read(path)
    assert isinstance(entry, SpooledPoll)
    assert entry.error == "sched: the daemon stopped before the poll finished"

    async def drain() -> None:
        later = Daemon(settings, engine, Spool(tmp_path))
        async with later.running():
            await later.drain()

    asyncio.run(drain())
    assert Spool(tmp_path).oldest(10) == []
    assert rows(engine, "SELECT status, error FROM ingestion_runs") == [("error", entry.error)]


def test_missed_slots_spooled_while_the_database_was_down_are_recorded_on_drain(engine, tmp_path, venue):
    _, url = venue
    slots = (T0, T0 + 2 * S)
    Spool(tmp_path).put(SpooledMissed("sched", slots, "the daemon did not run"))
    daemon = Daemon(one_source(url), engine, Spool(tmp_path))

    async def drain() -> None:
        async with daemon.running():
            await daemon.drain()

    asyncio.run(drain())
    assert rows(engine, "SELECT snapshot_ts, status FROM ingestion_runs ORDER BY 1") == [
        (T0, "missed"),
        (T0 + 2 * S, "missed"),
    ]
    assert count(engine, "balance_snapshots") == 0
    assert Spool(tmp_path).oldest(10) == []


def test_the_retention_table_schedules_a_daily_prune(tmp_path, session_engine):
    entry = source_entry("a", "bittap", "http://x.test", "k", "s")
    plain = Daemon(settings_for(entry), session_engine, Spool(tmp_path))
    kept = Daemon(
        parse_settings({"sources": [entry], "retention": {"older_than": "30d"}}),
        session_engine,
        Spool(tmp_path),
    )

    async def jobs(daemon: Daemon) -> dict[str, str]:
        scheduler = daemon._schedule()
        try:
            return {job.id: str(job.trigger) for job in scheduler.get_jobs()}
        finally:
            scheduler.shutdown(wait=False)

    assert "retention" not in asyncio.run(jobs(plain))
    assert asyncio.run(jobs(kept))["retention"] == "cron[hour='0', minute='17']"


def test_the_sources_of_a_new_hour_start_one_rollup_close_between_them(engine, tmp_path, venue, monkeypatch):
    _, url = venue
    names = ["sched", "sched-b", "sched-c"]
    settings = settings_for(
        *(source_entry(n, "bittap", url, "sched-key", "sched-secret") for n in names), interval="60s"
    )
    daemon = Daemon(settings, engine, Spool(tmp_path))
    calls: list[datetime] = []

    def slow_close(engine, until: datetime) -> None:  # still running when the other sources ask
        calls.append(until)
        time.sleep(0.5)
        close_rollups(engine, until)

    monkeypatch.setattr(loads, "close_rollups", slow_close)
    hour = floor_to_slot(datetime.now(UTC), 3600 * S)

    async def go() -> None:
        async with daemon.running():
            deadline = time.monotonic() + 20
            for slot in (hour - 60 * S, hour):  # the last slot of an hour, the first of the next
                runs = (daemon.run_slot(daemon.sources[n], slot, deadline) for n in names)
                outcomes = await asyncio.gather(*runs)
                assert outcomes == ["ok"] * 3
                assert daemon.loads.closing is not None
                await daemon.loads.closing

    asyncio.run(go())
    # each slot's three loads found their hour open; one close answered all three
    assert calls == [hour - 3600 * S, hour]
    assert rows(engine, "SELECT width, closed_until FROM rollup_watermarks ORDER BY 1") == [
        ("day", floor_to_slot(hour, 86400 * S)),
        ("hour", hour),
    ]
    assert count(engine, "balances_hourly_closed") > 0


def test_the_collector_is_tuned_while_daemons_run_and_restored_after():
    """heap.settled: nested (two daemons in one process), the outermost block decides."""
    import gc

    from etl import heap

    before = gc.get_threshold()
    with heap.settled():
        frozen = gc.get_freeze_count()
        assert gc.get_threshold() == heap.THRESHOLDS and frozen > 0
        with heap.settled():
            assert gc.get_threshold() == heap.THRESHOLDS
        assert gc.get_threshold() == heap.THRESHOLDS and gc.get_freeze_count() == frozen
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
