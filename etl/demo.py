"""`etl demo` and `etl sim`: the venue simulators on loopback, and what to point at them.

`etl demo`: the simulators + a database + a few polling cycles, then equity. Its sources
(named `demo-*`) go into a database of their own, `etl_demo` on the embedded PostgreSQL
(or `--database-url`), never into the user's: demo accounts beside real ones would show
as a +99.8 % "return". `etl sim`: the same simulators, kept running, and a config for
them, so a user can try every command on a config of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine, text

from etl import report
from etl.config import Settings, parse_settings
from etl.pipeline import RunResult, run_sources
from etl.sim.demo import BUILDERS, SourceEntry
from etl.sim.serve import SimServer
from etl.slots import floor_to_slot


@dataclass
class DemoOutcome:
    results: list[list[RunResult]]
    plot: Path


DEMO_DATABASE = "etl_demo"  # on the embedded server, beside the user's `etl`


def serve_simulators(port: int = 0) -> tuple[list[SimServer], list[SourceEntry]]:
    """Start every venue's simulator (on port, port+1, … if given; else free ports) and
    return the `[[sources]]` entries that reach them."""
    servers: list[SimServer] = []
    sources: list[SourceEntry] = []
    try:
        for n, build in enumerate(BUILDERS.values()):
            sim, entries = build()
            servers.append(SimServer(sim.app(), port=port + n if port else 0).start())
            sources += [{**entry, "base_url": servers[-1].url} for entry in entries]
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, sources


def start_simulators(database_url: str) -> tuple[list[SimServer], Settings]:
    servers, sources = serve_simulators()
    return servers, parse_settings({"sources": sources, "database": {"url": database_url}})


def config_text(sources: list[SourceEntry], interval: str) -> str:
    """A TOML config for the served simulators (JSON strings are valid TOML basic strings)."""
    lines = [
        "# etl sim: the venue simulators on loopback. No [database]: $ETL_DATABASE_URL, else the embedded one.",
        "[schedule]",
        f"interval = {json.dumps(interval)}",
        'timeout = "5s"',
    ]
    for entry in sources:
        lines += ["", "[[sources]]"]
        for key in ("name", "venue", "base_url", "api_key", "api_secret"):
            if key in entry:
                lines.append(f"{key} = {json.dumps(entry[key])}")
        if entry.get("params"):
            pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in entry["params"].items())
            lines.append(f"params = {{ {pairs} }}")
    return "\n".join(lines) + "\n"


def env_lines(sources: list[SourceEntry]) -> list[str]:
    """`export NAME=value` for every secret the config refers to (demo credentials only)."""
    names = [entry[key][4:] for entry in sources for key in ("api_key", "api_secret") if key in entry]
    return [f"export {name}={shlex.quote(os.environ[name])}" for name in names]


async def _cycles(
    settings: Settings, engine: Engine, cycles: int, interval: timedelta, console: Console
) -> list[list[RunResult]]:
    out = []
    async with httpx.AsyncClient() as client:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("polling", total=cycles)
            for n in range(cycles):
                now = datetime.now(UTC)
                slot = floor_to_slot(now, interval) + (interval if n else timedelta(0))
                await asyncio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
                results = await run_sources(
                    settings,
                    settings.sources,
                    {s.name: slot for s in settings.sources},
                    engine,
                    client,
                )
                out.append(results)
                failed = [r for r in results if r.status != "ok"]
                rows = sum(sum(r.counts.values()) for r in results)
                progress.update(
                    task,
                    advance=1,
                    description=f"slot {slot:%H:%M:%S}: {len(results) - len(failed)}"
                    f"/{len(results)} sources ok, {rows} rows",
                )
                for r in failed:
                    console.print(f"[red]{r.error}")
    return out


def equity_table(engine: Engine, sources: list[str]) -> Table:
    table = Table(title="Equity at the last slot (USDT)")
    for column in ("source", "account", "exchange", "equity"):
        table.add_column(column, justify="right" if column == "equity" else "left")
    query = text(
        """
        SELECT e.source, e.external_id, a.exchange, sum(e.equity) AS equity
        FROM account_equity e JOIN accounts a ON a.id = e.account_id
        WHERE e.source = ANY(:sources)
          AND e.slot = (SELECT max(slot) FROM account_equity x WHERE x.source = e.source)
        GROUP BY e.source, e.external_id, a.exchange ORDER BY e.source, e.external_id
        """
    )
    total = 0
    with engine.connect() as conn:
        for source, account, exchange, equity in conn.execute(query, {"sources": sources}):
            total += equity or 0
            table.add_row(source, account, exchange or "", f"{equity:,.2f}" if equity is not None else "")
    table.add_section()
    table.add_row("total", "", "", f"{total:,.2f}")
    return table


def run_demo(
    settings: Settings,
    engine: Engine,
    *,
    cycles: int,
    interval: timedelta,
    plot: Path,
    console: Console,
) -> DemoOutcome:
    started = datetime.now(UTC) - interval
    results = asyncio.run(_cycles(settings, engine, cycles, interval, console))
    names = [s.name for s in settings.sources]
    console.print(equity_table(engine, names))
    wide = report.account_equity(engine, since=started)
    wide = wide[[c for c in wide.columns if c.split("/")[0] in names]]
    report.plot_equity(wide, plot, title="Demo portfolio equity")
    console.print(f"wrote {plot}")
    return DemoOutcome(results=results, plot=plot)
