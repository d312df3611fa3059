"""The daemon's load path for many small sources: one transaction per source vs batches.

    python bench/loads.py [--sources 1000,10000] [--repeats 3] [--database-url URL] [--json]

Each source is one account on one of the four venues (as `bench/poll.py --sources N`):
one real poll per venue against its simulator (in-process, before timing) gives the
batches and raw bodies, copied under N source names. A slot is what the daemon does
once every source's poll has arrived: the slot claimed for all of them (not timed), then
every load handed to the database threads at once, through

- single: one `Loads.store` per source (one transaction each), the path before batching;
- batch: `Loads.store_live` (batches of up to `loads.BATCH_MAX` sources, one
  transaction each, `pipeline.store_many`).

With `--spread S` the polls arrive evenly over S seconds instead (as a slot's polls do),
so the batches are what the daemon's window gathers. Timed per slot: wall from the
first load handed over to the last result, and from the last poll's arrival; this process's
CPU (every thread: the loads, the event loop, psycopg; what `bench/poll.py` counts as
the poller's) and the CPU of this database's PostgreSQL backends (psutil, by pid), each
per source. The two paths alternate on consecutive slots of one database, so they see
the same machine; the figures are medians over `--repeats` slots each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, text

if not __package__:  # run as `python bench/loads.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import describe_server, fresh_database, load_average, median, print_json_line, print_table
from bench.poll import VENUES, Source, build_simulators, settings_for
from etl import scheduler
from etl.daemon import loads
from etl.daemon.health import Database
from etl.daemon.supervisor import Supervisor
from etl.metrics import Metrics
from etl.pipeline import Polled, RunResult, client_for, poll
from etl.store.engine import make_engine
from etl.store.load import claim_slots

SLOT0 = datetime(2026, 5, 4, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)


async def templates() -> list[Polled]:
    """One poll per venue, of a one-account source, from the simulators in-process."""
    sources = [Source(f"{v}-template", v, f"{v}-key-0", f"{v}-secret-0", 1) for v in VENUES]
    sims = build_simulators(sources, latency=0.0)
    settings = settings_for(sources, {v: f"http://{v}.sim" for v in VENUES}, INTERVAL)
    mounts = {f"http://{v}.sim": httpx.ASGITransport(app=sims[v].app()) for v in VENUES}
    async with httpx.AsyncClient(mounts=mounts) as client:
        polls = [await poll(s, SLOT0, client_for(s, client, settings)) for s in settings.sources]
    for p in polls:
        assert p.batch is not None, p.error
    return polls


def copies(models: list[Polled], n: int, slot: datetime) -> list[Polled]:
    """`n` one-account sources, round robin over the venues' polls, for `slot`."""
    out = []
    for i in range(n):
        model = models[i % len(models)]
        source = model.source.model_copy(update={"name": f"{model.source.venue}-{i:05d}"})
        out.append(replace(model, source=source, slot=slot, started_at=slot))
    return out


class Backends:
    """CPU of this database's PostgreSQL backends (the pool's connections), by pid."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def seconds(self) -> float:
        with self.engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
            total = 0.0
            for pid in pids:
                with contextlib.suppress(psutil.Error):  # a backend that just ended
                    total += sum(psutil.Process(pid).cpu_times()[:2])
        return total


async def one_slot(
    engine: Engine, part: loads.Loads, polls: list[Polled], path: str, backends: Backends, spread: float
) -> dict[str, Any]:
    slot = polls[0].slot
    with engine.begin() as conn:  # as the daemon does before it polls
        claim_slots(
            conn, sources=[p.source.name for p in polls], slot=slot, worker="bench", abandoned=(slot, slot)
        )
    store: Callable[[Polled], Awaitable[Any]]
    if path == "none":  # the bench's own share: the arrivals and the gather, no load
        store = nothing
    elif path == "single":
        store = lambda p: part.database.call(partial(part.store, p), timeout=60)  # noqa: E731
    else:
        store = partial(part.store_live, timeout=60)
    n = len(polls)

    async def arriving(i: int, polled: Polled) -> Any:
        await asyncio.sleep(spread * i / n)
        return await store(polled)

    batches = part.batches
    pg0, cpu0, t0 = backends.seconds(), time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(arriving(i, p) for i, p in enumerate(polls)))
    wall, cpu, pg = time.perf_counter() - t0, time.process_time() - cpu0, backends.seconds() - pg0
    bad = [r for r in results if r.status != "ok" or r.already_loaded]
    assert not bad, bad[:3]
    sent = part.batches - batches
    return {
        "cpu_ms": 1000 * cpu / n,
        "pg_ms": 1000 * pg / n,
        "wall_ms": 1000 * wall / n,
        "tail_ms": 1000 * (wall - spread * (n - 1) / n),
        "sources_per_transaction": n / sent if sent else 1.0,
    }


async def nothing(polled: Polled) -> Any:
    return RunResult(polled.source.name, polled.source.venue, polled.slot, "ok", None)


class Counted(loads.Loads):
    """The daemon's Loads, counting its transactions of several sources."""

    batches = 0

    def store_together(self, polls: list[Polled]) -> Any:
        self.batches += 1
        return super().store_together(polls)


async def measure(
    url: str, counts: list[int], repeats: int, spread: float
) -> dict[int, dict[str, dict[str, float]]]:
    models = await templates()
    engine = make_engine(url, pool_size=scheduler.DB_WORKERS + 2, pool_pre_ping=False)
    metrics = Metrics()
    database = Database(engine, metrics, tick=1.0)
    supervisor = Supervisor(metrics.task_restarts)
    part = Counted(database, supervisor, metrics)
    backends = Backends(engine)
    out: dict[int, dict[str, dict[str, float]]] = {}
    slot = SLOT0
    try:
        # a first slot of each path warms the connections, caches and prepared statements
        for path in ("single", "batch"):
            slot += INTERVAL
            await one_slot(engine, part, copies(models, min(counts), slot), path, backends, 0.0)
        for n in counts:
            runs: dict[str, list[dict[str, float]]] = {"single": [], "batch": [], "none": []}
            for _ in range(repeats):
                for path in runs:
                    slot += INTERVAL
                    polls = copies(models, n, slot)
                    runs[path].append(await one_slot(engine, part, polls, path, backends, spread))
            out[n] = {
                path: {k: round(median([r[k] for r in rs]), 3) for k in rs[0]} for path, rs in runs.items()
            }
    finally:
        database.close()
        engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="1000,10000", help="comma-separated source counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--spread", type=float, default=0.0, help="seconds over which the polls arrive (default: all at once)"
    )
    parser.add_argument("--database-url", help="a server to create the bench database on (default: embedded)")
    parser.add_argument("--json", action="store_true", help="stdout: only the JSON line")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.sources.split(",")]
    with fresh_database(args.database_url) as url:
        header = (
            f"bench/loads.py: one-account sources arriving over {args.spread:g} s, {args.repeats} slot(s) "
            f"per path and size (median), batches of up to {loads.BATCH_MAX} (window {loads.BATCH_WAIT * 1000:g} ms), "
            f"{describe_server(url)}, {load_average()}"
        )
        figures = asyncio.run(measure(url, counts, args.repeats, args.spread))
    table = []
    for n, paths in figures.items():
        s, b, z = paths["single"], paths["batch"], paths["none"]
        for key, label in (
            ("cpu_ms", "poller CPU per source"),
            ("pg_ms", "PostgreSQL CPU per source"),
            ("wall_ms", "wall per source"),
            ("tail_ms", "last result after the last poll"),
        ):
            table.append(
                [
                    f"{n:,}",
                    label,
                    f"{s[key]:,.3f} ms",
                    f"{b[key]:,.3f} ms",
                    f"{s[key] / b[key]:.1f}x" if b[key] else "-",
                ]
            )
        table.append([f"{n:,}", "sources per transaction", "1", f"{b['sources_per_transaction']:.1f}", ""])
        table.append(
            [f"{n:,}", "(the bench's own poller CPU per source, in both)", f"{z['cpu_ms']:.3f} ms", "", ""]
        )
        net_s, net_b = s["cpu_ms"] - z["cpu_ms"], b["cpu_ms"] - z["cpu_ms"]
        table.append([f"{n:,}", "poller CPU per source, the load's alone", f"{net_s:.3f} ms", f"{net_b:.3f} ms",
                      f"{net_s / net_b:.1f}x"])  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    stdout, sys.stdout = sys.stdout, out
    try:
        print(header)
        print_table(["sources", "figure", "single", "batch", "single / batch"], table)
    finally:
        sys.stdout = stdout
    print_json_line(
        {
            "sources": {str(n): paths for n, paths in figures.items()},
            "load_cpu_ms": {
                str(n): {k: round(p[k]["cpu_ms"] - p["none"]["cpu_ms"], 3) for k in ("single", "batch")}
                for n, p in figures.items()
            },
            "cpu_single_vs_batch": {
                str(n): round(p["single"]["cpu_ms"] / p["batch"]["cpu_ms"], 2) for n, p in figures.items()
            },
            "wall_single_vs_batch": {
                str(n): round(p["single"]["wall_ms"] / p["batch"]["wall_ms"], 2) for n, p in figures.items()
            },
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
