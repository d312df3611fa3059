"""SQL for the staged, guarded bulk upsert, built by pure functions (snapshot-testable).

The path, per snapshot table and transaction:
1. `COPY` the rows as text into a temporary staging table shaped like the target;
2. `INSERT … SELECT … ON CONFLICT (key) DO UPDATE … WHERE (values) IS DISTINCT FROM
   (excluded values)`: an unchanged re-run of a slot rewrites no row (no new tuple, no
   WAL), a changed value is updated in place;
3. `DELETE` the rows of this source's accounts at this slot that the new batch no
   longer has (a position closed between two runs of the same slot).
`run_id` and `fetched_at` are not compared: they say when the values were first seen.
"""

from __future__ import annotations

from sqlalchemy import Table

NOT_COMPARED = ("run_id", "fetched_at")


def key_columns(table: Table) -> list[str]:
    pk = table.primary_key
    return [c.name for c in pk.columns]


def stage_name(table: Table) -> str:
    return f"stage_{table.name}"


def create_stage_sql(table: Table) -> str:
    # ON COMMIT DELETE ROWS: the staging table is reused by every load on this connection.
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(table)} "
        f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


def copy_sql(table: Table, columns: list[str]) -> str:
    return f"COPY {stage_name(table)} ({', '.join(columns)}) FROM STDIN"


def upsert_sql(table: Table, columns: list[str]) -> str:
    keys = key_columns(table)
    values = [c for c in columns if c not in keys]
    compared = [c for c in values if c not in NOT_COMPARED]
    cols = ", ".join(columns)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    old = ", ".join(f"t.{c}" for c in compared)
    new = ", ".join(f"EXCLUDED.{c}" for c in compared)
    return (
        f"INSERT INTO {table.name} AS t ({cols}) SELECT {cols} FROM {stage_name(table)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets} "
        f"WHERE ({old}) IS DISTINCT FROM ({new})"
    )


def delete_missing_sql(table: Table) -> str:
    """Rows of the source's accounts at the slot that the staged batch does not have."""
    keys = key_columns(table)
    match = " AND ".join(f"s.{k} = t.{k}" for k in keys)
    return (
        f"DELETE FROM {table.name} AS t WHERE t.snapshot_ts = %(slot)s "
        f"AND t.account_id IN (SELECT id FROM accounts WHERE source = %(source)s) "
        f"AND NOT EXISTS (SELECT 1 FROM {stage_name(table)} AS s WHERE {match})"
    )
