"""Claims of (source, slot) in `ingestion_runs`, so that replicas poll each slot once.

The scheduler fires the jobs of one aligned instant together: the claims made in one
turn of the event loop for the same slot go to the database as one statement in one
transaction, not a transaction per source.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from functools import partial

from etl.daemon.health import Database
from etl.daemon.supervisor import Supervisor
from etl.store.load import claim_slots

ABANDONED = (10, 2)  # a claim 2 to 10 intervals old that never finished: its worker died
Key = tuple[datetime, timedelta]  # (slot, interval)


class Claims:
    def __init__(self, database: Database, supervisor: Supervisor, worker: str):
        self.database = database
        self.supervisor = supervisor
        self.worker = worker
        self.waiting: dict[Key, dict[str, asyncio.Future[bool | None]]] = {}  # per batch not yet sent

    async def claim(self, source: str, slot: datetime, interval: timedelta, deadline: float) -> bool | None:
        """True: ours to poll; False: another replica's; None: the database is down, poll unclaimed."""
        if not self.database.up:
            return None
        key = (slot, interval)
        waiting = self.waiting.get(key)
        if waiting is None:
            waiting = self.waiting[key] = {}
            batch = self.supervisor.spawn("claims", self._together(key, waiting, deadline))
            batch.add_done_callback(partial(self._ended, key, waiting))
        if source in waiting:  # already being claimed for this slot, by this process
            return False
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        waiting[source] = future
        return await future

    async def _together(
        self, key: Key, waiting: dict[str, asyncio.Future[bool | None]], deadline: float
    ) -> None:
        await asyncio.sleep(0)  # after the other jobs of this turn have asked
        del self.waiting[key]  # later claims of this slot make a batch of their own
        claimed: set[str] | None = None
        try:  # the claim may use up to half of the poll's budget
            claimed = await self.database.call(
                partial(self._claim, list(waiting), *key),
                timeout=max(0.5, (deadline - time.monotonic()) / 2),
            )
        except Exception as err:
            self.database.failed(err, "a claim")  # unclaimed, each slot polls and stores on its own
        for name, future in waiting.items():
            if not future.done():  # a slot cancelled at shutdown no longer waits
                future.set_result(None if claimed is None else name in claimed)

    def _ended(self, key: Key, waiting: dict[str, asyncio.Future[bool | None]], _: object) -> None:
        """A batch cancelled at shutdown (even before it started) leaves no slot waiting."""
        if self.waiting.get(key) is waiting:
            del self.waiting[key]
        for future in waiting.values():
            if not future.done():
                future.set_result(None)

    def _claim(self, sources: list[str], slot: datetime, interval: timedelta) -> set[str]:
        abandoned = (slot - ABANDONED[0] * interval, slot - ABANDONED[1] * interval)
        with self.database.engine.begin() as conn:
            return claim_slots(conn, sources=sources, slot=slot, worker=self.worker, abandoned=abandoned)
