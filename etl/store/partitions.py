"""Monthly partitions of the snapshot tables and `raw_payloads`: created ahead, listed, dropped.

A row whose month has no partition would fail its load, so the loader calls `ensure`
for every slot it writes: the slot's month and the next one are created if missing.
Which months exist is cached per process and database, so on the hot path `ensure` is
a set lookup; the catalog is read (and a partition created) once a month per process.

There is no DEFAULT partition on purpose: rows caught there would make creating their
month's partition fail later (PostgreSQL refuses a partition whose range the default
already holds rows for), turning one missed `ensure` into a permanent load failure.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import URL, Connection, text

from etl.store import locks
from etl.store.schema import PARTITIONED_TABLES

PARENTS = tuple(t.name for t in PARTITIONED_TABLES)
# Children are named <parent>_pYYYY_MM; migrate.include_object relies on this pattern.
CHILD_NAME = re.compile(rf"^({'|'.join(PARENTS)})_p(\d{{4}})_(\d{{2}})$")

_known: set[tuple[URL, datetime]] = set()  # (database, month start) known to exist for every parent
_known_lock = threading.Lock()


@dataclass(frozen=True)
class Partition:
    parent: str
    name: str
    lower: datetime
    upper: datetime


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def months(since: datetime, until: datetime) -> list[datetime]:
    """Every month start from the month of `since` to the month of `until`, inclusive."""
    out, month = [], month_start(since)
    while month <= until:
        out.append(month)
        month = next_month(month)
    return out


def child_name(parent: str, month: datetime) -> str:
    return f"{parent}_p{month:%Y_%m}"


def create_sql(parent: str, month: datetime) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {child_name(parent, month)} PARTITION OF {parent} "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{next_month(month).isoformat()}')"
    )


def _database(conn: Connection) -> URL:
    # the URL itself (an immutable tuple) identifies the database: rendering it as a
    # string cost more than the rest of a cached `ensure`, which every load calls
    return conn.engine.url


def ensure(conn: Connection, slots: Iterable[datetime]) -> None:
    """Make sure every partitioned table has the months of `slots` and the month after each.

    Creating a partition locks its parent exclusively until the caller's transaction
    ends: a load that creates one holds up other loads for its own duration, once a
    month. The parents are always locked in the same order as the loader writes them.
    """
    database = _database(conn)
    wanted = {m for slot in slots for m in (month_start(slot), next_month(month_start(slot)))}
    with _known_lock:
        missing = sorted(m for m in wanted if (database, m) not in _known)
    if not missing:
        return
    existing = {(p.parent, p.lower) for p in list_partitions(conn)}
    needed = [(parent, m) for parent in PARENTS for m in missing if (parent, m) not in existing]
    if needed:
        # IF NOT EXISTS alone races (two creators both pass the check); the lock does not.
        # Last lock of a load's transaction (etl.store.locks.ORDER).
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": locks.PARTITIONS})
        for parent, month in needed:
            conn.execute(text(create_sql(parent, month)))
    # Only months that were already committed are cached: one created here exists for
    # others once this transaction commits, and not at all if it rolls back.
    complete = {m for m in missing if all((parent, m) in existing for parent in PARENTS)}
    with _known_lock:
        _known.update((database, m) for m in complete)


def ensure_range(conn: Connection, since: datetime, until: datetime) -> None:
    ensure(conn, months(since, until))


def forget(conn: Connection | None = None) -> None:
    """Drop the cache (of one database, or all): after a prune or a migration."""
    with _known_lock:
        if conn is None:
            _known.clear()
        else:
            database = _database(conn)
            _known.difference_update({k for k in _known if k[0] == database})


def list_partitions(conn: Connection) -> list[Partition]:
    """The children of the partitioned tables with their bounds, oldest first."""
    rows = conn.execute(
        text(
            """
            SELECT p.relname, c.relname,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname = ANY(:parents) AND p.relnamespace = current_schema()::regnamespace
            ORDER BY 3, 1
            """
        ),
        {"parents": list(PARENTS)},
    )
    return [
        Partition(parent, name, lower.astimezone(UTC), upper.astimezone(UTC))
        for parent, name, lower, upper in rows
        if lower is not None and upper is not None
    ]
