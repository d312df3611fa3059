"""Hourly and daily rollups: the last row of each key in each UTC bucket.

`balances_hourly`/`balances_daily` hold, per (account, account type, currency), the
balance row of the last slot in the hour/day that had it; `account_equity_hourly`/
`account_equity_daily` the same per (account, account type) for the account totals.
Their `snapshot_ts` says which slot the values come from.

Each is a view (migration 0004) over two parts, split per width at the watermark in
`rollup_watermarks`:

- closed buckets, in the table `<rollup>_closed`: written once, by `close`, after the
  first load of a later hour commits (hourly ones from the hour's snapshot rows, daily
  ones from the day's hourly rows);
- open buckets, from the watermark on: computed by the view from the snapshot rows, so
  a load on time writes no rollup row at all. Rewriting every key's hourly and daily
  row at every slot was half of a fresh load's time (bench/load.py).

A load into a bucket already closed (a late spool drain, a replay) upserts the closed
rows in its own transaction (`upsert_slot`), moving forward in time only, so re-loading
an older slot of the bucket changes nothing, and re-running the bucket's latest slot
updates it in place. Loads hold `locks.ROLLUPS` shared and a close holds it exclusively: a
close never misses the rows of a load in flight. `rebuild` recomputes the closed
buckets of a range from the fine-grained rows (after a replay or a manual fix); it never
touches buckets older than the oldest partition still held, since retention dropped
their rows and the rollups are all that is left of them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, Table, text

from etl.store import locks, partitions
from etl.store.engine import driver_cursor
from etl.store.schema import ROLLUPS
from etl.store.upsert import source_rows

WIDTH = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# For the hashes of a close (rebuild_sql): 1,000 accounts x 50 keys are 50,000 groups and
# as many rows to join: 5.6 and 3.2 MB (EXPLAIN ANALYZE), near or past the default 4 MB.
WORK_MEM = "64MB"
# The watermark of a width with no row in rollup_watermarks: no bucket is closed yet.
NOTHING_CLOSED = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rebuilt:
    table: str
    since: datetime
    until: datetime
    rows: int
    seconds: float = 0.0  # the statement's wall time (bench/load.py amortizes closes by width)


def _keys(rollup: Table) -> list[str]:
    """The rollup's key besides account_id and bucket (the source table's key minus the slot)."""
    return [c.name for c in rollup.primary_key.columns if c.name not in ("account_id", "bucket")]


def _values(rollup: Table) -> list[str]:
    keyed = {c.name for c in rollup.primary_key.columns}
    return [c.name for c in rollup.columns if c.name not in keyed and c.name != "snapshot_ts"]


def _bucket(width: str, column: str = "snapshot_ts") -> str:
    return f"date_trunc('{width}', {column}, 'UTC')"


def _insert_head(rollup: Table) -> str:
    cols = ["account_id", "bucket", *_keys(rollup), "snapshot_ts", *_values(rollup)]
    return f"INSERT INTO {rollup.name} AS r ({', '.join(cols)})"


def _select_list(rollup: Table, width: str, alias: str = "s") -> str:
    cols = [f"{alias}.account_id", _bucket(width, f"{alias}.snapshot_ts")]
    cols += [f"{alias}.{c}" for c in (*_keys(rollup), "snapshot_ts", *_values(rollup))]
    return ", ".join(cols)


def _forward_only(rollup: Table) -> str:
    """ON CONFLICT: take the incoming row if it is later, or the same slot with new values."""
    values = _values(rollup)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in ("snapshot_ts", *values))
    old = ", ".join(f"r.{c}" for c in values)
    new = ", ".join(f"EXCLUDED.{c}" for c in values)
    return (
        f"ON CONFLICT (account_id, bucket, {', '.join(_keys(rollup))}) DO UPDATE SET {sets} "
        f"WHERE EXCLUDED.snapshot_ts > r.snapshot_ts OR (EXCLUDED.snapshot_ts = r.snapshot_ts "
        f"AND ({old}) IS DISTINCT FROM ({new}))"
    )


def _of_source(table: str, where: str) -> str:
    return source_rows(table, where, source=":source")


def upsert_sql(rollup: Table, source: Table, width: str) -> str:
    """The slot's rows of the source's accounts, into their buckets."""
    return (
        f"{_insert_head(rollup)} SELECT {_select_list(rollup, width)} "
        f"FROM {_of_source(source.name, 'snapshot_ts = :slot')} AS s {_forward_only(rollup)}"
    )


def vanished_sql(rollup: Table, source: Table, width: str) -> str:
    """A key the slot held on an earlier run but no longer does (a currency sold out between
    two runs of the same slot): its bucket row goes back to the key's previous row in the
    bucket, or away if there is none. The keys are found by EXCEPT, not NOT EXISTS: the
    slot was just written, the statistics have never seen it, and an anti-join planned
    on that guess is a nested loop over the whole slot for each row."""
    keys = ("account_id", *_keys(rollup))
    cols = ", ".join(keys)
    bucket = _bucket(width, "CAST(:slot AS timestamptz)")
    by_key = " AND ".join(f"r.{k} = g.{k}" for k in keys)
    order = ", ".join(f"s.{k}" for k in keys)
    return (
        f"WITH g AS (SELECT {cols} FROM {_of_source(rollup.name, f'bucket = {bucket} AND snapshot_ts = :slot')} "
        f"AS h EXCEPT SELECT {cols} FROM {_of_source(source.name, 'snapshot_ts = :slot')} AS s), "
        f"gone AS (DELETE FROM {rollup.name} r USING g WHERE {by_key} AND r.bucket = {bucket} RETURNING r.*) "
        f"{_insert_head(rollup)} SELECT DISTINCT ON ({order}) {_select_list(rollup, width)} "
        f"FROM {source.name} s JOIN gone g ON {by_key.replace('r.', 's.')} "
        f"WHERE s.snapshot_ts >= g.bucket AND s.snapshot_ts < :slot "
        f"ORDER BY {order}, s.snapshot_ts DESC"
    )


def upsert_slot_sql(snapshot_tables: Collection[str], widths: Collection[str] = tuple(WIDTH)) -> str | None:
    """One statement bringing the closed rollups of `snapshot_tables` and `widths` up to
    date with a slot.

    The per-rollup upserts go in one statement (data-modifying CTEs, each on its own
    table): one round trip per load instead of four. None if no rollup summarizes those
    tables at those widths.
    """
    parts = [
        f"{rollup.name} AS ({upsert_sql(rollup, fine, width)})"
        for rollup, fine, width in ROLLUPS
        if fine.name in snapshot_tables and width in widths
    ]
    return f"WITH {', '.join(parts)} SELECT 1" if parts else None


_FINE = frozenset(fine.name for _, fine, _ in ROLLUPS)


@functools.cache  # by the sets of tables and widths: a few variants
def _upsert_slot_driver_sql(snapshot_tables: frozenset[str], widths: frozenset[str]) -> str | None:
    """`upsert_slot_sql` with psycopg's placeholders: run on the driver's cursor, it skips
    SQLAlchemy's parsing and compiling of a text() (measured: 3 % of the poller's CPU)."""
    sql = upsert_slot_sql(snapshot_tables, widths)
    return sql and _driver(sql)


def _driver(sql: str) -> str:
    """SQLAlchemy's named placeholders of our statements as psycopg's."""
    return sql.replace(":slot", "%(slot)s").replace(":source", "%(source)s")


def share_lock(cur: psycopg.Cursor[Any]) -> None:
    """Every load holds this until it commits: a close (exclusive) waits for the loads in
    flight, so none of their rows can be missing from the buckets it closes, and a load
    that starts during a close reads the watermarks the close leaves. Taken before any
    other lock of the load's transaction, so the two can never wait on each other."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (locks.ROLLUPS,))


def watermarks(cur: psycopg.Cursor[Any]) -> Callable[[], dict[str, datetime]]:
    """Per width, the start of the first bucket still open; read when called (in a
    pipeline, the answer is there once the pipeline is synced)."""
    cur.execute("SELECT width, closed_until FROM rollup_watermarks")
    return lambda: {**dict.fromkeys(WIDTH, NOTHING_CLOSED), **{w: t for w, t in cur.fetchall()}}


def upsert_slot(
    conn: Connection,
    source: str,
    slot: datetime,
    closed_until: dict[str, datetime],
    changed: Collection[str] | None = None,
    shrunk: Collection[str] = (),
) -> None:
    """Bring the closed rollups up to date with the rows just written for `source` at `slot`.

    A slot in an open bucket (every load on time) needs nothing: the views compute open
    buckets from the snapshot rows. A slot in a bucket already closed (a late load, a
    replay) upserts its rows into the closed tables, moving forward in time only.
    `changed` names the snapshot tables whose rows of this slot this load wrote or
    deleted (default: all): a rollup of a table left as it was already holds what it
    should. `shrunk` names the tables that lost rows of this slot on this load (a re-run
    without a currency): only their rollups can hold a key that vanished.
    """
    late = frozenset(w for w in WIDTH if floor(slot, w) < closed_until[w])
    if not late:
        return
    params = {"slot": slot, "source": source}
    sql = _upsert_slot_driver_sql(frozenset(_FINE if changed is None else changed), late)
    with driver_cursor(conn) as cur:  # unprepared, as every statement on upsert.source_rows
        if sql is not None:
            cur.execute(sql, params, prepare=False)
        for rollup, fine, width in ROLLUPS:
            if fine.name in shrunk and width in late:
                cur.execute(_driver(vanished_sql(rollup, fine, width)), params, prepare=False)


def close(engine: Engine, until: datetime) -> list[Rebuilt]:
    """Close every open bucket that ends by `until`'s hour (and day): write it into the
    closed tables and move the watermarks. Called after the first load of a later hour
    commits (and by retention before it drops months); idempotent, and a no-op when
    another process closed them first."""
    ends = {"hour": floor(until, "hour"), "day": floor(until, "day")}
    done: list[Rebuilt] = []
    with engine.begin() as conn:
        with driver_cursor(conn) as cur:
            # A look without the lock first: every source's first load of the hour asks for
            # this close, and all but the first would otherwise queue for the exclusive
            # lock (holding up every load behind them) only to find nothing left to do.
            if all(ends[w] <= t for w, t in watermarks(cur)().items()):
                return done
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.ROLLUPS,))
            cur.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            marks = watermarks(cur)()  # again: another close may have committed meanwhile
        for width in ("hour", "day"):  # hours first: a day is closed from its hourly rows
            since, end = marks[width], ends[width]
            if end <= since:
                continue
            for rollup, fine, w in ROLLUPS:
                if w == width:
                    sql = rebuild_sql(rollup, _feed(rollup, fine, width), width)
                    started = time.perf_counter()
                    rows = conn.execute(text(sql), {"since": since, "until": end}).rowcount
                    done.append(Rebuilt(rollup.name, since, end, rows, time.perf_counter() - started))
            conn.execute(
                text(
                    "INSERT INTO rollup_watermarks (width, closed_until) VALUES (:width, :until) "
                    "ON CONFLICT (width) DO UPDATE SET closed_until = EXCLUDED.closed_until"
                ),
                {"width": width, "until": end},
            )
    return done


def _feed(rollup: Table, fine: Table, width: str) -> Table:
    """What a bucket is computed from: hourly ones from the snapshots, daily ones from the
    (closed) hourly rows of the day, 1/60 of the rows at one-minute slots."""
    if width == "hour":
        return fine
    return next(r for r, f, w in ROLLUPS if f is fine and w == "hour")


def rebuild_sql(rollup: Table, source: Table, width: str) -> str:
    """[since, until) of a rollup, from `source` (a snapshot table or a finer rollup), into
    buckets that hold no row (a close: past the watermark; a rebuild: just deleted).

    Each key's last slot (or, from a finer rollup, last bucket) in each bucket is found by
    a grouped `max()` over the range, and its row fetched by one probe of `source`'s
    primary key, which ends with that time column (a slot lies in one bucket, so the pair
    is unique). The DISTINCT ON of earlier versions sorted every row of the range; the
    aggregate hashes the keys only (measured: bench/load.py's hour of 500,000 rows into
    50,000 buckets, 0.88 s against 1.31 s). The probes are forced (a LATERAL subquery with
    `OFFSET 0`, as in `upsert.source_rows`): joined plainly, the planner, expecting six
    times more groups than keys, hashed every row of the range a second time to join them
    back (measured, bench/load.py's production hour of 60 slots, 3,000,000 rows into
    50,000 buckets, embedded PostgreSQL 16: 13.1 s, 8.5 of them in that hash, spilled to
    disk in 8 batches; the day from 1,200,000 hourly rows sorted them all: 4.8 s).
    A plain INSERT: with no row in those buckets nothing can conflict, and ON CONFLICT's
    speculative insertion cost a third of the statement."""
    # a rollup feed's key ends with its bucket (its hours lie inside the day being
    # rebuilt); a snapshot table's with the slot, by which it is also partitioned
    time = "bucket" if "bucket" in source.columns else "snapshot_ts"
    keys = ["account_id", *_keys(rollup)]
    probe = " AND ".join([*(f"f.{k} = g.{k}" for k in keys), f"f.{time} = g.last"])
    return (
        f"{_insert_head(rollup)} SELECT {_select_list(rollup, width, alias='f')} FROM "
        f"(SELECT {', '.join(keys)}, max({time}) AS last FROM {source.name} "
        f"WHERE {time} >= :since AND {time} < :until GROUP BY {', '.join(keys)}, {_bucket(width, time)}) AS g "
        f"CROSS JOIN LATERAL (SELECT * FROM {source.name} AS f WHERE {probe} OFFSET 0) AS f"
    )


def floor(moment: datetime, width: str) -> datetime:
    moment = moment.astimezone(UTC)
    if width == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, width: str) -> datetime:
    start = floor(moment, width)
    return start if start == moment else start + WIDTH[width]


def rebuild(engine: Engine, since: datetime | None = None, until: datetime | None = None) -> list[Rebuilt]:
    """Recompute the closed buckets of [since, until) (default: everything the partitions hold).

    Hourly rollups come from the snapshot tables, only over months still partitioned;
    daily ones from the hourly rollups, over whole days. Open buckets are left alone: the
    views compute them from the snapshot rows, which are already right. One transaction
    per rollup and month, so a rebuild of years neither holds one huge transaction nor
    locks out loads for long.
    """
    with engine.connect() as conn:
        held = partitions.list_partitions(conn)
        with driver_cursor(conn) as cur:
            # read once: a watermark only moves forward, and what a close passes it wrote itself
            marks = watermarks(cur)()
    done: list[Rebuilt] = []
    for rollup, source, width in sorted(ROLLUPS, key=lambda r: r[2] != "hour"):
        months = [p for p in held if p.parent == source.name]
        if width == "hour":
            if not months:
                continue
            start = max(floor(since, width), months[0].lower) if since else months[0].lower
            end = min(_ceil(until, width), months[-1].upper) if until else months[-1].upper
        else:
            done_hourly = [d for d in done if d.table == _feed(rollup, source, width).name]
            if not done_hourly:
                continue
            start = floor(min(d.since for d in done_hourly), width)
            end = _ceil(max(d.until for d in done_hourly), width)
        end = min(end, marks[width])
        done += _rebuild_range(engine, rollup, _feed(rollup, source, width), width, start, end)
    return done


def _rebuild_range(
    engine: Engine, rollup: Table, feed: Table, width: str, start: datetime, end: datetime
) -> list[Rebuilt]:
    out = []
    for month in partitions.months(start, end):
        lo, hi = max(month, start), min(partitions.next_month(month), end)
        if lo >= hi:
            continue
        with engine.begin() as conn:
            # no load may upsert a closed bucket of the range while it is rewritten
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": locks.ROLLUPS})
            conn.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
            conn.execute(
                text(f"DELETE FROM {rollup.name} WHERE bucket >= :since AND bucket < :until"),
                {"since": lo, "until": hi},
            )
            rows = conn.execute(text(rebuild_sql(rollup, feed, width)), {"since": lo, "until": hi}).rowcount
        out.append(Rebuilt(rollup.name, lo, hi, rows))
    return out
