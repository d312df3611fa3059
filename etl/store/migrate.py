"""Alembic, driven from etl: upgrade, downgrade, current, and the drift check."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from etl.errors import StoreError
from etl.store import locks, partitions
from etl.store.schema import metadata

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(engine: Engine | None = None) -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise StoreError(
            f"migrations not found at {ROOT} (install the project from its checkout: pip install -e .)"
        )
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def _run(engine: Engine, action: str, *args: str) -> str:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, *args)
    out = cfg.stdout
    return out.getvalue() if isinstance(out, io.StringIO) else ""


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        # Several processes may start at once (replicas, a cron job beside the daemon):
        # serialize migrations on a transaction-scoped advisory lock.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({locks.MIGRATION})")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    partitions.forget()  # a migration may have created or dropped partitioned tables


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)
    partitions.forget()


def current(engine: Engine) -> str:
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
    return rev or "(empty database: no revision)"


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
