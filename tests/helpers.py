"""Small builders the tests share: settings from dicts, simulator-backed clients, table reads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Engine, text

from etl.config import Settings, parse_settings
from etl.pipeline import RunResult, run_sources
from etl.sim.base import Simulator
from etl.sim.serve import SimServer

SLOT = datetime(2026, 1, 1, tzinfo=UTC)


def source_entry(
    name: str, venue: str, base_url: str, key: str, secret: str | None = None, **more: Any
) -> dict[str, Any]:
    """A `[[sources]]` entry whose secrets are env references (set here, as a user would)."""
    var = name.upper().replace("-", "_").replace(".", "_")
    os.environ[f"TEST_{var}_KEY"] = key
    entry: dict[str, Any] = {
        "name": name,
        "venue": venue,
        "base_url": base_url,
        "api_key": f"env:TEST_{var}_KEY",
        **more,
    }
    if secret is not None:
        os.environ[f"TEST_{var}_SECRET"] = secret
        entry["api_secret"] = f"env:TEST_{var}_SECRET"
    return entry


def settings_for(*entries: dict[str, Any], **schedule: str) -> Settings:
    return parse_settings({"sources": list(entries), "schedule": schedule or {"timeout": "2s"}})


def asgi_client(routes: dict[str, Simulator]) -> httpx.AsyncClient:
    """One client that sends `http://<host>/...` to the simulator registered for that host."""
    apps = {host: httpx.ASGITransport(app=sim.app()) for host, sim in routes.items()}
    return httpx.AsyncClient(mounts={f"http://{host}": t for host, t in apps.items()})


@contextmanager
def served(sim: Simulator) -> Iterator[SimServer]:
    server = SimServer(sim.app()).start()
    try:
        yield server
    finally:
        server.stop()


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def count(engine: Engine, table: str) -> int:
    return int(rows(engine, f"SELECT count(*) FROM {table}")[0][0])


def run(engine: Engine, settings: Settings, slot: datetime = SLOT) -> dict[str, RunResult]:
    """Poll and load every source of `settings` for one slot, over real HTTP; results by source."""

    async def go() -> list[RunResult]:
        async with httpx.AsyncClient() as client:
            return await run_sources(
                settings, settings.sources, {s.name: slot for s in settings.sources}, engine, client
            )

    return {r.source: r for r in asyncio.run(go())}


def row_versions(engine: Engine) -> set[tuple[Any, ...]]:
    """(table, xmin, row as text) of every snapshot row: a rewritten row gets a new xmin."""
    return {
        tuple(r)
        for table in ("balance_snapshots", "account_snapshots", "position_snapshots")
        for r in rows(engine, f"SELECT '{table}', xmin::text, t::text FROM {table} t")
    }
