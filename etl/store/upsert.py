"""SQL for loading one source's rows of one slot, built by pure functions (snapshot-testable).

Two paths, chosen per snapshot table and transaction:

- **fresh slot** (`held_sql` finds no row of the source's accounts at the slot): the rows
  are `COPY`ed straight into the table. Nothing can conflict and nothing can have
  vanished, so staging, comparing and deleting would be pure overhead; this is most
  loads (every new slot).
- **re-load** (a re-run, a replay): `COPY` into a temporary staging table shaped like the
  target, then `INSERT … SELECT … ON CONFLICT (key) DO UPDATE … WHERE (values) IS
  DISTINCT FROM (excluded values)`: an unchanged row is not rewritten (no new tuple, no
  WAL), a changed one is updated in place; then `DELETE` the rows of the source's
  accounts at the slot that the new batch no longer has (a position closed between
  two runs of the same slot), found by a set difference and deleted by key.

`run_id` and `fetched_at` are not compared: they say when the values were first seen.
Every statement here reads the slot's rows of one source through (snapshot_ts,
account_id), one account at a time (`source_rows`); none relies on the planner guessing
how many rows a brand-new slot has (statistics never know the newest slot), see
`vanished_sql`.
"""

from __future__ import annotations

from sqlalchemy import Table

from etl.store.copy import COPY_OPTIONS

NOT_COMPARED = ("run_id", "fetched_at")


def source_rows(table: str, where: str, source: str = "%(source)s", select: str = "*") -> str:
    """A FROM item: the rows of `table` of each account of `source` that meet `where`
    (which names neither; e.g. the slot), found account by account.

    The slot's rows of one source are a few among those of every source polled at that
    slot. Written as `account_id IN (SELECT ... source)`, the planner, which never has
    statistics for the newest slot, guessed one row there and read every source's rows of
    the slot, once per load: quadratic in the number of sources (measured: two thirds of
    PostgreSQL's CPU in a 208-source polling cycle). Here each account of the source is one
    probe of (snapshot_ts, account_id); `OFFSET 0` keeps the planner from flattening the
    lateral subquery back into a join it would plan on the same guess."""
    return (
        f"(SELECT id FROM accounts WHERE source = {source}) AS of_source CROSS JOIN LATERAL "
        f"(SELECT {select} FROM {table} WHERE account_id = of_source.id AND {where} OFFSET 0)"
    )


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


def copy_sql(into: str, columns: list[str]) -> str:
    """COPY in the text format of `etl.store.copy` (NULL is written `None`)."""
    return f"COPY {into} ({', '.join(columns)}) FROM STDIN {COPY_OPTIONS}"


def held_sql(tables: list[Table]) -> str:
    """One row: for each table, whether it holds any row of the source's accounts at the slot."""
    tests = ", ".join(
        f"EXISTS (SELECT 1 FROM {source_rows(t.name, 'snapshot_ts = %(slot)s', select='1')} AS s)"
        for t in tables
    )
    return f"SELECT {tests}"


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


def vanished_sql(table: Table) -> str:
    """Keys of the source's rows at the slot that the staged batch does not have.

    A set difference, computed once by hashing or sorting. Not `NOT EXISTS` or `IN`
    against the slot's rows: statistics never know the slot just written, so the planner
    expects one row there and may pick a nested loop, which then scans the staging table
    (or re-runs the subquery) once per row of the slot: minutes for 50,000 rows.
    """
    cols = ", ".join(_vanishing_key(table))
    return (
        f"SELECT {cols} FROM {source_rows(table.name, 'snapshot_ts = %(slot)s')} AS s "
        f"EXCEPT SELECT {cols} FROM {stage_name(table)}"
    )


def delete_key_sql(table: Table) -> str:
    """One row by its full key (executemany over `vanished_sql`'s rows, usually none)."""
    match = " AND ".join(f"{k} = %s" for k in _vanishing_key(table))
    return f"DELETE FROM {table.name} WHERE snapshot_ts = %s AND {match}"


def _vanishing_key(table: Table) -> list[str]:
    return [k for k in key_columns(table) if k != "snapshot_ts"]
