"""rollups: an open bucket is read from the snapshots, a closed one is written once

Until 0003 the loader rewrote, at every slot, the hourly and the daily rollup row of
every key it loaded: two row versions per snapshot row, about half of a fresh load's
time (bench/load.py, 50,000 rows per slot: 51 % of the load; with the rollups, a fresh
load ran at 0.48x psycopg's COPY, without them at about 1.0x).

Now each rollup is a table of closed buckets plus a view of the same name:

- `<rollup>_closed` (the 0002 tables, renamed) holds the buckets before the width's
  watermark in `rollup_watermarks` (no row: nothing closed yet). A bucket is written
  there once, when the first load of a later hour commits (`etl.store.rollups.close`):
  one INSERT ... SELECT DISTINCT ON over the hour's snapshot rows, and, at a day's end,
  over the day's hourly rows.
- the view `<rollup>` is the closed rows plus the buckets from the watermark on,
  computed from the snapshot rows (hourly) or from the hourly view (daily): the last
  row of each key in each bucket, the same rows the loader used to keep. Readers see a
  slot in every rollup as soon as its load commits, as before.

A load into a bucket already closed (a late spool drain, a replay) still upserts the
closed rows in its own transaction, moving forward only, as before. Loads take a shared
advisory lock and a close an exclusive one, so no load's rows can be missed by a close.

Fillfactor back to the default: closed rows are written once, not rewritten every slot.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _revision_0002() -> ModuleType:
    """Revision 0002, whose rollups and portfolio views this one rebuilds (read, not copied)."""
    path = Path(__file__).with_name("0002_partitions_rollups.py")
    spec = importlib.util.spec_from_file_location("_revision_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0002 = _revision_0002()
# rollup -> (what its open buckets are computed from, its key besides account_id, values,
# width): 0002's rollups, the daily ones now computed from their hourly view
ROLLUPS = {
    name: (source if width == "hour" else name.replace("_daily", "_hourly"), keys, values, width)
    for name, (source, keys, values, width) in _0002.ROLLUPS.items()
}
# portfolio_equity_hourly/daily read the rollups: recreated over the views, as 0002 wrote them
PORTFOLIO_VIEWS = {name: _0002.VIEWS[f"portfolio_equity_{name}"] for name in ("hourly", "daily")}


def watermark(width: str) -> str:
    return f"(SELECT coalesce(max(closed_until), '-infinity') FROM rollup_watermarks WHERE width = '{width}')"


def view_sql(rollup: str) -> str:
    """The closed buckets, then the open ones: each key's last row in each bucket."""
    feed, keys, values, width = ROLLUPS[rollup]
    from_snapshots = width == "hour"
    time = "snapshot_ts" if from_snapshots else "bucket"
    bucket = f"date_trunc('{width}', {time}, 'UTC')"
    key = ", ".join(("account_id", *keys))
    closed = ", ".join(("account_id", "bucket", *keys, "snapshot_ts", *values))
    picked = ", ".join(("account_id", f"{bucket} AS bucket", *keys, "snapshot_ts", *values))
    return (
        f"CREATE VIEW {rollup} AS SELECT {closed} FROM {rollup}_closed UNION ALL "
        f"(SELECT DISTINCT ON ({key}, {bucket}) {picked} FROM {feed} "
        f"WHERE {time} >= {watermark(width)} ORDER BY {key}, {bucket}, snapshot_ts DESC)"
    )


def _latest(width: str) -> str:
    """The bucket of the newest snapshot row (it stays open); with no snapshot row left,
    the bucket after the newest rollup row (everything is closed)."""
    rollups = "hourly" if width == "hour" else "daily"
    slots = "SELECT max(snapshot_ts) FROM balance_snapshots UNION ALL SELECT max(snapshot_ts) FROM account_snapshots"
    buckets = f"SELECT max(bucket) FROM balances_{rollups} UNION ALL SELECT max(bucket) FROM account_equity_{rollups}"
    return (
        f"SELECT coalesce((SELECT date_trunc('{width}', max(t), 'UTC') FROM ({slots}) AS s(t)), "
        f"(SELECT max(b) + interval '1 {width}' FROM ({buckets}) AS r(b)))"
    )


def upgrade() -> None:
    op.create_table(
        "rollup_watermarks",
        sa.Column("width", sa.Text(), nullable=False),
        sa.Column("closed_until", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("width IN ('hour', 'day')", name="ck_rollup_watermarks_width"),
        sa.PrimaryKeyConstraint("width", name="pk_rollup_watermarks"),
    )
    # What the loader kept so far is complete up to the bucket of the newest slot: that
    # one stays open (the view computes it), the older ones are closed.
    for width in ("hour", "day"):
        op.execute(
            f"INSERT INTO rollup_watermarks (width, closed_until) SELECT '{width}', w FROM ({_latest(width)}) "
            "AS l(w) WHERE w IS NOT NULL"
        )
    for name in PORTFOLIO_VIEWS:
        op.execute(f"DROP VIEW portfolio_equity_{name}")
    for rollup, (_, _, _, width) in ROLLUPS.items():
        op.rename_table(rollup, f"{rollup}_closed")
        op.execute(f"ALTER INDEX pk_{rollup} RENAME TO pk_{rollup}_closed")
        op.execute(f"ALTER INDEX ix_{rollup}_bucket RENAME TO ix_{rollup}_closed_bucket")
        op.execute(f"ALTER TABLE {rollup}_closed RESET (fillfactor)")
        op.execute(f"DELETE FROM {rollup}_closed WHERE bucket >= {watermark(width)}")
    for rollup in ROLLUPS:  # hourly before daily: a daily view reads its hourly one
        op.execute(view_sql(rollup))
    for sql in PORTFOLIO_VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in PORTFOLIO_VIEWS:
        op.execute(f"DROP VIEW portfolio_equity_{name}")
    # the open buckets become rows again, as 0003's loader kept them
    for rollup, (_, keys, values, width) in reversed(ROLLUPS.items()):  # a daily view reads its hourly one
        cols = ", ".join(("account_id", "bucket", *keys, "snapshot_ts", *values))
        op.execute(
            f"INSERT INTO {rollup}_closed ({cols}) SELECT {cols} FROM {rollup} "
            f"WHERE bucket >= {watermark(width)}"
        )
    for rollup in reversed(ROLLUPS):
        op.execute(f"DROP VIEW {rollup}")
        op.rename_table(f"{rollup}_closed", rollup)
        op.execute(f"ALTER INDEX pk_{rollup}_closed RENAME TO pk_{rollup}")
        op.execute(f"ALTER INDEX ix_{rollup}_closed_bucket RENAME TO ix_{rollup}_bucket")
        op.execute(f"ALTER TABLE {rollup} SET (fillfactor = 50)")
    op.drop_table("rollup_watermarks")
    for sql in PORTFOLIO_VIEWS.values():
        op.execute(sql)
