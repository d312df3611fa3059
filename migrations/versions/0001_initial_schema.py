"""initial schema: the contract's six tables and three reporting views

Revision ID: 0001
Revises:
Create Date: 2026-11-22 00:12:20.737828
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# No foreign keys from the snapshot tables: they are the hot path of every load, and
# the loader only writes account ids it has just upserted in the same transaction.

VIEWS = {
    # The balances of each account at its source's latest successful slot (a currency
    # that was sold out does not linger from an older slot).
    "latest_balances": """
        CREATE VIEW latest_balances AS
        SELECT a.source, a.venue, a.external_id, a.exchange, b.account_type, b.currency,
               b.snapshot_ts, b.total, b.available, b.frozen, b.withdrawable, b.equity,
               b.unrealized_pnl, b.initial_margin, b.maintenance_margin, b.value_usdt,
               b.venue_ts, b.fetched_at, b.account_id
        FROM accounts a
        JOIN LATERAL (SELECT max(r.snapshot_ts) AS slot FROM ingestion_runs r
                      WHERE r.source = a.source AND r.status = 'ok') last ON true
        JOIN balance_snapshots b ON b.account_id = a.id AND b.snapshot_ts = last.slot
    """,
    "account_equity": """
        CREATE VIEW account_equity AS
        SELECT s.snapshot_ts AS slot, a.source, a.venue, a.external_id, s.account_type,
               s.equity, s.equity_currency, s.account_id
        FROM account_snapshots s JOIN accounts a ON a.id = s.account_id
    """,
    # Every slot any source attempted; an account is expected at a slot if it was known
    # by then and either reported again later or its source failed at that slot, so a
    # dip from a missing account shows as reporting < expected, not as a loss.
    "portfolio_equity": """
        CREATE VIEW portfolio_equity AS
        SELECT r.slot,
               coalesce(e.total_equity, 0) AS total_equity,
               coalesce(e.accounts_reporting, 0) AS accounts_reporting,
               (SELECT count(*) FROM accounts a
                WHERE a.first_seen_at <= r.slot
                  AND (a.last_seen_at >= r.slot
                       OR EXISTS (SELECT 1 FROM ingestion_runs f WHERE f.source = a.source
                                  AND f.snapshot_ts = r.slot AND f.status <> 'ok'))
               ) AS accounts_expected
        FROM (SELECT DISTINCT snapshot_ts AS slot FROM ingestion_runs) r
        LEFT JOIN (SELECT snapshot_ts, sum(equity) AS total_equity,
                          count(DISTINCT account_id) AS accounts_reporting
                   FROM account_snapshots GROUP BY snapshot_ts) e ON e.snapshot_ts = r.slot
    """,
}


def upgrade() -> None:
    op.create_table(
        "account_snapshots",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("account_type", sa.Text(), nullable=False),
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("equity", sa.Numeric(), nullable=True),
        sa.Column("available_margin", sa.Numeric(), nullable=True),
        sa.Column("initial_margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin_rate", sa.Numeric(), nullable=True),
        sa.Column("unrealized_pnl", sa.Numeric(), nullable=True),
        sa.Column("equity_currency", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("venue_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id", "account_type", "snapshot_ts", name=op.f("pk_account_snapshots")
        ),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_accounts_source_external_id")),
    )
    op.create_table(
        "balance_snapshots",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("account_type", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Numeric(), nullable=True),
        sa.Column("available", sa.Numeric(), nullable=True),
        sa.Column("frozen", sa.Numeric(), nullable=True),
        sa.Column("withdrawable", sa.Numeric(), nullable=True),
        sa.Column("equity", sa.Numeric(), nullable=True),
        sa.Column("unrealized_pnl", sa.Numeric(), nullable=True),
        sa.Column("initial_margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin", sa.Numeric(), nullable=True),
        sa.Column("value_usdt", sa.Numeric(), nullable=True),
        sa.Column("venue_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id",
            "account_type",
            "currency",
            "snapshot_ts",
            name=op.f("pk_balance_snapshots"),
        ),
    )
    op.create_table(
        "ingestion_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("accounts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("balances", sa.Integer(), server_default="0", nullable=False),
        sa.Column("account_rows", sa.Integer(), server_default="0", nullable=False),
        sa.Column("positions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('ok', 'error', 'running', 'missed')", name=op.f("ck_ingestion_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingestion_runs")),
        sa.UniqueConstraint("source", "snapshot_ts", name=op.f("uq_ingestion_runs_source_snapshot_ts")),
    )
    op.create_index("ix_ingestion_runs_snapshot_ts", "ingestion_runs", ["snapshot_ts"], unique=False)
    op.create_table(
        "position_snapshots",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("account_type", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("base", sa.Text(), nullable=True),
        sa.Column("quote", sa.Text(), nullable=True),
        sa.Column("quantity", sa.Numeric(), nullable=True),
        sa.Column("entry_price", sa.Numeric(), nullable=True),
        sa.Column("mark_price", sa.Numeric(), nullable=True),
        sa.Column("notional", sa.Numeric(), nullable=True),
        sa.Column("unrealized_pnl", sa.Numeric(), nullable=True),
        sa.Column("realized_pnl", sa.Numeric(), nullable=True),
        sa.Column("leverage", sa.Numeric(), nullable=True),
        sa.Column("margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin", sa.Numeric(), nullable=True),
        sa.Column("liquidation_price", sa.Numeric(), nullable=True),
        sa.Column("margin_mode", sa.Text(), nullable=True),
        sa.Column("venue_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.CheckConstraint(
            "margin_mode IN ('cross', 'isolated')", name=op.f("ck_position_snapshots_margin_mode")
        ),
        sa.CheckConstraint("side IN ('long', 'short')", name=op.f("ck_position_snapshots_side")),
        sa.PrimaryKeyConstraint(
            "account_id",
            "account_type",
            "symbol",
            "side",
            "snapshot_ts",
            name=op.f("pk_position_snapshots"),
        ),
    )
    op.create_table(
        "raw_payloads",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("snapshot_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_payloads")),
        sa.UniqueConstraint(
            "source",
            "snapshot_ts",
            "endpoint",
            name=op.f("uq_raw_payloads_source_snapshot_ts_endpoint"),
        ),
    )
    op.create_index("ix_raw_payloads_snapshot_ts", "raw_payloads", ["snapshot_ts"], unique=False)
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_index("ix_raw_payloads_snapshot_ts", table_name="raw_payloads")
    op.drop_table("raw_payloads")
    op.drop_table("position_snapshots")
    op.drop_index("ix_ingestion_runs_snapshot_ts", table_name="ingestion_runs")
    op.drop_table("ingestion_runs")
    op.drop_table("balance_snapshots")
    op.drop_table("accounts")
    op.drop_table("account_snapshots")
