"""`etl forget`: remove a slot loaded by mistake, as if it had never been loaded.

In one transaction, holding the rollup lock exclusively (no load or close meanwhile):
the slot's snapshot rows, run records and raw payloads of the source (or of every
source); the closed rollup buckets that held it, recomputed from the rows left; the
rollup watermarks that a load of the slot pushed ahead, moved back to the last slot
still loaded (the buckets reopened are computed by the views from the snapshot rows);
and the accounts' first/last seen times it set (an account only that slot had is gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from etl.errors import ConfigError
from etl.store import locks, partitions, rollups
from etl.store.schema import ROLLUPS, SNAPSHOT_TABLES


@dataclass(frozen=True)
class Forgotten:
    sources: tuple[str, ...]
    rows: int  # snapshot rows deleted
    runs: int
    payloads: int

    def summary(self, slot: datetime) -> str:
        return (
            f"forgot slot {slot:%Y-%m-%dT%H:%M:%SZ} of {', '.join(self.sources)}: {self.rows} snapshot "
            f"row(s), {self.runs} run record(s), {self.payloads} raw payload(s); rollups recomputed"
        )


def forget(engine: Engine, slot: datetime, source: str | None = None) -> Forgotten:
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": locks.ROLLUPS})
        where = "snapshot_ts = :slot AND (CAST(:source AS text) IS NULL OR source = :source)"
        params = {"slot": slot, "source": source}
        runs = conn.execute(text(f"DELETE FROM ingestion_runs WHERE {where} RETURNING source"), params)
        sources = tuple(sorted({r[0] for r in runs}))
        if not sources:
            of = f" of source {source!r}" if source else ""
            raise ConfigError(f"--slot: no slot {slot:%Y-%m-%dT%H:%M:%SZ}{of} is loaded")
        ids = [i for (i,) in conn.execute(text("SELECT id FROM accounts WHERE source = ANY(:s)"), {"s": list(sources)})]
        rows = sum(
            conn.execute(
                text(f"DELETE FROM {t.name} WHERE snapshot_ts = :slot AND account_id = ANY(:ids)"),
                {"slot": slot, "ids": ids},
            ).rowcount
            for t in SNAPSHOT_TABLES
        )
        payloads = conn.execute(
            text("DELETE FROM raw_payloads WHERE snapshot_ts = :slot AND source = ANY(:s)"),
            {"slot": slot, "s": list(sources)},
        ).rowcount
        _mend_rollups(conn, slot)
        _mend_accounts(conn, slot, ids)
    return Forgotten(sources, rows, len(sources), payloads)


def _mend_rollups(conn: Connection, slot: datetime) -> None:
    marks = dict.fromkeys(rollups.WIDTH, rollups.NOTHING_CLOSED) | dict(
        conn.execute(text("SELECT width, closed_until FROM rollup_watermarks")).all()
    )
    last = conn.execute(text("SELECT max(snapshot_ts) FROM ingestion_runs WHERE status = 'ok'")).scalar()
    held = partitions.list_partitions(conn)
    oldest = min((p.lower for p in held), default=None)
    for width in ("hour", "day"):  # hours first: a day is recomputed from its hourly rows
        bucket, mark = rollups.floor(slot, width), marks[width]
        if bucket < mark:  # closed: recompute it without the slot's rows
            _recompute(conn, width, bucket, bucket + rollups.WIDTH[width])
            continue
        # open, and the watermark may have been pushed by this slot's load: back to where
        # the last slot still loaded put it, never below the months still held
        lows = [b for b in (rollups.floor(last, width) if last else None, oldest) if b is not None]
        back = max(lows, default=mark)
        if back < mark:
            for rollup, _, w in ROLLUPS:
                if w == width:
                    conn.execute(text(f"DELETE FROM {rollup.name} WHERE bucket >= :b"), {"b": back})
            conn.execute(
                text("UPDATE rollup_watermarks SET closed_until = :b WHERE width = :w"), {"b": back, "w": width}
            )


def _recompute(conn: Connection, width: str, since: datetime, until: datetime) -> None:
    for rollup, fine, w in ROLLUPS:
        if w == width:
            feed = fine if width == "hour" else next(r for r, f, x in ROLLUPS if f is fine and x == "hour")
            conn.execute(
                text(f"DELETE FROM {rollup.name} WHERE bucket >= :since AND bucket < :until"),
                {"since": since, "until": until},
            )
            conn.execute(text(rollups.rebuild_sql(rollup, feed, width)), {"since": since, "until": until})


def _mend_accounts(conn: Connection, slot: datetime, ids: list[int]) -> None:
    """first/last seen from the rows left (snapshots and closed rollups); an account seen
    only at the forgotten slot is removed."""
    seen = " UNION ALL ".join(
        f"SELECT account_id, snapshot_ts FROM {t}"
        for t in (*(t.name for t in SNAPSHOT_TABLES), *(r.name for r, _, _ in ROLLUPS))
    )
    conn.execute(
        text(
            f"""
            WITH seen AS (SELECT account_id, min(snapshot_ts) AS lo, max(snapshot_ts) AS hi
                          FROM ({seen}) s WHERE account_id = ANY(:ids) GROUP BY account_id)
            UPDATE accounts a SET
                first_seen_at = CASE WHEN a.first_seen_at = :slot THEN seen.lo ELSE a.first_seen_at END,
                last_seen_at = CASE WHEN a.last_seen_at = :slot THEN seen.hi ELSE a.last_seen_at END
            FROM seen WHERE a.id = seen.account_id AND :slot IN (a.first_seen_at, a.last_seen_at)
            """
        ),
        {"slot": slot, "ids": ids},
    )
    conn.execute(
        text(
            f"DELETE FROM accounts a WHERE a.id = ANY(:ids) AND a.first_seen_at = :slot "
            f"AND NOT EXISTS (SELECT 1 FROM ({seen}) s WHERE s.account_id = a.id)"
        ),
        {"slot": slot, "ids": ids},
    )
