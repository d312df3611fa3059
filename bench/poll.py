"""Polling benchmark: whole daemon cycles over many accounts against the simulators.

    python bench/poll.py [--accounts 1000 | --sources 10000] [--cycles 20] [--interval 7]
                         [--latency 0.05] [--replicas 2] [--database-url URL] [--json]

The four venue simulators run in processes of their own (one per venue), on loopback, with `--latency` added
to every request and each venue's documented rate limit (its module's `RATE_LIMIT`)
enforced per API key: one request too many gets HTTP 429. The accounts are spread as a
desk would have them: a tenth each on HTX and Bittap (one account per API key), the rest
half on LTP and half on Tread.fi (up to 100 accounts behind each key). `--sources N`
instead gives N single-account sources, each its own API key, a quarter on each venue: a
desk whose every sub-account is a key.

Each cycle is what the daemon does at a slot (`Daemon.run_slots` over every source, as
the schedule's job of an interval: claim, poll through the per-key rate limiter,
normalize, load in a worker thread), timed from the slot's start to the last commit. The
floor is what latency and rate limits alone allow: the longest chain of sequential
requests of any source times the latency (the cadence is chosen so that no key's rate
limit binds; a 429 would say otherwise). Reported too: CPU time of normalize + load per
account (thread CPU time of those calls in this process; PostgreSQL's own CPU is not
ours), peak RSS (the process's high-water mark), RSS after the 20th cycle and after the
last (a leak shows as growth), the 429s the simulators counted, and one cycle of the
naive script: the same sources polled and loaded one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

if not __package__:  # run as `python bench/poll.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import replicas
from bench.harness import (
    describe_server,
    fresh_database,
    load_average,
    median,
    print_json_line,
    print_table,
    rss_mb,
)
from etl import pipeline, scheduler
from etl.config import Settings, parse_settings
from etl.daemon import loads, runner
from etl.records import Batch
from etl.sim.base import Simulator
from etl.sim.bittap import BittapSimulator
from etl.sim.htx import HtxSimulator
from etl.sim.ltp import LtpSimulator, asset
from etl.sim.serve import SimServer
from etl.sim.treadfi import TreadfiSimulator
from etl.slots import floor_to_slot
from etl.spool import Spool
from etl.store.engine import make_engine
from etl.venues import venue
from etl.venues.http import VenueClient

VENUES = ("htx", "bittap", "ltp", "treadfi")
PER_KEY = 100  # LTP and Tread.fi accounts behind one key
LTP_EXCHANGES = ("BINANCE", "BYBIT", "OKEX")
TREADFI_EXCHANGES = ("Binance", "Bybit", "OKX")
LEAK_BASE_CYCLE = 20


@dataclass(frozen=True)
class Source:
    name: str
    venue: str
    key: str
    secret: str | None
    accounts: int


def mix(accounts: int) -> list[Source]:
    """A tenth of the accounts each on HTX and Bittap, the rest split between LTP and Tread.fi."""
    single = max(1, accounts // 10)
    rest = max(2, accounts - 2 * single)
    counts = {"htx": single, "bittap": single, "ltp": rest // 2, "treadfi": rest - rest // 2}
    sources = []
    for name in ("htx", "bittap"):
        sources += [
            Source(f"{name}-{i:04d}", name, f"{name}-key-{i}", f"{name}-secret-{i}", 1)
            for i in range(counts[name])
        ]
    for name in ("ltp", "treadfi"):
        left, i = counts[name], 0
        while left > 0:
            n = min(PER_KEY, left)
            secret = f"{name}-secret-{i}" if venue_signed(name) else None
            sources.append(Source(f"{name}-{i:04d}", name, f"{name}-key-{i}", secret, n))
            left, i = left - n, i + 1
    return sources


def singles(sources: int) -> list[Source]:
    """`sources` one-account sources, each its own key, dealt round the four venues."""
    out = []
    for i in range(sources):
        name = VENUES[i % len(VENUES)]
        secret = f"{name}-secret-{i}" if venue_signed(name) else None
        out.append(Source(f"{name}-{i:05d}", name, f"{name}-key-{i}", secret, 1))
    return out


def venue_signed(name: str) -> bool:
    return name != "treadfi"


# --- the simulators, in their own process


def build_simulators(sources: list[Source], latency: float, only: str | None = None) -> dict[str, Simulator]:
    """The simulators of the venues in `sources` (or of `only`), each account added."""
    makers: dict[str, Callable[[], Simulator]] = {
        "htx": lambda: HtxSimulator(seed=1, latency=latency),
        "bittap": lambda: BittapSimulator(seed=2, latency=latency),
        "ltp": lambda: LtpSimulator(seed=3, latency=latency),
        "treadfi": lambda: TreadfiSimulator(seed=4, latency=latency),
    }
    wanted = [only] if only else sorted({s.venue for s in sources})
    sims = {name: makers[name]() for name in wanted}
    for name, sim in sims.items():
        sim.limit_rate(*venue(name).RATE_LIMIT)
    for n, s in enumerate(sources):
        if s.venue not in sims:
            continue
        if s.venue == "htx":
            sims["htx"].add_account(s.key, s.secret, wallet=f"{40_000 + n}.25", btc="0.5" if n % 2 else None)  # type: ignore[attr-defined]
        elif s.venue == "bittap":
            sims["bittap"].add_account(s.key, s.secret, wallet=f"{25_000 + n}.125", positions=2)  # type: ignore[attr-defined]
        elif s.venue == "ltp":
            ltp: Any = sims["ltp"]
            ltp.add_user(s.key, s.secret)
            for a in range(s.accounts):
                account_id, exchange = 100_000 * (n + 1) + a, LTP_EXCHANGES[a % 3]
                ltp.add_wallet(s.key, account_id, "Spot", venue=exchange, note=f"desk {a}",
                               assets=[asset("USDT", f"{10_000 + a}.123456789"), asset("BTC", "0.75", "64250.5")])  # fmt: skip
                ltp.add_wallet(
                    s.key, account_id, "Funding", venue=exchange, assets=[asset("USDC", f"{500 + a}.5")]
                )
        else:
            tread: Any = sims["treadfi"]
            for a in range(s.accounts):
                tread.add_account(s.key, f"acct{n}x{a}", TREADFI_EXCHANGES[a % 3], wallet=f"{9_000 + a}.5", positions=2, spot=1)  # fmt: skip
    return sims


def serve_simulators(sources: list[Source], latency: float, conn: Any, only: str) -> None:
    """Child process: serve one venue's simulator until told to stop; answers stats on request."""
    sims = build_simulators(sources, latency, only)
    servers = {name: SimServer(sim.app()).start() for name, sim in sims.items()}
    conn.send({name: server.url for name, server in servers.items()})
    while (message := conn.recv()) != "stop":
        assert message == "stats"
        conn.send(
            {
                name: {"requests": sum(sim.requests.values()), "rate_limited": sim.rate_limited}
                for name, sim in sims.items()
            }
        )
    for server in servers.values():
        server.stop()


@contextmanager
def simulators(
    sources: list[Source], latency: float
) -> Iterator[tuple[dict[str, str], Callable[[], dict[str, Any]], list[int]]]:
    """One process per venue (so the simulators are not one GIL); yields their urls, a
    stats function and their pids."""
    ctx = multiprocessing.get_context("spawn")
    pipes, processes = {}, []
    for name in sorted({s.venue for s in sources}):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=serve_simulators, args=(sources, latency, child, name), daemon=True)
        process.start()
        pipes[name] = parent
        processes.append(process)
    try:
        urls: dict[str, str] = {}
        for parent in pipes.values():
            urls.update(parent.recv())

        def stats() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for parent in pipes.values():
                parent.send("stats")
                out.update(parent.recv())
            return out

        yield urls, stats, [int(p.pid or 0) for p in processes]
    finally:
        for parent in pipes.values():
            parent.send("stop")
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


# --- the poller side: settings, CPU accounting, cycles


def settings_for(sources: list[Source], urls: dict[str, str], interval: timedelta) -> Settings:
    entries = []
    for s in sources:
        var = s.name.upper().replace("-", "_")
        os.environ[f"BENCH_{var}_KEY"] = s.key
        entry: dict[str, Any] = {
            "name": s.name,
            "venue": s.venue,
            "base_url": urls[s.venue],
            "api_key": f"env:BENCH_{var}_KEY",
        }
        if s.secret is not None:
            os.environ[f"BENCH_{var}_SECRET"] = s.secret
            entry["api_secret"] = f"env:BENCH_{var}_SECRET"
        entries.append(entry)
    seconds = f"{interval.total_seconds():g}s"
    return parse_settings({"sources": entries, "schedule": {"interval": seconds, "timeout": "5s"}})


@dataclass
class CpuClock:
    """Thread CPU time spent in the venues' normalize and in the load, and accounts normalized."""

    seconds: float = 0.0
    accounts: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # source -> requests its last poll sent
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def install(self) -> None:
        for name in VENUES:
            module: Any = venue(name)
            self._wrap(module, "normalize", counted=True)
        self._wrap(loads, "store")
        self._wrap(loads, "store_many")  # the batched live loads (a halving fallback counts twice: rare)
        self._wrap(pipeline, "store")
        original_poll, original_send = runner.poll, VenueClient._send_once
        sent: dict[int, int] = {}

        async def send_once(client: VenueClient, *args: Any) -> Any:
            sent[id(client)] = sent.get(id(client), 0) + 1
            return await original_send(client, *args)

        async def poll(source: Any, slot: datetime, http: VenueClient) -> Any:
            polled = await original_poll(source, slot, http)
            self.requests[source.name] = sent.pop(id(http), 0)
            return polled

        VenueClient._send_once = send_once  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(VenueClient, "_send_once", original_send))

        runner.poll = poll  # type: ignore[assignment]
        self._undo.append(lambda: setattr(runner, "poll", original_poll))

    def _wrap(self, owner: Any, attr: str, counted: bool = False) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                result = original(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - t0
            if counted and isinstance(result, Batch):
                self.accounts += len(result.accounts)
            return result

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


@dataclass
class Cycle:
    seconds: float
    floor: float
    cpu_ms_per_account: float
    accounts: int
    rss_mb: float
    outcomes: dict[str, int]


async def daemon_cycles(
    settings: Settings, url: str, cycles: int, latency: float, clock: CpuClock, shares: CpuShares
) -> list[Cycle]:
    # as `engine_for` makes the daemon's engine: no ping per checkout
    engine = make_engine(url, pool_size=scheduler.DB_WORKERS + 2, pool_pre_ping=False)
    interval = settings.schedule.interval
    with tempfile.TemporaryDirectory() as spool_dir:
        daemon = scheduler.Daemon(settings, engine, Spool(Path(spool_dir)), worker="bench")
        out = []
        names = [s.name for s in settings.sources]
        async with daemon.running():
            for i in range(cycles):
                slot = await _next_slot(interval)
                deadline = time.monotonic() + interval.total_seconds() * scheduler.POLL_SHARE
                cpu0, accounts0 = clock.seconds, clock.accounts
                # the CPU shares are steady cycles', as the cycle's median is: not the first
                with shares.counting() if i > 0 or cycles == 1 else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    outcomes = list((await daemon.run_slots(names, slot, deadline)).values())
                    seconds = time.perf_counter() - t0
                accounts = clock.accounts - accounts0
                out.append(
                    Cycle(
                        seconds=seconds,
                        floor=max(clock.requests.values()) * latency,
                        cpu_ms_per_account=1000 * (clock.seconds - cpu0) / max(1, accounts),
                        accounts=accounts,
                        rss_mb=rss_mb(),
                        outcomes={o: outcomes.count(o) for o in set(outcomes)},
                    )
                )
    engine.dispose()
    return out


async def _next_slot(interval: timedelta) -> datetime:
    """Sleep to the next slot's start, as the scheduler would fire; return that slot."""
    now = datetime.now(UTC)
    slot = floor_to_slot(now, interval) + interval
    await asyncio.sleep((slot - now).total_seconds())
    return slot


async def naive_cycle(settings: Settings, url: str) -> tuple[float, int]:
    """The plain script: each source polled, normalized and loaded in turn, no concurrency."""
    engine = make_engine(url)
    slot = await _next_slot(settings.schedule.interval)
    t0 = time.perf_counter()
    ok = 0
    async with httpx.AsyncClient() as client:
        for source in settings.sources:
            polled = await pipeline.poll(source, slot, pipeline.client_for(source, client, settings))
            ok += pipeline.store(engine, polled).status == "ok"
    seconds = time.perf_counter() - t0
    engine.dispose()
    return seconds, ok


class CpuShares:
    """CPU seconds used during the cycles counted (each from its slot's start to its last
    commit; the first of several is not counted, as the cycle's median leaves it out) by
    this process, by the simulators' processes and by PostgreSQL (every `postgres`
    process of the machine: the bench's server does the work, another one idles), and by
    the whole machine. Their sum over the cores is the least a cycle can take on this
    machine with what each part costs now. Start-up (migration, clients) and the idle
    time between cycles are left out; a PostgreSQL process that ends within a cycle
    (autovacuum) is missed, so its share is a little low."""

    def __init__(self, sim_pids: list[int]):
        self.poller = psutil.Process()
        self.simulators = [psutil.Process(pid) for pid in sim_pids]
        self.seconds: dict[str, float] = dict.fromkeys(["poller", "simulators", "postgres", "machine"], 0.0)
        self.cycles = 0  # counted

    def _sample(self) -> dict[str, float]:
        out = {
            "poller": sum(self.poller.cpu_times()[:2]),
            "simulators": sum(sum(p.cpu_times()[:2]) for p in self.simulators),
        }
        machine = psutil.cpu_times()
        out["machine"] = machine.user + machine.system + machine.nice
        return out

    @staticmethod
    def _postgres() -> dict[int, float]:
        return {
            p.pid: sum(p.info["cpu_times"][:2])
            for p in psutil.process_iter(["name", "cpu_times"])
            if p.info["name"] == "postgres" and p.info["cpu_times"] is not None
        }

    @contextmanager
    def counting(self) -> Iterator[None]:
        start, postgres = self._sample(), self._postgres()
        yield
        self.cycles += 1
        end = self._sample()
        for name in end:
            self.seconds[name] += end[name] - start[name]
        # per process: one that ended meanwhile (a pooled connection closed) takes its
        # CPU with it, which summed over all would count as negative
        self.seconds["postgres"] += sum(cpu - postgres.get(pid, 0.0) for pid, cpu in self._postgres().items())


# --- report


def cadence(sources: list[Source]) -> timedelta:
    """The interval a careful config would use: long enough that no key's documented limit
    binds (LTP's 10 requests a minute: one poll per 6 s), plus 2 s so that arrival jitter
    cannot put two polls of a key inside one window."""
    need = 1.0
    for name in {s.venue for s in sources}:
        count, seconds = venue(name).RATE_LIMIT
        requests = 2 if name == "htx" else 1  # HTX: balance, then positions
        need = max(need, seconds * requests / count)
    return timedelta(seconds=math.ceil(need) + 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--accounts", type=int, default=1_000, help="the desk mix of the module's docstring")
    shape.add_argument("--sources", type=int, help="this many single-account sources instead (one key each)")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--interval", type=float, help="seconds between slots (default: the venues' limits)")
    parser.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        help="also one naive cycle (default: up to 1,000 sources)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two daemon processes on one database, against one alone (bench/replicas.py)",
    )
    parser.add_argument("--database-url", help="a server to create the bench database on (default: embedded)")
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table goes to stderr)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sources = singles(args.sources) if args.sources else mix(args.accounts)
    naive_too = args.naive if args.naive is not None else len(sources) <= 1_000
    interval = timedelta(seconds=args.interval) if args.interval else cadence(sources)
    if args.replicas == 2:
        return two_replicas(args, sources, interval)
    clock = CpuClock()
    clock.install()
    with (
        fresh_database(args.database_url) as url,
        simulators(sources, args.latency) as (urls, stats, sim_pids),
    ):
        settings = settings_for(sources, urls, interval)
        header = (
            f"bench/poll.py: {sum(s.accounts for s in sources):,} accounts in {len(sources)} sources "
            f"({', '.join(f'{v} {sum(s.accounts for s in sources if s.venue == v)}' for v in VENUES)}), "
            f"{args.latency * 1000:g} ms latency, slots every {interval.total_seconds():g} s, "
            f"{describe_server(url)}, {load_average()}"
        )
        shares = CpuShares(sim_pids)
        cycles = asyncio.run(daemon_cycles(settings, url, args.cycles, args.latency, clock, shares))
        # the kernel's high-water mark of this process: exact, and free (a sampling thread
        # took ~9 % of the poller's GIL time during cycles, slowing what it measured)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        naive = asyncio.run(naive_cycle(settings, url)) if naive_too else None
        sims = stats()
    clock.uninstall()
    figures = summarize(cycles, peak, sims, naive)
    counted = max(1, shares.cycles)  # the steady cycles
    figures["cpu_s_per_cycle"] = {k: round(v / counted, 2) for k, v in shares.seconds.items()}
    # what the machine's cores allow: every process's CPU in a cycle, spread over the cores
    cores = psutil.cpu_count() or 1
    figures["cpu_bound_s"] = round(shares.seconds["machine"] / counted / cores, 3)
    figures["cycle_vs_cpu_bound"] = round(figures["cycle_s"] / figures["cpu_bound_s"], 2)
    figures["sources"] = len(sources)
    # all-in: every CPU second of the poller process in a cycle (HTTP, normalize, load, the loop)
    figures["poller_cpu_ms_per_source"] = round(1000 * shares.seconds["poller"] / counted / len(sources), 3)
    out = sys.stderr if args.json else sys.stdout
    report(header, cycles, figures, out)
    print_json_line(figures)
    return 0


def two_replicas(args: argparse.Namespace, sources: list[Source], interval: timedelta) -> int:
    """`--replicas 2`: see bench/replicas.py."""
    with (
        fresh_database(args.database_url) as url,
        simulators(sources, args.latency) as (urls, stats, sim_pids),
        replicas.replicas(["a", "b"], settings_for, (sources, urls, interval), url) as reps,
    ):
        header = (
            f"bench/poll.py --replicas 2: {len(sources):,} sources "
            f"({', '.join(f'{v} {sum(s.venue == v for s in sources)}' for v in VENUES)}), "
            f"{args.latency * 1000:g} ms latency, slots every {interval.total_seconds():g} s, "
            f"{describe_server(url)}, {load_average()}"
        )
        shares = {"one": CpuShares(sim_pids), "two": CpuShares(sim_pids)}
        got = replicas.measure(reps, interval, args.cycles, len(sources), url, shares)
        sims = stats()
    figures = replicas.figures(got, len(sources))
    cores = psutil.cpu_count() or 1
    for kind, counted in shares.items():
        per_cycle = {k: v / figures["cycles"] for k, v in counted.seconds.items() if k != "poller"}
        figures[f"cpu_s_per_cycle_{kind}"] = {k: round(v, 2) for k, v in per_cycle.items()}
        figures[f"{kind}_cycle_vs_cpu_bound"] = round(
            figures[f"{kind}_cycle_s"] / (per_cycle["machine"] / cores), 2
        )
    figures["rate_limited"] = sum(v["rate_limited"] for v in sims.values())
    figures["requests"] = sum(v["requests"] for v in sims.values())
    rows = replicas.report_rows(figures)
    for kind in ("one", "two"):
        cpu = figures[f"cpu_s_per_cycle_{kind}"]
        rows.append(
            [
                f"CPU s per cycle, {kind}: simulators / postgres / whole machine; cycle / CPU bound",
                f"{cpu['simulators']:.2f} / {cpu['postgres']:.2f} / {cpu['machine']:.2f}; "
                f"{figures[f'{kind}_cycle_vs_cpu_bound']:.2f}x",
            ]
        )
    rows.append(["429s provoked / requests", f"{figures['rate_limited']} / {figures['requests']:,}"])
    out = sys.stderr if args.json else sys.stdout
    print(header, file=out)
    stdout, sys.stdout = sys.stdout, out
    try:
        print_table(["figure", "value"], rows)
    finally:
        sys.stdout = stdout
    print_json_line(figures)
    return 0


def summarize(
    cycles: list[Cycle], peak: float, sims: dict[str, Any], naive: tuple[float, int] | None
) -> dict[str, Any]:
    steady = cycles[1:] or cycles  # the first cycle also fetches HTX contract sizes and warms up
    cycle_s = median([c.seconds for c in steady])
    floor_s = median([c.floor for c in steady])
    base = cycles[min(LEAK_BASE_CYCLE, len(cycles)) - 1]
    return {
        "cycles": len(cycles),
        "accounts": cycles[-1].accounts,
        "cycle_s": round(cycle_s, 3),
        "floor_s": round(floor_s, 3),
        "cycle_vs_floor": round(cycle_s / floor_s, 2),
        "cpu_ms_per_account": round(median([c.cpu_ms_per_account for c in steady]), 3),
        "peak_rss_mb": round(peak, 1),
        "rss_growth": round(cycles[-1].rss_mb / base.rss_mb - 1, 3),
        "rss_base_cycle": min(LEAK_BASE_CYCLE, len(cycles)),
        "rss_mb_by_cycle": [round(c.rss_mb) for c in cycles],  # flat or not, cycle by cycle
        "rate_limited": sum(v["rate_limited"] for v in sims.values()),
        "requests": sum(v["requests"] for v in sims.values()),
        "not_ok": sum(n for c in cycles for o, n in c.outcomes.items() if o != "ok"),
        "naive_cycle_s": round(naive[0], 2) if naive else None,
        "speedup_vs_naive": round(naive[0] / cycle_s, 1) if naive else None,
    }


def report(header: str, cycles: list[Cycle], figures: dict[str, Any], out: Any) -> None:
    print(header, file=out)
    steady = cycles[1:] or cycles
    rows = [
        ["cycle, slot start to last commit (median)", f"{figures['cycle_s'] * 1000:,.0f} ms"],
        ["cycle, slowest", f"{max(c.seconds for c in steady) * 1000:,.0f} ms"],
        ["floor (latency x longest request chain)", f"{figures['floor_s'] * 1000:,.0f} ms"],
        ["cycle / floor", f"{figures['cycle_vs_floor']:.2f}x"],
        ["CPU normalize + load per account", f"{figures['cpu_ms_per_account']:.3f} ms"],
        ["peak RSS", f"{figures['peak_rss_mb']:.0f} MB"],
        [
            f"RSS after cycle {figures['rss_base_cycle']} -> after cycle {len(cycles)}",
            f"{cycles[figures['rss_base_cycle'] - 1].rss_mb:.0f} -> {cycles[-1].rss_mb:.0f} MB "
            f"({figures['rss_growth']:+.1%})",
        ],
        ["429s provoked / requests", f"{figures['rate_limited']} / {figures['requests']:,}"],
        ["slots not ok", str(figures["not_ok"])],
        [
            "CPU s per cycle: poller / simulators / postgres / whole machine",
            " / ".join(f"{v:.2f}" for v in figures["cpu_s_per_cycle"].values()),
        ],
        ["poller CPU per source, all-in", f"{figures['poller_cpu_ms_per_source']:.3f} ms"],
        ["CPU bound (machine CPU per cycle / cores)", f"{figures['cpu_bound_s'] * 1000:,.0f} ms"],
        ["cycle / CPU bound", f"{figures['cycle_vs_cpu_bound']:.2f}x"],
    ]
    if figures["naive_cycle_s"] is not None:
        rows.append(["naive sequential loop, one cycle", f"{figures['naive_cycle_s'] * 1000:,.0f} ms"])
        rows.append(["speed-up over the naive loop", f"{figures['speedup_vs_naive']:.1f}x"])
    stdout, sys.stdout = sys.stdout, out
    try:
        print_table(["figure", "value"], rows)
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
