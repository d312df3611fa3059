"""Replay: normalize the stored raw payloads again and load them again (after a normalizer fix).

Every (source, slot) with raw payloads in range is re-normalized with today's venue
code and loaded through the ordinary loader, one transaction per slot, so replaying is
idempotent: an unchanged slot rewrites nothing, a changed value is updated, a row the
fixed normalizer no longer produces is deleted, and a slot that failed before and
normalizes now becomes `ok`. A slot that still does not normalize is reported and left
as it was. Then the rollups of the replayed range are rebuilt from the fine rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

from etl import exactjson
from etl.config import Settings
from etl.errors import ConfigError, EtlError, Fault, StoreError
from etl.faults import classify
from etl.records import Batch, RawResponse
from etl.store import refused, rollups
from etl.store.load import load_slot
from etl.venues import VENUES, venue


@dataclass(frozen=True)
class Replayed:
    source: str
    slot: datetime
    error: str | None  # None: loaded
    written: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class ReplayReport:
    slots: tuple[Replayed, ...]
    rebuilt: tuple[rollups.Rebuilt, ...]

    @property
    def failed(self) -> tuple[Replayed, ...]:
        return tuple(s for s in self.slots if s.error)

    def summary(self) -> str:
        loaded = len(self.slots) - len(self.failed)
        written = sum(s.written for s in self.slots)
        deleted = sum(s.deleted for s in self.slots)
        return (
            f"replayed {len(self.slots)} slot(s): {loaded} loaded ({written} rows written, "
            f"{deleted} deleted), {len(self.failed)} still failing; "
            f"{len(self.rebuilt)} rollup range(s) rebuilt"
        )


def replay(
    engine: Engine,
    settings: Settings,
    *,
    since: datetime | None = None,
    sources: list[str] | None = None,
    on_slot: Callable[[Replayed], None] | None = None,
) -> ReplayReport:
    done: list[Replayed] = []
    with engine.connect() as reader:
        venues = _venues(reader, settings)
        unknown = sorted(set(sources or ()) - set(venues) - _stored_sources(reader))
        if unknown:
            raise ConfigError(
                f"--source: unknown source {', '.join(map(repr, unknown))} (neither configured nor loaded)"
            )
        for (source, slot), responses in _stored(reader, since, sources):
            outcome = _replay_one(engine, venues.get(source), source, slot, responses)
            done.append(outcome)
            if on_slot:
                on_slot(outcome)
    loaded = [s.slot for s in done if s.error is None]
    rebuilt = (
        rollups.rebuild(engine, since=min(loaded), until=max(loaded) + timedelta(microseconds=1))
        if loaded
        else []
    )
    return ReplayReport(slots=tuple(done), rebuilt=tuple(rebuilt))


def _venues(conn: Connection, settings: Settings) -> dict[str, str]:
    """Each source's venue: from the config, else from the accounts it loaded before."""
    known = {
        source: name for source, name in conn.execute(text("SELECT DISTINCT source, venue FROM accounts"))
    }
    return {**known, **{s.name: s.venue for s in settings.sources}}


def _stored_sources(conn: Connection) -> set[str]:
    return set(conn.execute(text("SELECT DISTINCT source FROM ingestion_runs")).scalars())


def _stored(
    conn: Connection, since: datetime | None, sources: list[str] | None
) -> Iterator[tuple[tuple[str, datetime], list[RawResponse]]]:
    """The raw responses grouped by (source, slot), oldest slot first, streamed."""
    result = conn.execution_options(stream_results=True, yield_per=500).execute(
        text(
            """
            SELECT source, snapshot_ts, endpoint, http_status, body::text, fetched_at
            FROM raw_payloads
            WHERE (CAST(:since AS timestamptz) IS NULL OR snapshot_ts >= :since)
              AND (CAST(:sources AS text[]) IS NULL OR source = ANY(:sources))
            ORDER BY snapshot_ts, source, fetched_at, endpoint
            """
        ),
        {"since": since, "sources": sources or None},
    )
    for key, group in itertools.groupby(result, key=lambda r: (r[0], r[1].astimezone(UTC))):
        # bodies as text, parsed exactly: psycopg's own jsonb parsing would go through float
        yield key, [RawResponse(r[2], r[3], exactjson.loads(r[4]), r[5], text=r[4]) for r in group]


def _replay_one(
    engine: Engine, venue_name: str | None, source: str, slot: datetime, responses: list[RawResponse]
) -> Replayed:
    if venue_name is None or venue_name not in VENUES:
        return Replayed(source, slot, f"{source}: venue unknown (not in the config, no account loaded)")
    batch: Batch | None = None
    try:
        batch = venue(venue_name).normalize(source, responses)
        with engine.begin() as conn:
            run = conn.execute(
                text(
                    "SELECT started_at, attempts FROM ingestion_runs WHERE source = :s AND snapshot_ts = :t"
                ),
                {"s": source, "t": slot},
            ).first()
            started_at, attempts = run if run else (datetime.now(UTC), 0)
            result = load_slot(
                conn,
                source=source,
                venue=venue_name,
                slot=slot,
                batch=batch,
                responses=responses,
                started_at=started_at,
                attempts=attempts,
            )
    except EtlError as err:
        return Replayed(source, slot, f"{source}: {err}")
    except Exception as err:  # classified as the daemon's loads are (etl.faults)
        fault = classify(err)
        if fault is Fault.DATABASE_DOWN:  # not this slot's fault: the replay stops, nothing half-done
            raise StoreError(f"{source} {slot.isoformat()}: database: {refused.describe(err)}") from None
        if fault is Fault.SOURCE_DATA:  # a value PostgreSQL refuses: which table, column and row
            return Replayed(source, slot, f"{source}: {refused.describe(err, batch)}")
        # a bug in a normalizer: that slot's failure, not the replay's
        return Replayed(source, slot, f"{source}: internal error {type(err).__name__}: {err}")
    return Replayed(source, slot, None, sum(result.written.values()), sum(result.deleted.values()))
