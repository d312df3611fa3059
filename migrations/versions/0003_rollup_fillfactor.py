"""rollup tables keep half of each page free, so the loader's per-slot upserts are HOT updates

Every slot rewrites the rollup row of each of its keys (the bucket's last value moves
forward). On a full page the new row version goes to another page and every index of
the table gets a new entry: three WAL records per row. With fillfactor 50 the new
version stays on the page (a heap-only-tuple update: no index entry, one WAL record),
and the dead version is pruned from the page by the next update. Measured on 50,000
balance rows per slot (1,000 accounts x 50 keys, 1-minute slots, embedded PostgreSQL
16, 2 cores, mean of slots 2-8): hourly + daily rollup upserts 0.96 s -> 0.51 s per slot
(fillfactor 70: 0.69 s). The cost: rollup tables take up to twice the pages (they hold
one row per key and hour or day, 1/60 of a one-minute snapshot table's rows).

ALTER TABLE ... SET (fillfactor) rewrites nothing: pages written from now on keep the
space (`VACUUM FULL` on a rollup table repacks the older ones).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROLLUPS = ("balances_hourly", "balances_daily", "account_equity_hourly", "account_equity_daily")


def upgrade() -> None:
    for table in ROLLUPS:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    for table in ROLLUPS:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
