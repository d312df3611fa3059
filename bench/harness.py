"""What both benchmarks share: a fresh database, an RSS sampler, the table and the JSON line.

Benchmarks are measurements, not tests: they print a table of figures and end with one
JSON line holding the ratios, so a run can be compared with another by a script.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.engine import make_url

from etl.store import migrate
from etl.store.engine import embedded_url, make_engine, sqlalchemy_url

# The embedded server of the benchmarks: its own data dir, so a bench never shares a server
# with the test suite (or the user's data) and its figures are not mixed with theirs.
BENCH_PGDATA_ROOT = Path(tempfile.gettempdir()) / f"etl-bench-pg-{os.getuid()}"  # per user, as the tests


@contextmanager
def fresh_database(server_url: str | None) -> Iterator[str]:
    """Create a database on `server_url` (default: the embedded server), migrate it, drop it after."""
    server = make_url(sqlalchemy_url(server_url or embedded_url(BENCH_PGDATA_ROOT)))
    name = f"etl_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(server.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def describe_server(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    return f"PostgreSQL {str(version).split()[0]}"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 50 ms: a
    sampling thread wants the GIL too, and at 5 ms it took ~9 % of the measured code's)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.peak = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, process.memory_info().rss / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_mb())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (pastes into the README as is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells[1:]:
        print(line(row))


def print_json_line(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, separators=(", ", ": ")), flush=True)
