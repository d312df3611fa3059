"""The command line: the only place that reads argv and prints for people.

Every error a user can cause (config, database, venue) is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from etl import logs
from etl.config import Settings, SourceConfig, check_for_daemon, load_settings, parse_duration
from etl.errors import ConfigError, EtlError
from etl.pipeline import RunResult, command_deadline, poll_pooled, run_sources
from etl.slots import floor_to_slot, parse_slot, refuse_future
from etl.venues.http import HostPools

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

DeadlineOption = Annotated[
    str | None,
    typer.Option(
        help="Stop polling after this long, e.g. 45s; sources without an answer by then fail "
        "(default: [schedule] deadline, else 3/4 of the shortest interval).",
        show_default=False,
    ),
]
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
            err.print(
                f"error: database: {first[0] if first else type(e).__name__}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        finally:
            while _engines:
                _engines.pop().dispose()

    return wrapper  # type: ignore[return-value]


def _engine(settings: Settings, schema: Literal["upgrade", "require", "any"] = "require") -> Engine:
    """The command's database engine. `run` and `demo` migrate it to head (contract);
    the commands that read or tidy the store never change the schema and refuse a
    database at another revision ("run `etl db upgrade`"); `db` and `status` take any."""
    from etl.store import migrate
    from etl.store.engine import engine_for

    engine = engine_for(settings)
    _engines.append(engine)
    if schema == "upgrade":
        migrate.upgrade(engine)
    elif schema == "require":
        migrate.require_head(engine)
    return engine


def _summary(results: list[RunResult]) -> Table:
    """Narrow enough for 80 columns: the slot goes in the title when every source shares it."""
    slots = {r.slot for r in results}
    one = len(slots) == 1
    table = Table(title=f"slot {min(slots):%Y-%m-%dT%H:%M:%SZ}" if one and slots else None)
    table.add_column("source", overflow="fold", min_width=12)
    table.add_column("venue", overflow="fold", min_width=6)
    if not one:
        table.add_column("slot", no_wrap=True)
    for column in ("status", "accts", "bals", "pos", "rows", "tries", "secs"):
        table.add_column(column, no_wrap=True, justify="left" if column == "status" else "right")
    for r in sorted(results, key=lambda r: r.source):
        table.add_row(
            r.source,
            r.venue,
            *([] if one else [r.slot.strftime("%Y-%m-%dT%H:%M:%SZ")]),
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
    deadline: DeadlineOption = None,
) -> None:
    """Poll the sources once, load, and print a per-source summary. Exit 1 if any source failed."""
    started = time.monotonic()
    if not once:
        raise ConfigError("etl run polls once and needs --once; for scheduled polling use `etl daemon`")
    logs.setup()
    settings = load_settings(config)
    sources = settings.select(source)
    if not sources:
        raise ConfigError(f"{settings.path or 'config'}: no sources configured")
    try:
        fixed = parse_slot(slot) if slot else None
        for s in sources if fixed else ():
            refuse_future(fixed, _now(), settings.interval_of(s))  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"--slot: {e}") from None
    ends = started + _deadline(deadline, settings, sources)
    engine = _engine(settings, schema="upgrade")
    slot_of = {s.name: floor_to_slot(fixed or _now(), settings.interval_of(s)) for s in sources}

    results = asyncio.run(run_sources(settings, sources, slot_of, engine, deadline=ends))
    out.print(_summary(results))
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        err.print(f"error: {r.error}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


def _now() -> datetime:
    return datetime.now(UTC)


def _deadline(option: str | None, settings: Settings, sources: list[SourceConfig]) -> float:
    """Seconds the command may poll: --deadline, else the config's or the default one."""
    try:
        chosen = parse_duration(option) if option else command_deadline(settings, sources)
    except ValueError as e:
        raise ConfigError(f"--deadline: {e}") from None
    return chosen.total_seconds()


@app.command()
@one_line_errors
def check(config: ConfigOption = None, deadline: DeadlineOption = None) -> None:
    """Validate the config and try each source once, without writing anything."""
    started = time.monotonic()
    logs.setup()
    settings = load_settings(config)
    check_for_daemon(settings)
    ends = started + _deadline(deadline, settings, settings.sources)
    out.print(f"config {settings.path or '(none)'}: ok, {len(settings.sources)} source(s)")

    async def go() -> list[tuple[str, str | None, dict[str, int]]]:
        async with HostPools() as pools:
            polled = await asyncio.gather(
                *(
                    poll_pooled(s, floor_to_slot(_now(), settings.interval_of(s)), settings, pools, ends)
                    for s in settings.sources
                )
            )
        return [(p.source.name, p.error, p.batch.counts() if p.batch else {}) for p in polled]

    verdicts = asyncio.run(go())
    for name, error, counts in verdicts:
        if error:
            # the error names its source already: `name: FAILED name: ...` said it twice
            err.print(
                f"{name}: FAILED {error.removeprefix(f'{name}: ')}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
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
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Put the demo data here (default: its own database etl_demo, embedded).", show_default=False
        ),
    ] = None,
    drop: Annotated[
        bool, typer.Option("--drop", help="Remove the embedded demo database, and exit.")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Then open the dashboard on the demo's data (etl serve) until Ctrl-C."),
    ] = False,
    port: Annotated[int, typer.Option(help="The dashboard's port, with --serve.")] = 8080,
) -> None:
    """Zero set-up showcase: simulators + embedded PostgreSQL + N cycles, then equity table and chart."""
    from etl.demo import DEMO_DATABASE, run_demo, start_simulators
    from etl.store.engine import describe, drop_embedded, embedded_url

    logs.setup()
    if drop:
        out.print(
            f"dropped database {DEMO_DATABASE}"
            if drop_embedded(DEMO_DATABASE)
            else f"no database {DEMO_DATABASE}: nothing to drop"
        )
        return
    try:
        step = parse_duration(interval)
    except ValueError as e:
        raise ConfigError(f"--interval: {e}") from None
    servers, settings = start_simulators(database_url or embedded_url(database=DEMO_DATABASE))
    try:
        out.print(f"simulators up; {len(settings.sources)} demo sources")
        engine = _engine(settings, schema="upgrade")
        out.print(f"database: {describe(engine)}", highlight=False, soft_wrap=True)
        run_demo(settings, engine, cycles=cycles, interval=step, plot=plot, console=out)
    finally:
        for server in servers:
            server.stop()
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    if not database_url:
        out.print(
            f"the demo has its own database: report on it with ETL_DATABASE_URL='{url}' etl report "
            "equity; remove it with `etl demo --drop`",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    if serve:
        _serve_dashboard(settings, "127.0.0.1", port, None)
    else:
        out.print(
            f"see it in a browser: etl demo --serve, or ETL_DATABASE_URL='{url}' etl serve",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


@app.command()
@one_line_errors
def sim(
    interval: Annotated[str, typer.Option(help="The interval written into the printed config.")] = "10s",
    port: Annotated[
        int, typer.Option(help="First port (the four simulators take it and the next three; 0: free ports).")
    ] = 0,
) -> None:
    """Run the venue simulators on loopback until Ctrl-C; print a config for them and its secrets' env lines."""
    import time

    from etl.config import parse_settings
    from etl.demo import config_text, env_lines, serve_simulators

    try:
        parse_settings({"schedule": {"interval": interval}})
    except ConfigError as e:  # "config: schedule.interval: <problem>"
        raise ConfigError(f"--interval: {str(e).split(': ', 2)[-1]}") from None
    servers, sources = serve_simulators(port)
    try:
        sys.stdout.write("\n".join(["# the secrets the config refers to:", *env_lines(sources), ""]) + "\n")
        sys.stdout.write(config_text(sources, interval) + "# end of config\n")
        sys.stdout.flush()
        err.print(
            "simulators up on loopback: save the config, export the lines above, try "
            "`etl run --once --config F`; Ctrl-C stops them",
            highlight=False,
            soft_wrap=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
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
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
            help="Daemon processes sharing the sources (one per core: a process uses one); "
            "process i serves metrics on --metrics-port + i.",
        ),
    ] = 1,
) -> None:
    """Poll every source on its interval until SIGTERM/SIGINT, then finish in-flight loads and exit 0."""
    from etl.config import check_for_daemon
    from etl.scheduler import run_daemon
    from etl.store.engine import database_url, engine_for

    logs.setup()
    settings = load_settings(config)
    if not settings.sources:
        raise ConfigError(f"{settings.path or 'config'}: no sources configured")
    if processes > 1:
        from etl.daemon.processes import Processes

        check_for_daemon(settings)  # one line here, not one per child
        url = database_url(settings)  # an embedded server is started here, for all of them
        parent = Processes(processes, config, url, metrics_port=metrics_port, metrics_host=metrics_host)
        raise typer.Exit(parent.run())
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

    settings = load_settings(config, secrets=False)
    spool = Spool(data_dir() / "spool")
    problem = None
    try:
        rows = read_status(_engine(settings), settings, spool)
    except (EtlError, DBAPIError) as e:  # the spool is worth showing precisely when the database is down
        rows, problem = (
            spool_only(settings, spool),
            str(getattr(e, "orig", None) or e).strip().splitlines()[0],
        )
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
            style="red"
            if r.last_error_slot and (r.last_ok is None or r.last_error_slot > r.last_ok)
            else None,
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

    engine = _engine(load_settings(config, secrets=False), schema="any")
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

    engine = _engine(load_settings(config, secrets=False), schema="any")
    migrate.downgrade(engine, revision)
    out.print(f"database at {migrate.current(engine)}")


@db_app.command("current")
@one_line_errors
def db_current(config: ConfigOption = None) -> None:
    """Print the database's current revision."""
    from etl.store import migrate

    out.print(migrate.current(_engine(load_settings(config, secrets=False), schema="any")))


report_app = typer.Typer(
    help="Balances and equity for people: tables, CSV, JSON, charts.", no_args_is_help=True
)
app.add_typer(report_app, name="report")
FormatOption = Annotated[str, typer.Option("--format", help="table, csv or json.")]
AccountOption = Annotated[
    str | None, typer.Option(help="Only this account: its source, external id or source/external_id.")
]


def _time_option(name: str, value: str | None) -> datetime | None:
    from etl.report import parse_time

    try:
        return parse_time(value) if value else None
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _format_option(value: str) -> str:
    from etl.report import FORMATS

    if value not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {value!r}")
    return value


def _emit(rendered: Any) -> None:
    """CSV and JSON go to stdout untouched (for pipes); tables through rich."""
    if isinstance(rendered, str):
        sys.stdout.write(rendered if rendered.endswith("\n") else rendered + "\n")
        return
    for table in rendered if isinstance(rendered, list) else [rendered]:
        out.print(
            table
            if Measurement.get(out, out.options.update(max_width=10_000), table).maximum <= out.width
            else _vertical(table)
        )


def _vertical(table: Table) -> Table:
    """A table too wide for the terminal, one record per block of `column  value` lines:
    rich would otherwise crop the numbers (no_wrap) to fit."""
    shown = Table(title=table.title, caption=table.caption, show_header=False, box=None)
    shown.add_column(style="bold", overflow="fold")
    shown.add_column(overflow="fold")
    columns = [(str(c.header) or "note", list(c.cells)) for c in table.columns]
    for n in range(table.row_count):
        for header, cells in columns:
            if str(cells[n]):
                shown.add_row(header, cells[n])
        shown.add_row("", "")
    return shown


@report_app.command("balances")
@one_line_errors
def report_balances(
    config: ConfigOption = None,
    at: Annotated[
        str | None, typer.Option(help="As of this time (ISO 8601, or an age like 2h); default: the latest.")
    ] = None,
    account: AccountOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Balances of every account at its source's latest ok slot, or as of --at (exact decimals)."""
    from etl import report

    moment, fmt = _time_option("--at", at), _format_option(fmt)
    _emit(
        report.render_balances(
            report.balances(_engine(load_settings(config, secrets=False)), moment, account), fmt
        )
    )


@report_app.command("equity")
@one_line_errors
def report_equity(
    config: ConfigOption = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, or an age like 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (ISO 8601, or an age).")] = None,
    freq: Annotated[
        str, typer.Option(help="Period: a duration (15m, 1h, 1d), slot (as loaded) or auto (by the span).")
    ] = "auto",
    account: AccountOption = None,
    fmt: FormatOption = "table",
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the equity and drawdowns to this PNG.", show_default=False)
    ] = None,
) -> None:
    """Equity per account and total, resampled; returns, max drawdown, incomplete periods flagged."""
    from etl import report

    start, end, fmt = _time_option("--since", since), _time_option("--until", until), _format_option(fmt)
    try:
        step = report.parse_freq(freq)
    except ValueError as e:
        raise ConfigError(f"--freq: {e}") from None
    inputs = report.load_equity(_engine(load_settings(config, secrets=False)), start, end, step, account)
    analysis = report.analyze(inputs)
    _emit(report.render_equity(analysis, fmt))
    if plot:
        report.plot_equity(
            inputs.equity, plot, title="Portfolio equity", incomplete=analysis.periods.incomplete
        )
        err.print(f"wrote {plot}", highlight=False)


@app.command()
@one_line_errors
def replay(
    config: ConfigOption = None,
    since: Annotated[
        str | None, typer.Option(help="Slots from this time (ISO 8601, or an age like 2d).")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")
    ] = None,
) -> None:
    """Re-normalize stored raw payloads and load them again (after a normalizer fix). Idempotent."""
    from etl.replay import replay as replay_slots

    logs.setup()
    settings = load_settings(config, secrets=False)
    start = _time_option("--since", since)
    report = replay_slots(_engine(settings), settings, since=start, sources=source)
    for slot in report.failed[:10]:
        err.print(f"still failing: {slot.slot:%Y-%m-%dT%H:%M:%SZ} {slot.error}", markup=False, soft_wrap=True)
    out.print(report.summary(), highlight=False, soft_wrap=True)


@app.command()
@one_line_errors
def prune(
    config: ConfigOption = None,
    older_than: Annotated[
        str | None, typer.Option(help="Horizon, e.g. 90d (default: \\[retention] older_than, else 90d).")
    ] = None,
) -> None:
    """Retention: drop snapshot and raw-payload months older than the horizon; rollups are kept."""
    from datetime import timedelta

    from etl.store.retention import prune as prune_months

    settings = load_settings(config, secrets=False)
    try:
        horizon = parse_duration(older_than) if older_than else None
    except ValueError as e:
        raise ConfigError(f"--older-than: {e}") from None
    horizon = horizon or (settings.retention.older_than if settings.retention else timedelta(days=90))
    report = prune_months(_engine(settings), horizon)
    for d in report.dropped:
        rows = f"~{d.rows:,} rows" if d.rows is not None else "rows not counted"
        out.print(
            f"dropped {d.partition} [{d.lower:%Y-%m-%d}, {d.upper:%Y-%m-%d}): {rows}, {d.bytes / 2**20:,.1f} MiB",
            highlight=False,
            soft_wrap=True,
        )
    out.print(report.summary(), highlight=False, soft_wrap=True)


@app.command()
@one_line_errors
def forget(
    slot: Annotated[str, typer.Option(help="The slot loaded by mistake (ISO 8601, UTC).")],
    config: ConfigOption = None,
    source: Annotated[
        str | None, typer.Option("--source", "-s", help="Only this source's load (default: every source).")
    ] = None,
) -> None:
    """Remove a slot loaded by mistake: its rows, run records, raw payloads and rollup effects, in one transaction."""
    from etl.store.forget import forget as forget_slot

    try:
        moment = parse_slot(slot)
    except ValueError as e:
        raise ConfigError(f"--slot: {e}") from None
    out.print(
        forget_slot(_engine(load_settings(config)), moment, source).summary(moment),
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@one_line_errors
def rollup(
    config: ConfigOption = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Recompute the range from the fine rows.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="From this time (default: the oldest month held).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (default: the newest).")] = None,
) -> None:
    """Rebuild the closed hourly and daily rollup buckets of a range (after a replay or a manual fix)."""
    from etl.store.rollups import rebuild as rebuild_rollups

    if not rebuild:
        raise ConfigError("etl rollup needs --rebuild (the loader keeps the rollups current by itself)")
    start, end = _time_option("--since", since), _time_option("--until", until)
    done = rebuild_rollups(_engine(load_settings(config, secrets=False)), start, end)
    for table in sorted({d.table for d in done}):
        mine = [d for d in done if d.table == table]
        out.print(
            f"{table}: {sum(d.rows for d in mine):,} rows over "
            f"[{min(d.since for d in mine):%Y-%m-%d %H:%M}, {max(d.until for d in mine):%Y-%m-%d %H:%M})",
            highlight=False,
            soft_wrap=True,
        )
    if not done:
        out.print("nothing to rebuild: no closed bucket with snapshot rows in that range")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.command()
@one_line_errors
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; off loopback a token is required.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ETL_SERVE_TOKEN",
            help="Token every request must carry (header, cookie or ?token= once). Default: $ETL_SERVE_TOKEN.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Read-only web dashboard and JSON API over the store (no venue secret needed)."""
    if host not in LOOPBACK and not host.startswith("127.") and not token:
        raise ConfigError(f"--host {host}: off loopback the dashboard needs --token or ETL_SERVE_TOKEN")
    _serve_dashboard(load_settings(config, secrets=False), host, port, token)


def _serve_dashboard(settings: Settings, host: str, port: int, token: str | None) -> None:
    import uvicorn

    from etl.config import data_dir
    from etl.spool import Spool
    from etl.store import migrate
    from etl.store.engine import database_url, make_engine
    from etl.web.app import Dashboard, create_app

    # Read-only transactions: whatever a route runs, the dashboard cannot write.
    engine = make_engine(
        database_url(settings),
        connect_args={"connect_timeout": 5, "options": "-c default_transaction_read_only=on"},
    )
    _engines.append(engine)
    migrate.require_head(engine)
    dashboard = Dashboard(engine, settings, Spool(data_dir() / "spool"))
    shown = f"[{host}]" if ":" in host else host
    out.print(
        f"dashboard on http://{shown}:{port}/ (read-only; Ctrl-C stops it)", markup=False, highlight=False
    )
    uvicorn.run(
        create_app(dashboard, token=token), host=host, port=port, log_level="warning", access_log=False
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
