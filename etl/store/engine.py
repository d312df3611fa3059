"""Which PostgreSQL to use, and the SQLAlchemy engine for it.

Order: `[database] url` in the config, then `ETL_DATABASE_URL`, then the embedded
PostgreSQL (pgserver) under `<data dir>/pgdata`, started on demand. Several `etl`
processes on one data dir share one embedded server; it stops when the last exits.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etl.config import Settings, data_dir
from etl.errors import ConfigError, StoreError

log = logging.getLogger(__name__)
EMBEDDED_DB = "etl"
_servers: dict[Path, Any] = {}  # keep pgserver handles alive for the process's lifetime
_lock = threading.Lock()


def sqlalchemy_url(url: str) -> str:
    """Accept libpq (`postgresql://`, `postgres://`) and SQLAlchemy URLs; use psycopg 3."""
    for prefix in (
        "postgresql+psycopg://",
        "postgresql+psycopg2://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigError(
        f"database url: expected postgresql://... or postgresql+psycopg://..., got {_redact(url)!r}"
    )


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def embedded_url(root: Path | None = None, database: str = EMBEDDED_DB) -> str:
    """Start (or join) the embedded server under the data dir; return a URL for its
    database `database` (`etl`; the demo has its own), created if missing."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI, systemd) and falls back: harmless.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver  # imported here: only the embedded path needs it

    pgdata = (root or data_dir()) / "pgdata"
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            try:
                pgdata.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # ETL_DATA_DIR under a file, or not ours to write
                raise ConfigError(
                    f"data dir {pgdata.parent}: cannot create it ({err.strerror}); set ETL_DATA_DIR "
                    "to a folder you can write, or configure a database"
                ) from None
            log.info("starting embedded PostgreSQL in %s", pgdata)
            try:
                server = pgserver.get_server(pgdata, cleanup_mode="stop")
            except Exception as err:  # pgserver raises plain exceptions with a log path
                raise StoreError(f"embedded PostgreSQL in {pgdata} did not start: {err}") from None
            _servers[pgdata] = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {database};")
        return str(server.get_uri(database))


def drop_embedded(database: str) -> bool:
    """Drop a database of the embedded server (the demo's); False if there was none."""
    engine = make_engine(embedded_url(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
            if found:
                conn.exec_driver_sql(f'DROP DATABASE "{database}" WITH (FORCE)')
        return found is not None
    finally:
        engine.dispose()


def database_url(settings: Settings) -> str:
    url = settings.database.url or os.environ.get("ETL_DATABASE_URL") or embedded_url()
    return sqlalchemy_url(url)


def make_engine(url: str, **kwargs: Any) -> Engine:
    options: dict[str, Any] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
    options.update(kwargs)
    return create_engine(sqlalchemy_url(url), **options)


def engine_for(settings: Settings) -> Engine:
    """The engine of the CLI's commands and of the daemon, without a ping per checkout.

    A command's connections are fresh. The daemon handles a lost database itself: the
    call on a dead connection fails, SQLAlchemy drops every pooled connection of before
    the failure, the slot goes to the spool and the daemon pings until the database
    answers. A ping before each of its transactions cost a round trip per source and
    slot (~8% of the poller's CPU) to spare that one slot the spool.
    """
    return make_engine(database_url(settings), pool_pre_ping=False)


def describe(engine: Engine) -> str:
    """Where the engine points, password hidden: for people."""
    return engine.url.render_as_string(hide_password=True)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def driver_cursor(conn: Connection) -> psycopg.Cursor[Any]:
    """A psycopg cursor on the connection's own transaction: for the loader's COPY, pipeline
    and per-load statements, which SQLAlchemy would only wrap."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver.cursor()
