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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from aiolimiter import AsyncLimiter
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from etl import heap
from etl.config import Settings, SourceConfig
from etl.errors import EtlError, Fault, StoreError
from etl.faults import classify, sqlstate
from etl.records import Batch, RawResponse
from etl.store import batch, refused, rollups
from etl.store.load import LoadResult, load_slot, lock_slot, record_failure
from etl.venues import venue
from etl.venues.http import HostPools, Sender, VenueClient

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
    fault: Fault | None = None  # what went wrong, when error is set (`etl.faults`)


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
    fault: Fault | None = None  # of an error


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


def base_url_of(source: SourceConfig) -> str:
    return source.base_url or venue(source.venue).DEFAULT_BASE_URL


def client_for(
    source: SourceConfig,
    client: Sender,
    settings: Settings,
    *,
    limiter: AsyncLimiter | None = None,
    deadline: float | None = None,
    backoff_initial: float | None = None,
) -> VenueClient:
    backoff: dict[str, Any] = {} if backoff_initial is None else {"backoff_initial": backoff_initial}
    return VenueClient(
        client,
        source.venue,
        base_url_of(source),
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
    batch, error, fault = None, None, None
    try:
        # The client's deadline (the slot's or the command's) also bounds a request in flight.
        async with asyncio.timeout_at(http.deadline):
            responses = await module.fetch(http, source)
        batch = module.normalize(source.name, responses)
    except TimeoutError:
        error = f"{source.name}: no answer before the deadline (after {http.attempts} attempt(s))"
        fault = Fault.VENUE_TRANSIENT
    except EtlError as err:
        error, fault = f"{source.name}: {err}", classify(err)
    except Exception as err:  # a bug in a venue module must not stop the other sources
        log.exception("source %s: unexpected error", source.name)
        error, fault = f"{source.name}: internal error {type(err).__name__}: {err}", Fault.BUG
    return Polled(
        source=source,
        slot=slot,
        started_at=started_at,
        responses=tuple(http.received),
        batch=batch,
        error=scrub(error, source) if error else None,
        attempts=http.attempts,
        fault=fault,
    )


async def poll_pooled(
    source: SourceConfig, slot: datetime, settings: Settings, pools: HostPools, deadline: float | None
) -> Polled:
    """`poll` through the source's venue host's pool, once its gate lets the source in (a
    source let in after the deadline fails at once, with the deadline's error)."""
    base_url = base_url_of(source)
    async with pools.admitted(base_url, deadline):
        return await poll(
            source, slot, client_for(source, pools.sender(base_url), settings, deadline=deadline)
        )


def store(engine: Engine, polled: Polled, *, keep_loaded: bool = False) -> RunResult:
    """Write the poll's outcome in one transaction. Raises StoreError(transient=True) if
    the database is down; anything else ends as the source's run row.

    A batch PostgreSQL refuses (a value it cannot hold: the source's data) or that our
    code fails on (a bug) is written as that source's error instead. With keep_loaded (a
    spooled slot, or one polled without a claim), a slot that is already `ok` is left as
    it is: the first load wins, so loading twice changes nothing.
    """
    source = polled.source
    t0 = time.perf_counter()
    try:
        with engine.begin() as conn:
            if keep_loaded and lock_slot(conn, source.name, polled.slot) == "ok":
                return _kept(polled)
            written, closes, error = _write(conn, polled)
    except Exception as err:  # classified once, here: the run row says what happened
        fault = classify(err)
        if fault is Fault.DATABASE_DOWN:
            raise StoreError(f"{source.name}: database: {_first_line(err)}", transient=True) from None
        if fault is Fault.BUG:
            log.exception("source %s: unexpected error storing slot %s", source.name, polled.slot.isoformat())
        return store(engine, _refused(polled, err, fault), keep_loaded=keep_loaded)
    return RunResult(
        source=source.name,
        venue=source.venue,
        slot=polled.slot,
        status="ok" if polled.batch is not None else "error",
        error=error,
        fault=polled.fault,
        counts=polled.batch.counts() if polled.batch is not None else {},
        written=written,
        attempts=polled.attempts,
        seconds=time.perf_counter() - t0,
        closes=closes,
    )


def store_many(
    engine: Engine, polls: Sequence[Polled], *, keep_loaded: bool = True
) -> list[RunResult | StoreError]:
    """`store(engine, p, keep_loaded=keep_loaded)` for each of `polls` (batches of one
    slot, each of its own source): one result, or the StoreError `store` would raise, per
    poll. Without keep_loaded a slot loaded already is re-loaded on its own (`etl run --once`).

    Fresh slots (the daemon's usual case) are written together in one transaction
    (`etl.store.batch`), so each source's slot is still whole or not at all. If that
    transaction fails for anything but an outage (a source's value PostgreSQL refuses,
    a deadlock, a bug), the polls are tried again in two halves, down to one poll, which
    `store` loads on its own: only the culprit ends as its error row, in about
    2·log2(N) transactions. Slots `batch.Unusual` names (re-loads, an error row) are
    loaded by `store` too. Raises StoreError(transient=True) if the database is down
    (should it go down between two halves, the half already committed is spooled too,
    and its spooled copy is later skipped as loaded: the first load wins)."""
    if not polls:
        return []
    if len(polls) == 1:
        return [_store_one(engine, polls[0], keep_loaded)]
    slot = polls[0].slot
    assert all(p.slot == slot and p.batch is not None for p in polls), "one slot, polls with batches"
    t0 = time.perf_counter()
    try:
        with engine.begin() as conn:
            loaded = batch.load_slots(conn, slot, [_slot_load(p) for p in polls], keep_loaded=keep_loaded)
    except batch.Unusual as err:
        usual = [p for p in polls if p.source.name not in err.sources]
        done = dict(zip(map(id, usual), store_many(engine, usual, keep_loaded=keep_loaded), strict=True))
        return [done[id(p)] if id(p) in done else _store_one(engine, p, keep_loaded) for p in polls]
    except Exception as err:  # classified once, here: an outage spools them all
        fault = classify(err)
        if fault is Fault.DATABASE_DOWN and (sqlstate(err) or "")[:2] != "40":  # 40: a deadlock, say
            raise StoreError(f"database: {_first_line(err)}", transient=True) from None
        if fault is Fault.BUG:
            log.exception("a load of %d sources together failed; loading them in halves", len(polls))
        half = len(polls) // 2
        return store_many(engine, polls[:half], keep_loaded=keep_loaded) + store_many(
            engine, polls[half:], keep_loaded=keep_loaded
        )
    seconds = time.perf_counter() - t0
    return [
        _loaded(polled, result, seconds) if result is not None else _kept(polled)
        for polled, result in zip(polls, loaded, strict=True)
    ]


def _store_one(engine: Engine, polled: Polled, keep_loaded: bool = True) -> RunResult | StoreError:
    try:
        return store(engine, polled, keep_loaded=keep_loaded)
    except StoreError as err:
        if err.transient:
            raise
        return err


def _slot_load(polled: Polled) -> batch.SlotLoad:
    assert polled.batch is not None
    return batch.SlotLoad(
        source=polled.source.name,
        venue=polled.source.venue,
        batch=polled.batch,
        responses=polled.responses,
        started_at=polled.started_at,
        attempts=polled.attempts,
    )


def _loaded(polled: Polled, result: LoadResult, seconds: float) -> RunResult:
    assert polled.batch is not None
    return RunResult(
        source=polled.source.name,
        venue=polled.source.venue,
        slot=polled.slot,
        status="ok",
        error=None,
        counts=polled.batch.counts(),
        written=result.written,
        attempts=polled.attempts,
        seconds=seconds,
        closes=result.closes,
    )


def _kept(polled: Polled) -> RunResult:
    """The slot was `ok` already: the first load wins, this one wrote nothing."""
    source = polled.source
    return RunResult(
        source=source.name,
        venue=source.venue,
        slot=polled.slot,
        status="ok",
        error=None,
        attempts=polled.attempts,
        already_loaded=True,
    )


def _write(conn: Connection, polled: Polled) -> tuple[dict[str, int], datetime | None, str | None]:
    """Load the batch, or record the failure: (rows written, rollup close, error stored)."""
    source = polled.source
    if polled.batch is None:
        error = record_failure(
            conn,
            source=source.name,
            slot=polled.slot,
            started_at=polled.started_at,
            error=polled.error or "unknown error",
            attempts=polled.attempts,
            responses=polled.responses,
        )
        return {}, None, error or polled.error
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
    return result.written, result.closes, None


def _refused(polled: Polled, err: BaseException, fault: Fault) -> Polled:
    """The poll to record instead of one the database refused (not for being down).

    A refused batch becomes the source's error, its raw bodies kept. A refused failure
    record (never for what the venue sent: record_failure keeps that in a form PostgreSQL
    accepts) is recorded again without the raw bodies, the reason appended. A failure
    record without bodies that is refused too is not the data's doing: StoreError.
    """
    name = polled.source.name
    if polled.batch is not None:
        why = refused.describe(err, polled.batch) if fault is Fault.SOURCE_DATA else _internal(err)
        return replace(polled, batch=None, error=scrub(f"{name}: {why}", polled.source), fault=fault)
    if polled.responses:
        reason = refused.describe(err) if fault is Fault.SOURCE_DATA else _internal(err)
        error = f"{polled.error}; raw bodies not kept: {reason}"
        return replace(polled, responses=(), error=scrub(error, polled.source))
    raise StoreError(f"{name}: database: {_first_line(err)}") from None


def _internal(err: BaseException) -> str:
    return f"internal error {type(err).__name__}: {_first_line(err)}"


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


ONCE_BATCH_WAIT = 0.05  # seconds a poll of `run --once` waits for others to load with
ONCE_BATCH_MAX = 200  # polls in one transaction
ONCE_SENDERS = 3  # transactions in flight at once


class _Loader:
    """The loads of `etl run --once`: polls that arrive with a batch go to the database
    together (`store_many`, each source's slot whole or not at all), up to ONCE_BATCH_MAX
    of one slot per transaction and ONCE_SENDERS transactions at a time; while all are
    busy, the polls arriving meanwhile join the next (group commit). A slot loaded
    already is re-loaded, as a one-shot run always did; failed polls load one by one."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: dict[datetime, list[tuple[Polled, asyncio.Future[RunResult]]]] = {}
        self.flushing: asyncio.Task[None] | None = None
        self.sending: set[asyncio.Task[None]] = set()
        self.senders = asyncio.Semaphore(ONCE_SENDERS)

    async def store(self, polled: Polled) -> RunResult:
        """Raises StoreError as `store` does."""
        if polled.batch is None:
            return await asyncio.to_thread(store, self.engine, polled)
        future: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(polled.slot, []).append((polled, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(ONCE_BATCH_WAIT)
            while self.pending:
                await self.senders.acquire()
                slot = next(iter(self.pending))
                take, rest = self.pending[slot][:ONCE_BATCH_MAX], self.pending[slot][ONCE_BATCH_MAX:]
                if rest:
                    self.pending[slot] = rest
                else:
                    del self.pending[slot]
                task = asyncio.create_task(self._send(take))
                self.sending.add(task)
                task.add_done_callback(self.sending.discard)
        except BaseException as err:  # never leave a poll waiting for an answer
            for waiting in self.pending.values():
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(StoreError(f"internal error {type(err).__name__}: {err}"))
            self.pending.clear()
            raise

    async def _send(self, take: list[tuple[Polled, asyncio.Future[RunResult]]]) -> None:
        outcomes: list[RunResult | StoreError] | list[BaseException]
        try:
            outcomes = await asyncio.to_thread(
                store_many, self.engine, [p for p, _ in take], keep_loaded=False
            )
        except BaseException as err:  # StoreError(transient): the database is down, for all of them
            outcomes = [err] * len(take)
        finally:
            self.senders.release()
        for (_, future), outcome in zip(take, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


async def run_sources(
    settings: Settings,
    sources: Sequence[SourceConfig],
    slot_of: dict[str, datetime],
    engine: Engine,
    client: httpx.AsyncClient | None = None,
    deadline: float | None = None,
) -> list[RunResult]:
    """Poll the sources concurrently, by `deadline` (time.monotonic()) if given, and store
    each as it arrives; one result per source. Each venue host is polled through a pool
    of its own, a bounded number of its sources at a time (`HostPools`); a `client` given
    (a test's ASGI transport) serves every host."""
    async with HostPools(client=client) as pools:
        with heap.settled():
            return await _run_sources(settings, sources, slot_of, engine, pools, deadline)


async def _run_sources(
    settings: Settings,
    sources: Sequence[SourceConfig],
    slot_of: dict[str, datetime],
    engine: Engine,
    pools: HostPools,
    deadline: float | None,
) -> list[RunResult]:
    loader = _Loader(engine)

    async def one(source: SourceConfig) -> RunResult:
        t0 = time.perf_counter()
        polled = await poll_pooled(source, slot_of[source.name], settings, pools, deadline)
        try:
            result = await loader.store(polled)
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
