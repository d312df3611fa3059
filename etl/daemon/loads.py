"""Writing a slot's outcome, live or from the spool: the load, its log line and metrics,
and the rollup close the first load of a new hour starts.

Live polls that arrive with a batch (the usual case) wait up to BATCH_WAIT for others of
the same slot, and up to BATCH_MAX go to the database together (`pipeline.store_many`:
one transaction, each source's slot whole or not at all). With thousands of sources a
slot, one transaction per source cost more poller CPU than the rows (bench/loads.py).
Failed polls and spooled ones load one by one, as before.

Every load keeps a slot that is `ok` already (`store(..., keep_loaded=True)`): the first
load of each slot wins, whether it is a live one (claimed or not) or a spooled copy that
another replica drained first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from etl.config import SourceConfig
from etl.daemon.health import DB_WORKERS, Database
from etl.daemon.ledger import iso
from etl.daemon.supervisor import Supervisor
from etl.errors import StoreError
from etl.metrics import Metrics
from etl.pipeline import Polled, RunResult, close_rollups, store, store_many
from etl.spool import SpooledMissed, SpooledPoll, replayed
from etl.store.load import record_missed

log = logging.getLogger(__name__)

BATCH_WAIT = 0.1  # seconds a poll waits for others of its slot (a slot is a minute: nothing to save)
BATCH_MAX = 200  # polls in one transaction
# batches in flight at once: one database thread is left for the claims, failed polls and the spool
BATCH_SENDERS = DB_WORKERS - 1


@dataclass
class _Waiting:
    """Polls of one slot waiting to be sent together."""

    polls: list[tuple[Polled, asyncio.Future[RunResult]]] = field(default_factory=list)
    deadline: float = float("inf")  # time.monotonic() by which the first of them must be loaded
    full: asyncio.Event = field(default_factory=asyncio.Event)


class Loads:
    def __init__(self, database: Database, supervisor: Supervisor, metrics: Metrics):
        self.database = database
        self.supervisor = supervisor
        self.metrics = metrics
        self.closing: asyncio.Task[None] | None = None  # the rollup close in flight, if any
        self.waiting: dict[datetime, _Waiting] = {}  # per slot, the polls not sent yet
        self._sending: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def store(self, polled: Polled) -> RunResult:
        """In a database thread. Raises StoreError."""
        return store(self.database.engine, polled, keep_loaded=True)

    def store_together(self, polls: list[Polled]) -> list[RunResult | StoreError]:
        """In a database thread. Raises StoreError(transient=True) if the database is down."""
        return store_many(self.database.engine, polls)

    async def store_live(self, polled: Polled, *, timeout: float) -> RunResult:
        """A live poll's load, by `timeout` seconds: with others of its slot if it has a
        batch. Raises what `store` raises, or TimeoutError."""
        if polled.batch is None:
            return await self.database.call(partial(self.store, polled), timeout=timeout)
        waiting = self.waiting.get(polled.slot)
        if waiting is None:
            waiting = self.waiting[polled.slot] = _Waiting()
            self.supervisor.spawn("loads", self._send(polled.slot, waiting))
        future: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        waiting.polls.append((polled, future))
        waiting.deadline = min(waiting.deadline, time.monotonic() + timeout)
        if len(waiting.polls) >= BATCH_MAX:
            self._detach(polled.slot, waiting)
        return await future

    def _detach(self, slot: datetime, waiting: _Waiting) -> None:
        """Later polls of the slot wait in a batch of their own."""
        if self.waiting.get(slot) is waiting:
            del self.waiting[slot]
        waiting.full.set()

    async def _send(self, slot: datetime, waiting: _Waiting) -> None:
        try:
            with contextlib.suppress(TimeoutError):  # the wait is up: send what came
                await asyncio.wait_for(waiting.full.wait(), BATCH_WAIT)
            # Group commit: while every sender is busy the batch stays open, so under load
            # the polls arriving meanwhile join it instead of queueing for a thread each.
            senders = self._senders()
            try:
                await asyncio.wait_for(senders.acquire(), max(1.0, waiting.deadline - time.monotonic()))
            except TimeoutError as err:
                self._detach(slot, waiting)
                for _, future in waiting.polls:
                    if not future.done():
                        future.set_exception(err)
                return
            try:
                self._detach(slot, waiting)
                await self._store_waiting(waiting)
            finally:
                senders.release()
        finally:  # cancelled at shutdown: the slots still waiting spool what they have
            for _, future in waiting.polls:
                future.cancel()

    async def _store_waiting(self, waiting: _Waiting) -> None:
        sent = [(p, f) for p, f in waiting.polls if not f.done()]  # a cancelled slot has spooled
        if not sent:
            return
        timeout = max(1.0, waiting.deadline - time.monotonic())
        outcomes: list[RunResult | StoreError] | list[Exception]
        try:
            outcomes = await self.database.call(
                partial(self.store_together, [p for p, _ in sent]), timeout=timeout
            )
        except Exception as err:  # each slot classifies it (Runner._store)
            outcomes = [err] * len(sent)
        for (_, future), outcome in zip(sent, outcomes, strict=True):
            if future.done():  # it stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _senders(self) -> asyncio.Semaphore:
        """BATCH_SENDERS, of the running loop (a test may run the daemon's parts in several)."""
        loop = asyncio.get_running_loop()
        if self._sending is None or self._sending[0] is not loop:
            self._sending = (loop, asyncio.Semaphore(BATCH_SENDERS))
        return self._sending[1]

    def replay(self, entry: SpooledPoll, source: SourceConfig) -> RunResult:
        return self.store(replayed(entry, source))

    def write_missed(self, entry: SpooledMissed) -> None:
        with self.database.engine.begin() as conn:
            record_missed(conn, source=entry.source, slots=entry.slots, reason=entry.reason)

    def log_result(self, result: RunResult, where: str) -> None:
        extra = {"source": result.source, "slot": iso(result.slot), "status": result.status}
        if result.status == "ok":
            counts = result.counts
            log.log(
                logging.INFO if where else logging.DEBUG,  # live ones: the slot's summary line
                "%s %s: ok%s, %d accounts, %d balances, %d positions, %d attempt(s)",
                result.source,
                iso(result.slot),
                where,
                counts.get("accounts", 0),
                counts.get("balances", 0),
                counts.get("positions", 0),
                result.attempts,
                extra={**extra, **counts, "attempts": result.attempts},
            )
        else:
            log.warning(
                "%s %s: error%s: %s", result.source, iso(result.slot), where, result.error, extra=extra
            )

    def close_rollups(self, result: RunResult) -> None:
        """The first load of a new hour: its rollup buckets close in the background, so
        that no source waits on the close (seconds, for an hour of many accounts)."""
        if result.closes is None:
            return
        # Every source's first load of the hour asks; one close at a time answers them all
        # (a load after it finished asks again if anything is left open).
        if self.closing is None or self.closing.done():
            work = asyncio.to_thread(close_rollups, self.database.engine, result.closes)
            self.closing = self.supervisor.spawn("rollup_close", work)

    def drained(self, result: RunResult) -> None:
        self.close_rollups(result)
        if result.already_loaded:
            log.info(
                "%s %s: spooled copy dropped, the slot was loaded already", result.source, iso(result.slot)
            )
            return
        self.metrics.slots.labels(result.source, "drained").inc()
        if result.status == "ok":
            self.metrics.loaded(result)
        else:
            self.metrics.failed(result.source, result.fault)
        self.log_result(result, " (from the spool)")
