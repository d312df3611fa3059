"""Run rows the daemon owes: every (source, slot) ends with a row in `ingestion_runs`.

A slot nobody polled (`missed`, with the reason), or one whose outcome could not be
written where it happened (an error of the daemon's own, a poll neither loaded nor
spooled), is owed here, in memory, until the database takes it; while the database is
down a missed gap goes to the spool instead, which survives a restart. What is owed is
bounded: MAX_MISSED_ROWS slots per (source, reason), the latest kept, the rest counted,
and MAX_OWED such entries (past it, a row is logged as lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Literal

from etl.daemon.health import Database, first_line
from etl.errors import Fault
from etl.metrics import Metrics
from etl.spool import Spool, SpooledMissed
from etl.store.load import record_failure, record_missed

log = logging.getLogger(__name__)

MAX_MISSED_ROWS = 10_000  # per gap: a machine asleep for a week at 1 slot/s must not write 600k rows
MAX_OWED = 10_000  # (source, status, reason) kept in memory; slots with one reason share an entry
Status = Literal["missed", "error"]
Key = tuple[str, Status, str]  # source, status, reason


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    def __init__(self, database: Database, spool: Spool, metrics: Metrics, worker: str, *, tick: float):
        self.database = database
        self.spool = spool
        self.metrics = metrics
        self.worker = worker
        self.tick = tick
        self.owed: dict[Key, list[datetime]] = {}
        self._earlier: dict[Key, int] = {}  # slots of a gap beyond MAX_MISSED_ROWS: counted, not written
        self._spool_fails: str | None = None  # why the last spool write failed, logged once
        self._more = asyncio.Event()

    def owe(
        self, source: str, slots: Sequence[datetime], status: Status, reason: str, *, earlier: int = 0
    ) -> None:
        key = (source, status, reason)
        if status == "missed":
            self.metrics.missed.labels(source).inc(len(slots) + earlier)
        if key not in self.owed and len(self.owed) >= MAX_OWED:
            self._lost(key, list(slots), f"more than {MAX_OWED} kinds of rows are owed already")
            return
        kept = self.owed.setdefault(key, [])
        kept.extend(slots)
        over = len(kept) - MAX_MISSED_ROWS
        if over > 0:
            del kept[:over]
        if over > 0 or earlier:
            self._earlier[key] = self._earlier.get(key, 0) + max(0, over) + earlier
        self._more.set()

    async def run(self) -> None:
        """The supervised loop: whenever something is owed, hand it on."""
        if self.owed:  # owed before a crash restarted this loop
            self._more.set()
        while True:
            await self._more.wait()
            self._more.clear()
            await self.flush()
            if self.owed:  # neither the database nor the spool took it: again once it answers
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.database.answers(), self.tick)
                self._more.set()

    async def flush(self) -> None:
        for key in list(self.owed):
            slots = list(self.owed[key])
            if not await self._hand_on(key, slots):
                return
            kept = self.owed[key]  # a slot owed meanwhile stays owed
            del kept[: len(slots)]
            if not kept:
                del self.owed[key]

    async def _hand_on(self, key: Key, slots: list[datetime]) -> bool:
        """To the database, else (a missed gap) to the spool; False: neither took it."""
        source, status, reason = key
        if self.database.up:
            try:
                await self.database.call(partial(self._write, source, status, reason, slots))
                self._earlier.pop(key, None)
                return True
            except Exception as err:
                fault = self.database.failed(err, f"the run rows of {source}")
                if fault is not Fault.DATABASE_DOWN:
                    self._lost(key, slots, f"the database refused them: {first_line(err)}")
                    return True
        if status != "missed":
            return False  # an error is written by the database only
        try:
            await asyncio.to_thread(self.spool.put, SpooledMissed(source, tuple(slots), reason))
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
            if self._spool_fails is None:
                log.error(
                    "spool: cannot write (%s): missed slots kept in memory",
                    why,
                    extra={"event": "spool_error"},
                )
            self._spool_fails = why
            return False
        self._spool_fails = None
        return True

    def _write(self, source: str, status: Status, reason: str, slots: list[datetime]) -> None:
        with self.database.engine.begin() as conn:
            if status == "missed":
                record_missed(conn, source=source, slots=slots, reason=reason, worker=self.worker)
                return
            for slot in slots:
                record_failure(conn, source=source, slot=slot, started_at=slot, error=reason, attempts=0)

    def _lost(self, key: Key, slots: list[datetime], why: str) -> None:
        source, status, reason = key
        earlier = self._earlier.pop(key, 0)
        log.error(
            "%s: %d %s slot(s), %s to %s (%s), left without a row: %s",
            source,
            len(slots) + earlier,
            status,
            iso(slots[0]),
            iso(slots[-1]),
            reason,
            why,
            extra={"source": source, "event": "run_rows_lost", "slots": len(slots) + earlier},
        )

    async def close(self, timeout: float) -> None:
        """At shutdown: a last try, then every row still owed is logged as lost."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        for key, slots in self.owed.items():
            if slots:
                self._lost(key, slots, "the daemon stopped before the database or the spool took them")
        self.owed.clear()
