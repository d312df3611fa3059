"""Alembic, driven from etl: upgrade, downgrade, current, the schema check and the drift check.

The revisions are the checkout's top-level `migrations/` folder; a wheel carries the same
files as `etl/migrations` (pyproject.toml maps the one onto the other), so an installed
etl migrates without its checkout. No alembic.ini is needed: the options are set here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine

from etl.errors import ConfigError, StoreError
from etl.store import locks, partitions
from etl.store.schema import metadata

_PACKAGE = Path(__file__).resolve().parents[1]
SCRIPT_LOCATIONS = (_PACKAGE / "migrations", _PACKAGE.parent / "migrations")  # installed, checkout


def script_location() -> Path:
    for folder in SCRIPT_LOCATIONS:
        if (folder / "env.py").exists():
            return folder
    raise StoreError(f"migrations not found in {' or '.join(map(str, SCRIPT_LOCATIONS))}: a broken install?")


def alembic_config() -> Config:
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    return cfg


@contextmanager
def _one_line() -> Iterator[None]:
    """Alembic's refusals (an unknown revision, a database at a revision this code does
    not have) are the user's to fix: one line, not its traceback."""
    try:
        yield
    except CommandError as err:
        raise ConfigError(f"database migration: {str(err).splitlines()[0]}") from None


def head() -> str:
    with _one_line():
        rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None  # the revisions ship with the package
    return rev


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn, _one_line():
        # Several processes may start at once (replicas, a cron job beside the daemon):
        # serialize migrations on a transaction-scoped advisory lock.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({locks.MIGRATION})")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    partitions.forget()  # a migration may have created or dropped partitioned tables


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn, _one_line():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    partitions.forget()


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def current(engine: Engine) -> str:
    return revision_of(engine) or "(empty database: no revision)"


def require_head(engine: Engine) -> None:
    """For the commands that only read or tidy the store: they never change the schema,
    so a database behind (or ahead of) this code is a one-line refusal."""
    at, want = revision_of(engine), head()
    if at == want:
        return
    if at is None:
        raise ConfigError("the database has no schema yet: run `etl db upgrade`")
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(at)
    except CommandError:
        raise ConfigError(
            f"the database is at revision {at}, which this etl does not know (newer code?); it knows up to {want}"
        ) from None
    raise ConfigError(f"the database is at revision {at}, this etl needs {want}: run `etl db upgrade`")


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """What Alembic compares: not the views, which the migrations create as SQL, and not the
    monthly partitions, which the loader creates on demand (etl.store.partitions) and
    retention drops: they are data, not schema; their columns, keys and indexes are the
    parent's, which is compared."""
    if type_ == "table" and reflected and compare_to is None and name is not None:
        return not (name in VIEWS or partitions.CHILD_NAME.match(name))
    return True


VIEWS = {
    "latest_balances",
    "account_equity",
    "portfolio_equity",
    "portfolio_equity_hourly",
    "portfolio_equity_daily",
    # the rollups: closed buckets in <name>_closed tables, open ones computed (0004)
    "balances_hourly",
    "balances_daily",
    "account_equity_hourly",
    "account_equity_daily",
}


def drift(engine: Engine) -> list[object]:
    """Differences between the metadata and the migrated database (empty = none)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        return list(compare_metadata(ctx, metadata))
