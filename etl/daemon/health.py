"""Whether PostgreSQL answers: the one way the daemon calls it, and the reconnects.

Every database failure goes through `failed`, which classifies it once: DATABASE_DOWN
marks the database down (slots go to the spool until `watch` sees it answer again);
any other fault is a refusal of that one call, and the database stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal, TypeVar

from sqlalchemy import Engine

from etl.errors import Fault, StoreError
from etl.faults import classify
from etl.metrics import Metrics
from etl.store import migrate
from etl.store.engine import ping

log = logging.getLogger(__name__)
T = TypeVar("T")

# threads for database calls; with the claims' thread, SQLAlchemy's pool size: none waits for a connection
DB_WORKERS = 4
CLAIM_WORKERS = 1  # a thread of their own: a replica's next claims never queue behind its loads
DB_TIMEOUT = 30.0  # seconds for a drain step or a missed-slot record before the database counts as down
CONNECT_TIMEOUT = 10.0


def first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Database:
    def __init__(self, engine: Engine, metrics: Metrics, *, tick: float):
        self.engine = engine
        self.metrics = metrics
        self.tick = tick  # seconds between reconnect attempts
        self.up = False
        self._migrated = False
        self._answers = asyncio.Event()  # set while up: the drain and the ledger wait on it
        self._pools = {
            "work": ThreadPoolExecutor(DB_WORKERS, thread_name_prefix="etl-db"),
            "claims": ThreadPoolExecutor(CLAIM_WORKERS, thread_name_prefix="etl-claims"),
        }

    async def call(
        self, work: Callable[[], T], *, timeout: float = DB_TIMEOUT, lane: Literal["work", "claims"] = "work"
    ) -> T:
        """Run a blocking database call in the worker threads of its lane. On timeout the
        thread runs on, but the caller moves on: a late commit is harmless (loads skip a
        loaded slot)."""
        future = asyncio.get_running_loop().run_in_executor(self._pools[lane], work)
        return await asyncio.wait_for(future, timeout)

    def failed(self, err: BaseException, what: str) -> Fault:
        """Classify a failed call of `what`; an outage marks the database down."""
        fault = classify(err)
        if fault is not Fault.DATABASE_DOWN:
            log.error(
                "database refused %s (%s): %s",
                what,
                fault,
                first_line(err),
                exc_info=err if fault is Fault.BUG else None,  # ours to fix: where it happened
                extra={"event": "database_error"},
            )
            return fault
        if self.up:
            log.warning(
                "database unreachable (%s): slots go to the spool until it answers",
                first_line(err),
                extra={"event": "database_down"},
            )
        self._set(False)
        return fault

    def _set(self, up: bool) -> None:
        self.up = up
        self.metrics.database_up.set(1 if up else 0)
        if up:
            self._answers.set()
        else:
            self._answers.clear()

    async def answers(self) -> None:
        """Until the database answers (at once if it does)."""
        await self._answers.wait()

    async def connect(self, *, first: bool = False) -> bool:
        """Migrate (once) or ping. At start-up an unreachable database is not fatal: slots
        are spooled until it answers; any other refusal is (a wrong schema, say)."""
        call = partial(ping, self.engine) if self._migrated else partial(migrate.upgrade, self.engine)
        try:
            await self.call(call, timeout=CONNECT_TIMEOUT)
        except Exception as err:
            fault = classify(err)
            if first and fault is not Fault.DATABASE_DOWN:
                raise StoreError(f"database: {first_line(err)}", fault=fault) from None
            if first:
                log.warning(
                    "database unreachable at start-up (%s): polling anyway, slots go to the spool",
                    first_line(err),
                    extra={"event": "database_down"},
                )
            elif fault is not Fault.DATABASE_DOWN:
                log.error("database refused a reconnect (%s): %s", fault, first_line(err))
            return False
        self._migrated = True
        if not self.up and not first:
            log.info("database answers again", extra={"event": "database_up"})
        self._set(True)
        return True

    async def watch(self) -> None:
        """The supervised reconnect loop: while the database is down, try it every tick."""
        while True:
            if not self.up:
                await self.connect()
            await asyncio.sleep(self.tick)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
