"""`etl daemon`: every source polled on its UTC-aligned slots, for months, on one event loop.

Scheduling (APScheduler 3): one job per source on an `IntervalTrigger` aligned to the
source's interval since the epoch; `max_instances=1` and `coalesce`, so a late process
does not fire a burst; a misfire grace of a quarter of the interval (whole seconds, at
least 1: APScheduler's rule). The grace stays under the interval, so a job always runs
inside its own slot and the slot is `floor(now)`. A slot that starts beyond the grace,
that is skipped because the previous one still runs, or that coalescing folds away after
a pause or a sleep, is recorded as `missed` in `ingestion_runs`, never skipped silently.

A slot: claim (source, slot) in `ingestion_runs` (so replicas poll it once), poll the
venue with a deadline at POLL_SHARE of the interval (retries, Retry-After waits and the
rate limiter included), load in a worker thread. If the database does not answer, the
poll goes to the spool (`etl.spool`) and a drain loop loads it, oldest first, as soon as
the database answers. While the database is down there is no claim: every replica polls
and spools, and the first load of a slot wins (availability over exactly-once polling).

Each source has its own `httpx.AsyncClient` (its connection pool; one TLS context for
all), and each API key one rate limiter at its venue's documented limit (`RATE_LIMIT`).

Shutdown (SIGTERM, SIGINT): no new slots; slots in flight get SHUTDOWN_GRACE seconds;
what has not finished by then goes to the spool; exit 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
from aiolimiter import AsyncLimiter
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from etl.config import Settings, SourceConfig, check_for_daemon, data_dir
from etl.errors import ConfigError, EtlError, StoreError
from etl.metrics import Metrics
from etl.pipeline import Polled, RunResult, client_for, close_rollups, poll, store
from etl.slots import floor_to_slot
from etl.spool import Entry, Spool, SpooledMissed, SpooledPoll, SpoolError, replayed, spooled
from etl.store import migrate
from etl.store.engine import ping
from etl.store.load import claim_slots, record_missed
from etl.store.retention import prune_once
from etl.venues import venue

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SHARE = 0.75  # of the interval, from the slot's start: the poll and its retries end by then
GRACE_SHARE = 0.25
SHUTDOWN_GRACE = 10.0  # seconds for slots in flight after SIGTERM (systemd's TimeoutStopSec is 30)
DB_WORKERS = 4  # threads for database calls; below SQLAlchemy's pool size, so none waits for a connection
DB_TIMEOUT = 30.0  # seconds for a drain step or a missed-slot record before the database counts as down
CONNECT_TIMEOUT = 10.0
SOURCE_CONNECTIONS = 4  # per source's HTTP pool: its polls send one request at a time
KEEPALIVE_MARGIN = timedelta(seconds=5)  # an idle connection lives one interval and this
MAX_KEEPALIVE = timedelta(minutes=5)  # longer than venues keep idle connections open anyway
MAX_MISSED_ROWS = 10_000  # per gap: a machine asleep for a week at 1 slot/s must not write 600k rows
ABANDONED = (10, 2)  # a claim 2 to 10 intervals old that never finished: its worker died
DB_ERRORS = (StoreError, SQLAlchemyError, psycopg.Error, TimeoutError)


@dataclass(frozen=True)
class Timing:
    """How one interval translates into scheduler and retry settings."""

    interval: timedelta
    grace: int  # seconds; APScheduler's misfire_grace_time
    poll_budget: timedelta  # from the slot's start
    backoff_initial: float  # seconds; a short interval gets short backoffs so retries fit in it

    @classmethod
    def of(cls, interval: timedelta) -> Timing:
        seconds = interval.total_seconds()
        return cls(
            interval=interval,
            grace=max(1, int(seconds * GRACE_SHARE)),
            poll_budget=interval * POLL_SHARE,
            backoff_initial=min(0.25, seconds / 40),
        )


def missed_between(expected: datetime | None, slot: datetime, interval: timedelta) -> list[datetime]:
    """The slots from `expected` up to (not including) `slot` that never ran."""
    if expected is None or slot <= expected:
        return []
    return [expected + i * interval for i in range((slot - expected) // interval)]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _transient(err: BaseException) -> bool:
    """The database is unreachable (retry later), rather than refusing this one load."""
    if isinstance(err, StoreError):
        return err.transient
    return isinstance(err, TimeoutError | OperationalError | psycopg.OperationalError)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        spool: Spool,
        *,
        metrics: Metrics | None = None,
        worker: str | None = None,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ):
        check_for_daemon(settings)
        self.settings = settings
        self.engine = engine
        self.spool = spool
        self.metrics = metrics or Metrics()
        self.worker = worker or worker_id()
        self.shutdown_grace = shutdown_grace
        self.sources = {s.name: s for s in settings.sources}
        self.timing = {s.name: Timing.of(settings.interval_of(s)) for s in settings.sources}
        for name, timing in self.timing.items():
            self.metrics.interval.labels(name).set(timing.interval.total_seconds())
        shortest = min((t.interval.total_seconds() for t in self.timing.values()), default=60.0)
        self.tick = min(5.0, max(0.5, shortest / 2))  # how often the spool is looked at
        self.db_up = False
        self._migrated = False
        self._expected: dict[str, datetime] = {}  # per source: the next slot that should run
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None  # the rollup close in flight, if any
        # per (slot, interval): the sources waiting for the claim of that slot, see _claim
        self._claiming: dict[tuple[datetime, timedelta], dict[str, asyncio.Future[bool | None]]] = {}
        self._orphans: set[str] = set()
        self._stopping = asyncio.Event()
        self._http: dict[str, httpx.AsyncClient] = {}  # per source, while running()
        self._db_pool = ThreadPoolExecutor(DB_WORKERS, thread_name_prefix="etl-db")

    # -- life cycle -------------------------------------------------------------------------

    async def run(self, *, signals: bool = True) -> None:
        """Until stop() (or SIGTERM/SIGINT with signals=True); returns once shut down cleanly."""
        if signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        # APScheduler logs missed runs without the slot's meaning; we log them ourselves.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        async with self.running():
            scheduler = self._schedule()
            drain = asyncio.create_task(self._drain_loop())
            log.info(
                "daemon started: worker %s, %d source(s), spool %s (%d waiting), database %s",
                self.worker,
                len(self.sources),
                self.spool.root,
                self.spool.depth(),
                "up" if self.db_up else "DOWN",
                extra={"event": "started", "worker": self.worker},
            )
            await self._stopping.wait()
            scheduler.pause()
            await asyncio.sleep(0)  # a job submitted just before the pause registers itself
            await self._finish(drain)
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)
        log.info("daemon stopped: %d entries in the spool", self.spool.depth(), extra={"event": "stopped"})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """What slots need, without the schedule: the database checked, the HTTP client open."""
        self.spool.recover()
        await self._connect(first=True)
        # A pool per source, not one for all: httpcore scans every connection of its pool
        # on each request and response (quadratic in the pool's size), which with a shared
        # pool of a few hundred connections cost more CPU than the requests themselves. A
        # source polls one request at a time, so its pool holds one or two connections.
        tls = httpx.create_ssl_context()  # loading the CA bundle once, not per source
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name in self.sources:
                    client = httpx.AsyncClient(limits=self._limits(name), verify=tls)
                    self._http[name] = await stack.enter_async_context(client)
                yield
        finally:
            self._http.clear()
            self._db_pool.shutdown(wait=False, cancel_futures=True)

    def _limits(self, source: str) -> httpx.Limits:
        """A source's connections outlive the idle time between its slots (httpx's default
        5 s would not): each slot reuses the last one's instead of a new TCP (and TLS)
        handshake, which measured 3 % of the poller's CPU on loopback and costs a round
        trip or two of latency per poll against a real venue. A connection the venue closed
        meanwhile is noticed by httpcore before reuse, and a race with it is retried."""
        idle = min(self.timing[source].interval + KEEPALIVE_MARGIN, MAX_KEEPALIVE)
        return httpx.Limits(max_connections=SOURCE_CONNECTIONS, keepalive_expiry=idle.total_seconds())

    def stop(self) -> None:
        if self._stopping.is_set():
            log.warning("second stop request: cancelling the slots in flight (they go to the spool)")
            for task in self._inflight:
                task.cancel()
            return
        log.info("stop requested: no new slots", extra={"event": "stopping"})
        self._stopping.set()

    async def _finish(self, drain: asyncio.Task[None]) -> None:
        if self._inflight:
            log.info("waiting up to %gs for %d slot(s) in flight", self.shutdown_grace, len(self._inflight))
        _, late = await asyncio.wait({drain, *self._inflight, *self._background}, timeout=self.shutdown_grace)
        for task in late:
            task.cancel()  # a slot cancelled here spools what it has (see _slot)
        if late:
            await asyncio.wait(late, timeout=5.0)

    def _schedule(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = _now()
        for name, timing in self.timing.items():
            slot = floor_to_slot(now, timing.interval)
            options: dict[str, Any] = {}
            if (now - slot).total_seconds() < timing.grace / 2:
                options["next_run_time"] = slot  # started early in a slot: poll it now, not a slot later
            scheduler.add_job(
                self.on_slot,
                IntervalTrigger(seconds=timing.interval.total_seconds(), start_date=slot, timezone=UTC),
                args=[name],
                id=name,
                name=f"slot of {name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=timing.grace,
                **options,
            )
        if self.settings.retention is not None:
            # Daily, off the hour so it does not meet the slots' busiest second.
            scheduler.add_job(
                self.retain,
                CronTrigger(hour=0, minute=17, timezone=UTC),
                id="retention",
                name="retention",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
            )
        scheduler.add_listener(self._on_skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        scheduler.start()
        return scheduler

    async def retain(self) -> None:
        """`[retention]`: prune once a day; of several replicas, the one holding the lock does."""
        assert self.settings.retention is not None
        older_than = self.settings.retention.older_than
        try:
            summary = await self._db(partial(prune_once, self.engine, older_than), timeout=600.0)
        except (*DB_ERRORS, EtlError) as err:
            log.error("retention failed: %s", _first_line(err), extra={"event": "retention_error"})
            return
        if summary is not None:
            log.info("retention: %s", summary, extra={"event": "retention"})

    # -- slots ---------------------------------------------------------------------------

    async def on_slot(self, name: str) -> None:
        """The job: runs at most `grace` seconds after its slot's start, so floor(now) is the slot."""
        timing = self.timing[name]
        now = _now()
        slot = floor_to_slot(now, timing.interval)
        self._advance(
            name, slot, skipped=False, reason="the daemon did not run (process paused or machine asleep)"
        )
        deadline = time.monotonic() + (slot + timing.poll_budget - now).total_seconds()
        await self.run_slot(self.sources[name], slot, deadline)

    async def run_slot(self, source: SourceConfig, slot: datetime, deadline: float) -> str:
        """One slot of one source, polled by `deadline` (time.monotonic()).

        Returns the outcome: ok, error (the venue's, recorded), spooled or claimed_elsewhere.
        """
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            return await self._slot(source, slot, deadline)
        finally:
            self._inflight.discard(task)

    async def _slot(self, source: SourceConfig, slot: datetime, deadline: float) -> str:
        timing = self.timing[source.name]
        claimed = await self._claim(source, slot, deadline)
        if claimed is False:
            self.metrics.slots.labels(source.name, "claimed_elsewhere").inc()
            log.debug("%s %s: claimed by another worker", source.name, _iso(slot))
            return "claimed_elsewhere"
        http = client_for(
            source,
            self._http[source.name],
            self.settings,
            limiter=self.limiter_for(source),
            deadline=deadline,
            backoff_initial=timing.backoff_initial,
        )
        started, t0 = _now(), time.perf_counter()
        # A CancelledError below only comes from shutdown running out of patience: the slot
        # keeps what it has in the spool and the job ends normally (nothing above awaits it).
        try:
            polled = await poll(source, slot, http)
        except asyncio.CancelledError:
            stopped = f"{source.name}: the daemon stopped before the poll finished"
            self._spool_now(Polled(source, slot, started, tuple(http.received), None, stopped, http.attempts))
            return "spooled"
        self.metrics.poll_seconds.labels(source.name).observe(time.perf_counter() - t0)
        try:
            return await self._store(polled, claimed=claimed is True, end=slot + timing.interval)
        except asyncio.CancelledError:
            self._spool_now(polled)
            return "spooled"

    async def _claim(self, source: SourceConfig, slot: datetime, deadline: float) -> bool | None:
        """True: ours to poll; False: another replica's; None: the database is down, poll unclaimed.

        The scheduler fires the jobs of one aligned instant together: the claims made in one
        turn of the event loop for the same slot go to the database as one statement in one
        transaction (`_claim_together`), not a transaction per source.
        """
        if not self.db_up:
            return None
        key = (slot, self.timing[source.name].interval)
        waiting = self._claiming.get(key)
        if waiting is None:
            waiting = self._claiming[key] = {}
            batch = self._in_background(self._claim_together(key, waiting, deadline))
            batch.add_done_callback(partial(self._claims_ended, key, waiting))
        if source.name in waiting:  # already being claimed for this slot, by this process
            return False
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        waiting[source.name] = future
        return await future

    async def _claim_together(
        self,
        key: tuple[datetime, timedelta],
        waiting: dict[str, asyncio.Future[bool | None]],
        deadline: float,
    ) -> None:
        await asyncio.sleep(0)  # after the other jobs of this turn have asked
        del self._claiming[key]  # later claims of this slot make a batch of their own
        claimed: set[str] | None = None
        try:  # the claim may use up to half of the poll's budget
            claimed = await self._db(
                partial(self._claim_slots, list(waiting), *key),
                timeout=max(0.5, (deadline - time.monotonic()) / 2),
            )
        except DB_ERRORS as err:
            self._db_failed(err)
        for name, future in waiting.items():
            if not future.done():  # a slot cancelled at shutdown no longer waits
                future.set_result(None if claimed is None else name in claimed)

    def _claims_ended(
        self, key: tuple[datetime, timedelta], waiting: dict[str, asyncio.Future[bool | None]], _: object
    ) -> None:
        """A batch cancelled at shutdown (even before it started) leaves no slot waiting."""
        if self._claiming.get(key) is waiting:
            del self._claiming[key]
        for future in waiting.values():
            if not future.done():
                future.set_result(None)

    def _claim_slots(self, sources: list[str], slot: datetime, interval: timedelta) -> set[str]:
        abandoned = (slot - ABANDONED[0] * interval, slot - ABANDONED[1] * interval)
        with self.engine.begin() as conn:
            return claim_slots(conn, sources=sources, slot=slot, worker=self.worker, abandoned=abandoned)

    async def _store(self, polled: Polled, *, claimed: bool, end: datetime) -> str:
        name, slot = polled.source.name, polled.slot
        if not self.db_up:
            return await self._spool_poll(polled, "the database is down")
        # The load must end before the next slot. One that does not is spooled; should it
        # commit after all, the spooled copy is later skipped as already loaded.
        timeout = max(1.0, (end - _now()).total_seconds())
        t0 = time.perf_counter()
        try:
            result = await self._db(
                partial(store, self.engine, polled, keep_loaded=not claimed), timeout=timeout
            )
        except DB_ERRORS as err:
            self._db_failed(err)
            self.metrics.errors.labels(name, "database").inc()
            return await self._spool_poll(polled, f"database: {_first_line(err)}")
        if result.already_loaded:
            log.info("%s %s: another worker loaded this slot first; this poll is dropped", name, _iso(slot))
            self.metrics.slots.labels(name, "claimed_elsewhere").inc()
            return "claimed_elsewhere"
        self.metrics.stored(result, (_now() - slot).total_seconds(), time.perf_counter() - t0)
        self._log_result(result, "")
        self._close_rollups(result)
        return result.status

    def _log_result(self, result: RunResult, where: str) -> None:
        extra = {"source": result.source, "slot": _iso(result.slot), "status": result.status}
        if result.status == "ok":
            counts = result.counts
            log.info(
                "%s %s: ok%s, %d accounts, %d balances, %d positions, %d attempt(s)",
                result.source,
                _iso(result.slot),
                where,
                counts.get("accounts", 0),
                counts.get("balances", 0),
                counts.get("positions", 0),
                result.attempts,
                extra={**extra, **counts, "attempts": result.attempts},
            )
        else:
            log.warning(
                "%s %s: error%s: %s", result.source, _iso(result.slot), where, result.error, extra=extra
            )

    def limiter_for(self, source: SourceConfig) -> AsyncLimiter:
        """One limiter per venue and API key: venues document their limits per key."""
        key = (source.venue, hashlib.sha256(source.api_key.reveal().encode()).hexdigest())
        if key not in self._limiters:
            self._limiters[key] = AsyncLimiter(*venue(source.venue).RATE_LIMIT)
        return self._limiters[key]

    # -- missed slots --------------------------------------------------------------------

    def _on_skipped(self, event: JobEvent) -> None:
        """APScheduler listener: a run started beyond its grace, or the previous one still ran."""
        grace = self.timing[event.job_id].grace
        if event.code == EVENT_JOB_MISSED:
            slot = event.scheduled_run_time
            reason = f"not started within its {grace}s grace (process paused, machine asleep or overloaded)"
        else:
            slot = event.scheduled_run_times[-1]
            reason = "the previous slot of this source was still running"
        self._advance(event.job_id, slot.astimezone(UTC), skipped=True, reason=reason)

    def _advance(self, name: str, slot: datetime, *, skipped: bool, reason: str) -> None:
        """Move the source's expected next slot past `slot`; what was jumped over is missed."""
        interval = self.timing[name].interval
        expected = self._expected.get(name)
        missed = missed_between(expected, slot, interval)
        if skipped and (expected is None or slot >= expected):
            missed.append(slot)
        if expected is None or slot + interval > expected:
            self._expected[name] = slot + interval
        if missed:
            self._in_background(self._record_missed(name, missed, reason))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task no slot awaits directly; shutdown waits for it (see _finish)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _record_missed(self, name: str, slots: list[datetime], reason: str) -> None:
        log.warning(
            "%s: %d slot(s) missed, %s to %s: %s",
            name,
            len(slots),
            _iso(slots[0]),
            _iso(slots[-1]),
            reason,
            extra={"source": name, "event": "missed", "slots": len(slots), "first": _iso(slots[0])},
        )
        self.metrics.missed.labels(name).inc(len(slots))
        entry = SpooledMissed(name, tuple(slots[-MAX_MISSED_ROWS:]), reason)
        if self.db_up:
            try:
                await self._db(partial(self._write_missed, entry))
                return
            except DB_ERRORS as err:
                self._db_failed(err)
        await self._spool(entry)

    def _write_missed(self, entry: SpooledMissed) -> None:
        with self.engine.begin() as conn:
            record_missed(conn, source=entry.source, slots=entry.slots, reason=entry.reason)

    # -- database and spool --------------------------------------------------------------

    async def _db(self, call: Callable[[], T], *, timeout: float = DB_TIMEOUT) -> T:
        """Run a blocking database call in the worker threads. On timeout the thread runs
        on, but the slot moves on: a late commit is harmless (see _store)."""
        future = asyncio.get_running_loop().run_in_executor(self._db_pool, call)
        return await asyncio.wait_for(future, timeout)

    def _db_failed(self, err: BaseException) -> None:
        if not _transient(err):
            log.error("database refused: %s", _first_line(err), extra={"event": "database_error"})
            return
        if self.db_up:
            log.warning(
                "database unreachable (%s): slots go to the spool until it answers",
                _first_line(err),
                extra={"event": "database_down"},
            )
        self.db_up = False
        self.metrics.database_up.set(0)

    async def _connect(self, *, first: bool = False) -> bool:
        """Migrate (once) or ping. At start-up an unreachable database is not fatal: slots
        are spooled until it answers; any other refusal is (a wrong schema, say)."""
        call = partial(ping, self.engine) if self._migrated else partial(migrate.upgrade, self.engine)
        try:
            await self._db(call, timeout=CONNECT_TIMEOUT)
        except DB_ERRORS as err:
            if first and not _transient(err):
                raise StoreError(f"database: {_first_line(err)}") from None
            if first:
                log.warning(
                    "database unreachable at start-up (%s): polling anyway, slots go to the spool",
                    _first_line(err),
                    extra={"event": "database_down"},
                )
            return False
        self._migrated = True
        if not self.db_up and not first:
            log.info(
                "database answers again: loading %d spooled entries",
                self.spool.depth(),
                extra={"event": "database_up"},
            )
        self.db_up = True
        self.metrics.database_up.set(1)
        return True

    async def _spool_poll(self, polled: Polled, why: str) -> str:
        if await self._spool(spooled(polled)):
            self.metrics.slots.labels(polled.source.name, "spooled").inc()
            log.warning(
                "%s %s: spooled (%s)",
                polled.source.name,
                _iso(polled.slot),
                why,
                extra={"source": polled.source.name, "slot": _iso(polled.slot), "status": "spooled"},
            )
        return "spooled"

    async def _spool(self, entry: Entry) -> bool:
        try:
            await asyncio.to_thread(self.spool.put, entry)
        except OSError as err:
            self._spool_failed(entry, err)
            return False
        self.metrics.spool_depth.inc()
        return True

    def _spool_now(self, polled: Polled) -> None:
        """Spool from a cancelled slot, where nothing may be awaited any more."""
        try:
            self.spool.put(spooled(polled))
        except OSError as err:
            self._spool_failed(spooled(polled), err)
            return
        log.warning("%s %s: spooled at shutdown", polled.source.name, _iso(polled.slot))

    def _spool_failed(self, entry: Entry, err: OSError) -> None:
        log.error("%s: cannot write the spool (%s): this entry is lost", entry.source, err)
        self.metrics.errors.labels(entry.source, "spool").inc()

    async def _drain_loop(self) -> None:
        while not self._stopping.is_set():
            if self.db_up or await self._connect():
                await self.drain()
            self.metrics.spool_depth.set(len(await asyncio.to_thread(self.spool.pending)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick)

    async def drain(self) -> None:
        """Load what waits in the spool, oldest first, until it is empty or the database fails."""
        for path in await asyncio.to_thread(self.spool.pending):
            if self._stopping.is_set() or not self.db_up or not await self._drain_one(path):
                return

    async def _drain_one(self, path: Path) -> bool:
        """Load one spool entry; False when the database is down again (stop draining)."""
        try:
            entry = self.spool.read(path)
        except FileNotFoundError:
            return True  # a replica sharing this spool took it
        except SpoolError as err:
            log.error("%s; moved to %s", err, self.spool.reject(path))
            return True
        source = self.sources.get(entry.source)
        if source is None:
            if entry.source not in self._orphans:
                self._orphans.add(entry.source)
                log.warning(
                    "spool: %s is for source %s, which is no longer configured: kept", path.name, entry.source
                )
            return True
        try:
            if isinstance(entry, SpooledMissed):
                await self._db(partial(self._write_missed, entry))
            else:
                self._drained(await self._db(partial(self._load_spooled, entry, source)))
        except DB_ERRORS as err:
            if _transient(err):
                self._db_failed(err)
                return False
            log.error(
                "spool: %s cannot be loaded (%s); moved to %s",
                path.name,
                _first_line(err),
                self.spool.reject(path),
            )
            return True
        self.spool.remove(path)
        return True

    def _load_spooled(self, entry: SpooledPoll, source: SourceConfig) -> RunResult:
        return store(self.engine, replayed(entry, source), keep_loaded=True)

    def _close_rollups(self, result: RunResult) -> None:
        """The first load of a new hour: its rollup buckets close in the background, so
        that no source waits on the close (seconds, for an hour of many accounts)."""
        if result.closes is None:
            return
        # Every source's first load of the hour asks; one close at a time answers them all
        # (a load after it finished asks again if anything is left open).
        if self._closing is None or self._closing.done():
            self._closing = self._in_background(asyncio.to_thread(close_rollups, self.engine, result.closes))

    def _drained(self, result: RunResult) -> None:
        self._close_rollups(result)
        if result.already_loaded:
            log.info(
                "%s %s: spooled copy dropped, the slot was loaded already", result.source, _iso(result.slot)
            )
            return
        self.metrics.slots.labels(result.source, "drained").inc()
        if result.status == "ok":
            self.metrics.loaded(result)
        else:
            self.metrics.errors.labels(result.source, "venue").inc()
        self._log_result(result, " (from the spool)")


def run_daemon(settings: Settings, engine: Engine, *, metrics_port: int | None, metrics_host: str) -> None:
    """`etl daemon`: blocks until SIGTERM/SIGINT, then shuts down cleanly."""
    metrics = Metrics()
    if metrics_port is not None:
        try:
            metrics.serve(metrics_port, metrics_host)
        except OSError as err:
            raise ConfigError(f"--metrics-port {metrics_port}: {err.strerror or err}") from None
    daemon = Daemon(settings, engine, Spool(data_dir() / "spool"), metrics=metrics)
    asyncio.run(daemon.run())
