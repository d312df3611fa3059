"""partitioned snapshot tables, hourly and daily rollups, reporting views that stay fast

The three snapshot tables and raw_payloads become range-partitioned on snapshot_ts, one
partition per month (the loader creates them ahead: etl.store.partitions), so retention
drops months instead of deleting rows. raw_payloads loses its `id`: a partitioned
table's keys must hold the partition column, and PostgreSQL < 17 has no identity on
partitioned tables; (source, snapshot_ts, endpoint) was already unique and becomes the key.

Indexes, by measurement (python bench/query.py [--index brin]: 10.8 M balance rows, 100
accounts x 5 currencies, 10-minute slots over 150 days, 2.2 M account rows; embedded
PostgreSQL 16, 2 cores; warm medians of 5 ms):

    besides the primary key, per snapshot table     btree (snapshot_ts, account_id)   BRIN (snapshot_ts)
    one source's rows at a slot (every load: the
      delete of vanished rows, the rollup upserts)                  1.1                   12.0
    latest balances of all accounts                                 4.0                    6.3
    balances of all accounts as of a past time                      7.1                   11.3
    index size, balance_snapshots                               141 MiB                 0.2 MiB
    COPY of the 10.8 M rows + 2.2 M account rows                   148 s                  125 s

The primary key (account_id, account_type, currency, snapshot_ts) has the slot last,
so alone it answers "the rows of account X at slot S" by walking all of X's rows in the
month (the same lookup on the unpartitioned 0001 table: 71 ms, latest balances 574 ms).
BRIN keeps the slot lookups under 100 ms too, but each load makes about seven of them,
so it would cost ~80 ms of server time per load instead of ~8; the btree costs 13 % of
the primary key's size and ~15 % of bulk COPY speed. Chosen: the btree.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:00:00
"""

from __future__ import annotations

import importlib.util
from datetime import UTC
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# table -> its primary key after this revision
PARTITIONED = {
    "balance_snapshots": ("account_id", "account_type", "currency", "snapshot_ts"),
    "account_snapshots": ("account_id", "account_type", "snapshot_ts"),
    "position_snapshots": ("account_id", "account_type", "symbol", "side", "snapshot_ts"),
    "raw_payloads": ("source", "snapshot_ts", "endpoint"),
}
SNAPSHOTS = ("balance_snapshots", "account_snapshots", "position_snapshots")
BALANCE_VALUES = (
    "total", "available", "frozen", "withdrawable", "equity", "unrealized_pnl",
    "initial_margin", "maintenance_margin", "value_usdt",
)  # fmt: skip
ACCOUNT_VALUES = (
    "equity", "available_margin", "initial_margin", "maintenance_margin",
    "maintenance_margin_rate", "unrealized_pnl", "equity_currency",
)  # fmt: skip
# rollup -> (source table, its key besides account_id, values, bucket width)
ROLLUPS = {
    "balances_hourly": ("balance_snapshots", ("account_type", "currency"), BALANCE_VALUES, "hour"),
    "balances_daily": ("balance_snapshots", ("account_type", "currency"), BALANCE_VALUES, "day"),
    "account_equity_hourly": ("account_snapshots", ("account_type",), ACCOUNT_VALUES, "hour"),
    "account_equity_daily": ("account_snapshots", ("account_type",), ACCOUNT_VALUES, "day"),
}

_LATEST = """
    SELECT a.source, a.venue, a.external_id, a.exchange, b.account_type, b.currency,
           b.snapshot_ts, b.total, b.available, b.frozen, b.withdrawable, b.equity,
           b.unrealized_pnl, b.initial_margin, b.maintenance_margin, b.value_usdt,
           b.venue_ts, b.fetched_at, b.account_id
    FROM accounts a
    JOIN LATERAL (SELECT r.snapshot_ts AS slot FROM ingestion_runs r
                  WHERE r.source = a.source AND r.status = 'ok' {before}
                  ORDER BY r.snapshot_ts DESC LIMIT 1) last ON true
    JOIN balance_snapshots b ON b.account_id = a.id AND b.snapshot_ts = last.slot
"""

# An account is expected in a bucket if it was known by the bucket's end and either
# reported at or after its start, or its source failed inside it: a dip from a missing
# account shows as reporting < expected, not as a loss.
_PORTFOLIO_BUCKETS = """
    CREATE VIEW portfolio_equity_{name} AS
    SELECT d.bucket, d.total_equity, d.accounts_reporting, x.accounts_expected
    FROM (SELECT bucket, sum(equity) AS total_equity, count(DISTINCT account_id) AS accounts_reporting
          FROM account_equity_{name} GROUP BY bucket) d
    CROSS JOIN LATERAL (
        SELECT count(*) AS accounts_expected FROM accounts a
        WHERE a.first_seen_at < d.bucket + interval '1 {width}'
          AND (a.last_seen_at >= d.bucket
               OR EXISTS (SELECT 1 FROM ingestion_runs f WHERE f.source = a.source AND f.status <> 'ok'
                          AND f.snapshot_ts >= d.bucket AND f.snapshot_ts < d.bucket + interval '1 {width}'))
    ) x
"""

VIEWS = {
    # The balances of each account at its source's latest successful slot (a currency
    # that was sold out does not linger from an older slot).
    "latest_balances": "CREATE VIEW latest_balances AS " + _LATEST.format(before=""),
    "account_equity": """
        CREATE VIEW account_equity AS
        SELECT s.snapshot_ts AS slot, a.source, a.venue, a.external_id, s.account_type,
               s.equity, s.equity_currency, s.account_id
        FROM account_snapshots s JOIN accounts a ON a.id = s.account_id
    """,
    # Every slot any source attempted; an account is expected at a slot if it was known
    # by then and either reported again later or its source failed at that slot. Per
    # slot (LATERAL), so a filter on `slot` reaches the indexes of every table.
    "portfolio_equity": """
        CREATE VIEW portfolio_equity AS
        SELECT r.slot,
               coalesce(e.total_equity, 0) AS total_equity,
               e.accounts_reporting,
               x.accounts_expected
        FROM (SELECT DISTINCT snapshot_ts AS slot FROM ingestion_runs) r
        CROSS JOIN LATERAL (
            SELECT sum(s.equity) AS total_equity, count(DISTINCT s.account_id) AS accounts_reporting
            FROM account_snapshots s WHERE s.snapshot_ts = r.slot) e
        CROSS JOIN LATERAL (
            SELECT count(*) AS accounts_expected FROM accounts a
            WHERE a.first_seen_at <= r.slot
              AND (a.last_seen_at >= r.slot
                   OR EXISTS (SELECT 1 FROM ingestion_runs f WHERE f.source = a.source
                              AND f.snapshot_ts = r.slot AND f.status <> 'ok'))) x
    """,
    "portfolio_equity_hourly": _PORTFOLIO_BUCKETS.format(name="hourly", width="hour"),
    "portfolio_equity_daily": _PORTFOLIO_BUCKETS.format(name="daily", width="day"),
}
# Same rows as latest_balances, as of a past time: inlined by the planner (one SQL
# SELECT, STABLE), so `at` prunes partitions like a constant would.
FUNCTION = (
    "CREATE FUNCTION balances_as_of(at timestamptz) RETURNS SETOF latest_balances "
    "LANGUAGE sql STABLE AS $$" + _LATEST.format(before="AND r.snapshot_ts <= at") + "$$"
)


def _columns(table: str) -> list[str]:
    return list(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"t": table},
        )
        .scalars()
    )


def _copy(source: str, target: str) -> None:
    cols = ", ".join(_columns(target))
    op.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {source}")


def _partitions_for(table: str, data: str) -> None:
    """The monthly partitions the rows of `data` need (the loader makes the rest)."""
    months = op.get_bind().execute(
        sa.text(f"SELECT DISTINCT date_trunc('month', snapshot_ts, 'UTC') FROM {data}")
    )
    for (month,) in months:
        lower = month.astimezone(UTC)
        upper = lower.replace(year=lower.year + lower.month // 12, month=lower.month % 12 + 1)
        op.execute(
            f"CREATE TABLE {table}_p{lower:%Y_%m} PARTITION OF {table} "
            f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
        )


def _rollup_sql(rollup: str) -> str:
    source, keys, values, width = ROLLUPS[rollup]
    bucket = f"date_trunc('{width}', snapshot_ts, 'UTC')"
    key = ", ".join(("account_id", *keys))
    cols = ", ".join(("account_id", "bucket", *keys, "snapshot_ts", *values))
    picked = ", ".join(("account_id", bucket, *keys, "snapshot_ts", *values))
    return (
        f"INSERT INTO {rollup} ({cols}) SELECT DISTINCT ON ({key}, {bucket}) {picked} "
        f"FROM {source} ORDER BY {key}, {bucket}, snapshot_ts DESC"
    )


def _create_rollup(rollup: str) -> None:
    _, keys, values, _ = ROLLUPS[rollup]
    op.create_table(
        rollup,
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *[sa.Column(k, sa.Text(), nullable=False) for k in keys],
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        *[sa.Column(v, sa.Text() if v == "equity_currency" else sa.Numeric(), nullable=True) for v in values],
        sa.PrimaryKeyConstraint("account_id", "bucket", *keys, name=f"pk_{rollup}"),
    )
    # Every load updates the bucket's row of each key: room on the page keeps those
    # updates HOT (no new index entries; the updated columns are not indexed).
    op.execute(f"ALTER TABLE {rollup} SET (fillfactor = 70)")
    op.create_index(f"ix_{rollup}_bucket", rollup, ["bucket"])
    op.execute(_rollup_sql(rollup))


def upgrade() -> None:
    for name in ("portfolio_equity", "account_equity", "latest_balances"):
        op.execute(f"DROP VIEW {name}")
    for table, key in PARTITIONED.items():
        old = f"{table}_unpartitioned"
        op.rename_table(table, old)
        op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{old}")
        op.execute(
            f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (snapshot_ts)"
        )
        if table == "raw_payloads":
            op.drop_index("ix_raw_payloads_snapshot_ts", table_name=old)
            op.execute("ALTER TABLE raw_payloads DROP COLUMN id")
            op.create_index("ix_raw_payloads_snapshot_ts", table, ["snapshot_ts"])
        else:
            op.create_index(f"ix_{table}_snapshot_ts_account_id", table, ["snapshot_ts", "account_id"])
        op.create_primary_key(f"pk_{table}", table, list(key))
        _partitions_for(table, old)
        _copy(old, table)
        op.drop_table(old)
    op.create_index(
        "ix_ingestion_runs_ok", "ingestion_runs", ["source", "snapshot_ts"], postgresql_where="status = 'ok'"
    )
    op.create_index(
        "ix_ingestion_runs_not_ok",
        "ingestion_runs",
        ["source", "snapshot_ts"],
        postgresql_where="status <> 'ok'",
    )
    for rollup in ROLLUPS:
        _create_rollup(rollup)
    for sql in VIEWS.values():
        op.execute(sql)
    op.execute(FUNCTION)


def _initial_views() -> dict[str, str]:
    """Revision 0001's view definitions, read from that revision rather than copied."""
    path = Path(__file__).with_name("0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("_revision_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.VIEWS)


def downgrade() -> None:
    op.execute("DROP FUNCTION balances_as_of(timestamptz)")
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    for rollup in reversed(ROLLUPS):
        op.drop_table(rollup)
    op.drop_index("ix_ingestion_runs_not_ok", table_name="ingestion_runs")
    op.drop_index("ix_ingestion_runs_ok", table_name="ingestion_runs")
    for table, key in reversed(PARTITIONED.items()):
        parted = f"{table}_partitioned"
        op.rename_table(table, parted)
        op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{parted}")
        op.execute(f"CREATE TABLE {table} (LIKE {parted} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        _copy(parted, table)
        op.drop_table(parted)  # and its partitions
        if table == "raw_payloads":
            op.execute("ALTER TABLE raw_payloads ADD COLUMN id bigint GENERATED BY DEFAULT AS IDENTITY")
            op.create_primary_key("pk_raw_payloads", table, ["id"])
            op.create_unique_constraint(
                "uq_raw_payloads_source_snapshot_ts_endpoint", table, ["source", "snapshot_ts", "endpoint"]
            )
            op.create_index("ix_raw_payloads_snapshot_ts", table, ["snapshot_ts"])
        else:
            op.create_primary_key(f"pk_{table}", table, list(key))
    for sql in _initial_views().values():
        op.execute(sql)
