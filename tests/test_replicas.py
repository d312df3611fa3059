"""Replicas that add capacity: two daemons on one database split a slot's sources.

Both daemons run in this process, on one event loop, against one simulator served on
loopback and the test PostgreSQL; each has its own claims (its own worker id, claim
thread and connections), as two processes would. Small chunks stand in for the
daemon's 200, so that a few dozen sources make many chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etl.daemon.claims import Claims
from etl.scheduler import Daemon
from etl.sim.bittap import BittapSimulator
from etl.slots import floor_to_slot
from etl.spool import Spool
from etl.venues.bittap import ACCOUNT_INFO
from tests.helpers import rows, served, settings_for, source_entry

N = 40
S = timedelta(seconds=1)
INTERVAL = 60 * S
NAMES = [f"src-{i:02d}" for i in range(N)]


@pytest.fixture
def forty() -> Iterator[tuple[BittapSimulator, Any]]:
    sim = BittapSimulator(seed=17, latency=0.02)
    for name in NAMES:
        sim.add_account(f"{name}-key", f"{name}-secret")
    with served(sim) as server:
        settings = settings_for(
            *(source_entry(n, "bittap", server.url, f"{n}-key", f"{n}-secret") for n in NAMES),
            interval="60s",
            timeout="5s",
        )
        yield sim, settings


def replica(settings: Any, engine: Any, spool: Any, worker: str, *, chunk: int = 4, ahead: int = 1) -> Daemon:
    daemon = Daemon(settings, engine, Spool(spool), worker=worker)
    daemon.claims.chunk, daemon.claims.bound = chunk, chunk * ahead
    return daemon


async def one_slot(daemons: list[Daemon], slot: datetime) -> list[list[str]]:
    """Every daemon runs the slot of every source at once, as its schedule's job does; the
    outcomes in the order of NAMES."""
    deadline = time.monotonic() + 20
    runs = await asyncio.gather(*(d.run_slots(NAMES, slot, deadline) for d in daemons))
    return [[ran[n] for n in NAMES] for ran in runs]


def test_two_replicas_split_a_slots_sources_and_poll_each_once(engine, tmp_path, forty):
    sim, settings = forty
    a = replica(settings, engine, tmp_path / "a", "host-a:1:x")
    b = replica(settings, engine, tmp_path / "b", "host-b:2:y")
    slot = floor_to_slot(datetime.now(UTC), INTERVAL)

    async def go() -> list[list[str]]:
        async with a.running(), b.running():
            return await one_slot([a, b], slot)

    started: Counter[str] = Counter()
    for daemon in (a, b):  # a slot is a task only where it was won
        run_slot = daemon.runner.run_slot

        def counted(source: Any, *args: Any, run_slot: Any = run_slot, **kwargs: Any) -> Any:
            started[source.name] += 1
            return run_slot(source, *args, **kwargs)

        daemon.runner.run_slot = counted  # type: ignore[method-assign]
    of_a, of_b = asyncio.run(go())
    assert started == dict.fromkeys(NAMES, 1)
    for name, x, y in zip(NAMES, of_a, of_b, strict=True):
        assert sorted([x, y]) == ["claimed_elsewhere", "ok"], name
    share = of_a.count("ok") / N
    assert 0.3 <= share <= 0.7, (of_a.count("ok"), of_b.count("ok"))
    assert sim.requests[ACCOUNT_INFO] == N  # nobody polled a source twice
    assert rows(engine, "SELECT count(*), min(status), max(status) FROM ingestion_runs") == [(N, "ok", "ok")]
    assert a.claims.inflight == set() and b.claims.inflight == set()


def test_a_slower_replica_takes_fewer_sources(engine, tmp_path, forty):
    sim, settings = forty
    fast = replica(settings, engine, tmp_path / "a", "host-a:1:x")
    slow = replica(settings, engine, tmp_path / "b", "host-b:2:y")
    store, together = slow.loads.store, slow.loads.store_together

    def slow_store(polled: Any) -> Any:  # its loads take 0.1 s longer: a busier machine
        time.sleep(0.1)
        return store(polled)

    def slow_together(polls: list[Any]) -> Any:  # the batched live loads, as slow per source
        time.sleep(0.1 * len(polls))
        return together(polls)

    slow.loads.store = slow_store  # type: ignore[method-assign]
    slow.loads.store_together = slow_together  # type: ignore[method-assign]
    slot = floor_to_slot(datetime.now(UTC), INTERVAL)

    async def go() -> list[list[str]]:
        async with fast.running(), slow.running():
            return await one_slot([fast, slow], slot)

    of_fast, of_slow = asyncio.run(go())
    assert of_fast.count("ok") + of_slow.count("ok") == N
    assert of_fast.count("ok") > 1.5 * of_slow.count("ok") > 0, (of_fast.count("ok"), of_slow.count("ok"))
    assert sim.requests[ACCOUNT_INFO] == N


def test_one_replica_alone_claims_every_source_chunk_after_chunk(engine, tmp_path, forty):
    sim, settings = forty
    alone = replica(settings, engine, tmp_path / "a", "host-a:1:x")
    slot = floor_to_slot(datetime.now(UTC), INTERVAL)
    peak, calls = 0, 0
    claim = alone.claims._claim

    def watched(*args: Any) -> set[str]:
        nonlocal peak, calls
        peak, calls = max(peak, len(alone.claims.inflight)), calls + 1
        return claim(*args)

    alone.claims._claim = watched  # type: ignore[method-assign]

    async def go() -> list[list[str]]:
        async with alone.running():
            return await one_slot([alone], slot)

    (outcomes,) = asyncio.run(go())
    assert outcomes == ["ok"] * N
    assert sim.requests[ACCOUNT_INFO] == N
    assert calls == N // alone.claims.chunk  # a chunk per statement
    # each chunk was claimed only once there was room (batched loads may free a chunk at once)
    assert peak < alone.claims.bound


def test_a_killed_replicas_sources_are_taken_by_the_other_from_the_next_slot(engine, tmp_path, forty):
    sim, settings = forty
    dead = replica(settings, engine, tmp_path / "a", "host-a:1:dead", chunk=N)  # claims all at once
    survivor = replica(settings, engine, tmp_path / "b", "host-b:2:y")
    first = floor_to_slot(datetime.now(UTC), INTERVAL) - 3 * INTERVAL

    async def go() -> list[list[str]]:
        dead.database.up = True
        # the dead replica claims the first slot's sources and is killed before it polls any
        await asyncio.gather(*(dead.claims.claim(n, first, INTERVAL, time.monotonic() + 20) for n in NAMES))
        async with survivor.running():
            return [
                (await one_slot([survivor], slot))[0] for slot in (first + i * INTERVAL for i in range(4))
            ]

    in_first, *later = asyncio.run(go())
    assert in_first == ["claimed_elsewhere"] * N  # it cannot know the other died mid-slot
    assert later == [["ok"] * N] * 3
    assert sim.requests[ACCOUNT_INFO] == 3 * N
    by_slot = rows(engine, "SELECT snapshot_ts, status FROM ingestion_runs ORDER BY 1")
    assert Counter(by_slot) == {
        (first, "missed"): N,  # marked by the survivor's claims once two intervals old (ABANDONED)
        **{(first + i * INTERVAL, "ok"): N for i in range(1, 4)},
    }


def test_the_pace_gives_way_halfway_through_the_poll_budget(tmp_path, session_engine):
    settings = settings_for(*(source_entry(n, "bittap", "http://x.test", "k", "s") for n in NAMES[:6]))
    daemon = replica(settings, session_engine, tmp_path, "host-a:1:x", chunk=2, ahead=1)
    daemon.database.up = True
    slot = floor_to_slot(datetime.now(UTC), INTERVAL) + 100 * INTERVAL  # nobody else's

    async def go() -> list[tuple[bool | None, float]]:
        t0 = time.monotonic()

        async def claim(name: str) -> tuple[bool | None, float]:
            answer = await daemon.claims.claim(name, slot, INTERVAL, t0 + 1.0)
            return answer, time.monotonic() - t0

        # nothing is ever released: the bound stays reached after the first chunk
        return await asyncio.wait_for(asyncio.gather(*(claim(n) for n in NAMES[:6])), 10)

    try:
        answered = sorted(asyncio.run(go()), key=lambda a: a[1])
        assert [answer for answer, _ in answered] == [True] * 6
        first, rest = [at for _, at in answered[:2]], [at for _, at in answered[2:]]
        assert (
            max(first) < 0.45 <= min(rest)
        )  # the first chunk at once, the rest once half the budget was gone
    finally:
        with session_engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM ingestion_runs WHERE snapshot_ts = %s", (slot,))


def test_each_replica_walks_every_chunk_once_from_its_own_place():
    names = [f"s{i:03d}" for i in range(1000)]
    slot = datetime(2026, 1, 1, tzinfo=UTC)
    walks = [Claims(None, None, w, chunk=200).chunks(names[::-1], slot) for w in ("a:1:x", "b:2:y")]  # type: ignore[arg-type]
    for walk in walks:
        assert sorted(n for chunk in walk for n in chunk) == names
        assert all(chunk == sorted(chunk) for chunk in walk)  # claimed in one order: no deadlock
    assert walks[0][0] != walks[1][0]
