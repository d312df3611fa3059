"""One slot of one source: claim, poll the venue by the slot's deadline, load (or spool).

Each way a slot can end is one outcome, and each leaves (or owes, see `ledger`) a row
in `ingestion_runs`: ok, error (the venue's, or the database refusing this load),
spooled (loaded later by the drain), claimed_elsewhere (another replica's row), missed
(neither loaded nor spooled, with the reason). A bug of ours in a slot is logged with
its traceback, counted, and the slot recorded as an error; it never stops the schedule.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiolimiter import AsyncLimiter

from etl.config import Settings, SourceConfig
from etl.daemon.claims import Claims
from etl.daemon.health import Database, first_line
from etl.daemon.ledger import Ledger, iso
from etl.daemon.loads import Loads
from etl.daemon.supervisor import Supervisor
from etl.errors import Fault
from etl.metrics import Metrics
from etl.pipeline import Polled, base_url_of, client_for, poll
from etl.spool import Spool, spooled
from etl.venues.http import HostPools

log = logging.getLogger(__name__)

POLL_SHARE = 0.75  # of the interval, from the slot's start: the poll and its retries end by then
GRACE_SHARE = 0.25


class Ask(enum.Enum):
    ASK = "ask"


ASK = Ask.ASK  # Runner.run_slot: the slot makes its own claim


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


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror  # without the temp file's path
    return f"{type(err).__name__}: {err}"


class Runner:
    def __init__(
        self,
        settings: Settings,
        timing: dict[str, Timing],
        parts: tuple[Database, Claims, Loads, Ledger, Supervisor],
        spool: Spool,
        metrics: Metrics,
        limiter_for: Callable[[SourceConfig], AsyncLimiter],
    ):
        self.settings = settings
        self.timing = timing
        self.database, self.claims, self.loads, self.ledger, self.supervisor = parts
        self.spool = spool
        self.metrics = metrics
        self.limiter_for = limiter_for
        self.pools: HostPools | None = None  # the venue hosts' HTTP pools, while the daemon runs
        self.inflight: set[asyncio.Task[Any]] = set()

    async def run_slot(
        self, source: SourceConfig, slot: datetime, deadline: float, *, claimed: bool | Ask | None = ASK
    ) -> str:
        """One slot of one source, polled by `deadline` (time.monotonic()); returns the outcome.
        `claimed`: ASK, the slot claims itself; True, claimed already by this replica; None,
        unclaimed (the database was down when the claims were made)."""
        task = asyncio.current_task()
        assert task is not None
        self.inflight.add(task)
        try:
            if claimed is ASK:
                claimed = await self.claims.claim(
                    source.name, slot, self.timing[source.name].interval, deadline
                )
            if claimed is False:
                return self.claimed_elsewhere(source.name, slot)
            return await self._slot(source, slot, deadline)
        except Exception as err:
            self.supervisor.crashed("slot", "the slot is recorded as an error", err)
            self.metrics.failed(source.name, Fault.BUG)
            why = f"{source.name}: internal error in the daemon ({Fault.BUG}): {type(err).__name__}: {err}"
            self.ledger.owe(source.name, [slot], "error", why)
            return "error"
        finally:
            self.inflight.discard(task)
            self.claims.release(source.name, slot)  # room for this replica's next claims

    def claimed_elsewhere(self, name: str, slot: datetime) -> str:
        """The outcome of a slot another replica claimed: counted, not polled here."""
        self.metrics.slots.labels(name, "claimed_elsewhere").inc()
        log.debug("%s %s: claimed by another worker", name, iso(slot))
        return "claimed_elsewhere"

    async def _slot(self, source: SourceConfig, slot: datetime, deadline: float) -> str:
        """The poll and the load (or spool) of a slot this replica may poll."""
        timing = self.timing[source.name]
        assert self.pools is not None, "slots run inside Daemon.running()"
        base_url = base_url_of(source)
        http = client_for(
            source,
            self.pools.sender(base_url),
            self.settings,
            limiter=self.limiter_for(source),
            deadline=deadline,
            backoff_initial=timing.backoff_initial,
        )
        started, t0 = datetime.now(UTC), time.perf_counter()
        # A CancelledError below only comes from shutdown running out of patience: the slot
        # keeps what it has in the spool and the job ends normally (nothing above awaits it).
        try:
            async with self.pools.admitted(base_url, deadline):
                polled = await poll(source, slot, http)
        except asyncio.CancelledError:
            stopped = f"{source.name}: the daemon stopped before the poll finished"
            return self._spool_now(
                Polled(source, slot, started, tuple(http.received), None, stopped, http.attempts)
            )
        self.metrics.poll_seconds.labels(source.venue).observe(time.perf_counter() - t0)
        try:
            return await self._store(polled, end=slot + timing.interval)
        except asyncio.CancelledError:
            return self._spool_now(polled)

    async def _store(self, polled: Polled, *, end: datetime) -> str:
        name, slot = polled.source.name, polled.slot
        if not self.database.up:
            return await self._spool(polled, "the database is down")
        # The load must end before the next slot. One that does not is spooled; should it
        # commit after all, the spooled copy is later skipped as already loaded.
        timeout = max(1.0, (end - datetime.now(UTC)).total_seconds())
        t0 = time.perf_counter()
        try:
            result = await self.loads.store_live(polled, timeout=timeout)
        except Exception as err:
            fault = self.database.failed(err, f"the load of {name} {iso(slot)}")
            self.metrics.failed(name, fault)
            if fault is Fault.DATABASE_DOWN:
                return await self._spool(polled, f"database: {first_line(err)}")
            self.ledger.owe(name, [slot], "error", f"{name}: the load failed ({fault}): {first_line(err)}")
            return "error"
        if result.already_loaded:
            log.info("%s %s: another worker loaded this slot first; this poll is dropped", name, iso(slot))
            self.metrics.slots.labels(name, "claimed_elsewhere").inc()
            return "claimed_elsewhere"
        self.metrics.stored(result, (datetime.now(UTC) - slot).total_seconds(), time.perf_counter() - t0)
        self.loads.log_result(result, "")
        self.loads.close_rollups(result)
        return result.status

    async def _spool(self, polled: Polled, why: str) -> str:
        try:
            await asyncio.to_thread(self.spool.put, spooled(polled))
        except Exception as err:
            return self._unspooled(polled, why, err)
        self.metrics.slots.labels(polled.source.name, "spooled").inc()
        log.warning(
            "%s %s: spooled (%s)",
            polled.source.name,
            iso(polled.slot),
            why,
            extra={"source": polled.source.name, "slot": iso(polled.slot), "status": "spooled"},
        )
        return "spooled"

    def _spool_now(self, polled: Polled) -> str:
        """Spool from a cancelled slot, where nothing may be awaited any more."""
        try:
            self.spool.put(spooled(polled))
        except Exception as err:
            return self._unspooled(polled, "the daemon stopped", err)
        log.warning("%s %s: spooled at shutdown", polled.source.name, iso(polled.slot))
        return "spooled"

    def _unspooled(self, polled: Polled, why: str, err: BaseException) -> str:
        """Neither loaded nor spooled: the slot is owed as missed, with both reasons."""
        name, slot = polled.source.name, polled.slot
        reason = f"neither loaded ({why}) nor spooled (the spool write failed: {_why(err)})"
        log.error(
            "%s %s: %s",
            name,
            iso(slot),
            reason,
            extra={"source": name, "slot": iso(slot), "status": "missed"},
        )
        self.metrics.slots.labels(name, "missed").inc()
        self.ledger.owe(name, [slot], "missed", reason)
        return "missed"
