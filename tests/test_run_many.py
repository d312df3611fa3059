"""`etl run --once` with many sources: per-host pools, a bounded number in flight, all ok (issue 17)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from etl.pipeline import run_sources
from etl.sim.bittap import BittapSimulator
from etl.sim.serve import SimServer
from etl.venues.http import HOST_CONNECTIONS
from tests.helpers import SLOT, settings_for, source_entry

SOURCES = 300


class InFlight:
    """An ASGI wrapper that counts the requests the server is answering at once."""

    def __init__(self, app: Any):
        self.app, self.now, self.most = app, 0, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


def test_hundreds_of_sources_are_all_ok_by_a_short_deadline_and_a_host_never_gets_more_than_its_pool(engine):
    sim = BittapSimulator(seed=7, latency=0.01)
    for i in range(SOURCES):
        sim.add_account(f"many-key-{i}", f"many-secret-{i}")
    counted = InFlight(sim.app())
    server = SimServer(counted).start()
    try:
        settings = settings_for(
            *(
                source_entry(f"many-{i}", "bittap", server.url, f"many-key-{i}", f"many-secret-{i}")
                for i in range(SOURCES)
            ),
            timeout="5s",
        )
        deadline = time.monotonic() + 20
        results = asyncio.run(
            run_sources(
                settings,
                settings.sources,
                {s.name: SLOT for s in settings.sources},
                engine,
                deadline=deadline,
            )
        )
    finally:
        server.stop()
    assert [r.error for r in results if r.status != "ok"] == []
    assert len(results) == SOURCES and time.monotonic() < deadline
    # the gate, not httpcore's queue, holds the others back: its pool never waits for a connection
    assert 1 < counted.most <= HOST_CONNECTIONS


def test_a_source_let_in_after_the_deadline_fails_with_the_deadline_error(engine):
    sim = BittapSimulator(seed=8)
    sim.add_account("late-key", "late-secret")
    server = SimServer(sim.app()).start()
    try:
        settings = settings_for(
            source_entry("late", "bittap", server.url, "late-key", "late-secret"), timeout="1s"
        )
        (result,) = asyncio.run(
            run_sources(settings, settings.sources, {"late": SLOT}, engine, deadline=time.monotonic() - 1)
        )
    finally:
        server.stop()
    assert result.status == "error" and "no answer before the deadline" in (result.error or "")
    assert sum(sim.requests.values()) == 0
