"""portfolio views: a bucket ends 24 hours after it starts, whatever the session's TimeZone

`portfolio_equity_daily` found the end of a bucket as `bucket + interval '1 day'`. On a
timestamptz, a day is a calendar day of the session's TimeZone: over a DST change under
Europe/Berlin it is 23 or 25 hours, so the same data gave another `accounts_expected`.
The buckets are UTC days (date_trunc(..., 'UTC')): their end is `+ interval '24 hours'`.
Hourly buckets get `interval '1 hour'` spelled the same way (an hour is already absolute).
Every other view and balances_as_of reads no calendar arithmetic of the session
(tests/store/test_views.py compares each of them under UTC, Berlin, New York, Kolkata).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:30:00
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _revision_0002() -> ModuleType:
    """Revision 0002, whose portfolio view text this one corrects (read, not copied)."""
    path = Path(__file__).with_name("0002_partitions_rollups.py")
    spec = importlib.util.spec_from_file_location("_revision_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0002 = _revision_0002()
WIDTHS = {"hourly": "1 hour", "daily": "24 hours"}


def _before(name: str) -> str:
    return str(_0002.VIEWS[f"portfolio_equity_{name}"])


def _after(name: str) -> str:
    return str(_0002._PORTFOLIO_BUCKETS.replace("interval '1 {width}'", f"interval '{WIDTHS[name]}'")).format(
        name=name
    )


def upgrade() -> None:
    for name in WIDTHS:
        op.execute(_after(name).replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))


def downgrade() -> None:
    for name in WIDTHS:
        op.execute(_before(name).replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
