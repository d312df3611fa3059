"""`etl status`: per configured source, what loaded, what failed, what was missed, what waits.

Read from `ingestion_runs` (last `ok` slot, last `error`, `missed` slots of the last
24 hours) and from this machine's spool. The spool is read even when the database does
not answer, since that is when it matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

from etl.config import Settings
from etl.spool import Spool

MISSED_WINDOW = timedelta(hours=24)

_QUERY = text(
    """
    SELECT s.source,
        (SELECT max(r.snapshot_ts) FROM ingestion_runs r
         WHERE r.source = s.source AND r.status = 'ok') AS last_ok,
        e.snapshot_ts AS error_slot, e.error,
        (SELECT count(*) FROM ingestion_runs r
         WHERE r.source = s.source AND r.status = 'missed' AND r.snapshot_ts > now() - :window) AS missed
    FROM unnest(CAST(:sources AS text[])) AS s(source)
    LEFT JOIN LATERAL (
        SELECT r.snapshot_ts, r.error FROM ingestion_runs r
        WHERE r.source = s.source AND r.status = 'error' ORDER BY r.snapshot_ts DESC LIMIT 1
    ) e ON true
    """
)


@dataclass(frozen=True)
class SourceStatus:
    source: str
    venue: str
    interval: timedelta
    last_ok: datetime | None
    last_error_slot: datetime | None
    last_error: str | None
    missed: int  # within MISSED_WINDOW
    spooled: int


def spool_only(settings: Settings, spool: Spool) -> list[SourceStatus]:
    """What can be said without the database."""
    waiting = spool.depth_by_source()
    return [
        SourceStatus(s.name, s.venue, settings.interval_of(s), None, None, None, 0, waiting[s.name])
        for s in settings.sources
    ]


def read_status(engine: Engine, settings: Settings, spool: Spool) -> list[SourceStatus]:
    names: Sequence[str] = [s.name for s in settings.sources]
    with engine.connect() as conn:
        found = {row.source: row for row in conn.execute(_QUERY, {"sources": names, "window": MISSED_WINDOW})}
    return [
        SourceStatus(
            source=status.source,
            venue=status.venue,
            interval=status.interval,
            last_ok=found[status.source].last_ok,
            last_error_slot=found[status.source].error_slot,
            last_error=found[status.source].error,
            missed=int(found[status.source].missed),
            spooled=status.spooled,
        )
        for status in spool_only(settings, spool)
    ]
