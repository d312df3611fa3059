"""Loading the spool back, oldest first, as long as the database answers.

Bounded per tick: the drain takes DRAIN_BATCH names at a time (one pass over the folder,
that many names in memory), and the depth is the spool's own count, not a listing. One
entry never stops the drain: a file that cannot be read goes to `spool/rejected/`; an
entry the database refuses because of its data (or any fault but an outage) is recorded
as that source's error and set aside too; only DATABASE_DOWN stops it, until the
database answers again.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

from etl.config import SourceConfig
from etl.daemon.health import Database, first_line
from etl.daemon.ledger import Ledger
from etl.daemon.loads import Loads
from etl.errors import Fault
from etl.metrics import Metrics
from etl.spool import Entry, Spool, SpooledMissed, SpoolError, source_of

log = logging.getLogger(__name__)

DRAIN_BATCH = 1000  # spool entries listed per step: a pass over 100k names takes ~0.4 s


class Drainer:
    def __init__(
        self,
        spool: Spool,
        database: Database,
        loads: Loads,
        ledger: Ledger,
        sources: dict[str, SourceConfig],
        metrics: Metrics,
        *,
        tick: float,
    ):
        self.spool = spool
        self.database = database
        self.loads = loads
        self.ledger = ledger
        self.sources = sources
        self.metrics = metrics
        self.tick = tick
        self._orphans: set[str] = set()  # sources no longer configured: their entries are kept
        self._stuck: set[str] = set()  # entries that could be neither removed nor moved aside
        self._draining = asyncio.Lock()

    async def run(self) -> None:
        """The supervised loop."""
        while True:
            if self.database.up:
                await self.drain()
            # in a thread: now and then the depth is recounted, a pass over the folder
            self.metrics.spool_depth.set(await asyncio.to_thread(self.spool.depth))
            await asyncio.sleep(self.tick)

    async def drain(self) -> None:
        """Until the spool is empty (but for kept entries) or the database fails."""
        async with self._draining:  # one drain at a time reads each entry once
            while self.database.up and await asyncio.to_thread(self.spool.depth) > 0:
                batch = await asyncio.to_thread(self.spool.oldest, DRAIN_BATCH, self._skipped)
                if not batch:
                    return
                for path in batch:
                    if not self.database.up:
                        return
                    await self._drain_one(path)

    def _skipped(self, name: str) -> bool:
        return name in self._stuck or source_of(name) in self._orphans

    async def _drain_one(self, path: Path) -> None:
        try:
            entry = await asyncio.to_thread(self.spool.read, path)
        except FileNotFoundError:
            return  # a replica sharing this spool took it
        except SpoolError as err:
            self._set_aside(path, str(err))
            return
        source = self.sources.get(entry.source)
        if source is None:
            self._orphans.add(entry.source)
            log.warning(
                "spool: %s is for source %s, which is no longer configured: kept", path.name, entry.source
            )
            return
        try:
            if isinstance(entry, SpooledMissed):
                await self.database.call(partial(self.loads.write_missed, entry))
            else:
                self.loads.drained(await self.database.call(partial(self.loads.replay, entry, source)))
        except Exception as err:
            fault = self.database.failed(err, f"spool entry {path.name}")
            if fault is not Fault.DATABASE_DOWN:
                self._refused(entry, path, fault, err)
            return
        self._remove(path)

    def _refused(self, entry: Entry, path: Path, fault: Fault, err: BaseException) -> None:
        """Not an outage: this entry's own fault. Its slot gets an error row; the file is kept aside."""
        why = f"{entry.source}: the database refused the spooled entry ({fault}): {first_line(err)}"
        self.metrics.failed(entry.source, fault)
        if not isinstance(entry, SpooledMissed):
            self.ledger.owe(entry.source, [entry.slot], "error", why)
        self._set_aside(path, why)

    def _remove(self, path: Path) -> None:
        try:
            self.spool.remove(path)
        except OSError as err:
            self._stuck.add(path.name)
            log.error("spool: %s is loaded but cannot be removed (%s): left in place", path.name, err)

    def _set_aside(self, path: Path, why: str) -> None:
        try:
            moved = self.spool.reject(path)
        except OSError as err:
            self._stuck.add(path.name)
            log.error("%s; cannot be moved to %s either (%s): left in place", why, self.spool.rejected, err)
            return
        log.error("%s; moved to %s", why, moved, extra={"event": "spool_rejected"})
