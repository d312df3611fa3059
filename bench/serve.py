"""Time to first render of the dashboard's overview, on a store of many accounts.

Builds a store of `--accounts` accounts (default 1,000, over 20 sources) with one slot an
hour for `--days` days (default 90: 2.16 M account rows and as many balance rows), through
the real schema with the rollups closed as the daemon leaves them (bench/query.py's
builder). Then, warm, median of 5, over real HTTP to `etl serve`'s app on loopback:

  overview page     GET /            (the HTML: total, changes, source health)
  chart 90d         GET /api/equity?range=90d   (what the overview's chart draws, hourly)
  chart all         GET /api/equity?range=all   (daily buckets)
  accounts page     GET /accounts
  first render      the page, its static files and the 90-day chart data, one after another:
                    what a browser needs before it draws

The reference, measured in the same run: the chart's SQL against the same 90 days read
from the per-slot view `portfolio_equity` (what a chart without the rollups would read). With `--browser`, a
headless Chromium screenshot of the overview is timed too (process start included).

    python bench/serve.py                        # the full size (a few minutes on 2 cores)
    python bench/serve.py --accounts 50 --days 3 --json   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

if not __package__:  # run as `python bench/serve.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import fresh_database, load_average, median, print_json_line, print_table
from bench.query import Shape, build
from etl.config import parse_settings
from etl.sim.serve import SimServer
from etl.store.engine import make_engine
from etl.web.app import Dashboard, create_app

RUNS = 5


def _get(client: httpx.Client, path: str) -> float:
    t0 = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - t0
    response.raise_for_status()
    return elapsed * 1000


def _first_render(client: httpx.Client) -> float:
    paths = ["/", "/static/style.css", "/static/uPlot.min.css", "/static/uPlot.iife.min.js", "/static/app.js"]
    return sum(_get(client, p) for p in paths) + _get(client, "/api/equity?range=90d")


def _sql_ms(engine: Any, sql: str, since: Any) -> float:
    with engine.connect() as conn:
        conn.execute(text(sql), {"s": since}).all()  # warm
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            conn.execute(text(sql), {"s": since}).all()
            times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def _browser(url: str, folder: Path) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        t0 = time.perf_counter()
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                "--virtual-time-budget=10000",
                f"--screenshot={folder / 'overview-90d.png'}",
                url + "/?range=90d",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--sources", type=int, default=20)
    parser.add_argument(
        "--database-url", dest="url", default=os.environ.get("ETL_DATABASE_URL"), help="PostgreSQL server"
    )
    parser.add_argument("--browser", action="store_true", help="also time a Chromium screenshot")
    parser.add_argument("--shots", default=tempfile.gettempdir(), help="where --browser saves its screenshot")
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table goes to stderr)"
    )
    args = parser.parse_args(argv)

    if args.json:  # stdout: only the JSON line; the table goes to stderr
        sys.stdout, stdout = sys.stderr, sys.stdout
    shape = Shape(args.accounts * args.days * 24, args.accounts, 1, timedelta(hours=1), args.sources)
    print(
        f"store: {args.accounts} accounts x {shape.slots:,} hourly slots ({args.days} days), {load_average()}"
    )
    figures: dict[str, Any] = {"accounts": args.accounts, "days": args.days}
    with fresh_database(args.url) as url:
        engine = make_engine(url)
        figures |= build(engine, shape, lambda _: None)
        readonly = make_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
        dashboard = Dashboard(readonly, parse_settings({"schedule": {"interval": "1h"}}))
        server = SimServer(create_app(dashboard)).start()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                cases = {
                    "overview page": lambda: _get(client, "/"),
                    "chart 90d": lambda: _get(client, "/api/equity?range=90d"),
                    "chart all": lambda: _get(client, "/api/equity?range=all"),
                    "accounts page": lambda: _get(client, "/accounts"),
                    "first render": lambda: _first_render(client),
                }
                measured = {}
                for name, case in cases.items():
                    case()  # warm
                    measured[name] = median([case() for _ in range(RUNS)])
                points = len(client.get("/api/equity?range=90d").json()["points"])
            since = shape.last - timedelta(days=90)
            ours_sql = _sql_ms(
                engine,
                "SELECT bucket, total_equity FROM portfolio_equity_hourly WHERE bucket >= :s ORDER BY bucket",
                since,
            )
            reference = _sql_ms(
                engine,
                "SELECT slot, total_equity FROM portfolio_equity WHERE slot >= :s ORDER BY slot",
                since,
            )
            browser = _browser(server.url, Path(args.shots)) if args.browser else None
        finally:
            server.stop()
            readonly.dispose()
            engine.dispose()
    rows = [(name, f"{ms:,.1f}") for name, ms in measured.items()]
    rows.append(("SQL of chart 90d: portfolio_equity_hourly (the rollups)", f"{ours_sql:,.1f}"))
    rows.append(("reference SQL: the same 90 days from portfolio_equity (per slot)", f"{reference:,.1f}"))
    if browser is not None:
        rows.append(
            ("Chromium screenshot of the 90-day overview (process start included)", f"{browser:,.0f}")
        )
    print_table(["what (warm, median of 5)", "ms"], rows)
    ratio = reference / ours_sql
    print(f"chart 90d ({points:,} hourly points): its SQL is {ratio:.1f}x the per-slot reference's speed")
    figures |= {k.replace(" ", "_") + "_ms": round(v, 1) for k, v in measured.items()}
    figures |= {
        "sql_90d_ms": round(ours_sql, 1),
        "reference_ms": round(reference, 1),
        "ratio_vs_reference": round(ratio, 1),
        "points_90d": points,
    }
    if browser is not None:
        figures["browser_ms"] = round(browser)
    if args.json:
        sys.stdout = stdout
        print_json_line(figures)
    return figures


if __name__ == "__main__":
    main()
