"""`etl daemon --processes N`: N daemons on one machine, and a parent that keeps them running.

A daemon is one event loop, so at most one core: 10,000 sources a minute keep one
process's core busy while a second core serves PostgreSQL and little else. Each child
here is a whole daemon, the very code of a replica on another machine: it fires every
slot of every source and claims its share in PostgreSQL (`etl.daemon.claims`), so the
processes split each slot by how fast each polls, and when one is gone the others take
its sources from the next slot. They share the data dir's spool (safe for several
processes: `etl.spool`) and the database, nothing else. Child i (from 0) serves its
metrics on `--metrics-port` + i.

The parent polls nothing. SIGTERM or SIGINT: it asks every child to stop (each shuts down
as a daemon does: slots in flight finish or go to the spool) and exits 0 once all have;
a second signal is passed on too (each child then stops at once). A child that exits
unasked is logged and started again, after a backoff that grows while it keeps failing
at once. Each child runs in its own session, so a terminal's Ctrl-C reaches the parent
alone, which passes it on once; a child whose parent is gone (SIGKILL) stops itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

BACKOFF = (1.0, 60.0)  # seconds before a child that exited unasked is started again, and at most
HEALTHY = 60.0  # a child that ran this long before it exited restarts at the first backoff again
ORPHAN_CHECK = 1.0  # seconds between a child's looks at whether its parent still runs


def child(
    index: int, config: Path | None, url: str, metrics_port: int | None, metrics_host: str, parent: int
) -> None:
    """One daemon process (spawned: nothing is inherited but the environment)."""
    from etl import logs
    from etl.config import load_settings
    from etl.errors import EtlError
    from etl.scheduler import run_daemon
    from etl.store.engine import make_engine

    os.setsid()  # out of the terminal's process group: its Ctrl-C goes to the parent only
    logs.setup()
    threading.Thread(target=_stop_when_orphaned, args=(parent,), name="orphan-watch", daemon=True).start()
    port = None if metrics_port is None else metrics_port + index
    try:
        settings = load_settings(config)
        run_daemon(
            settings, make_engine(url, pool_pre_ping=False), metrics_port=port, metrics_host=metrics_host
        )
    except EtlError as err:
        log.error("daemon process %d: %s", index, err)
        sys.exit(2)


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK)
    log.warning("the parent process %d is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


class Processes:
    """The parent: starts `count` children, restarts the ones that exit unasked, passes signals on."""

    def __init__(
        self,
        count: int,
        config: Path | None,
        url: str,
        *,
        metrics_port: int | None,
        metrics_host: str,
        backoff: tuple[float, float] = BACKOFF,
    ):
        self.count = count
        self.args = (config, url, metrics_port, metrics_host, os.getpid())
        self.backoff = backoff
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._due: dict[int, float] = {}  # children to start again, and when
        self._signals = 0
        self._failed = False  # a child stopped with an error after the stop
        self._signalled = threading.Event()

    def run(self) -> int:
        """Until a signal, then until every child has stopped: 0 if each stopped cleanly."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("starting %d daemon processes", self.count, extra={"event": "processes"})
            for index in range(self.count):
                self._start(index)
            self._watch()
            return self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._signalled.set()

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=child, args=(index, *self.args), name=f"etl-daemon-{index}", daemon=False
        )
        process.start()
        self._children[index], self._started[index] = process, time.monotonic()
        log.info("daemon process %d started: pid %s", index, process.pid)

    def _watch(self) -> None:
        """Restart children that exit, until the first signal."""
        while not self._signalled.is_set():
            now = time.monotonic()
            for index in [i for i, at in self._due.items() if at <= now]:
                del self._due[index]
                self._start(index)
            timeout = min([*(at - now for at in self._due.values()), 0.5])
            wait([p.sentinel for p in self._children.values()], timeout=max(0.0, timeout))
            for index, process in list(self._children.items()):
                if process.exitcode is not None and not self._signalled.is_set():
                    self._exited(index, process)

    def _exited(self, index: int, process: BaseProcess) -> None:
        del self._children[index]
        ran = time.monotonic() - self._started[index]
        first, most = self.backoff
        delay = first if ran >= HEALTHY else min(most, 2 * self._delay.get(index, first / 2))
        self._delay[index] = delay
        self._due[index] = time.monotonic() + delay
        log.error(
            "daemon process %d (pid %s) exited unasked with %s after %.0fs: started again in %gs",
            index,
            process.pid,
            _exit(process.exitcode),
            ran,
            delay,
            extra={"event": "process_exited"},
        )

    def _stop(self) -> int:
        """Pass each signal on, until every child has exited."""
        passed = 0
        while self._children:
            while passed < self._signals:
                passed += 1
                for process in self._children.values():
                    process.terminate()  # SIGTERM, unless it has exited already
            wait([p.sentinel for p in self._children.values()], timeout=0.5)
            for index, process in list(self._children.items()):
                if process.exitcode is not None:
                    del self._children[index]
                    if process.exitcode != 0:
                        log.error("daemon process %d stopped with %s", index, _exit(process.exitcode))
                        self._failed = True
        log.info("every daemon process stopped", extra={"event": "stopped"})
        return 1 if self._failed else 0


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
