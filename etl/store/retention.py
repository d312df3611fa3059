"""Retention: drop whole monthly partitions of the fine-grained tables beyond the horizon.

`prune(engine, older_than)` drops every partition of the snapshot tables and of
`raw_payloads` whose whole month ends at or before `now - older_than`; a month that
straddles the horizon stays until it is entirely past it. Dropping a partition is a
catalog change, not a row-by-row DELETE: it takes milliseconds whatever the size, and
leaves no dead rows to vacuum. The rollups (hourly, daily), `accounts` and
`ingestion_runs` are kept: they are what reports over the long range read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from etl.errors import StoreError
from etl.store import locks, partitions, rollups

# Dropping a partition locks its parent exclusively: behind a long report that would
# queue every load too, so give up after a while and let the next prune do it.
LOCK_TIMEOUT = "10s"
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class Dropped:
    partition: str
    parent: str
    lower: datetime
    upper: datetime
    rows: int | None  # the planner's estimate (None: never analyzed)
    bytes: int


@dataclass(frozen=True)
class PruneReport:
    horizon: datetime
    dropped: tuple[Dropped, ...]
    seconds: float

    def summary(self) -> str:
        if not self.dropped:
            return f"nothing older than {self.horizon:%Y-%m-%d %H:%M}Z to drop"
        size = sum(d.bytes for d in self.dropped) / 2**20
        return (
            f"dropped {len(self.dropped)} partition(s) older than {self.horizon:%Y-%m-%d %H:%M}Z "
            f"({size:,.1f} MiB) in {self.seconds:.2f}s; rollups kept"
        )


def prune(engine: Engine, older_than: timedelta, now: datetime | None = None) -> PruneReport:
    """Drop the fine-grained months that end at or before `now - older_than`."""
    started = time.perf_counter()
    horizon = (now or datetime.now(UTC)).astimezone(UTC) - older_than
    # every bucket of the months to drop must be in the closed rollup tables first: an
    # open bucket is computed from the very rows about to go (a no-op unless no load has
    # come since the horizon)
    rollups.close(engine, horizon)
    dropped: list[Dropped] = []
    for parent in partitions.PARENTS:  # the loader's lock order
        with engine.begin() as conn:
            old = [p for p in partitions.list_partitions(conn) if p.parent == parent and p.upper <= horizon]
            if not old:
                continue
            sizes = conn.execute(
                text(
                    "SELECT relname, pg_total_relation_size(oid), reltuples FROM pg_class "
                    "WHERE relname = ANY(:names) AND relnamespace = current_schema()::regnamespace"
                ),
                {"names": [p.name for p in old]},
            )
            size_of = {name: (int(size), int(rows) if rows >= 0 else None) for name, size, rows in sizes}
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            try:
                for p in old:
                    conn.execute(text(f"DROP TABLE {p.name}"))
            except OperationalError as err:
                if getattr(err.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                raise StoreError(
                    f"prune: {parent} stayed locked for {LOCK_TIMEOUT} by another session "
                    f"(a long query?); nothing dropped from it, {len(dropped)} partition(s) dropped "
                    "before it. Run prune again later."
                ) from None
            dropped += [
                Dropped(p.name, parent, p.lower, p.upper, size_of[p.name][1], size_of[p.name][0]) for p in old
            ]
        partitions.forget(conn)
    return PruneReport(horizon=horizon, dropped=tuple(dropped), seconds=time.perf_counter() - started)


def prune_once(engine: Engine, older_than: timedelta) -> str | None:
    """`prune` unless another process is pruning now (replicas): its summary, or None if skipped.

    The lock is held by a session that stays idle while `prune` works on other
    connections, so it is only tried, never waited for (etl.store.locks)."""
    with engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": locks.PRUNE}).scalar():
            return None
        try:
            return prune(engine, older_than).summary()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": locks.PRUNE})
            conn.commit()
