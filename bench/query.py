"""Query speed of the time-series store: partitions + rollups against one plain table.

Builds a store of `--rows` balance rows (default 10.8 M: 100 accounts x 5 currencies,
a 10-minute slot over 150 days ending now; plus one account row per account and slot,
the runs and a small raw body per source and slot), generated and `COPY`ed through the
real schema (monthly partitions; rollups closed up to the newest hour, as the daemon leaves
them: the last hour and day are computed by the views). The same rows are then
copied into unpartitioned tables shaped like revision 0001 (primary key only, no
rollups): the reference. Each query runs warm, median of 5, on both, and must return
the same rows on both:

  hourly equity    one account's hourly equity over the last 30 days
  daily portfolio  daily portfolio equity (with accounts reporting/expected), whole range
  latest balances  latest balances of all accounts
  balances as of   balances of all accounts as of a past time
  slot of source   the rows of one source at one slot (what every load deletes/rolls up)
  portfolio slots  portfolio equity per slot (`portfolio_equity`) over the last day

Then `etl prune --older-than 90d` runs on the store (as a command, timed), and the daily
portfolio equity is compared with what it was before.

    python bench/query.py                      # the full size (~6 min on 2 cores)
    python bench/query.py --rows 20000 --json  # a smoke run
    python bench/query.py --index brin         # the alternative index, for the record

The database is the server of `--url`, else `ETL_DATABASE_URL`, else an embedded
PostgreSQL of its own under the temp dir; a fresh database is made and dropped after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

if not __package__:  # run as `python bench/query.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import fresh_database
from etl.slots import floor_to_slot
from etl.store import migrate, partitions, rollups
from etl.store.engine import make_engine

CURRENCIES = ("USDT", "BTC", "ETH", "SOL", "XRP", "DOGE", "TRX", "TON", "ADA", "BNB")
SNAPSHOT_TABLES = ("balance_snapshots", "account_snapshots", "position_snapshots")
RUNS = 5


# ---------------------------------------------------------------- the store


def use_brin(engine: Engine) -> None:
    """The alternative to the migration's btree (snapshot_ts, account_id): BRIN on snapshot_ts."""
    with engine.begin() as conn:
        for table in SNAPSHOT_TABLES:
            conn.execute(text(f"DROP INDEX ix_{table}_snapshot_ts_account_id"))
            conn.execute(text(f"CREATE INDEX ix_{table}_brin ON {table} USING brin (snapshot_ts)"))


class Shape:
    """Accounts, sources and slots of the generated store."""

    def __init__(self, rows: int, accounts: int, per_account: int, interval: timedelta, sources: int):
        self.accounts, self.per_account, self.interval = accounts, per_account, interval
        self.sources = min(sources, accounts)
        self.slots = math.ceil(rows / (accounts * per_account))
        self.last = floor_to_slot(datetime.now(UTC), interval)
        self.first = self.last - interval * (self.slots - 1)

    @property
    def balance_rows(self) -> int:
        return self.slots * self.accounts * self.per_account


def build(engine: Engine, shape: Shape, say: Callable[[str], None]) -> dict[str, float]:
    """Accounts, runs, then the snapshot rows and raw bodies by COPY, in slot order."""
    timings: dict[str, float] = {}
    with engine.begin() as conn:
        partitions.ensure_range(conn, shape.first, shape.last)
        conn.execute(
            text(
                "INSERT INTO accounts (source, venue, external_id, first_seen_at, last_seen_at) "
                "SELECT 'src-' || lpad((n % :s)::text, 2, '0'), 'ltp', 'acct-' || lpad(n::text, 4, '0'), :a, :b "
                "FROM generate_series(0, :n - 1) n ORDER BY n"
            ),
            {"s": shape.sources, "n": shape.accounts, "a": shape.first, "b": shape.last},
        )
        conn.execute(
            text(
                "INSERT INTO ingestion_runs (source, snapshot_ts, started_at, finished_at, status, accounts, balances) "
                "SELECT 'src-' || lpad(s::text, 2, '0'), t, t, t, 'ok', 0, 0 "
                "FROM generate_series(:a, :b, CAST(:step AS interval)) t, generate_series(0, :s - 1) s"
            ),
            {"a": shape.first, "b": shape.last, "step": shape.interval, "s": shape.sources},
        )
    started = time.perf_counter()
    with engine.begin() as conn:
        _copy_snapshots(conn, shape, say)
    timings["copy_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    timings["vacuum_analyze_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    # as the daemon leaves them: every bucket before the newest slot's hour (and day)
    # closed, those two open (computed by the rollup views from the snapshot rows)
    rollups.close(engine, shape.last)
    timings["rollup_close_s"] = round(time.perf_counter() - started, 2)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return timings


def _copy_snapshots(conn: Connection, shape: Shape, say: Callable[[str], None]) -> None:
    rng = random.Random(7)
    equity = [rng.uniform(10_000, 500_000) for _ in range(shape.accounts)]
    ids = list(range(1, shape.accounts + 1))  # identity order of the accounts inserted above
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    balance_cols = "account_id, account_type, currency, snapshot_ts, total, available, equity, value_usdt, fetched_at, run_id"
    account_cols = (
        "account_id, account_type, snapshot_ts, equity, unrealized_pnl, equity_currency, fetched_at, run_id"
    )
    raw_cols = "source, endpoint, snapshot_ts, fetched_at, http_status, body"
    chunk = max(1, 200_000 // (shape.accounts * shape.per_account))
    for first in range(0, shape.slots, chunk):
        balances, accounts, raws = [], [], []
        for n in range(first, min(first + chunk, shape.slots)):
            ts = (shape.first + shape.interval * n).isoformat()
            for i, account_id in enumerate(ids):
                equity[i] *= 1 + rng.gauss(0, 0.002)
                value = f"{equity[i]:.8f}"
                accounts.append(f"{account_id}\tunified\t{ts}\t{value}\t0.5\tUSDT\t{ts}\t{n}\n")
                for c in range(shape.per_account):
                    amount = f"{equity[i] / (c + 2):.12f}"
                    balances.append(
                        f"{account_id}\tunified\t{CURRENCIES[c]}\t{ts}\t{amount}\t{amount}\t{amount}\t{amount}\t{ts}\t{n}\n"
                    )
            for s in range(shape.sources):
                raws.append(f'src-{s:02d}\t/v1/account\t{ts}\t{ts}\t200\t{{"slot": {n}}}\n')
        for table, cols, lines in (
            ("balance_snapshots", balance_cols, balances),
            ("account_snapshots", account_cols, accounts),
            ("raw_payloads", raw_cols, raws),
        ):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as pipe:
                pipe.write("".join(lines).encode())
        done = min(first + chunk, shape.slots)
        if done % (chunk * 10) == 0 or done == shape.slots:
            say(f"  {done * shape.accounts * shape.per_account:>12,} balance rows copied")


def build_reference(engine: Engine) -> float:
    """The same rows in unpartitioned tables shaped like revision 0001: primary key only."""
    started = time.perf_counter()
    with engine.begin() as conn:
        for table, key in (
            ("balance_snapshots", "account_id, account_type, currency, snapshot_ts"),
            ("account_snapshots", "account_id, account_type, snapshot_ts"),
        ):
            conn.execute(text(f"CREATE TABLE ref_{table} (LIKE {table} INCLUDING DEFAULTS)"))
            conn.execute(text(f"INSERT INTO ref_{table} SELECT * FROM {table} ORDER BY snapshot_ts"))
            conn.execute(text(f"ALTER TABLE ref_{table} ADD PRIMARY KEY ({key})"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE ref_balance_snapshots"))
        conn.execute(text("VACUUM ANALYZE ref_account_snapshots"))
    return round(time.perf_counter() - started, 2)


# ---------------------------------------------------------------- the queries

_LATEST_0001 = """
    SELECT a.source, a.venue, a.external_id, a.exchange, b.account_type, b.currency,
           b.snapshot_ts, b.total, b.available, b.frozen, b.withdrawable, b.equity,
           b.unrealized_pnl, b.initial_margin, b.maintenance_margin, b.value_usdt,
           b.venue_ts, b.fetched_at, b.account_id
    FROM accounts a
    JOIN LATERAL (SELECT max(r.snapshot_ts) AS slot FROM ingestion_runs r
                  WHERE r.source = a.source AND r.status = 'ok' {before}) last ON true
    JOIN ref_balance_snapshots b ON b.account_id = a.id AND b.snapshot_ts = last.slot
"""
_PORTFOLIO_0001 = """
    SELECT r.slot, coalesce(e.total_equity, 0) AS total_equity,
           coalesce(e.accounts_reporting, 0) AS accounts_reporting,
           (SELECT count(*) FROM accounts a
            WHERE a.first_seen_at <= r.slot
              AND (a.last_seen_at >= r.slot
                   OR EXISTS (SELECT 1 FROM ingestion_runs f WHERE f.source = a.source
                              AND f.snapshot_ts = r.slot AND f.status <> 'ok'))) AS accounts_expected
    FROM (SELECT DISTINCT snapshot_ts AS slot FROM ingestion_runs) r
    LEFT JOIN (SELECT snapshot_ts, sum(equity) AS total_equity, count(DISTINCT account_id) AS accounts_reporting
               FROM ref_account_snapshots GROUP BY snapshot_ts) e ON e.snapshot_ts = r.slot
"""
_EXPECTED_DAILY = """
    (SELECT count(*) FROM accounts a WHERE a.first_seen_at < d.bucket + interval '1 day'
       AND (a.last_seen_at >= d.bucket OR EXISTS (SELECT 1 FROM ingestion_runs f WHERE f.source = a.source
            AND f.status <> 'ok' AND f.snapshot_ts >= d.bucket AND f.snapshot_ts < d.bucket + interval '1 day')))
"""


def queries(shape: Shape) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(key, name, ours, reference, parameters): each pair must return the same rows."""
    end = shape.last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    past = shape.first + (shape.last - shape.first) * 0.6
    hour = "date_trunc('hour', snapshot_ts, 'UTC')"
    return [
        (
            "hourly_equity",
            "hourly equity, 1 account, 30 d",
            "SELECT bucket, sum(equity) FROM account_equity_hourly WHERE account_id = :id "
            "AND bucket >= :since AND bucket < :until GROUP BY bucket ORDER BY bucket",
            f"SELECT bucket, sum(equity) FROM (SELECT DISTINCT ON (account_type, {hour}) {hour} AS bucket, equity "
            "FROM ref_account_snapshots WHERE account_id = :id AND snapshot_ts >= :since AND snapshot_ts < :until "
            f"ORDER BY account_type, {hour}, snapshot_ts DESC) h GROUP BY bucket ORDER BY bucket",
            {"id": 7, "since": end - timedelta(days=30), "until": end},
        ),
        (
            "daily_portfolio",
            "daily portfolio equity, all",
            "SELECT bucket, total_equity, accounts_reporting, accounts_expected FROM portfolio_equity_daily "
            "ORDER BY bucket",
            "SELECT d.bucket, d.total_equity, d.accounts_reporting, "
            + _EXPECTED_DAILY
            + " FROM (SELECT bucket, sum(equity) AS total_equity, count(DISTINCT account_id) AS accounts_reporting "
            "FROM (SELECT DISTINCT ON (account_id, account_type, date_trunc('day', snapshot_ts, 'UTC')) "
            "account_id, date_trunc('day', snapshot_ts, 'UTC') AS bucket, equity FROM ref_account_snapshots "
            "ORDER BY account_id, account_type, date_trunc('day', snapshot_ts, 'UTC'), snapshot_ts DESC) l "
            "GROUP BY bucket) d ORDER BY d.bucket",
            {},
        ),
        (
            "latest_balances",
            "latest balances, all accounts",
            "SELECT * FROM latest_balances ORDER BY account_id, account_type, currency",
            f"SELECT * FROM ({_LATEST_0001.format(before='')}) x ORDER BY account_id, account_type, currency",
            {},
        ),
        (
            "balances_as_of",
            "balances as of a past time",
            "SELECT * FROM balances_as_of(:at) ORDER BY account_id, account_type, currency",
            f"SELECT * FROM ({_LATEST_0001.format(before='AND r.snapshot_ts <= :at')}) x "
            "ORDER BY account_id, account_type, currency",
            {"at": past},
        ),
        (
            "slot_of_source",
            "one source's rows at a slot",
            "SELECT count(*), sum(total) FROM balance_snapshots WHERE snapshot_ts = :slot "
            "AND account_id IN (SELECT id FROM accounts WHERE source = 'src-03')",
            "SELECT count(*), sum(total) FROM ref_balance_snapshots WHERE snapshot_ts = :slot "
            "AND account_id IN (SELECT id FROM accounts WHERE source = 'src-03')",
            {"slot": floor_to_slot(past, shape.interval)},
        ),
        (
            "portfolio_slots",
            "portfolio equity per slot, last day",
            "SELECT * FROM portfolio_equity WHERE slot > :since ORDER BY slot",
            f"SELECT * FROM ({_PORTFOLIO_0001}) p WHERE slot > :since ORDER BY slot",
            {"since": shape.last - timedelta(days=1)},
        ),
    ]


def timed(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[float, list[Any]]:
    """Warm once, then the median of RUNS runs in milliseconds, and the rows."""
    with engine.connect() as conn:
        rows = list(conn.execute(text(sql), params))
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            conn.execute(text(sql), params).all()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def prune_with_the_command(url: str, older_than: str) -> tuple[float, str]:
    """`etl prune` as a user runs it (a new process): wall time and what it printed."""
    env = {**os.environ, "ETL_DATABASE_URL": url, "ETL_CONFIG": os.devnull, "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "etl", "prune", "--older-than", older_than],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout.strip()


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_800_000, help="balance rows to generate")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--per-account", type=int, default=5, help="balance rows per account and slot")
    parser.add_argument("--interval", default="10m", help="slot interval")
    parser.add_argument("--sources", type=int, default=10, help="sources the accounts are spread over")
    parser.add_argument("--older-than", default="90d", help="the prune horizon")
    parser.add_argument("--index", choices=("btree", "brin"), default="btree", help="index on the slot")
    parser.add_argument("--url", default=os.environ.get("ETL_DATABASE_URL"), help="PostgreSQL server")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args(argv)

    from etl.config import parse_duration

    shape = Shape(args.rows, args.accounts, args.per_account, parse_duration(args.interval), args.sources)
    say = print
    say(
        f"store: {shape.balance_rows:,} balance rows = {shape.accounts} accounts x {shape.per_account} "
        f"currencies x {shape.slots:,} slots of {args.interval} ({shape.first:%Y-%m-%d} .. {shape.last:%Y-%m-%d})"
    )
    figures: dict[str, Any] = {"balance_rows": shape.balance_rows, "index": args.index}
    with fresh_database(args.url) as url:
        engine = make_engine(url)
        migrate.upgrade(engine)
        if args.index == "brin":
            use_brin(engine)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        say(f"server: PostgreSQL {str(version).split()[0]}, index on the slot: {args.index}")
        figures |= build(engine, shape, say)
        figures["reference_build_s"] = build_reference(engine)
        say(
            f"built: COPY {figures['copy_s']:.0f} s, rollups closed {figures['rollup_close_s']:.1f} s, "
            f"reference copy {figures['reference_build_s']:.0f} s"
        )
        figures |= _sizes(engine)
        say(f"{'query (warm, median of 5)':<34} {'ours ms':>9} {'reference ms':>13} {'ratio':>8} {'rows':>6}")
        daily_before: list[Any] = []
        for key, name, ours, reference, params in queries(shape):
            ours_ms, ours_rows = timed(engine, ours, params)
            ref_ms, ref_rows = timed(engine, reference, params)
            if ours_rows != ref_rows:
                raise SystemExit(
                    f"{name}: ours and the reference disagree ({len(ours_rows)} vs {len(ref_rows)} rows)"
                )
            if key == "daily_portfolio":
                daily_before = ours_rows
            figures |= {f"{key}_ms": round(ours_ms, 2), f"{key}_ref_ms": round(ref_ms, 2)}
            figures[f"{key}_ratio"] = round(ref_ms / ours_ms, 1)
            say(f"{name:<34} {ours_ms:>9.2f} {ref_ms:>13.2f} {ref_ms / ours_ms:>7.1f}x {len(ours_rows):>6}")
        wall, printed = prune_with_the_command(url, args.older_than)
        dropped = [line for line in printed.splitlines() if re.match(r"dropped \S+ \[", line)]
        with engine.connect() as conn:
            daily_after = list(conn.execute(text(queries(shape)[1][2])))
        prune_s = _prune_seconds(printed)
        say(f"etl prune --older-than {args.older_than}: {wall:.2f} s wall (process start included)")
        for line in printed.splitlines():
            say(f"  {line}")
        figures |= {
            "prune_wall_s": round(wall, 2),
            "prune_s": prune_s,
            "partitions_dropped": len(dropped),
            "daily_unchanged_after_prune": daily_after == daily_before,
        }
        say(f"daily portfolio equity unchanged after prune: {figures['daily_unchanged_after_prune']}")
        engine.dispose()
    if args.json:
        print(json.dumps(figures))
    return figures


def _sizes(engine: Engine) -> dict[str, float]:
    with engine.connect() as conn:
        sizes = {
            k: v
            for k, v in conn.execute(
                text(
                    "SELECT 'balance_' || k, round(sum(pg_relation_size(i.indexrelid)) / 2.0^20, 1) FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_inherits h ON h.inhrelid = i.indrelid "
                    "JOIN pg_class p ON p.oid = h.inhparent AND p.relname = 'balance_snapshots', "
                    "LATERAL (SELECT CASE WHEN i.indisprimary THEN 'pk_mb' ELSE 'slot_index_mb' END) AS x(k) GROUP BY 1"
                )
            )
        }
    return {k: float(v) for k, v in sizes.items()}


def _prune_seconds(printed: str) -> float | None:
    for word in printed.split():
        if word.endswith("s;") and word[:-2].replace(".", "").isdigit():
            return float(word[:-2])
    return None


if __name__ == "__main__":
    main()
