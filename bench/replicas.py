"""`bench/poll.py --replicas 2`: two daemon processes on one database, against the simulators.

Each replica is its own process (spawned, so nothing is shared but PostgreSQL) running the
daemon's code: `scheduler.Daemon` with its claims, per-source clients, database threads and
spool, told by this process which slot to run next; at that slot's start it runs every
source's slot at once (`Daemon.run_slots`), as its schedule would. The simulators keep
their own process.

Cycles alternate between one replica alone and both together, after a warm-up cycle of
each (the first cycle fetches HTX contract sizes), so that the ratio of their throughputs
is measured in the same minutes of a shared machine. Then the failover: the second replica
is killed (SIGKILL) half-way through a slot, and the survivor runs the next slots alone.

Figures: per replica, its share of the sources polled and its CPU (the whole process:
event loop, database threads) per cycle; the slots polled by both replicas (must be 0);
the cycle (slot start to the last commit of either replica) and the throughput of two
against one; the throughput two replicas would have with a core each, from the busiest
replica's CPU (`cpu_bound_ratio`: one replica's CPU per cycle / the busiest of two's); and
in the failover, what the survivor polled of the slot of the kill and of the next one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import median, rss_mb
from etl import scheduler
from etl.spool import Spool
from etl.store.engine import make_engine

WARM = 1  # cycles of each kind before those measured


@dataclass(frozen=True)
class Ran:
    """What one replica did in one slot."""

    replica: str
    slot: datetime
    seconds: float  # from the slot's start to its last source's end (wall clock, machine-wide)
    cpu_s: float  # the replica process's CPU time (user + system, all threads) in the cycle
    polled: frozenset[str]  # sources it polled (any outcome but claimed_elsewhere)
    outcomes: dict[str, int]
    rss_mb: float


def replica_process(name: str, worker: str, build: Any, args: tuple[Any, ...], url: str, conn: Any) -> None:
    """Child: a daemon that runs the slots it is sent until told to stop."""
    settings = build(*args)
    asyncio.run(_replica(name, worker, settings, url, conn))


async def _replica(name: str, worker: str, settings: Any, url: str, conn: Any) -> None:
    engine = make_engine(url, pool_size=scheduler.DB_WORKERS + 2, pool_pre_ping=False)
    interval = settings.schedule.interval
    with tempfile.TemporaryDirectory() as spool_dir:
        daemon = scheduler.Daemon(settings, engine, Spool(Path(spool_dir)), worker=worker)
        names = [s.name for s in settings.sources]
        async with daemon.running():
            conn.send("ready")
            while (slot := await asyncio.to_thread(conn.recv)) != "stop":
                await asyncio.sleep(max(0.0, slot.timestamp() - time.time()))
                deadline = (
                    time.monotonic() + (slot + interval * scheduler.POLL_SHARE).timestamp() - time.time()
                )
                cpu0 = time.process_time()
                daemon._expected.clear()  # it sits out slots by design: they are not its missed ones
                ran = await daemon.run_slots(names, slot, deadline)
                seconds = time.time() - slot.timestamp()
                polled = frozenset(n for n, o in ran.items() if o != "claimed_elsewhere")
                outcomes = list(ran.values())
                counts = {o: outcomes.count(o) for o in set(outcomes)}
                conn.send(Ran(name, slot, seconds, time.process_time() - cpu0, polled, counts, rss_mb()))
    engine.dispose()


@dataclass
class Replicas:
    """The replica processes, by name, and the pipe to each."""

    processes: dict[str, Any] = field(default_factory=dict)
    pipes: dict[str, Any] = field(default_factory=dict)

    def run(self, names: list[str], slot: datetime, shares: Any = None) -> dict[str, Ran]:
        """The replicas `names` run `slot`; `shares` (a `CpuShares`) counts from its start to their end."""
        for name in names:
            self.pipes[name].send(slot)
        time.sleep(max(0.0, slot.timestamp() - time.time()))
        with shares.counting() if shares is not None else nullcontext():
            return {name: self.pipes[name].recv() for name in names}

    def kill(self, name: str) -> None:
        self.processes[name].kill()
        self.processes[name].join(timeout=10)


@contextmanager
def replicas(names: list[str], build: Any, args: tuple[Any, ...], url: str) -> Iterator[Replicas]:
    ctx = multiprocessing.get_context("spawn")
    out = Replicas()
    try:
        for n, name in enumerate(names):
            parent, child = ctx.Pipe()
            worker = f"bench-{name}:{n}"
            process = ctx.Process(
                target=replica_process, args=(name, worker, build, args, url, child), daemon=True
            )
            process.start()
            out.processes[name], out.pipes[name] = process, parent
        for name in names:
            assert out.pipes[name].recv() == "ready", name
        yield out
    finally:
        for name, process in out.processes.items():
            if process.is_alive():
                with suppress(OSError):
                    out.pipes[name].send("stop")
                process.join(timeout=15)
                if process.is_alive():
                    process.kill()


def next_slot(interval: timedelta, lead: float = 0.5) -> datetime:
    """The first slot starting at least `lead` seconds from now (the replicas must hear of it first)."""
    now = datetime.now(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    slot = epoch + ((now - epoch) // interval + 1) * interval
    return slot if (slot - now).total_seconds() >= lead else slot + interval


@dataclass
class Measured:
    one: list[Ran] = field(default_factory=list)  # replica a alone
    two: list[dict[str, Ran]] = field(default_factory=list)  # a and b in the same slot
    kill: dict[str, Any] = field(default_factory=dict)


def measure(
    reps: Replicas, interval: timedelta, cycles: int, total: int, url: str, shares: dict[str, Any]
) -> Measured:
    """Alternate one replica alone and both, then kill b half-way through a slot. `shares`
    (one, two: `CpuShares`) count the machine's CPU in the cycles measured of each kind."""
    got = Measured()
    for i in range(WARM + cycles):
        counted = i >= WARM
        alone = reps.run(["a"], next_slot(interval), shares["one"] if counted else None)["a"]
        both = reps.run(["a", "b"], next_slot(interval), shares["two"] if counted else None)
        if counted:
            got.one.append(alone)
            got.two.append(both)
    two_cycle = median([max(r.seconds for r in both.values()) for both in got.two])
    slot = next_slot(interval)
    for name in ("a", "b"):
        reps.pipes[name].send(slot)
    time.sleep(max(0.0, slot.timestamp() + two_cycle / 2 - time.time()))
    reps.kill("b")
    during = reps.pipes["a"].recv()
    after = reps.run(["a"], next_slot(interval))["a"]
    got.kill = {
        "killed_at_s": round(two_cycle / 2, 2),
        "slot_of_kill_survivor_polled": len(during.polled),
        "slot_of_kill_runs": runs_of(url, slot),  # b's unfinished claims stay `running` until marked missed
        "next_slot_survivor_polled": len(after.polled),
        "next_slot_runs": runs_of(url, after.slot),
        "next_slot_outcomes": after.outcomes,
        "sources": total,
    }
    return got


def runs_of(url: str, slot: datetime) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT status, count(*) FROM ingestion_runs WHERE snapshot_ts = %s GROUP BY 1", (slot,)
        ).all()
    engine.dispose()
    return {str(status): int(n) for status, n in found}


def figures(got: Measured, total: int) -> dict[str, Any]:
    one_cycle = median([r.seconds for r in got.one])
    two_cycle = median([max(r.seconds for r in both.values()) for both in got.two])
    shares = {  # over every cycle measured: a median of shares would hide one replica taking all
        name: round(sum(len(both[name].polled) for both in got.two) / (total * len(got.two)), 3)
        for name in ("a", "b")
    }
    twice = sum(len(both["a"].polled & both["b"].polled) for both in got.two)
    unpolled = sum(total - len(both["a"].polled | both["b"].polled) for both in got.two)
    cpu_one = median([r.cpu_s for r in got.one])
    cpu_two = {name: round(median([both[name].cpu_s for both in got.two]), 2) for name in ("a", "b")}
    not_ok = sum(n for r in got.one for o, n in r.outcomes.items() if o != "ok") + sum(
        n
        for both in got.two
        for r in both.values()
        for o, n in r.outcomes.items()
        if o not in ("ok", "claimed_elsewhere")
    )
    return {
        "replicas": 2,
        "sources": total,
        "cycles": len(got.one),
        "one_cycle_s": round(one_cycle, 3),
        "two_cycle_s": round(two_cycle, 3),
        "throughput_two_vs_one": round(one_cycle / two_cycle, 2),
        "share": shares,
        "split": f"{max(shares.values()) * 100:.0f}/{min(shares.values()) * 100:.0f}",
        "polled_twice": twice,
        "unpolled": unpolled,
        "not_ok": not_ok,
        "cpu_s_one": round(cpu_one, 2),
        "cpu_s_two": cpu_two,
        "cpu_ms_per_source_one": round(1000 * cpu_one / total, 3),
        "cpu_ms_per_source_two": round(1000 * sum(cpu_two.values()) / total, 3),
        "cpu_bound_ratio": round(cpu_one / max(cpu_two.values()), 2),
        "rss_mb": {name: round(got.two[-1][name].rss_mb) for name in ("a", "b")},
        "failover": got.kill,
    }


def report_rows(f: dict[str, Any]) -> list[list[str]]:
    k = f["failover"]
    return [
        ["cycle, one replica alone (median)", f"{f['one_cycle_s'] * 1000:,.0f} ms"],
        ["cycle, two replicas, slot start to last commit of either", f"{f['two_cycle_s'] * 1000:,.0f} ms"],
        ["throughput two / one (wall clock, shared cores)", f"{f['throughput_two_vs_one']:.2f}x"],
        ["share of the sources: a / b", f"{f['share']['a']:.1%} / {f['share']['b']:.1%} ({f['split']})"],
        ["slots polled by both replicas / by neither", f"{f['polled_twice']} / {f['unpolled']}"],
        ["slots not ok", str(f["not_ok"])],
        [
            "poller CPU per cycle: one alone / a, b together",
            f"{f['cpu_s_one']:.2f} s / {f['cpu_s_two']['a']:.2f}, {f['cpu_s_two']['b']:.2f} s",
        ],
        [
            "poller CPU per source: one / two (sum)",
            f"{f['cpu_ms_per_source_one']:.3f} / {f['cpu_ms_per_source_two']:.3f} ms",
        ],
        ["throughput with a core per replica (CPU one / busiest of two)", f"{f['cpu_bound_ratio']:.2f}x"],
        ["RSS per replica: a / b", f"{f['rss_mb']['a']} / {f['rss_mb']['b']} MB"],
        [
            f"failover: b killed {k['killed_at_s']} s into a slot: survivor polled / runs of the slot",
            f"{k['slot_of_kill_survivor_polled']:,} / {k['slot_of_kill_runs']}",
        ],
        [
            "failover: the next slot: survivor polled / runs of the slot",
            f"{k['next_slot_survivor_polled']:,} of {k['sources']:,} / {k['next_slot_runs']}",
        ],
    ]
