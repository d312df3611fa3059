"""Hourly and daily rollups: the last row of each key in each UTC bucket.

`balances_hourly`/`balances_daily` hold, per (account, account type, currency), the
balance row of the last slot in the hour/day that had it; `account_equity_hourly`/
`account_equity_daily` the same per (account, account type) for the account totals.
Their `snapshot_ts` says which slot the values come from.

The loader keeps them current inside the slot's transaction (`upsert_slot`): an upsert
that only moves forward in time, so re-loading an older slot of the bucket changes
nothing, and re-running the bucket's latest slot updates it in place. `rebuild`
recomputes a range from the fine-grained rows (after a replay or a manual fix); it never
touches buckets older than the oldest partition still held, since retention dropped
their rows and the rollups are all that is left of them.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, Table, text

from etl.store import partitions
from etl.store.engine import driver_cursor
from etl.store.schema import ROLLUPS
from etl.store.upsert import source_rows

WIDTH = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class Rebuilt:
    table: str
    since: datetime
    until: datetime
    rows: int


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


def upsert_slot_sql(snapshot_tables: Collection[str]) -> str | None:
    """One statement bringing every rollup of `snapshot_tables` up to date with a slot.

    The per-rollup upserts go in one statement (data-modifying CTEs, each on its own
    table): one round trip per load instead of four, which is most of their cost on the
    many small loads of a polling cycle. None if no rollup summarizes those tables.
    """
    parts = [
        f"{rollup.name} AS ({upsert_sql(rollup, fine, width)})"
        for rollup, fine, width in ROLLUPS
        if fine.name in snapshot_tables
    ]
    return f"WITH {', '.join(parts)} SELECT 1" if parts else None


_FINE = frozenset(fine.name for _, fine, _ in ROLLUPS)


@functools.cache  # by the set of tables: a few variants
def _upsert_slot_driver_sql(snapshot_tables: frozenset[str]) -> str | None:
    """`upsert_slot_sql` with psycopg's placeholders: run on the driver's cursor, once per
    load, it skips SQLAlchemy's parsing and compiling of a text() (measured: 3 % of the
    poller's CPU, as much as the statement's own round trip on a small load)."""
    sql = upsert_slot_sql(snapshot_tables)
    return sql and sql.replace(":slot", "%(slot)s").replace(":source", "%(source)s")


def upsert_slot(
    conn: Connection,
    source: str,
    slot: datetime,
    changed: Collection[str] | None = None,
    shrunk: Collection[str] = (),
) -> None:
    """Bring every rollup up to date with the rows just written for `source` at `slot`.

    `changed` names the snapshot tables whose rows of this slot this load wrote or
    deleted (default: all): a rollup of a table left as it was already holds what it
    should, so an unchanged re-run of a slot touches no rollup. `shrunk` names the tables
    that lost rows of this slot on this load (a re-run without a currency): only their
    rollups can hold a key that vanished. Checking the others would cost more than the
    upsert itself, for nothing.
    """
    params = {"slot": slot, "source": source}
    sql = _upsert_slot_driver_sql(frozenset(_FINE if changed is None else changed))
    if sql is not None:
        with driver_cursor(conn) as cur:
            cur.execute(sql, params)
    for rollup, fine, width in ROLLUPS:
        if fine.name in shrunk:
            conn.execute(text(vanished_sql(rollup, fine, width)), params)


def rebuild_sql(rollup: Table, source: Table, width: str) -> str:
    """Recompute [since, until) of a rollup from `source` (a snapshot table or a finer rollup)."""
    keys = ", ".join(("account_id", *_keys(rollup)))
    # a rollup feed is indexed by bucket (its hours lie inside the day being rebuilt);
    # a snapshot table is partitioned by slot
    time = "bucket" if "bucket" in source.columns else "snapshot_ts"
    return (
        f"{_insert_head(rollup)} SELECT DISTINCT ON ({keys}, {_bucket(width)}) "
        f"{_select_list(rollup, width, alias=source.name)} FROM {source.name} "
        f"WHERE {time} >= :since AND {time} < :until "
        f"ORDER BY {keys}, {_bucket(width)}, snapshot_ts DESC {_forward_only(rollup)}"
    )


def _floor(moment: datetime, width: str) -> datetime:
    moment = moment.astimezone(UTC)
    if width == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, width: str) -> datetime:
    floor = _floor(moment, width)
    return floor if floor == moment else floor + WIDTH[width]


def rebuild(engine: Engine, since: datetime | None = None, until: datetime | None = None) -> list[Rebuilt]:
    """Recompute the rollups of [since, until) (default: everything the partitions hold).

    Hourly rollups come from the snapshot tables, only over months still partitioned;
    daily ones from the hourly rollups, over whole days. One transaction per rollup and
    month, so a rebuild of years neither holds one huge transaction nor locks out loads.
    """
    with engine.connect() as conn:
        held = partitions.list_partitions(conn)
    done: list[Rebuilt] = []
    hourly = {r.name: r for r, _, w in ROLLUPS if w == "hour"}
    for rollup, source, width in sorted(ROLLUPS, key=lambda r: r[2] != "hour"):
        months = [p for p in held if p.parent == source.name]
        if width == "hour":
            if not months:
                continue
            start = max(_floor(since, width), months[0].lower) if since else months[0].lower
            end = min(_ceil(until, width), months[-1].upper) if until else months[-1].upper
            feed = source
        else:
            feed = hourly[rollup.name.replace("_daily", "_hourly")]
            done_hourly = [d for d in done if d.table == feed.name]
            if not done_hourly:
                continue
            start = _floor(min(d.since for d in done_hourly), width)
            end = _ceil(max(d.until for d in done_hourly), width)
        done += _rebuild_range(engine, rollup, feed, width, start, end)
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
            conn.execute(
                text(f"DELETE FROM {rollup.name} WHERE bucket >= :since AND bucket < :until"),
                {"since": lo, "until": hi},
            )
            rows = conn.execute(text(rebuild_sql(rollup, feed, width)), {"since": lo, "until": hi}).rowcount
        out.append(Rebuilt(rollup.name, lo, hi, rows))
    return out
