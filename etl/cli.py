"""The command line: the only place that reads argv and prints for people.

Every error a user can cause (config, database, venue) is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from etl import logs
from etl.config import Settings, load_settings, parse_duration
from etl.errors import ConfigError, EtlError
from etl.pipeline import RunResult, client_for, poll, run_sources
from etl.slots import floor_to_slot, parse_slot

app = typer.Typer(
    help="balance ETL: polls crypto trading accounts and loads exact, idempotent snapshots into PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $ETL_CONFIG, then config/etl.toml, then none).",
        show_default=False,
    ),
]


_engines: list[Engine] = []  # made by the running command; closed when it ends


def one_line_errors(func: F) -> F:
    """EtlError -> one line on stderr, exit 2 for config errors, 1 otherwise; engines closed at the end."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as e:
            err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except EtlError as e:
            err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except DBAPIError as e:  # unreachable or refusing database: one line, not a traceback
            first = str(e.orig or e).strip().splitlines()
            err.print(f"error: database: {first[0] if first else type(e).__name__}", markup=False,
                      highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            while _engines:
                _engines.pop().dispose()

    return wrapper  # type: ignore[return-value]


def _engine(settings: Settings, migrate_first: bool = True) -> Engine:
    """The command's database engine, migrated to head first unless told not to."""
    from etl.store import migrate
    from etl.store.engine import engine_for

    engine = engine_for(settings)
    _engines.append(engine)
    if migrate_first:
        migrate.upgrade(engine)
    return engine


def _summary(results: list[RunResult]) -> Table:
    table = Table()
    for column in (
        "source",
        "venue",
        "slot",
        "status",
        "accounts",
        "balances",
        "positions",
        "written",
        "attempts",
        "seconds",
    ):
        table.add_column(column)
    for r in sorted(results, key=lambda r: r.source):
        table.add_row(
            r.source,
            r.venue,
            r.slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "[green]ok" if r.status == "ok" else "[red]error",
            str(r.counts.get("accounts", "")),
            str(r.counts.get("balances", "")),
            str(r.counts.get("positions", "")),
            str(sum(r.written.values())) if r.written else "",
            str(r.attempts),
            f"{r.seconds:.2f}",
        )
    return table


@app.command()
@one_line_errors
def run(
    once: Annotated[
        bool,
        typer.Option("--once", help="Poll once now (required: the scheduler is `etl daemon`)."),
    ] = False,
    config: ConfigOption = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")
    ] = None,
    slot: Annotated[
        str | None,
        typer.Option(help="Load as this slot (ISO 8601, UTC), e.g. 2026-01-01T00:00:00Z."),
    ] = None,
) -> None:
    """Poll the sources once, load, and print a per-source summary. Exit 1 if any source failed."""
    if not once:
        raise ConfigError("etl run polls once and needs --once; for scheduled polling use `etl daemon`")
    logs.setup()
    settings = load_settings(config)
    sources = settings.select(source)
    if not sources:
        raise ConfigError(f"{settings.path or 'config'}: no sources configured")
    try:
        fixed = parse_slot(slot) if slot else None
    except ValueError as e:
        raise ConfigError(f"--slot: {e}") from None
    engine = _engine(settings)
    slot_of = {s.name: floor_to_slot(fixed or _now(), settings.interval_of(s)) for s in sources}

    async def go() -> list[RunResult]:
        async with httpx.AsyncClient() as client:
            return await run_sources(settings, sources, slot_of, engine, client)

    results = asyncio.run(go())
    out.print(_summary(results))
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        err.print(f"error: {r.error}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


def _now() -> datetime:
    return datetime.now(UTC)


@app.command()
@one_line_errors
def check(config: ConfigOption = None) -> None:
    """Validate the config and try each source once, without writing anything."""
    logs.setup()
    settings = load_settings(config)
    out.print(f"config {settings.path or '(none)'}: ok, {len(settings.sources)} source(s)")

    async def go() -> list[tuple[str, str | None, dict[str, int]]]:
        async with httpx.AsyncClient() as client:
            polled = await asyncio.gather(
                *(
                    poll(
                        s,
                        floor_to_slot(_now(), settings.interval_of(s)),
                        client_for(s, client, settings),
                    )
                    for s in settings.sources
                )
            )
        return [(p.source.name, p.error, p.batch.counts() if p.batch else {}) for p in polled]

    verdicts = asyncio.run(go())
    for name, error, counts in verdicts:
        if error:
            err.print(f"{name}: FAILED {error}", markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(
                f"{name}: ok ({counts['accounts']} accounts, {counts['balances']} balances, "
                f"{counts['positions']} positions)",
                highlight=False,
            )
    raise typer.Exit(1 if any(e for _, e, _ in verdicts) else 0)


@app.command()
@one_line_errors
def demo(
    cycles: Annotated[int, typer.Option(min=1, help="Polling cycles to run.")] = 5,
    interval: Annotated[str, typer.Option(help="Slot interval between cycles, e.g. 2s.")] = "2s",
    plot: Annotated[Path, typer.Option(help="Where to write the equity chart.")] = Path("equity.png"),
) -> None:
    """Zero set-up showcase: simulators + embedded PostgreSQL + N cycles, then equity table and chart."""
    from etl.demo import run_demo, start_simulators

    logs.setup()
    try:
        step = parse_duration(interval)
    except ValueError as e:
        raise ConfigError(f"--interval: {e}") from None
    servers, settings = start_simulators(None)
    try:
        out.print(f"simulators up; {len(settings.sources)} demo sources")
        engine = _engine(settings)
        from etl.store.engine import describe

        out.print(f"database: {describe(engine)}", highlight=False, soft_wrap=True)
        run_demo(settings, engine, cycles=cycles, interval=step, plot=plot, console=out)
    finally:
        for server in servers:
            server.stop()


@app.command()
@one_line_errors
def daemon(
    config: ConfigOption = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.", show_default=False)
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for the metrics endpoint.")] = "0.0.0.0",
) -> None:
    """Poll every source on its interval until SIGTERM/SIGINT, then finish in-flight loads and exit 0."""
    from etl.scheduler import run_daemon
    from etl.store.engine import engine_for

    logs.setup()
    settings = load_settings(config)
    if not settings.sources:
        raise ConfigError(f"{settings.path or 'config'}: no sources configured")
    engine = engine_for(settings)  # not migrated here: the daemon migrates once the database answers
    _engines.append(engine)
    run_daemon(settings, engine, metrics_port=metrics_port, metrics_host=metrics_host)


@app.command()
@one_line_errors
def status(config: ConfigOption = None) -> None:
    """Per source: last slot loaded, last error, slots missed in 24 h, entries in this machine's spool."""
    from etl.config import data_dir
    from etl.spool import Spool
    from etl.status import read_status, spool_only

    settings = load_settings(config)
    spool = Spool(data_dir() / "spool")
    problem = None
    try:
        rows = read_status(_engine(settings, migrate_first=False), settings, spool)
    except (EtlError, DBAPIError) as e:  # the spool is worth showing precisely when the database is down
        rows, problem = spool_only(settings, spool), str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    table = Table()
    for column in ("source", "venue", "every", "last ok slot", "last error", "missed 24h", "spooled"):
        table.add_column(column, no_wrap=column != "last error")  # only the message may wrap
    for r in rows:
        error = f"{r.last_error_slot:%Y-%m-%dT%H:%M:%SZ} {r.last_error}" if r.last_error_slot else ""
        table.add_row(
            r.source,
            r.venue,
            f"{r.interval.total_seconds():g}s",
            f"{r.last_ok:%Y-%m-%dT%H:%M:%SZ}" if r.last_ok else ("?" if problem else "never"),
            error,
            "?" if problem else str(r.missed),
            str(r.spooled),
            style="red" if r.last_error_slot and (r.last_ok is None or r.last_error_slot > r.last_ok) else None,
        )
    out.print(table)
    if problem:
        err.print(f"error: database: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@db_app.command("upgrade")
@one_line_errors
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from etl.store import migrate

    engine = _engine(load_settings(config), migrate_first=False)
    migrate.upgrade(engine, revision)
    out.print(f"database at {migrate.current(engine)}")


@db_app.command("downgrade")
@one_line_errors
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. base or -1.")],
    config: ConfigOption = None,
) -> None:
    """Migrate the database down to REVISION."""
    from etl.store import migrate

    engine = _engine(load_settings(config), migrate_first=False)
    migrate.downgrade(engine, revision)
    out.print(f"database at {migrate.current(engine)}")


@db_app.command("current")
@one_line_errors
def db_current(config: ConfigOption = None) -> None:
    """Print the database's current revision."""
    from etl.store import migrate

    out.print(migrate.current(_engine(load_settings(config), migrate_first=False)))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
