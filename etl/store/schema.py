"""The contract's tables (shared/CONTRACT.md §3) as SQLAlchemy Core metadata.

Alembic owns the database; this metadata is what the migrations must produce, and a
test compares the two. Every amount is NUMERIC without precision or scale, so any
decimal a venue sends is stored exactly.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, nullable: bool = True) -> Column:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _num(name: str) -> Column:
    return Column(name, Numeric(asdecimal=True), nullable=True)


def _tail() -> list[Column]:
    return [
        _ts("venue_ts"),
        _ts("fetched_at", nullable=False),
        Column("run_id", BigInteger, nullable=False),
        Column("extra", JSONB, nullable=False, server_default="{}"),
    ]


accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("source", Text, nullable=False),
    Column("venue", Text, nullable=False),
    Column("external_id", Text, nullable=False),
    Column("exchange", Text),
    Column("note", Text),
    _ts("first_seen_at", nullable=False),
    _ts("last_seen_at", nullable=False),
    UniqueConstraint("source", "external_id"),
)

BALANCE_VALUES = (
    "total", "available", "frozen", "withdrawable", "equity", "unrealized_pnl",
    "initial_margin", "maintenance_margin", "value_usdt",
)  # fmt: skip
balance_snapshots = Table(
    "balance_snapshots",
    metadata,
    Column("account_id", BigInteger, nullable=False),
    Column("account_type", Text, nullable=False),
    Column("currency", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    *[_num(c) for c in BALANCE_VALUES],
    *_tail(),
    PrimaryKeyConstraint("account_id", "account_type", "currency", "snapshot_ts"),
)

ACCOUNT_VALUES = (
    "equity", "available_margin", "initial_margin", "maintenance_margin",
    "maintenance_margin_rate", "unrealized_pnl",
)  # fmt: skip
account_snapshots = Table(
    "account_snapshots",
    metadata,
    Column("account_id", BigInteger, nullable=False),
    Column("account_type", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    *[_num(c) for c in ACCOUNT_VALUES],
    Column("equity_currency", Text),
    Column("state", Text),
    *_tail(),
    PrimaryKeyConstraint("account_id", "account_type", "snapshot_ts"),
)

POSITION_VALUES = (
    "quantity", "entry_price", "mark_price", "notional", "unrealized_pnl", "realized_pnl",
    "leverage", "margin", "maintenance_margin", "liquidation_price",
)  # fmt: skip
position_snapshots = Table(
    "position_snapshots",
    metadata,
    Column("account_id", BigInteger, nullable=False),
    Column("account_type", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    Column("base", Text),
    Column("quote", Text),
    *[_num(c) for c in POSITION_VALUES],
    Column("margin_mode", Text),
    *_tail(),
    PrimaryKeyConstraint("account_id", "account_type", "symbol", "side", "snapshot_ts"),
    CheckConstraint("side IN ('long', 'short')", name="side"),
    CheckConstraint("margin_mode IN ('cross', 'isolated')", name="margin_mode"),
)

ingestion_runs = Table(
    "ingestion_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("source", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    _ts("started_at", nullable=False),
    _ts("finished_at"),
    # running: claimed by a worker; missed: the slot passed without a poll (daemon)
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("accounts", Integer, nullable=False, server_default="0"),
    Column("balances", Integer, nullable=False, server_default="0"),
    Column("account_rows", Integer, nullable=False, server_default="0"),
    Column("positions", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("worker", Text),
    UniqueConstraint("source", "snapshot_ts"),
    CheckConstraint("status IN ('ok', 'error', 'running', 'missed')", name="status"),
)

raw_payloads = Table(
    "raw_payloads",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("source", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    _ts("fetched_at", nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("run_id", BigInteger),
    UniqueConstraint("source", "snapshot_ts", "endpoint"),
)

Index("ix_ingestion_runs_snapshot_ts", ingestion_runs.c.snapshot_ts)
Index("ix_raw_payloads_snapshot_ts", raw_payloads.c.snapshot_ts)

SNAPSHOT_TABLES = (balance_snapshots, account_snapshots, position_snapshots)
