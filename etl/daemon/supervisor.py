"""Background tasks never run bare: a supervisor starts them, and logs, counts and
restarts one that crashes (after a backoff, so a task failing at once cannot spin)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF = (0.5, 30.0)  # seconds before the first restart of a crashed loop, and at most
HEALTHY = 60.0  # a loop that ran this long before it crashed restarts at the first backoff again


class Supervisor:
    def __init__(self, restarts: Counter, *, backoff: tuple[float, float] = BACKOFF):
        self.restarts = restarts
        self.backoff = backoff
        self.loops: set[asyncio.Task[Any]] = set()  # run as long as the daemon
        self.tasks: set[asyncio.Task[Any]] = set()  # one-off work in flight

    def supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `loop()` until it returns or is cancelled; restart it whenever it raises."""
        return self._start(self._keep(name, loop), name, self.loops)

    def spawn(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """One-off work nobody awaits directly: a crash is logged and counted, not restarted."""
        task = self._start(work, name, self.tasks)
        task.add_done_callback(partial(self._ended, name))
        return task

    def _start(
        self, work: Coroutine[Any, Any, T], name: str, into: set[asyncio.Task[Any]]
    ) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        into.add(task)
        task.add_done_callback(into.discard)
        return task

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        wait = self.backoff[0]
        while True:
            started = time.monotonic()
            try:
                await loop()
                return
            except Exception as err:
                if time.monotonic() - started > HEALTHY:
                    wait = self.backoff[0]
                self.crashed(name, f"restarting in {wait:g}s", err)
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.backoff[1])

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (err := task.exception()) is not None:
            self.crashed(name, "not restarted", err)

    def crashed(self, name: str, then: str, err: BaseException) -> None:
        """Log the crash with its traceback, and count it."""
        log.error(
            "task %s crashed (%s): %s: %s",
            name,
            then,
            type(err).__name__,
            err,
            exc_info=err,
            extra={"event": "task_crashed", "task": name},
        )
        self.restarts.labels(name).inc()

    async def stop(self, timeout: float) -> None:
        """Cancel what still runs and wait for it to end (at most `timeout` seconds)."""
        running = {t for t in self.loops | self.tasks if not t.done()}
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)
