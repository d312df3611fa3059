"""The contract's tables (shared/CONTRACT.md §3) as SQLAlchemy Core metadata.

Alembic owns the database; this metadata is what the migrations must produce, and a
test compares the two. Every amount is NUMERIC without precision or scale, so any
decimal a venue sends is stored exactly.

The three snapshot tables and `raw_payloads` are range-partitioned on `snapshot_ts`
(one partition per month, created on demand by `etl.store.partitions`), so retention
drops whole months. The rollups (hourly and daily, the last value of each key in the
bucket: closed buckets in `<rollup>_closed` tables, open ones computed by the views of
the rollup's name) are what long-range reports read; retention keeps them.
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

PARTITION_BY = "RANGE (snapshot_ts)"

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
    postgresql_partition_by=PARTITION_BY,
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
    postgresql_partition_by=PARTITION_BY,
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
    postgresql_partition_by=PARTITION_BY,
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
    # table -> digest of the rows the last writing load of the slot left in that table
    # (etl.store.upsert: an unchanged re-load that matches it skips the comparison); NULL:
    # not known (a batched load, a row from before migration 0006)
    Column("row_digests", JSONB),
    UniqueConstraint("source", "snapshot_ts"),
    CheckConstraint("status IN ('ok', 'error', 'running', 'missed')", name="status"),
)

# The key is (source, slot, endpoint): a partitioned table's keys must hold the partition
# column, and PostgreSQL before 17 has no identity columns on partitioned tables.
raw_payloads = Table(
    "raw_payloads",
    metadata,
    Column("source", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    _ts("snapshot_ts", nullable=False),
    _ts("fetched_at", nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("run_id", BigInteger),
    PrimaryKeyConstraint("source", "snapshot_ts", "endpoint"),
    postgresql_partition_by=PARTITION_BY,
)

Index("ix_ingestion_runs_snapshot_ts", ingestion_runs.c.snapshot_ts)
# A source's latest ok slot (latest_balances, balances_as_of) and its failures in a range
# (portfolio_equity*): a source failing for weeks must not make either a long index walk.
Index(
    "ix_ingestion_runs_ok",
    ingestion_runs.c.source,
    ingestion_runs.c.snapshot_ts,
    postgresql_where=ingestion_runs.c.status == "ok",
)
Index(
    "ix_ingestion_runs_not_ok",
    ingestion_runs.c.source,
    ingestion_runs.c.snapshot_ts,
    postgresql_where=ingestion_runs.c.status != "ok",
)
Index("ix_raw_payloads_snapshot_ts", raw_payloads.c.snapshot_ts)

# The rows of one slot (the loader's delete and rollup upsert, latest_balances,
# balances_as_of, portfolio_equity): the primary key leads with account_id and ends with
# snapshot_ts, so alone it walks every row of the account in the month. Chosen over BRIN
# by measurement: see migrations/versions/0002_partitions_rollups.py.
for _table in (balance_snapshots, account_snapshots, position_snapshots):
    Index(f"ix_{_table.name}_snapshot_ts_account_id", _table.c.snapshot_ts, _table.c.account_id)

SNAPSHOT_TABLES = (balance_snapshots, account_snapshots, position_snapshots)
PARTITIONED_TABLES = (*SNAPSHOT_TABLES, raw_payloads)


def _rollup(name: str, keys: list[str], values: tuple[str, ...], extra: list[Column]) -> Table:
    """The closed buckets of a rollup: the last row of each key in each bucket before the
    width's watermark; `snapshot_ts` says which slot it came from. The view `name` adds
    the open buckets (migration 0004)."""
    return Table(
        f"{name}_closed",
        metadata,
        Column("account_id", BigInteger, nullable=False),
        _ts("bucket", nullable=False),
        *[Column(k, Text, nullable=False) for k in keys],
        _ts("snapshot_ts", nullable=False),
        *[_num(c) for c in values],
        *extra,
        # account first, then time: "one account over a range" is one index range.
        PrimaryKeyConstraint("account_id", "bucket", *keys),
    )


balances_hourly = _rollup("balances_hourly", ["account_type", "currency"], BALANCE_VALUES, [])
balances_daily = _rollup("balances_daily", ["account_type", "currency"], BALANCE_VALUES, [])
account_equity_hourly = _rollup(
    "account_equity_hourly", ["account_type"], ACCOUNT_VALUES, [Column("equity_currency", Text)]
)
account_equity_daily = _rollup(
    "account_equity_daily", ["account_type"], ACCOUNT_VALUES, [Column("equity_currency", Text)]
)
# (closed rollup, the snapshot table it summarizes, bucket width)
ROLLUPS: tuple[tuple[Table, Table, str], ...] = (
    (balances_hourly, balance_snapshots, "hour"),
    (balances_daily, balance_snapshots, "day"),
    (account_equity_hourly, account_snapshots, "hour"),
    (account_equity_daily, account_snapshots, "day"),
)
for _rollup_table, *_ in ROLLUPS:
    # Every-bucket queries over the whole range (portfolio_equity_daily) group by bucket.
    Index(f"ix_{_rollup_table.name}_bucket", _rollup_table.c.bucket)

# Per width ('hour', 'day'): the closed tables hold exactly the buckets before
# `closed_until`; the views compute the rest from the snapshots. No row: nothing closed.
rollup_watermarks = Table(
    "rollup_watermarks",
    metadata,
    Column("width", Text, primary_key=True),
    _ts("closed_until", nullable=False),
    CheckConstraint("width IN ('hour', 'day')", name="width"),
)
