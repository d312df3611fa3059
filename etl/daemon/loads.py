"""Writing a slot's outcome, live or from the spool: the load, its log line and metrics,
and the rollup close the first load of a new hour starts.

Every load keeps a slot that is `ok` already (`store(..., keep_loaded=True)`): the first
load of each slot wins, whether it is a live one (claimed or not) or a spooled copy that
another replica drained first.
"""

from __future__ import annotations

import asyncio
import logging

from etl.config import SourceConfig
from etl.daemon.health import Database
from etl.daemon.ledger import iso
from etl.daemon.supervisor import Supervisor
from etl.metrics import Metrics
from etl.pipeline import Polled, RunResult, close_rollups, store
from etl.spool import SpooledMissed, SpooledPoll, replayed
from etl.store.load import record_missed

log = logging.getLogger(__name__)


class Loads:
    def __init__(self, database: Database, supervisor: Supervisor, metrics: Metrics):
        self.database = database
        self.supervisor = supervisor
        self.metrics = metrics
        self.closing: asyncio.Task[None] | None = None  # the rollup close in flight, if any

    def store(self, polled: Polled) -> RunResult:
        """In a database thread. Raises StoreError."""
        return store(self.database.engine, polled, keep_loaded=True)

    def replay(self, entry: SpooledPoll, source: SourceConfig) -> RunResult:
        return self.store(replayed(entry, source))

    def write_missed(self, entry: SpooledMissed) -> None:
        with self.database.engine.begin() as conn:
            record_missed(conn, source=entry.source, slots=entry.slots, reason=entry.reason)

    def log_result(self, result: RunResult, where: str) -> None:
        extra = {"source": result.source, "slot": iso(result.slot), "status": result.status}
        if result.status == "ok":
            counts = result.counts
            log.info(
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
