"""Loading benchmark: the project's load path against the usual ways of writing the same rows.

    python bench/load.py [--rows 1000000] [--repeat 1] [--database-url URL] [--json]

N balance rows of realistic shape (1,000 accounts x 2 account types x 25 currencies per
slot: 50,000 rows a slot, N / 50,000 one-minute slots from 00:00; nine NUMERIC values of
26 significant digits arriving as strings, some NULL, a small `extra`) go, in one run,
into fresh tables on the same PostgreSQL. `--rows 50000` is one slot, the size of a big
desk's slot; `--rows 1000000` twenty.

1. references: psycopg 3 binary `COPY` of the rows as `Decimal`s into an empty table with
   the same primary key (the usual fast path); and the server-side limit: the same rows
   pre-encoded once (`COPY ... TO STDOUT`), then only the `COPY` of those bytes timed;
2. ours: normalized records -> `etl.store.load.load_slot`, one transaction per slot, three
   times: fresh; the same rows again (must write nothing); 10 % of the rows changed;
3. what users would write instead: SQLAlchemy Core `insert().on_conflict_do_update`
   executemany in 5,000-row batches; pandas `DataFrame.to_sql` with the upsert `method=`
   callable of the pandas docs (one `execute` per chunk; run on at most 20,000 rows, it
   is that slow).

The rollup close, as in production. "ours" starts where a daemon polling every minute
stands at 23:59:59: the hour 23:00-23:59 holds 60 slots of the source's rows, the day's
hours 00-22 are closed hourly buckets, the watermarks stand at 23:00 and at the day's
start (written before the clock starts, server-side). The first load at 00:00 then
closes, inside the clock, the hour (its 60 slots: 3,000,000 rows into 50,000 buckets)
and the day (24 hourly rows a key), as `pipeline.store` does after that load commits;
a run past 00:59 closes the hours it fills itself. In production an hour closes once per
60 one-minute slots and a day once per 1,440, so a run of N slots is charged N / 60 of
the mean hour close it timed and N / 1,440 of the mean day close (at N = 60 one whole
hour close, at N = 1 a sixtieth); the closes' full seconds are in the JSON line too.

Only the writing is timed: every method gets its input ready-made (records for ours,
tuples, dicts or a DataFrame for the others), one slot at a time, before its clock
starts. Every decimal of a sample (>= 1,000 values per method) is read back and compared
exactly (value and scale). The last line is JSON: the figures and the ratios.
"""

from __future__ import annotations

import argparse
import io
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from sqlalchemy import Engine, MetaData, text
from sqlalchemy.dialects.postgresql import JSONB, insert

if not __package__:  # run as `python bench/load.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    RssSampler,
    describe_server,
    fresh_database,
    load_average,
    median,
    print_json_line,
    print_table,
    timed,
)
from etl.records import AccountRef, BalanceRow, Batch
from etl.store import partitions, rollups
from etl.store.engine import make_engine
from etl.store.load import LoadResult, load_slot
from etl.store.schema import BALANCE_VALUES, PARTITIONED_TABLES, ROLLUPS, balance_snapshots

SOURCE = "bench"
ACCOUNT_TYPES = ("Spot", "Funding")
CURRENCIES = (
    "USDT", "BTC", "ETH", "USDC", "SOL", "XRP", "BNB", "DOGE", "ADA", "TRX", "TON", "AVAX", "SHIB",
    "DOT", "LINK", "BCH", "NEAR", "LTC", "MATIC", "UNI", "APT", "ARB", "OP", "FDUSD", "PEPE",
)  # fmt: skip
PER_ACCOUNT = len(ACCOUNT_TYPES) * len(CURRENCIES)
# The slots start at a midnight, so that "ours" closes an hour and a day of rollup
# buckets (at 00:00) inside its clock, amortized as in production (see the docstring).
MIDNIGHT = datetime(2026, 1, 1, tzinfo=UTC)
SLOT_STEP = timedelta(minutes=1)
SLOTS_PER = {"hour": 60, "day": 1_440}  # one-minute slots per rollup bucket
POOL_SIZE = 100_003  # prime: value (row, column) = pool[(row * 9 + column) % POOL_SIZE]
NULL_EVERY = 10  # about one value in ten is NULL, as venues leave fields empty
CHANGE_EVERY = 10  # the "10 % changed" run changes every tenth row
SQLA_BATCH = 5_000
PANDAS_ROWS = 20_000
PANDAS_CHUNK = 1_000  # 17 columns x 1,000 rows stays under PostgreSQL's 65,535 parameters
SAMPLE_ROWS = 300  # x 9 values, minus NULLs: > 1,000 decimals compared per method
COLUMNS = [
    "account_id", "account_type", "currency", "snapshot_ts", *BALANCE_VALUES,
    "venue_ts", "fetched_at", "run_id", "extra",
]  # fmt: skip
KEY = ("account_id", "account_type", "currency", "snapshot_ts")


@dataclass(frozen=True)
class Shape:
    accounts: int
    slots: int

    @property
    def rows_per_slot(self) -> int:
        return self.accounts * PER_ACCOUNT

    @property
    def rows(self) -> int:
        return self.rows_per_slot * self.slots

    @staticmethod
    def for_rows(rows: int) -> Shape:
        """1,000 accounts per slot (fewer for a tiny run), as many slots as it takes."""
        per_slot = 1_000 * PER_ACCOUNT
        if rows < per_slot:
            return Shape(accounts=max(1, rows // PER_ACCOUNT), slots=1)
        return Shape(accounts=1_000, slots=max(1, round(rows / per_slot)))


def decimal_pool(size: int, seed: int = 6) -> list[str]:
    """Distinct decimal strings of 26 significant digits as venues send them: magnitudes from
    1e-8 to 1e11, some negative, trailing zeros kept (the scale is part of the value)."""
    rng = random.Random(seed)
    seen: set[Decimal] = set()
    pool: list[str] = []
    while len(pool) < size:
        digits = str(rng.randrange(10**25, 10**26))
        if rng.random() < 0.1:
            digits = digits[: rng.randrange(5, 20)].ljust(26, "0")
        whole = rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 8, 12])
        if whole:
            value = f"{digits[:whole]}.{digits[whole:]}"
        else:
            value = f"0.{'0' * rng.choice([0, 0, 1, 3, 7])}{digits}"
        if rng.random() < 0.15:
            value = "-" + value
        if Decimal(value) not in seen:
            seen.add(Decimal(value))
            pool.append(value)
    return pool


@dataclass
class Dataset:
    """The rows, made on demand one slot at a time (deterministic, so they can be re-checked)."""

    shape: Shape
    pool: list[str] = field(default_factory=lambda: decimal_pool(POOL_SIZE))

    def slot(self, s: int) -> datetime:
        """Slot `s` of the run (0, 1, ...: from midnight on; -1 is 23:59, before the run)."""
        return MIDNIGHT + s * SLOT_STEP

    def external_id(self, a: int) -> str:
        return f"acct-{a:04d}"

    def refs(self) -> tuple[AccountRef, ...]:
        return tuple(
            AccountRef(self.external_id(a), exchange="BINANCE", note=f"desk {a % 7}")
            for a in range(self.shape.accounts)
        )

    def value(self, row: int, column: int, changed: bool) -> str | None:
        if changed and row % CHANGE_EVERY == 0:
            return self.pool[(row * 9 + column + 7_919) % POOL_SIZE]
        at = row * 9 + column
        return None if at % NULL_EVERY == 3 else self.pool[at % POOL_SIZE]

    def keys(self, s: int) -> Iterator[tuple[int, int, str, str]]:
        """(row number, account, account type, currency) of every row of slot `s`."""
        row = s * self.shape.rows_per_slot
        for a in range(self.shape.accounts):
            for account_type in ACCOUNT_TYPES:
                for currency in CURRENCIES:
                    yield row, a, account_type, currency
                    row += 1

    def records(self, s: int, changed: bool = False) -> list[BalanceRow]:
        venue_ts = self.slot(s) - timedelta(milliseconds=1_250)
        out = []
        for row, a, account_type, currency in self.keys(s):
            values = [self.value(row, c, changed) for c in range(9)]
            out.append(
                BalanceRow(
                    self.external_id(a),
                    account_type,
                    currency,
                    *[Decimal(v) if v is not None else None for v in values],
                    venue_ts=venue_ts,
                    extra={"network": "ERC20" if row % 3 else None, "accountName": f"sub-{a}"},
                )
            )
        return out

    def tuples(self, s: int) -> list[tuple[Any, ...]]:
        """The same rows as the table's columns (account ids 1..N), for the reference methods."""
        fetched_at = self.slot(s) + timedelta(seconds=2)
        return [
            (
                a + 1,
                r.account_type,
                r.currency,
                self.slot(s),
                *[getattr(r, c) for c in BALANCE_VALUES],
                r.venue_ts,
                fetched_at,
                s + 1,
                r.extra,
            )
            for a, r in zip(self._account_numbers(), self.records(s), strict=True)
        ]

    def _account_numbers(self) -> Iterator[int]:
        for a in range(self.shape.accounts):
            yield from [a] * PER_ACCOUNT


@dataclass
class Measured:
    method: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    rollup_seconds: list[float] = field(default_factory=list)  # ours: the part spent on rollups
    close_seconds: list[float] = field(default_factory=list)  # ours: the closes' whole seconds
    written: int | None = None
    peak_rss_mb: float = 0.0
    exact: bool | None = None
    compared: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / median(self.seconds)


# --- the methods: each loads every slot into its own fresh table and returns the seconds spent writing


def make_table(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        # The same columns and primary key as ours, no other index, not partitioned.
        conn.execute(text(f"CREATE TABLE {name} (LIKE balance_snapshots INCLUDING DEFAULTS)"))
        conn.execute(text(f"ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(KEY)})"))


def settle(engine: Engine) -> None:
    """Start each method on a quiet server: the previous method's tables vacuumed and
    analyzed, no dirty buffers. Otherwise autovacuum, woken by the million rows the
    previous method wrote, runs on the second core during the next method's clock
    (measured: it took "ours: fresh" from ~1.1 to ~1.45 s per slot)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))


def psycopg_copy(url: str, data: Dataset) -> float:
    """psycopg 3 binary COPY of Decimal rows: the usual fast path."""
    types = ["int8", "text", "text", "timestamptz", *["numeric"] * 9, "timestamptz", "timestamptz"]
    types += ["int8", "jsonb"]
    spent = 0.0
    with psycopg.connect(_libpq(url)) as conn:
        for s in range(data.shape.slots):
            rows = data.tuples(s)

            def write(rows: list[tuple[Any, ...]] = rows) -> None:
                with conn.transaction(), conn.cursor() as cur:
                    sql = f"COPY ref_copy ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                    with cur.copy(sql) as copy:
                        copy.set_types(types)
                        for row in rows:
                            copy.write_row(row)

            seconds, _ = timed(write)
            spent += seconds
    return spent


def server_limit(url: str, data: Dataset, fmt: str) -> float:
    """The same rows pre-encoded once by the server itself; only the COPY of those bytes timed."""
    table = f"ref_server_{fmt}"
    spent = 0.0
    with psycopg.connect(_libpq(url)) as conn:
        for s in range(data.shape.slots):
            encoded = io.BytesIO()
            with conn.cursor() as cur:
                query = (
                    f"COPY (SELECT {', '.join(COLUMNS)} FROM ref_copy WHERE snapshot_ts = %s) "
                    f"TO STDOUT (FORMAT {fmt})"
                )
                with cur.copy(query, (data.slot(s),)) as copy:
                    for chunk in copy:
                        encoded.write(chunk)
            payload = encoded.getvalue()

            def write(payload: bytes = payload) -> None:
                with conn.transaction(), conn.cursor() as cur:
                    sql = f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT {fmt})"
                    with cur.copy(sql) as copy:
                        copy.write(payload)

            seconds, _ = timed(write)
            spent += seconds
    return spent


class RollupClock:
    """Time spent in `rollups.upsert_slot` inside `load_slot` (a slot in a closed bucket:
    the re-loads of a run past an hour), measured, behaviour unchanged."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = rollups.upsert_slot

    def __enter__(self) -> RollupClock:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        rollups.upsert_slot = clocked
        return self

    def __exit__(self, *exc: object) -> None:
        rollups.upsert_slot = self.original


@dataclass
class Closes:
    """The rollup closes of a run of "ours", per width: each close's seconds, timed whole
    (the lock, the watermarks and the hour's statements count as the hour's)."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {w: [] for w in SLOTS_PER})

    def add(self, seconds: float, rebuilt: list[rollups.Rebuilt]) -> None:
        widths = {r.name: w for r, _, w in ROLLUPS}
        day = sum(r.seconds for r in rebuilt if widths[r.table] == "day")
        if any(widths[r.table] == "hour" for r in rebuilt):
            self.seconds["hour"].append(seconds - day)
        if day:
            self.seconds["day"].append(day)

    def charged(self, slots: int) -> float:
        """What `slots` one-minute slots pay in production: per width, the mean close
        times the share of a bucket's slots they are."""
        return sum(
            sum(spent) / len(spent) * slots / SLOTS_PER[w] for w, spent in self.seconds.items() if spent
        )

    @property
    def total(self) -> float:
        return sum(sum(spent) for spent in self.seconds.values())


def before_midnight(engine: Engine, data: Dataset) -> None:
    """Put the database where a daemon polling every minute stands at 23:59:59 (untimed):
    the slot 23:59 loaded by `load_slot` (it moves the watermarks to 23:00 and the day's
    start), its rows copied server-side into the hour's 59 other slots, and the day's
    hours 00-22 as closed hourly buckets (from the same rows)."""
    last = data.slot(-1)
    with engine.begin() as conn:
        result = load_slot(
            conn,
            source=SOURCE,
            venue="ltp",
            slot=last,
            batch=Batch(accounts=data.refs(), balances=tuple(data.records(-1))),
            responses=(),
            started_at=last,
            attempts=1,
        )
    assert result.closes is not None
    rollups.close(engine, result.closes)
    day = rollups.floor(last, "day")
    others = ", ".join(c for c in COLUMNS if c != "snapshot_ts")
    values = ", ".join(BALANCE_VALUES)
    closed = next(r for r, f, w in ROLLUPS if f is balance_snapshots and w == "hour")
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO balance_snapshots ({others}, snapshot_ts) "
                f"SELECT {others}, snapshot_ts - m * interval '1 minute' FROM balance_snapshots "
                "CROSS JOIN generate_series(1, 59) AS m WHERE snapshot_ts = :last"
            ),
            {"last": last},
        )
        conn.execute(
            text(
                f"INSERT INTO {closed.name} (account_id, bucket, account_type, currency, snapshot_ts, "
                f"{values}) SELECT account_id, :day + h * interval '1 hour', account_type, currency, "
                f":day + h * interval '1 hour' + interval '59 minutes', {values} FROM balance_snapshots "
                "CROSS JOIN generate_series(0, 22) AS h WHERE snapshot_ts = :last"
            ),
            {"last": last, "day": day},
        )


def back_before_midnight(engine: Engine) -> None:
    """Undo a run of "ours" (its rows from midnight on, its runs, the buckets it closed):
    the database is again as `before_midnight` left it, so a repeat needs no new fill
    (the fill is most of a run's time: measured 56 s for the 4,200,000 rows at 50,000 a
    slot, on a busy machine)."""
    hour = MIDNIGHT - timedelta(hours=1)
    day = MIDNIGHT - timedelta(days=1)
    months = ", ".join(partitions.child_name(t.name, MIDNIGHT) for t in PARTITIONED_TABLES)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {months}"))
        conn.execute(text("DELETE FROM ingestion_runs WHERE snapshot_ts >= :m"), {"m": MIDNIGHT})
        for rollup, _, width in ROLLUPS:
            since = hour if width == "hour" else day
            conn.execute(text(f"DELETE FROM {rollup.name} WHERE bucket >= :since"), {"since": since})
        conn.execute(
            text("UPDATE rollup_watermarks SET closed_until = CASE width WHEN 'hour' THEN :h ELSE :d END"),
            {"h": hour, "d": day},
        )


def ours(engine: Engine, data: Dataset, changed: bool, closes: Closes) -> tuple[float, int]:
    """The project's path: records -> load_slot, one transaction per slot; then, as
    `pipeline.store` does, the close of the rollup buckets the slot ends (timed apart,
    into `closes`). Returns the seconds of the loads and the rows written."""
    refs = data.refs()
    spent, written = 0.0, 0
    for s in range(data.shape.slots):
        batch = Batch(accounts=refs, balances=tuple(data.records(s, changed)))
        started = data.slot(s) + timedelta(seconds=2)

        def write(batch: Batch = batch, s: int = s, started: datetime = started) -> LoadResult:
            with engine.begin() as conn:
                return load_slot(
                    conn,
                    source=SOURCE,
                    venue="ltp",
                    slot=data.slot(s),
                    batch=batch,
                    responses=(),
                    started_at=started,
                    attempts=1,
                )

        seconds, result = timed(write)
        spent += seconds
        written += result.written["balance_snapshots"]
        if result.closes is not None:
            until = result.closes
            seconds, rebuilt = timed(lambda until=until: rollups.close(engine, until))
            closes.add(seconds, rebuilt)
    return spent, written


def sqlalchemy_executemany(engine: Engine, data: Dataset) -> float:
    """What a careful script writes with SQLAlchemy Core: an upsert, executemany in batches."""
    table = balance_snapshots.to_metadata(MetaData(), name="ref_sqla")
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(KEY), set_={c: stmt.excluded[c] for c in COLUMNS if c not in KEY}
    )
    spent = 0.0
    for s in range(data.shape.slots):
        dicts = [dict(zip(COLUMNS, row, strict=True)) for row in data.tuples(s)]

        def write(dicts: list[dict[str, Any]] = dicts) -> None:
            with engine.begin() as conn:
                for i in range(0, len(dicts), SQLA_BATCH):
                    conn.execute(stmt, dicts[i : i + SQLA_BATCH])

        seconds, _ = timed(write)
        spent += seconds
    return spent


def pandas_upsert(table: Any, conn: Any, keys: list[str], data_iter: Any) -> int:
    """The `method=` callable of the pandas docs (`to_sql`, "insert on conflict"), as an upsert."""
    rows = [dict(zip(keys, row, strict=True)) for row in data_iter]
    stmt = insert(table.table).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(KEY), set_={c: stmt.excluded[c] for c in keys if c not in KEY}
    )
    return int(conn.execute(stmt).rowcount)


def pandas_to_sql(engine: Engine, data: Dataset, rows: int) -> float:
    frame = pd.DataFrame(data.tuples(0)[:rows], columns=COLUMNS)
    types = {c: balance_snapshots.c[c].type for c in BALANCE_VALUES} | {"extra": JSONB()}
    seconds, _ = timed(
        lambda: frame.to_sql(
            "ref_pandas",
            engine,
            if_exists="append",
            index=False,
            method=pandas_upsert,
            chunksize=PANDAS_CHUNK,
            dtype=types,
        )
    )
    return seconds


# --- exactness: read a sample back and compare every decimal's value and scale


def exactness(engine: Engine, data: Dataset, table: str, rows: int, changed: bool) -> tuple[bool, int]:
    rng = random.Random(table)
    wanted = sorted(rng.sample(range(rows), min(SAMPLE_ROWS, rows)))
    per_slot = data.shape.rows_per_slot
    ids = _account_ids(engine, data, table)
    keys: list[tuple[int, str, str, datetime]] = []
    expected: list[list[str | None]] = []
    for row in wanted:
        s, within = divmod(row, per_slot)
        a, rest = divmod(within, PER_ACCOUNT)
        t, c = divmod(rest, len(CURRENCIES))
        keys.append((ids[a], ACCOUNT_TYPES[t], CURRENCIES[c], data.slot(s)))
        expected.append([data.value(row, col, changed) for col in range(9)])
    with engine.connect() as conn:
        got = conn.execute(
            text(
                f"SELECT k.n, {', '.join('t.' + c for c in BALANCE_VALUES)} FROM {table} t "
                "JOIN unnest(CAST(:ids AS bigint[]), CAST(:types AS text[]), CAST(:currencies AS text[]), "
                "CAST(:slots AS timestamptz[])) WITH ORDINALITY AS k(a, ty, c, s, n) "
                "ON (t.account_id, t.account_type, t.currency, t.snapshot_ts) = (k.a, k.ty, k.c, k.s)"
            ),
            {name: [k[i] for k in keys] for i, name in enumerate(("ids", "types", "currencies", "slots"))},
        )
        found = {int(r[0]) - 1: list(r[1:]) for r in got}
    compared, exact = 0, len(found) == len(keys)
    for i, values in enumerate(expected):
        for want, have in zip(values, found.get(i, [None] * 9), strict=True):
            if want is None:
                exact = exact and have is None
                continue
            compared += 1
            exact = exact and have is not None and have.as_tuple() == Decimal(want).as_tuple()
    return exact, compared


def _account_ids(engine: Engine, data: Dataset, table: str) -> list[int]:
    """Database account id of each account number: ours go through `accounts`, the others use 1..N."""
    if table != "balance_snapshots":
        return [a + 1 for a in range(data.shape.accounts)]
    with engine.connect() as conn:
        ids = dict(
            conn.execute(text("SELECT external_id, id FROM accounts WHERE source = :s"), {"s": SOURCE}).all()
        )
    return [int(ids[data.external_id(a)]) for a in range(data.shape.accounts)]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# --- the run


def run_once(url: str, data: Dataset, methods: set[str], first: bool) -> dict[str, Measured]:
    engine = make_engine(url)
    shape = data.shape
    out: dict[str, Measured] = {}

    def measure(name: str, rows: int, fn: Callable[[], float], table: str, changed: bool = False) -> Measured:
        settle(engine)
        with RssSampler() as rss:
            seconds = fn()
        m = Measured(name, rows, [seconds], peak_rss_mb=rss.peak)
        m.exact, m.compared = exactness(engine, data, table, rows, changed)
        out[name] = m
        return m

    if "ours" in methods:
        # a repeat must find no row or bucket closed (or kept) by the run before
        if first:
            before_midnight(engine, data)
        else:
            back_before_midnight(engine)
    for name in ("ref_copy", "ref_server_binary", "ref_server_text", "ref_sqla", "ref_pandas"):
        make_table(engine, name)
    if methods & {"copy", "server"}:
        measure("psycopg binary COPY", shape.rows, lambda: psycopg_copy(url, data), "ref_copy")
    if "server" in methods:
        for fmt in ("binary", "text"):
            measure(
                f"server-side limit ({fmt})",
                shape.rows,
                lambda fmt=fmt: server_limit(url, data, fmt),
                f"ref_server_{fmt}",
            )
    if "ours" in methods:
        for run, changed in (("fresh", False), ("unchanged re-load", False), ("10 % changed", True)):
            result: dict[str, Any] = {}

            def go(changed: bool = changed, result: dict[str, Any] = result) -> float:
                closes = Closes()
                with RollupClock() as clock:
                    seconds, result["written"] = ours(engine, data, changed, closes)
                charged = closes.charged(shape.slots)
                result["rollups"], result["closes"] = clock.seconds + charged, closes.total
                return seconds + charged

            m = measure(f"ours: {run}", shape.rows, go, "balance_snapshots", changed)
            m.written = result["written"]
            m.rollup_seconds, m.close_seconds = [result["rollups"]], [result["closes"]]
    if "sqla" in methods:
        measure(
            "SQLAlchemy executemany upsert",
            shape.rows,
            lambda: sqlalchemy_executemany(engine, data),
            "ref_sqla",
        )
    if "pandas" in methods:
        rows = min(PANDAS_ROWS, shape.rows_per_slot)
        measure("pandas to_sql upsert", rows, lambda: pandas_to_sql(engine, data, rows), "ref_pandas")
    engine.dispose()
    return out


def combine(runs: list[dict[str, Measured]]) -> dict[str, Measured]:
    """Medians over repeats: seconds pooled, the worst exactness and the highest peak kept."""
    merged: dict[str, Measured] = {}
    for run in runs:
        for name, m in run.items():
            into = merged.setdefault(name, Measured(name, m.rows, written=m.written, exact=True))
            into.seconds += m.seconds
            into.rollup_seconds += m.rollup_seconds
            into.close_seconds += m.close_seconds
            into.peak_rss_mb = max(into.peak_rss_mb, m.peak_rss_mb)
            into.exact = bool(into.exact and m.exact)
            into.compared += m.compared
            if m.written is not None:
                into.written = max(into.written or 0, m.written)
    return merged


def figures(results: dict[str, Measured]) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        return results[name].rows_per_s if name in results else None

    def ratio(a: str, b: str) -> float | None:
        x, y = rate(a), rate(b)
        return round(x / y, 2) if x and y else None

    out: dict[str, Any] = {
        "rows": max(m.rows for m in results.values()),
        "ours_fresh_vs_copy": ratio("ours: fresh", "psycopg binary COPY"),
        "ours_fresh_vs_server_limit": ratio("ours: fresh", "server-side limit (binary)"),
        "ours_reload_vs_copy": ratio("ours: unchanged re-load", "psycopg binary COPY"),
        "ours_changed_vs_copy": ratio("ours: 10 % changed", "psycopg binary COPY"),
        "ours_vs_executemany": ratio("ours: fresh", "SQLAlchemy executemany upsert"),
        "ours_vs_to_sql": ratio("ours: fresh", "pandas to_sql upsert"),
        "ours_fresh_rollup_share": _rollup_share(results.get("ours: fresh")),
        "ours_fresh_close_s": _close_seconds(results.get("ours: fresh")),
        "exact": all(m.exact for m in results.values()),
        "reload_written": results["ours: unchanged re-load"].written if "ours: fresh" in results else None,
        "peak_rss_mb": round(max(m.peak_rss_mb for m in results.values()), 1),
    }
    out["rows_per_s"] = {name: round(m.rows_per_s) for name, m in results.items()}
    return out


def _rollup_share(m: Measured | None) -> float | None:
    return round(median(m.rollup_seconds) / median(m.seconds), 2) if m and m.rollup_seconds else None


def _close_seconds(m: Measured | None) -> float | None:
    """The closes' whole seconds (hour and day) in a fresh run, before amortizing."""
    return round(median(m.close_seconds), 3) if m and m.close_seconds else None


def report(results: dict[str, Measured], header: str) -> None:
    copy_rate = results["psycopg binary COPY"].rows_per_s if "psycopg binary COPY" in results else None
    print(header)
    rows = []
    for m in results.values():
        rows.append(
            [
                m.method,
                f"{m.rows:,}",
                f"{median(m.seconds):.2f}",
                f"{m.rows_per_s / 1000:,.1f} k",
                f"{m.rows_per_s / copy_rate:.2f}x" if copy_rate else "",
                "" if m.written is None else f"{m.written:,}",
                f"{median(m.rollup_seconds) / median(m.seconds):.0%}" if m.rollup_seconds else "",
                f"{m.peak_rss_mb:.0f}",
                f"{'yes' if m.exact else 'NO'} ({m.compared:,})",
            ]
        )
    print_table(
        [
            "method",
            "rows",
            "s (median)",
            "rows/s",
            "vs COPY",
            "written",
            "of it rollups",
            "peak RSS MB",
            "exact (values)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs to take the median of")
    parser.add_argument("--database-url", help="a server to create the bench database on (default: embedded)")
    parser.add_argument("--methods", default="copy,server,ours,sqla,pandas")
    parser.add_argument(
        "--json", action="store_true", help="stdout: only the JSON line (the table goes to stderr)"
    )
    args = parser.parse_args(argv)
    # Stopped (timeout, Ctrl-C, kill): unwind, so the bench database is dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    methods = set(args.methods.split(","))
    data = Dataset(Shape.for_rows(args.rows))
    table_out = sys.stderr if args.json else sys.stdout
    with fresh_database(args.database_url) as url:
        header = (
            f"bench/load.py: {data.shape.rows:,} rows ({data.shape.accounts:,} accounts x {PER_ACCOUNT} "
            f"x {data.shape.slots} slots), {describe_server(url)}, {load_average()}"
        )
        runs = [run_once(url, data, methods, first=i == 0) for i in range(args.repeat)]
    results = combine(runs)
    stdout, sys.stdout = sys.stdout, table_out
    try:
        report(results, header)
    finally:
        sys.stdout = stdout
    print_json_line(figures(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
