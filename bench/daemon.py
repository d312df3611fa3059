"""`etl daemon --processes N` as users run it: the real command on its schedule, many sources.

    python bench/daemon.py [--sources 10000] [--processes 2] [--slots 3] [--interval 40]
                           [--latency 0.05] [--database-url URL] [--json]

The simulators and the config are bench/once.py's (one account and one API key per
source, secrets in files), with slots every `--interval`. The daemon is `python -m etl
daemon --config … --processes N` in a subprocess. Once every process has logged its
start, the next whole slot is a warm-up; the `--slots` after it are measured; then
SIGTERM, and its exit code is reported. A slot's cycle is from its start to the last
finish of its run rows (`ingestion_runs`); a slot's CPU is what each part used from its
start until every source has a finished run row (this bench asks PostgreSQL every 0.25
s): the daemon's processes (the parent and each child, every thread), the
simulators, PostgreSQL, the machine (busy time of all cores). bench/poll.py --replicas 2
measures the same code driven slot by slot from the bench; this is the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text

if not __package__:  # run as `python bench/daemon.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import describe_server, fresh_database, load_average, median, print_json_line, print_table
from bench.once import folder, write_config
from bench.poll import VENUES, CpuShares, simulators, singles
from etl.slots import floor_to_slot
from etl.store.engine import make_engine


class TreeShares(CpuShares):
    """bench/poll.py's CPU shares, the poller being the daemon's processes, not this one."""

    def __init__(self, daemon: psutil.Process, sim_pids: list[int]):
        super().__init__(sim_pids)
        self.daemon = daemon
        self.peak_rss_mb: dict[int, float] = {}

    def tree(self) -> list[psutil.Process]:
        return [self.daemon, *self.daemon.children()]  # the parent, its daemons, multiprocessing's tracker

    def _sample(self) -> dict[str, float]:
        out = super()._sample()
        out["poller"] = sum(sum(p.cpu_times()[:2]) for p in self.tree())
        return out

    def sample_rss(self) -> None:
        for p in self.tree():
            self.peak_rss_mb[p.pid] = max(self.peak_rss_mb.get(p.pid, 0.0), p.memory_info().rss / 2**20)


def sleep_until(moment: datetime, shares: TreeShares | None = None) -> None:
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:
        if shares is not None:
            shares.sample_rss()
        time.sleep(min(left, 0.5))


def wait_for_slot(engine: Any, slot: datetime, sources: int, until: datetime, shares: TreeShares) -> None:
    """Until every source has a finished run row for `slot` (or `until`)."""
    query = text("SELECT count(*) FROM ingestion_runs WHERE snapshot_ts = :slot AND status <> 'running'")
    while datetime.now(UTC) < until:
        with engine.connect() as conn:
            if conn.execute(query, {"slot": slot}).scalar_one() >= sources:
                return
        shares.sample_rss()
        time.sleep(0.25)


def slot_figures(url: str, slots: list[datetime]) -> list[dict[str, Any]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT snapshot_ts, status, count(*), max(finished_at) FROM ingestion_runs"
                " WHERE snapshot_ts = ANY(:slots) GROUP BY 1, 2"
            ),
            {"slots": slots},
        ).all()
    engine.dispose()
    out = []
    for slot in slots:
        rows = [r for r in found if r[0] == slot]
        last = max((r[3] for r in rows if r[3] is not None), default=None)
        out.append(
            {
                "slot": slot.isoformat(),
                "statuses": {r[1]: int(r[2]) for r in rows},
                "cycle_s": None if last is None else round((last - slot).total_seconds(), 3),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=3, help="slots measured, after a warm-up slot")
    parser.add_argument("--interval", type=int, default=40, help="seconds between slots")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--database-url", help="a server to create the bench database on (default: embedded)")
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table to stderr)"
    )
    args = parser.parse_args(argv)
    sources, interval = singles(args.sources), timedelta(seconds=args.interval)
    with (
        fresh_database(args.database_url) as url,
        simulators(sources, args.latency) as (urls, stats, sim_pids),
        folder() as tmp,
    ):
        config = write_config(sources, urls, tmp, None, interval=interval)
        header = (
            f"bench/daemon.py: `etl daemon --processes {args.processes}` over {len(sources):,} "
            f"single-account sources ({', '.join(f'{v} {sum(s.venue == v for s in sources)}' for v in VENUES)}), "
            f"{args.latency * 1000:g} ms latency, slots every {args.interval} s, "
            f"{describe_server(url)}, {load_average()}"
        )
        log = tmp / "daemon.log"
        env = {**os.environ, "ETL_DATABASE_URL": url, "ETL_DATA_DIR": str(tmp / "data")}
        env.pop("ETL_CONFIG", None)
        command = [sys.executable, "-m", "etl", "daemon", "--config", str(config)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*command, "--processes", str(args.processes)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            deadline = time.monotonic() + 120
            while log.read_text().count("daemon started") < args.processes:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start:\n" + log.read_text()[-2000:])
                time.sleep(0.2)
            warm = floor_to_slot(datetime.now(UTC), interval) + interval
            slots = [warm + interval * (i + 1) for i in range(args.slots)]
            shares = TreeShares(psutil.Process(proc.pid), sim_pids)
            sleep_until(slots[0], shares)
            requests0 = stats()  # the warm-up slot's polls ended long before
            engine = make_engine(url)
            for slot in slots:
                with shares.counting():
                    wait_for_slot(engine, slot, len(sources), slot + interval, shares)
                sleep_until(slot + interval, shares)
            requests1 = stats()
            engine.dispose()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
        per_slot = slot_figures(url, slots)
    counted = len(slots)
    cpu = {k: round(v / counted, 2) for k, v in shares.seconds.items()}
    cores = psutil.cpu_count() or 1
    cycles = [s["cycle_s"] for s in per_slot if s["cycle_s"] is not None]
    cycle = median(cycles) if cycles else float("nan")
    bound = cpu["machine"] / cores
    figures: dict[str, Any] = {
        "sources": len(sources),
        "processes": args.processes,
        "slots": counted,
        "cycle_s": round(cycle, 3),
        "cycles_s": cycles,
        "not_ok": sum(n for s in per_slot for status, n in s["statuses"].items() if status != "ok"),
        "ok": sum(s["statuses"].get("ok", 0) for s in per_slot),
        "cpu_s_per_cycle": cpu,
        "cpu_bound_s": round(bound, 3),
        "cycle_vs_cpu_bound": round(cycle / bound, 2) if bound else None,
        "poller_cpu_ms_per_source": round(1000 * cpu["poller"] / len(sources), 3),
        "peak_rss_mb": sorted(round(v) for v in shares.peak_rss_mb.values()),
        "rate_limited": sum(requests1[v]["rate_limited"] - requests0[v]["rate_limited"] for v in requests1),
        "requests": sum(requests1[v]["requests"] - requests0[v]["requests"] for v in requests1),
        "exit_code": exit_code,
    }
    out_stream = sys.stderr if args.json else sys.stdout
    print(header, file=out_stream)
    rows = [
        ["cycle, slot start to its last run row (median)", f"{figures['cycle_s'] * 1000:,.0f} ms"],
        ["cycles", ", ".join(f"{c:.2f} s" for c in cycles)],
        ["slots ok / not ok", f"{figures['ok']:,} / {figures['not_ok']:,}"],
        [
            "CPU s per cycle: daemon / simulators / postgres / whole machine",
            " / ".join(f"{v:.2f}" for v in cpu.values()),
        ],
        ["daemon CPU per source, all processes", f"{figures['poller_cpu_ms_per_source']:.3f} ms"],
        ["CPU bound (machine CPU per cycle / cores)", f"{bound * 1000:,.0f} ms"],
        ["cycle / CPU bound", f"{figures['cycle_vs_cpu_bound']}x"],
        ["peak RSS per process: tracker, parent, daemons (MB)", ", ".join(map(str, figures["peak_rss_mb"]))],
        ["429s provoked / requests", f"{figures['rate_limited']:,} / {figures['requests']:,}"],
        ["exit code after SIGTERM", str(exit_code)],
    ]
    with contextlib.redirect_stdout(out_stream):
        print_table(["figure", "value"], rows)
    print_json_line(figures)
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
