"""ingestion_runs.row_digests: a digest per snapshot table of the rows a load left there

A re-load of a slot (a replay, a manual re-run) staged its rows and compared them with the
slot's in one FULL JOIN: ~225 ms of a 660 ms re-load of 50,000 unchanged rows, which kept
it at 0.95x of a plain COPY (bench/load.py). The loader now hashes each table's COPY text
without the load's constants (etl.store.copy) and keeps the digest here, table -> hex;
a re-load whose rows hash alike skips the comparison (etl.store.upsert).

NULL means not known: every row from before this revision, and the batched fresh loads
(etl.store.batch), which do not hash. A nullable column without a default is a catalog
change only: no row is rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ingestion_runs ADD COLUMN row_digests jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE ingestion_runs DROP COLUMN row_digests")
