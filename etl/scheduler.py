"""`etl daemon`: every source polled on its UTC-aligned slots, for months, on one event loop.

Scheduling (APScheduler 3): one job per interval, for all the sources that have it, on an
`IntervalTrigger` aligned to the interval since the epoch; `max_instances=1` and
`coalesce`, so a late process does not fire a burst; a misfire grace of a quarter of the
interval (whole seconds, at least 1: APScheduler's rule). The grace stays under the
interval, so a job always runs inside its own slot and the slot is `floor(now)`. The job
claims its sources' slot (`Claims.claim_all`) and starts a task for each slot this
replica won, and only for those: a job and a task per source and slot cost each replica
CPU for every source, its own or not. A slot that starts beyond the grace, that a source
skips because its previous one still runs, or that coalescing folds away after a pause
or a sleep, is recorded as `missed` in `ingestion_runs`, never skipped silently.

`Daemon` puts the parts of `etl.daemon` together: the slot runner (claim, poll with a
deadline at POLL_SHARE of the interval, load in a worker thread, or spool), the claim
service, the database health watcher (reconnects), the spool drainer, and the ledger of
run rows owed. Its background loops run under a supervisor: a crash is logged, counted
and the loop restarted. While the database is down there is no claim: every replica
polls and spools; the first load of each slot wins (availability over exactly-once).

The sources of a venue host share its connection pool (`HostPools`: at most
DAEMON_HOST_CONNECTIONS of them poll at a time), and each API key has one rate limiter at its
venue's documented limit (`RATE_LIMIT`).

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
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from aiolimiter import AsyncLimiter
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from etl import heap
from etl.config import Settings, SourceConfig, check_for_daemon, data_dir
from etl.daemon.claims import Claims
from etl.daemon.drain import Drainer
from etl.daemon.health import DB_WORKERS, Database
from etl.daemon.ledger import MAX_MISSED_ROWS, Ledger, iso
from etl.daemon.loads import Loads
from etl.daemon.runner import POLL_SHARE, Runner, Timing
from etl.daemon.supervisor import Supervisor
from etl.errors import ConfigError
from etl.metrics import Metrics
from etl.slots import floor_to_slot
from etl.spool import Spool
from etl.store.load import last_slots
from etl.store.retention import prune_once
from etl.venues import venue
from etl.venues.http import DAEMON_HOST_CONNECTIONS, HostPools

__all__ = ["DB_WORKERS", "POLL_SHARE", "Daemon", "Timing", "missed_between", "run_daemon"]
log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for slots in flight after SIGTERM (systemd's TimeoutStopSec is 30)
CLOSE_TIMEOUT = 5.0  # seconds, after the grace, for cancelled slots and the last run rows owed
KEEPALIVE_MARGIN = timedelta(seconds=5)  # an idle connection lives one interval and this
MAX_KEEPALIVE = timedelta(minutes=5)  # longer than venues keep idle connections open anyway
STILL_RUNNING = "the previous slot of this source was still running"
NOT_RUNNING = "the daemon did not run (stopped, paused or machine asleep)"


def missed_between(
    expected: datetime | None, slot: datetime, interval: timedelta, limit: int = MAX_MISSED_ROWS
) -> tuple[list[datetime], int]:
    """The slots from `expected` up to (not including) `slot` that never ran: the last
    `limit` of them, and how many earlier ones there are (counted, never listed)."""
    if expected is None or slot <= expected:
        return [], 0
    gap = (slot - expected) // interval
    earlier = max(0, gap - limit)
    return [expected + i * interval for i in range(earlier, gap)], earlier


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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
        self.spool = spool
        self.metrics = metrics or Metrics()
        self.worker = worker or worker_id()
        self.shutdown_grace = shutdown_grace
        self.sources = {s.name: s for s in settings.sources}
        self.timing = {s.name: Timing.of(settings.interval_of(s)) for s in settings.sources}
        for name, timing in self.timing.items():
            self.metrics.interval.labels(name).set(timing.interval.total_seconds())
        shortest = min((t.interval.total_seconds() for t in self.timing.values()), default=60.0)
        tick = min(5.0, max(0.5, shortest / 2))  # how often the spool and the database are looked at
        self.supervisor = Supervisor(self.metrics.task_restarts)
        self.database = Database(engine, self.metrics, tick=tick)
        self.claims = Claims(self.database, self.supervisor, self.worker)
        self.loads = Loads(self.database, self.supervisor, self.metrics)
        self.ledger = Ledger(self.database, spool, self.metrics, self.worker, tick=tick)
        self.drainer = Drainer(
            spool, self.database, self.loads, self.ledger, self.sources, self.metrics, tick=tick
        )
        parts = (self.database, self.claims, self.loads, self.ledger, self.supervisor)
        self.runner = Runner(settings, self.timing, parts, spool, self.metrics, self.limiter_for)
        self.groups: dict[str, list[str]] = {}  # per job: its sources, those of one interval
        for name, timing in self.timing.items():
            self.groups.setdefault(f"every {timing.interval.total_seconds():g}s", []).append(name)
        self._expected: dict[str, datetime] = {}  # per source: the next slot that should run
        self._busy: set[str] = set()  # sources whose slot is being claimed or polled
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}
        self._stopping = asyncio.Event()

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
            log.info(
                "daemon started: worker %s, %d source(s), spool %s (%d waiting), database %s",
                self.worker,
                len(self.sources),
                self.spool.root,
                self.spool.depth(),
                "up" if self.database.up else "DOWN",
                extra={"event": "started", "worker": self.worker},
            )
            await self._stopping.wait()
            scheduler.pause()
            await asyncio.sleep(0)  # a job submitted just before the pause registers itself
            await self._finish()
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)
        log.info("daemon stopped: %d entries in the spool", self.spool.depth(), extra={"event": "stopped"})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """What slots need, without the schedule: the database checked, the HTTP clients
        open, the supervised loops (reconnects, the spool drain, the ledger) running."""
        self.spool.recover()
        if await self.database.connect(first=True):
            await self._resume()
        # One pool per venue host, shared by its sources (HostPools: a pool per source cost a
        # connection per source and slot, and 10,000 aiohttp sessions)
        try:
            async with HostPools(DAEMON_HOST_CONNECTIONS, keepalive=self._keepalive()) as pools:
                self.runner.pools = pools
                self.supervisor.supervise("database", self.database.watch)
                self.supervisor.supervise("drain", self.drainer.run)
                self.supervisor.supervise("ledger", self.ledger.run)
                with heap.settled():  # what lives as long as the daemon is not walked by each collection
                    yield
        finally:
            self.runner.pools = None
            await self.supervisor.stop(CLOSE_TIMEOUT)
            await self.ledger.close(CLOSE_TIMEOUT)
            self.database.close()

    async def _resume(self) -> None:
        """The slots since each source's last run row (of any replica) are expected: those
        nobody polled while no daemon ran are recorded as missed at the first slot."""
        try:
            last = await self.database.call(partial(self._last_slots))
        except Exception as err:
            self.database.failed(err, "the last slots of the sources")
            return
        for name, slot in last.items():
            self._expected.setdefault(
                name, floor_to_slot(slot, self.timing[name].interval) + self.timing[name].interval
            )

    def _last_slots(self) -> dict[str, datetime]:
        with self.database.engine.connect() as conn:
            return last_slots(conn, list(self.sources))

    def _keepalive(self) -> float:
        """Seconds an idle connection is kept: longer than the time between slots (the
        pools' default 5 s would not be), so that each slot reuses the last one's
        connections instead of new TCP (and TLS) handshakes, which cost CPU and a round trip
        or two of latency per poll against a real venue. A connection the venue closed
        meanwhile is noticed by the pool before reuse, and a race with it is retried."""
        longest = max((t.interval for t in self.timing.values()), default=timedelta(0))
        return min(longest + KEEPALIVE_MARGIN, MAX_KEEPALIVE).total_seconds()

    def stop(self) -> None:
        if self._stopping.is_set():
            log.warning("second stop request: cancelling the slots in flight (they go to the spool)")
            for task in self.runner.inflight:
                task.cancel()
            return
        log.info("stop requested: no new slots", extra={"event": "stopping"})
        self._stopping.set()

    async def _finish(self) -> None:
        inflight = self.runner.inflight
        if inflight:
            log.info("waiting up to %gs for %d slot(s) in flight", self.shutdown_grace, len(inflight))
        pending = {*inflight, *self.supervisor.tasks}  # slots, and the claims and closes they started
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self.shutdown_grace)
        late |= {t for t in self.runner.inflight if not t.done()}  # slots claimed meanwhile
        for task in late:
            task.cancel()  # a slot cancelled here spools what it has (see Runner._slot)
        if late:
            await asyncio.wait(late, timeout=CLOSE_TIMEOUT)

    def _schedule(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for job_id, names in self.groups.items():
            timing = self.timing[names[0]]
            slot = floor_to_slot(now, timing.interval)
            options: dict[str, Any] = {}
            if (now - slot).total_seconds() < timing.grace / 2:
                options["next_run_time"] = slot  # started early in a slot: poll it now, not a slot later
            scheduler.add_job(
                self.on_slot,
                IntervalTrigger(seconds=timing.interval.total_seconds(), start_date=slot, timezone=UTC),
                args=[job_id],
                id=job_id,
                name=f"slots of {len(names)} source(s) {job_id}",
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
            summary = await self.database.call(
                partial(prune_once, self.database.engine, older_than), timeout=600.0
            )
        except Exception as err:
            self.database.failed(err, "the daily retention prune")
            return
        if summary is not None:
            log.info("retention: %s", summary, extra={"event": "retention"})

    # -- slots ---------------------------------------------------------------------------

    async def on_slot(self, job_id: str) -> None:
        """The job of the sources of one interval: runs at most `grace` seconds after its
        slot's start, so floor(now) is the slot. It starts the slot's claims and returns:
        each source's slot is a task of its own, started once this replica has won it."""
        names = self.groups[job_id]
        timing = self.timing[names[0]]
        now = datetime.now(UTC)
        slot = floor_to_slot(now, timing.interval)
        deadline = time.monotonic() + (slot + timing.poll_budget - now).total_seconds()
        self.supervisor.spawn("slots", self.run_slots(names, slot, deadline))

    async def run_slots(self, names: list[str], slot: datetime, deadline: float) -> dict[str, str]:
        """The slot of each source of `names` (one interval), as the schedule runs them: a
        source whose previous slot still runs misses this one (recorded); the others are
        claimed together and each won slot polled in a task of its own. Returns each
        source's outcome (`run_slot`'s)."""
        ready: list[str] = []
        outcomes: dict[str, str] = {}
        for name in names:
            busy = name in self._busy
            try:
                if busy:
                    outcomes[name] = "missed"
                    self._advance(name, slot, skipped=True, reason=STILL_RUNNING)
                else:
                    self._advance(name, slot, skipped=False, reason=NOT_RUNNING)
            except Exception as err:  # a bug of ours: this slot still runs, and the next ones
                self.supervisor.crashed("schedule", "the slot runs anyway", err)
            if not busy:
                ready.append(name)
                self._busy.add(name)
        tasks: dict[str, asyncio.Task[str]] = {}

        def start(name: str, claimed: bool | None) -> None:
            try:
                if claimed is False:
                    outcomes[name] = self.runner.claimed_elsewhere(name, slot)
                elif claimed is True or not self._stopping.is_set():  # unclaimed: not at shutdown
                    task = asyncio.create_task(
                        self.runner.run_slot(self.sources[name], slot, deadline, claimed=claimed)
                    )
                    self.runner.inflight.add(task)  # before it starts: shutdown waits for it
                    task.add_done_callback(partial(self._idle, name))
                    tasks[name] = task
                    return
            except Exception as err:
                self.supervisor.crashed("schedule", "this source's slot is not polled", err)
            self._busy.discard(name)

        try:
            await self.claims.claim_all(ready, slot, self.timing[names[0]].interval, deadline, start)
        finally:  # a source left unanswered (a bug, or shutdown) must not stay busy for good
            self._busy.difference_update(n for n in ready if n not in tasks)
        outcomes.update(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))
        self._summary(slot, outcomes)
        return outcomes

    def _summary(self, slot: datetime, outcomes: dict[str, str]) -> None:
        """One line per slot and interval: a line per source loaded would be 10,000 a
        slot (ETL_LOG_LEVEL=debug has them); failures are logged per source anyway."""
        counts = Counter(outcomes.values())
        log.info(
            "slot %s: %d source(s): %s",
            iso(slot),
            len(outcomes),
            ", ".join(f"{n:,} {o.replace('_', ' ')}" for o, n in sorted(counts.items())),
            extra={"slot": iso(slot), "event": "slot", "sources": len(outcomes), **counts},
        )

    def _idle(self, name: str, _: asyncio.Task[str]) -> None:
        self._busy.discard(name)

    async def run_slot(self, source: SourceConfig, slot: datetime, deadline: float) -> str:
        """One slot of one source (see `etl.daemon.runner`): ok, error, spooled, claimed_elsewhere or missed."""
        return await self.runner.run_slot(source, slot, deadline)

    async def drain(self) -> None:
        """Load what waits in the spool now (the drain loop does this every tick)."""
        await self.drainer.drain()

    def limiter_for(self, source: SourceConfig) -> AsyncLimiter:
        """One limiter per venue and API key: venues document their limits per key."""
        key = (source.venue, hashlib.sha256(source.api_key.reveal().encode()).hexdigest())
        if key not in self._limiters:
            self._limiters[key] = AsyncLimiter(*venue(source.venue).RATE_LIMIT)
        return self._limiters[key]

    # -- missed slots --------------------------------------------------------------------

    def _on_skipped(self, event: JobEvent) -> None:
        """APScheduler listener: a run started beyond its grace, or the previous one still ran."""
        names = self.groups.get(event.job_id)
        if names is None:  # retention: its next run is tomorrow's
            return
        grace = self.timing[names[0]].grace
        if event.code == EVENT_JOB_MISSED:
            slot = event.scheduled_run_time
            reason = f"not started within its {grace}s grace (process paused, machine asleep or overloaded)"
        else:
            slot = event.scheduled_run_times[-1]
            reason = "the previous slot of these sources was still being started"
        for name in names:
            self._advance(name, slot.astimezone(UTC), skipped=True, reason=reason)

    def _advance(self, name: str, slot: datetime, *, skipped: bool, reason: str) -> None:
        """Move the source's expected next slot past `slot`; what was jumped over is missed."""
        interval = self.timing[name].interval
        expected = self._expected.get(name)
        missed, earlier = missed_between(expected, slot, interval)
        if skipped and (expected is None or slot >= expected):
            missed.append(slot)
        if expected is None or slot + interval > expected:
            self._expected[name] = slot + interval
        if not missed:
            return
        log.warning(
            "%s: %d slot(s) missed, %s to %s: %s",
            name,
            len(missed) + earlier,
            iso(expected if earlier and expected else missed[0]),
            iso(missed[-1]),
            reason,
            extra={
                "source": name,
                "event": "missed",
                "slots": len(missed) + earlier,
                "first": iso(missed[0]),
            },
        )
        self.ledger.owe(name, missed, "missed", reason, earlier=earlier)


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
