"""One source x one slot: extract -> normalize -> load, returning a result (never raising).

`poll` talks to the venue and normalizes; `store` writes the outcome in one
transaction: the whole batch, or only the failed run's record and the raw bodies that
did arrive. A failure of one source never reaches another: every error, including a
bug in a normalizer, becomes that source's `RunResult` with a one-line message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from aiolimiter import AsyncLimiter
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from etl.config import Settings, SourceConfig
from etl.errors import EtlError, StoreError
from etl.records import Batch, RawResponse
from etl.store import rollups
from etl.store.load import load_slot, lock_slot, record_failure
from etl.venues import venue
from etl.venues.http import VenueClient

log = logging.getLogger(__name__)
_closing = threading.Lock()  # one close of rollup buckets at a time per process


@dataclass(frozen=True)
class Polled:
    """What a poll produced: the batch, or the error and whatever responses did arrive."""

    source: SourceConfig
    slot: datetime
    started_at: datetime
    responses: tuple[RawResponse, ...]
    batch: Batch | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class RunResult:
    source: str
    venue: str
    slot: datetime
    status: str  # ok | error
    error: str | None
    counts: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    seconds: float = 0.0
    already_loaded: bool = False  # store(keep_loaded=True) found the slot loaded and wrote nothing
    closes: datetime | None = None  # rollup buckets before this can be closed: see close_rollups


def scrub(message: str, source: SourceConfig) -> str:
    """Last line of defence: no credential of the source survives in a message."""
    for secret in (source.api_key, source.api_secret):
        if secret is not None and secret.reveal():
            message = message.replace(secret.reveal(), "***")
    return message


COMMAND_SHARE = 0.75  # of the shortest interval: a one-shot command's default deadline


def command_deadline(settings: Settings, sources: Sequence[SourceConfig]) -> timedelta:
    """How long `etl run --once` and `etl check` may poll: `[schedule] deadline`, else three
    quarters of the shortest interval polled, so a cron job every interval never overlaps
    itself (the last quarter is for the loads)."""
    if settings.schedule.deadline is not None:
        return settings.schedule.deadline
    return min((settings.interval_of(s) for s in sources), default=settings.schedule.interval) * COMMAND_SHARE


def client_for(
    source: SourceConfig,
    client: httpx.AsyncClient,
    settings: Settings,
    *,
    limiter: AsyncLimiter | None = None,
    deadline: float | None = None,
    backoff_initial: float | None = None,
) -> VenueClient:
    module = venue(source.venue)
    backoff: dict[str, Any] = {} if backoff_initial is None else {"backoff_initial": backoff_initial}
    return VenueClient(
        client,
        source.venue,
        source.base_url or module.DEFAULT_BASE_URL,
        timeout=settings.schedule.timeout.total_seconds(),
        limiter=limiter,
        deadline=deadline,
        max_body=settings.schedule.max_body,
        secrets=[s.reveal() for s in (source.api_key, source.api_secret) if s is not None],
        **backoff,
    )


async def poll(source: SourceConfig, slot: datetime, http: VenueClient) -> Polled:
    started_at = datetime.now(UTC)
    module = venue(source.venue)
    batch, error = None, None
    try:
        # The client's deadline (the slot's or the command's) also bounds a request in flight.
        async with asyncio.timeout_at(http.deadline):
            responses = await module.fetch(http, source)
        batch = module.normalize(source.name, responses)
    except TimeoutError:
        error = f"{source.name}: no answer before the deadline (after {http.attempts} attempt(s))"
    except EtlError as err:
        error = f"{source.name}: {err}"
    except Exception as err:  # a bug in a venue module must not stop the other sources
        log.exception("source %s: unexpected error", source.name)
        error = f"{source.name}: internal error {type(err).__name__}: {err}"
    return Polled(
        source=source,
        slot=slot,
        started_at=started_at,
        responses=tuple(http.received),
        batch=batch,
        error=scrub(error, source) if error else None,
        attempts=http.attempts,
    )


def store(engine: Engine, polled: Polled, *, keep_loaded: bool = False) -> RunResult:
    """Write the poll's outcome in one transaction. Raises StoreError if the database failed.

    With keep_loaded (a spooled slot, or one polled without a claim), a slot that is
    already `ok` is left as it is: the first load wins, so loading twice changes nothing.
    """
    source = polled.source
    t0 = time.perf_counter()
    closes = None
    try:
        with engine.begin() as conn:
            if keep_loaded and lock_slot(conn, source.name, polled.slot) == "ok":
                return RunResult(
                    source=source.name,
                    venue=source.venue,
                    slot=polled.slot,
                    status="ok",
                    error=None,
                    attempts=polled.attempts,
                    already_loaded=True,
                )
            if polled.batch is not None:
                result = load_slot(
                    conn,
                    source=source.name,
                    venue=source.venue,
                    slot=polled.slot,
                    batch=polled.batch,
                    responses=polled.responses,
                    started_at=polled.started_at,
                    attempts=polled.attempts,
                )
                written, closes = result.written, result.closes
            else:
                record_failure(
                    conn,
                    source=source.name,
                    slot=polled.slot,
                    started_at=polled.started_at,
                    error=polled.error or "unknown error",
                    attempts=polled.attempts,
                    responses=polled.responses,
                )
                written = {}
    except (EtlError, psycopg.DataError, psycopg.IntegrityError) as err:
        # The batch itself was refused (a duplicate key, a value PostgreSQL cannot hold):
        # the source's fault, recorded as its error; the database is fine.
        if polled.batch is None:
            raise StoreError(f"{source.name}: database: {_first_line(err)}") from None
        failed = Polled(**{**polled.__dict__, "batch": None, "error": f"{source.name}: {_first_line(err)}"})
        return store(engine, failed, keep_loaded=keep_loaded)
    except psycopg.OperationalError as err:  # raised by the raw driver cursor (COPY), not wrapped
        raise StoreError(f"{source.name}: database: {_first_line(err)}", transient=True) from None
    except psycopg.Error as err:
        raise StoreError(f"{source.name}: database: {_first_line(err)}") from None
    except (OperationalError, DBAPIError) as err:
        transient = isinstance(err, OperationalError) or bool(getattr(err, "connection_invalidated", False))
        raise StoreError(f"{source.name}: database: {_first_line(err)}", transient=transient) from None
    except SQLAlchemyError as err:
        raise StoreError(f"{source.name}: database: {_first_line(err)}") from None
    return RunResult(
        source=source.name,
        venue=source.venue,
        slot=polled.slot,
        status="ok" if polled.batch is not None else "error",
        error=polled.error,
        counts=polled.batch.counts() if polled.batch is not None else {},
        written=written,
        attempts=polled.attempts,
        seconds=time.perf_counter() - t0,
        closes=closes,
    )


def close_rollups(engine: Engine, until: datetime) -> None:
    """Close the rollup buckets before `until` (a stored slot's `RunResult.closes`: the
    first load of a new hour), in a transaction of its own. Callers run it off every
    source's path, after the loads: closing an hour of many accounts takes seconds, and
    a source still busy with it would miss its next slot. A failure only leaves the
    buckets open, which the views still compute; the next load of a later hour asks again."""
    if not _closing.acquire(blocking=False):
        return  # another thread of this process is closing them already
    try:
        rollups.close(engine, until)
    except (SQLAlchemyError, psycopg.Error) as err:
        log.warning("rollup buckets before %s left open: %s", until.isoformat(), _first_line(err))
    finally:
        _closing.release()


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


async def run_sources(
    settings: Settings,
    sources: Sequence[SourceConfig],
    slot_of: dict[str, datetime],
    engine: Engine,
    client: httpx.AsyncClient,
    deadline: float | None = None,
) -> list[RunResult]:
    """Poll the sources concurrently, by `deadline` (time.monotonic()) if given, and store
    each as it arrives; one result per source."""

    async def one(source: SourceConfig) -> RunResult:
        t0 = time.perf_counter()
        http = client_for(source, client, settings, deadline=deadline)
        polled = await poll(source, slot_of[source.name], http)
        try:
            result = await asyncio.to_thread(store, engine, polled)
        except StoreError as err:
            return RunResult(
                source=source.name,
                venue=source.venue,
                slot=polled.slot,
                status="error",
                error=str(err),
                attempts=polled.attempts,
            )
        return RunResult(**{**result.__dict__, "seconds": time.perf_counter() - t0})

    results = list(await asyncio.gather(*(one(s) for s in sources)))
    closes = [r.closes for r in results if r.closes is not None]
    if closes:
        await asyncio.to_thread(close_rollups, engine, max(closes))
    return results
