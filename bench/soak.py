"""Fault-injection soak: the daemon against the simulators while a seeded schedule breaks things.

    python bench/soak.py --minutes N [--seed S] [--json] [--keep]

Starts the four venue simulators on loopback (real HTTP), a PostgreSQL of its own (an
embedded pgserver data dir under a temp dir; or a fresh database on `ETL_DATABASE_URL`,
and then no PostgreSQL stop/start), writes a config of seven sources across the venues at
4-5 s intervals (secrets as env references, one with a trailing newline), and runs
`python -m etl daemon` as a subprocess with its own ETL_DATA_DIR. For N minutes a seeded
random schedule injects faults (`KINDS`): venue 5xx, 429 (Retry-After 1 or 3600), timeouts,
drips (one byte a second), bad bodies (NaN, NUL, ~96 MB, a duplicate key, a wrong type, the
credential echoed), PostgreSQL stopped and started, the daemon kill -9ed and restarted,
the spool's disk full (RLIMIT_FSIZE 0 on the daemon, during a database outage, so the
spool is what fails). Every kind is injected at least once. Then the faults stop, a quiet
settle of a few intervals, SIGTERM, and the invariants of `bench.soak_checks` are checked
and printed. With `--json` the last line is one JSON object (`slots`, `faults`,
`violations`, ...). Exit 0 when no invariant was violated, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

if not __package__:  # run as `python bench/soak.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import fresh_database, load_average, print_json_line
from bench.soak_checks import DAEMON_KILL, DATABASE_DOWN, DISK_FULL, Evidence, check
from bench.soak_world import (
    REQUEST_TIMEOUT,
    DaemonProcess,
    EmbeddedPostgres,
    World,
    build_world,
    daemon_env,
    free_port,
    serve,
    write_config,
)


def _mutated(kind: str) -> Callable[[random.Random], dict[str, Any]]:
    """The real answer with one bad value (see etl.sim.base.MUTATIONS)."""
    return lambda rng: {"real": kind}


# The venue faults, as /_sim/faults items (a `kind` each, so the simulator lists who got it).
VENUE_FAULTS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "5xx": lambda rng: {
        "status": rng.choice([500, 502, 503]),
        "body": "<html>bad gateway</html>",
        "times": rng.randint(1, 3),
    },
    "429": lambda rng: {
        "status": 429,
        "body": '{"code": 429, "msg": "Too Many Requests"}',
        "content_type": "application/json",
        "headers": {"Retry-After": rng.choice(["1", "3600"])},
    },
    "timeout": lambda rng: {"delay": REQUEST_TIMEOUT + 1.0, "status": 504},
    "drip": lambda rng: {"real": "", "drip": 1.0},
    **{
        kind: _mutated(kind)
        for kind in ("nan", "nul", "huge", "duplicate_key", "wrong_type", "echo_credential")
    },
}
KINDS = (*VENUE_FAULTS, DATABASE_DOWN, DISK_FULL, DAEMON_KILL)
MEAN_GAP = 6.0  # seconds between faults beyond the one of each kind
SETTLE_INTERVALS = (3, 8)  # quiet time after the faults: at least, and at most while the spool drains
SCRAPED = (
    "etl_slots_total",
    "etl_errors_total",
    "etl_missed_slots_total",
    "etl_rows_total",
    "etl_spool_depth",
)
EXTRA_WEIGHTS = {DATABASE_DOWN: 0.4, DAEMON_KILL: 0.4}  # a venue kind weighs 1


@dataclass(order=True)
class Action:
    at: float  # seconds from the start of the fault phase
    kind: str = field(compare=False)
    step: str = field(compare=False)  # "inject", "stop"/"start", "fill"/"free", "kill"/"restart"
    params: dict[str, Any] = field(compare=False, default_factory=dict)


def schedule(rng: random.Random, seconds: float, can_stop_db: bool, venues: list[str]) -> list[Action]:
    """Faults over [0, seconds - a margin): every kind once at a random time, then more at
    random (a mean gap of MEAN_GAP). Database outages do not overlap each other, nor kills."""
    margin = 8.0  # the last fault is served and over before the settle
    wanted = [(rng.uniform(2.0, seconds - margin), kind) for kind in KINDS if kind != DISK_FULL]
    t = 0.0
    while (t := t + rng.expovariate(1 / MEAN_GAP)) < seconds - margin:
        kinds = list(VENUE_FAULTS) + list(EXTRA_WEIGHTS)
        weights = [EXTRA_WEIGHTS.get(k, 1.0) for k in kinds]
        wanted.append((t, rng.choices(kinds, weights)[0]))
    actions: list[Action] = []
    busy: dict[str, float] = {}
    for at, kind in sorted(wanted):
        if kind in VENUE_FAULTS:
            actions.append(
                Action(at, kind, "inject", {"venue": rng.choice(venues), **VENUE_FAULTS[kind](rng)})
            )
        elif at >= busy.get(kind, 0.0):
            down = rng.uniform(4.0, 10.0) if kind == DATABASE_DOWN else rng.uniform(0.5, 3.0)
            down = min(down, seconds - margin / 2 - at)
            busy[kind] = at + down + 2.0
            actions += _outage(
                kind, at, down, can_stop_db, rng, first=DISK_FULL not in {a.kind for a in actions}
            )
    return sorted(actions)


def _outage(
    kind: str, at: float, down: float, can_stop_db: bool, rng: random.Random, first: bool
) -> list[Action]:
    if kind == DAEMON_KILL:
        return [Action(at, kind, "kill"), Action(at + down, kind, "restart")]
    actions = [Action(at, kind, "stop"), Action(at + down, kind, "start")] if can_stop_db else []
    if first or rng.random() < 0.4:  # the disk fills in the middle of an outage: the spool is what fails
        actions += [Action(at + down * 0.25, DISK_FULL, "fill"), Action(at + down * 0.75, DISK_FULL, "free")]
    return actions


class Soak:
    def __init__(self, args: argparse.Namespace, stack: ExitStack):
        self.args, self.rng = args, random.Random(args.seed)
        self.created = time.monotonic()
        self.phases: dict[str, float] = {}  # seconds of wall time each
        self.root = Path(tempfile.mkdtemp(prefix="etl-soak-"))
        if not args.keep:
            stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        self.world: World = build_world()
        self.servers = serve(self.world.sims)
        for server in self.servers.values():
            stack.callback(server.stop)
        self.postgres: EmbeddedPostgres | None = None
        if args.database_url is None:
            self.postgres = EmbeddedPostgres(self.root)
            stack.callback(self.postgres.close)
        self.database_url = stack.enter_context(fresh_database(args.database_url or self.postgres_url()))
        write_config(self.root / "etl.toml", self.world, {v: s.url for v, s in self.servers.items()})
        self.metrics_port = free_port()
        env = daemon_env(self.world, self.root / "data", self.database_url)
        self.daemon = DaemonProcess(self.root / "etl.toml", env, self.metrics_port, self.root / "daemon.log")
        self.http = stack.enter_context(httpx.Client(timeout=10.0))
        self.injected: Counter[str] = Counter()
        self.notes: list[str] = []
        self.windows: list[tuple[str, float, float]] = []  # (kind, from, to): database down, disk full
        self._opened: dict[str, float] = {}
        self.violations: list[str] = []

    def postgres_url(self) -> str:
        assert self.postgres is not None
        return self.postgres.url

    def run(self) -> dict[str, Any]:
        seconds = self.args.minutes * 60
        actions = schedule(self.rng, seconds, self.postgres is not None, sorted(self.world.sims))
        self.daemon.start()
        if not self.daemon.wait_ready():
            raise SystemExit(f"the daemon did not start; its log: {self.root / 'daemon.log'}")
        t0 = time.monotonic()
        self.phases["start-up"] = t0 - self.created
        for action in actions:
            self._until(t0 + action.at)
            self._do(action)
        self._until(t0 + seconds)
        served = self._end_faults()
        self.phases["faults"] = time.monotonic() - t0
        self._settle()
        metrics = self._scrape()
        self.phases["settle"] = time.monotonic() - t0 - self.phases["faults"]
        stopped_at = time.time()
        code = self.daemon.terminate(timeout=30.0)
        self.phases["stop"] = time.time() - stopped_at
        if code != 0:
            self.violations.append(
                f"daemon: SIGTERM -> {'no exit within 30 s' if code is None else f'exit {code}'}"
            )
        gens = self.daemon.generations
        killed = [
            (DAEMON_KILL, g.ended or 0.0, n.ready or stopped_at)
            for g, n in itertools.pairwise(gens)
            if g.killed
        ]
        evidence = Evidence(
            self.world,
            self.database_url,
            self.root / "data" / "spool",
            self.daemon,
            served,
            stopped_at,
            self.args.rss_limit_mb,
            self.windows + killed,
        )
        t1 = time.monotonic()
        result = check(evidence, self.violations)
        self.phases["checks"] = time.monotonic() - t1
        return {"metrics": metrics, **result, "phases_s": {k: round(v, 1) for k, v in self.phases.items()}}

    def _until(self, moment: float) -> None:
        """Wait, restarting a daemon that died on its own (a violation: nobody killed it)."""
        while (left := moment - time.monotonic()) > 0:
            code = self.daemon.exited()
            if code is not None:
                self.violations.append(f"daemon: exited on its own with code {code}; restarted")
                self.daemon.start()
            time.sleep(min(left, 0.2))

    def _do(self, action: Action) -> None:
        if action.step == "inject":
            venue = action.params.pop("venue")
            item = {**action.params, "kind": action.kind}
            self.http.post(f"{self.servers[venue].url}/_sim/faults", json=[item]).raise_for_status()
            return  # counted when served
        if action.step in ("stop", "kill", "fill"):
            self.injected[action.kind] += 1
            self._opened[action.kind] = time.time()
        elif action.step != "restart":
            self.windows.append((action.kind, self._opened.pop(action.kind), time.time()))
        if action.step in ("stop", "start"):
            assert self.postgres is not None
            self.postgres.stop() if action.step == "stop" else self.postgres.start()
        elif action.step in ("fill", "free"):
            self.daemon.fill_disk(action.step == "fill")
        elif action.step == "kill":
            self.daemon.kill()
        else:
            self.daemon.start()

    def _end_faults(self) -> list[dict[str, Any]]:
        """The simulators' log of served faults; what is still queued is dropped, not counted."""
        served: list[dict[str, Any]] = []
        for venue, server in self.servers.items():
            stats = self.http.get(f"{server.url}/_sim/stats").json()
            served += [{**item, "venue": venue} for item in stats["served"]]
            self.http.post(f"{server.url}/_sim/reset").raise_for_status()
        self.injected.update(item["kind"] for item in served)
        if self.postgres is None:
            self.notes.append("ETL_DATABASE_URL given: PostgreSQL was not stopped and started")
        return served

    def _settle(self) -> None:
        """Quiet: at least SETTLE_INTERVALS[0] intervals, then until the spool is empty (at most [1])."""
        interval = max(i.total_seconds() for i in self.world.intervals.values())
        start = time.monotonic()
        self._until(start + SETTLE_INTERVALS[0] * interval)
        spool = self.root / "data" / "spool"
        while time.monotonic() < start + SETTLE_INTERVALS[1] * interval and any(
            not p.name.startswith(".") for p in spool.glob("*.json")
        ):
            self._until(time.monotonic() + 1.0)

    def _scrape(self) -> dict[str, float]:
        """etl_* counters and gauges summed over their labels but the outcome/kind one."""
        try:
            text = self.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        except httpx.HTTPError as err:
            self.violations.append(f"metrics: /metrics did not answer ({type(err).__name__})")
            return {}
        figures: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if not line.startswith(SCRAPED):
                continue
            name, _, value = line.rpartition(" ")
            metric = name.split("{")[0]
            for label in ("outcome", "kind"):
                if f'{label}="' in name:
                    metric += "." + name.split(f'{label}="')[1].split('"')[0]
            figures[metric] += float(value)
        return dict(figures)


def summary(args: argparse.Namespace, soak: Soak, result: dict[str, Any], wall: float) -> list[str]:
    faults = ", ".join(f"{k} {soak.injected[k]}" for k in KINDS)
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(result["slots_by_status"].items()))
    lines = [
        f"soak: {args.minutes:g} min of faults, seed {args.seed}, {len(soak.world.entries)} sources, "
        f"wall {wall:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in soak.phases.items())}), {load_average()}",
        f"database: {'ETL_DATABASE_URL (not stopped)' if soak.postgres is None else 'embedded pgserver (pg_ctl)'}",
        f"faults injected: {faults}",
        f"slots checked: {result['slots']} ({by_status}); not checked: {result['excluded']}",
        f"daemon: {result['processes']} process(es), {result['killed']} kill -9, peak RSS "
        f"{result['peak_rss_mb']:.0f} MB, median {result['median_rss_mb']:.0f} MB (limit {args.rss_limit_mb:g}), supervised restarts in the log: "
        f"{result['supervised_restarts']}",
        *(f"note: {note}" for note in soak.notes),
        "invariants:",
        *(f"  {'held    ' if held else 'VIOLATED'} {name}" for name, held in result["invariants"].items()),
    ]
    if result["violations"]:
        lines += ["violations:", *(f"  - {v}" for v in result["violations"])]
    if args.keep:
        lines.append(f"kept: {soak.root} (daemon.log, etl.toml, data/spool)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="of faults (settle and checks come after)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, config, spool)")
    parser.add_argument("--rss-limit-mb", type=float, default=400.0, help="the daemon's RSS must stay below")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a server to make the soak's database on "
        "(default: $ETL_DATABASE_URL, else an embedded one of its own)",
    )
    args = parser.parse_args(argv)
    args.database_url = args.database_url or os.environ.get("ETL_DATABASE_URL") or None
    started = time.monotonic()
    with ExitStack() as stack:
        soak = Soak(args, stack)
        result = soak.run()
        lines = summary(args, soak, result, time.monotonic() - started)
    print("\n".join(lines), flush=True)
    if args.json:
        faults = {k: soak.injected[k] for k in KINDS}
        print_json_line(
            {
                "minutes": args.minutes,
                "seed": args.seed,
                "faults": faults,
                "notes": soak.notes,
                **{k: v for k, v in result.items() if k != "metrics"},
                "metrics": result["metrics"],
            }
        )
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
