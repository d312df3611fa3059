"""`etl run --once` over many single-account sources: what a cron job with many API keys gets.

    python bench/once.py [--sources 1000] [--runs 1] [--latency 0.05] [--deadline 45s]
                         [--database-url URL] [--json]

The four venue simulators run in processes of their own on loopback (bench/poll.py's,
`--latency` added to every request, each venue's documented rate limit enforced per API
key). The sources are spread evenly over the four venues, one account and one API key
each (a desk's sub-account keys), their secrets in files as a mounted secret would be.
Each run is the real command, `python -m etl run --once --config ... --slot ...`, in a
subprocess of its own (a fresh slot each run), timed from its start to its exit.

Reported per run (and the median over runs): wall time against the command's deadline,
the sources `ok` and failed (from `ingestion_runs`), the requests and 429s the simulators
saw, and CPU seconds of the command (its process: start-up, HTTP, normalize, load, the
summary) and of the simulators' process. Wall time is noisy on a shared machine; the
CPU figures are what to compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text

if not __package__:  # run as `python bench/once.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import describe_server, fresh_database, load_average, median, print_json_line, print_table
from bench.poll import VENUES, Source, simulators, singles
from etl.config import parse_duration
from etl.pipeline import COMMAND_SHARE
from etl.slots import floor_to_slot
from etl.store.engine import make_engine

INTERVAL = timedelta(seconds=60)  # the default: the command's deadline is 3/4 of it


def write_config(
    sources: list[Source],
    urls: dict[str, str],
    folder: Path,
    deadline: str | None,
    *,
    interval: timedelta = INTERVAL,
) -> Path:
    secrets = folder / "secrets"
    secrets.mkdir()
    lines = ["[schedule]", f'interval = "{interval.total_seconds():g}s"']
    if deadline:
        lines.append(f'deadline = "{deadline}"')
    for s in sources:
        (secrets / f"{s.name}.key").write_text(s.key)
        lines += ["", "[[sources]]", f'name = "{s.name}"', f'venue = "{s.venue}"',
                  f'base_url = "{urls[s.venue]}"', f'api_key = "file:secrets/{s.name}.key"']  # fmt: skip
        if s.secret is not None:
            (secrets / f"{s.name}.secret").write_text(s.secret)
            lines.append(f'api_secret = "file:secrets/{s.name}.secret"')
    path = folder / "etl.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Run:
    wall_s: float
    exit_code: int
    ok: int
    failed: int
    requests: int
    rate_limited: int
    cpu_s: float
    sim_cpu_s: float
    errors: list[str]


def run_once(
    config: Path, url: str, slot: datetime, stats: Any, sims: list[psutil.Process], profile: str | None = None
) -> Run:
    env = {**os.environ, "ETL_DATABASE_URL": url}
    before, sim0 = stats(), sum(sum(p.cpu_times()[:2]) for p in sims)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        command = [
            sys.executable,
            "-m",
            "etl",
            "run",
            "--once",
            "--config",
            str(config),
            "--slot",
            slot.isoformat(),
        ]
        if profile:  # py-spy's own CPU is then counted too: for where the time goes, not for figures
            command = ["py-spy", "record", "--format", "raw", "--rate", "250", "-o", profile, "--", *command]
        proc = subprocess.run(
            command,
            env=env, stdout=out, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, sim1 = stats(), sum(sum(p.cpu_times()[:2]) for p in sims)
    cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    ok, failed = outcomes(url, slot)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return Run(
        wall_s=wall,
        exit_code=proc.returncode,
        ok=ok,
        failed=failed,
        requests=sum(after[v]["requests"] - before[v]["requests"] for v in after),
        rate_limited=sum(after[v]["rate_limited"] - before[v]["rate_limited"] for v in after),
        cpu_s=cpu,
        sim_cpu_s=sim1 - sim0,
        errors=errors or [line for line in proc.stderr.splitlines()[-3:]],
    )


def outcomes(url: str, slot: datetime) -> tuple[int, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                text("SELECT status, count(*) FROM ingestion_runs WHERE snapshot_ts = :slot GROUP BY status"),
                {"slot": slot},
            ).all()
        )
    engine.dispose()
    return int(rows.get("ok", 0)), sum(int(n) for status, n in rows.items() if status != "ok")


@contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="etl-bench-once-") as name:
        yield Path(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--deadline", help="the command's deadline (default: 3/4 of the 60 s interval)")
    parser.add_argument("--database-url", help="a server to create the bench database on (default: embedded)")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the command with py-spy (collapsed stacks)")
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table to stderr)"
    )
    args = parser.parse_args(argv)
    sources = singles(args.sources)
    deadline_s = (
        parse_duration(args.deadline) if args.deadline else INTERVAL * COMMAND_SHARE
    ).total_seconds()
    with (
        fresh_database(args.database_url) as url,
        simulators(sources, args.latency) as (urls, stats, sim_pids),
        folder() as tmp,
    ):
        config = write_config(sources, urls, tmp, args.deadline)
        header = (
            f"bench/once.py: `etl run --once` over {len(sources):,} single-account sources "
            f"({', '.join(f'{v} {sum(s.venue == v for s in sources)}' for v in VENUES)}), "
            f"{args.latency * 1000:g} ms latency, deadline {deadline_s:g} s, "
            f"{describe_server(url)}, {load_average()}"
        )
        first = floor_to_slot(datetime.now(UTC), INTERVAL) - INTERVAL * args.runs
        sims = [psutil.Process(pid) for pid in sim_pids]
        runs = [
            run_once(config, url, first + INTERVAL * i, stats, sims, args.py_spy) for i in range(args.runs)
        ]
    figures = summarize(sources, runs, deadline_s)
    out = sys.stderr if args.json else sys.stdout
    report(header, runs, figures, out)
    print_json_line(figures)
    return 0


def summarize(sources: list[Source], runs: list[Run], deadline_s: float) -> dict[str, Any]:
    wall = median([r.wall_s for r in runs])
    cpu = median([r.cpu_s for r in runs])
    return {
        "sources": len(sources),
        "runs": len(runs),
        "wall_s": round(wall, 2),
        "deadline_s": deadline_s,
        "wall_vs_deadline": round(wall / deadline_s, 2),
        "ok": min(r.ok for r in runs),
        "failed": max(r.failed for r in runs),
        "requests": median([r.requests for r in runs]),
        "rate_limited": max(r.rate_limited for r in runs),
        "poller_cpu_s": round(cpu, 2),
        "poller_cpu_ms_per_source": round(1000 * cpu / len(sources), 3),
        "simulators_cpu_s": round(median([r.sim_cpu_s for r in runs]), 2),
    }


def report(header: str, runs: list[Run], figures: dict[str, Any], out: Any) -> None:
    print(header, file=out)
    rows = [
        [i + 1, f"{r.wall_s:.1f}", r.exit_code, r.ok, r.failed, r.requests, r.rate_limited,
         f"{r.cpu_s:.2f}", f"{1000 * r.cpu_s / figures['sources']:.2f}", f"{r.sim_cpu_s:.2f}"]
        for i, r in enumerate(runs)
    ]  # fmt: skip
    stdout, sys.stdout = sys.stdout, out
    try:
        print_table(
            ["run", "wall s", "exit", "ok", "failed", "requests seen", "429s", "poller CPU s",
             "poller CPU ms/source", "simulators CPU s"],
            rows,
        )  # fmt: skip
    finally:
        sys.stdout = stdout
    for r in runs:
        for line in sorted(set(r.errors))[:3]:
            print(f"  {line[:200]}", file=out)
    print(
        f"median wall {figures['wall_s']:.1f} s = {figures['wall_vs_deadline']:.2f}x the deadline; "
        f"poller {figures['poller_cpu_ms_per_source']:.2f} CPU ms per source",
        file=out,
    )


if __name__ == "__main__":
    sys.exit(main())
