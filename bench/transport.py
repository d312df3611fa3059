"""CPU per request of the HTTP seam: httpx's own transport against httpx-aiohttp's.

    python bench/transport.py [--requests 2000] [--concurrency 1 32] [--runs 5] [--json]

A Bittap simulator (it checks every signature) serves in a process of its own on
loopback, without latency or rate limit. This process sends `--requests` polls of
Bittap sources through the real seam (`bittap.fetch` -> `VenueClient.send`: the request
built and signed, sent, the body read under its cap, scrubbed, parsed exactly), with
`--concurrency` polls in flight on one client, and counts the CPU time of its event
loop's thread: every cost of a request on our side, none of the simulator's. Each
run measures every transport at every concurrency in turn (their order alternating
from run to run), so a ratio compares figures of the same moment; the table gives the
median over the runs. Wall time is printed too but is noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

if not __package__:  # run as `python bench/transport.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import load_average, median, print_json_line, print_table
from etl.config import parse_settings
from etl.sim.bittap import BittapSimulator
from etl.sim.serve import SimServer
from etl.venues import bittap
from etl.venues.http import VenueClient

KEYS = 64  # sources (API keys) the requests are spread over


def serve(conn: Any) -> None:
    sim = BittapSimulator(seed=2)
    for i in range(KEYS):
        sim.add_account(f"bench-key-{i}", f"bench-secret-{i}", positions=2)
    server = SimServer(sim.app()).start()
    conn.send(server.url)
    conn.recv()
    server.stop()


@contextmanager
def simulator() -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=serve, args=(child,), daemon=True)
    process.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(timeout=10)


def httpx_client(connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    )


def aiohttp_client(connections: int) -> httpx.AsyncClient:
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits))


TRANSPORTS: dict[str, Callable[[int], httpx.AsyncClient]] = {
    "httpx": httpx_client,
    "httpx-aiohttp": aiohttp_client,
}


async def measure(
    make: Callable[[int], httpx.AsyncClient], url: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs per request of this thread, wall µs per request) for `requests` polls."""
    for i in range(KEYS):
        os.environ[f"BENCH_TRANSPORT_KEY_{i}"], os.environ[f"BENCH_TRANSPORT_SECRET_{i}"] = (
            f"bench-key-{i}", f"bench-secret-{i}")  # fmt: skip
    sources = parse_settings(
        {
            "sources": [
                {
                    "name": f"b{i}",
                    "venue": "bittap",
                    "base_url": url,
                    "api_key": f"env:BENCH_TRANSPORT_KEY_{i}",
                    "api_secret": f"env:BENCH_TRANSPORT_SECRET_{i}",
                }
                for i in range(KEYS)
            ]
        }
    ).sources
    async with make(concurrency) as client:

        async def worker(n: int, count: int) -> None:
            for k in range(count):
                source = sources[(n + k * concurrency) % KEYS]
                secrets = [source.api_key.reveal(), source.api_secret.reveal()]  # type: ignore[union-attr]
                http = VenueClient(client, "bittap", url, timeout=10.0, secrets=secrets)
                await bittap.fetch(http, source)

        await asyncio.gather(*(worker(n, 2) for n in range(concurrency)))  # warm: connections open
        per, extra = divmod(requests, concurrency)
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(worker(n, per + (n < extra)) for n in range(concurrency)))
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return 1e6 * cpu / requests, 1e6 * wall / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table to stderr)"
    )
    args = parser.parse_args(argv)
    cpu: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    with simulator() as url:
        for run in range(args.runs):
            names = list(TRANSPORTS)[:: 1 if run % 2 == 0 else -1]
            for c in args.concurrency:
                for name in names:
                    us_cpu, us_wall = asyncio.run(measure(TRANSPORTS[name], url, args.requests, c))
                    cpu.setdefault((name, c), []).append(us_cpu)
                    wall.setdefault((name, c), []).append(us_wall)
    out = sys.stderr if args.json else sys.stdout
    print(
        f"bench/transport.py: {args.requests:,} Bittap polls per measure, {args.runs} runs, "
        f"httpx {httpx.__version__}, {load_average()}",
        file=out,
    )
    figures: dict[str, Any] = {}
    rows = []
    for c in args.concurrency:
        base = median(cpu[("httpx", c)])
        for name in TRANSPORTS:
            m = median(cpu[(name, c)])
            figures[f"{name}_cpu_us_c{c}"] = round(m, 1)
            rows.append([name, c, f"{m:,.0f}", f"{min(cpu[(name, c)]):,.0f}-{max(cpu[(name, c)]):,.0f}",
                         f"{median(wall[(name, c)]):,.0f}", f"{m / base:.2f}x"])  # fmt: skip
        figures[f"aiohttp_vs_httpx_cpu_c{c}"] = round(median(cpu[("httpx-aiohttp", c)]) / base, 3)
    stdout, sys.stdout = sys.stdout, out
    try:
        print_table(["transport", "in flight", "CPU µs/request (median)", "range", "wall µs/request",
                     "CPU vs httpx"], rows)  # fmt: skip
    finally:
        sys.stdout = stdout
    print_json_line(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
