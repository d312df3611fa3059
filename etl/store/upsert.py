"""SQL for loading one source's rows of one slot, built by pure functions (snapshot-testable).

Three paths, chosen per snapshot table and transaction:

- **fresh slot** (`held_sql` finds no row of the source's accounts at the slot): the rows
  are `COPY`ed straight into the table. Nothing can conflict and nothing can have
  vanished, so staging, comparing and deleting would be pure overhead; this is most
  loads (every new slot).
- **re-load** (a re-run, a replay): `COPY` into a temporary staging table of the
  target's columns but the load's constants, then one statement (`reload_sql`) that compares the stage with the source's
  rows at the slot by a FULL JOIN on the key and writes only what differs: new and
  changed rows through `INSERT … ON CONFLICT (key) DO UPDATE`, and the keys of the rows
  the new batch no longer has (a position closed between two runs of the same slot)
  returned to be deleted by key. An unchanged re-load writes nothing at all: no new
  row version, no tuple lock, no WAL.

  Before, every staged row went through `ON CONFLICT … DO UPDATE … WHERE (values) IS
  DISTINCT FROM (excluded values)`, and an `EXCEPT` found the vanished keys. The guard
  kept unchanged rows from being rewritten, but each row still cost an index probe and
  a tuple lock (the lock is taken before the `WHERE` is evaluated, and WAL-logged).
  Measured on a 50,000-row slot of one source (bench/load.py's data, PostgreSQL 16, 2
  cores; old and new interleaved in one process, medians of 6): unchanged, the
  statements after the COPY took 383 ms (`EXPLAIN ANALYZE`: upsert 416 ms, 250,006
  buffer hits for 50,000 rows, + `EXCEPT` 87 ms), now 225 ms (the FULL JOIN, 232 ms);
  10 % changed, 550 ms, now 377 ms. The COPY into the stage is now most of a re-load
  (~500 ms: ~260 ms of Python encoding overlapping ~320 ms of parsing by the server,
  which is why the stage holds no per-load constants, see `create_stage_sql`).
- **unchanged re-load**: each load hashes every table's COPY text as it encodes it, without
  the load's constants (`copy.new_digest`), and keeps the digests in its run row
  (`ingestion_runs.row_digests`). A re-load whose rows hash to the stored digest skips
  `reload_sql` (it would find nothing; it was ~225 ms of a 660 ms unchanged 50,000-row
  re-load): the stage is still filled, as the COPY streams and the digest is known only
  at its end, but nothing is compared or written.

The digest is trusted only for a table `held_sql` finds rows in, and every writer of a
slot's rows keeps it true: `load_slot` stores the digest of what it loaded, the batched
loads (`etl.store.batch`) set it to NULL (not known), `etl forget` deletes the run row with
the rows. Prune drops whole months, so a slot's table holds all its rows or none: a pruned
slot is not held, its rows are copied again and their digest stored. Whatever else deletes
or changes some of a slot's rows must clear its run row's digests. The rows then equal the
digested ones as `reload_sql` compares them, as text: a number's scale counts (1.0 is not
1.00), jsonb's key order does not (the digest hashes `extra` in the venue's key order, so
a batch that differs only in that order costs a comparison that writes nothing).

`run_id` and `fetched_at` are not compared: they say when the values were first seen.
Every statement here reads the slot's rows of one source through (snapshot_ts,
account_id), one account at a time (`source_rows`); none relies on the planner guessing
how many rows a brand-new slot has (statistics never know the newest slot), see
`reload_sql`.
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
    lateral subquery back into a join it would plan on the same guess.

    The statements built on it are sent unprepared (`prepare=False`), so
    each is planned for its slot's month as that partition is now. Prepared (psycopg
    prepares a statement on its sixth run on a connection), PostgreSQL soon settles on one
    generic plan for all slots, made while the next month's partition, created ahead, is
    empty; if that partition was vacuumed empty (a manual VACUUM ANALYZE), the plan reads
    it whole for each account, and from the month's first slot on every load takes longer
    than the last until autovacuum analyzes the partition (measured, bench/load.py's
    second repeat: a 50,000-row slot's load 0.6 -> 5, 12, 19 s over three slots; the
    fresh run 15 -> 52 s). Planning each time costs the server ~0.3 ms a statement
    (held_sql, 252 partitions)."""
    return (
        f"(SELECT id FROM accounts WHERE source = {source}) AS of_source CROSS JOIN LATERAL "
        f"(SELECT {select} FROM {table} WHERE account_id = of_source.id AND {where} OFFSET 0)"
    )


def key_columns(table: Table) -> list[str]:
    pk = table.primary_key
    return [c.name for c in pk.columns]


def stage_name(table: Table) -> str:
    return f"stage_{table.name}"


def create_stage_sql(table: Table, columns: list[str]) -> str:
    """The staging table: `columns` of `table`, typed alike, with no constraint or default.

    Only what differs from row to row is staged. The load's constants (`snapshot_ts`,
    `fetched_at`, `run_id`) go into `reload_sql` as parameters: parsed from COPY text they
    cost the server two timestamps and a bigint per row (measured: the COPY of a
    50,000-row slot's pre-encoded text into the stage, 322 -> 264 ms without them). ON
    COMMIT DELETE ROWS: the stage is reused by every load on this connection, so its
    columns must be the same at every load (the table's `copy.Layout`)."""
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(table)} ON COMMIT DELETE ROWS "
        f"AS SELECT {', '.join(columns)} FROM {table.name} WITH NO DATA"
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


# `work_mem` of `reload_sql` (set for that statement only): its hash of a 50,000-row slot
# takes ~13 MB; at the default 4 MB it spilled half of both sides to temporary files
# (2 batches, 12 MB written and read back). Measured: the statement's median 312 -> 261 ms
# (10 runs, interleaved). Memory is taken only as needed, for the one statement.
RELOAD_WORK_MEM = "64MB"


def reload_sql(table: Table, staged: list[str], constants: list[str]) -> str:
    """Compare the staged batch with the source's rows at the slot; write what differs.

    One statement. `diff` is a FULL JOIN of the stage and the slot's rows (`source_rows`)
    on the key, kept where a side is missing or the compared values differ as text: the
    new, changed and vanished rows, usually none. As text, because a value must read back
    as the venue sent it: NUMERIC's `=` holds `4.25 = 4.2500`, and a re-load whose only
    change was a number's scale kept the old one (and then contradicted its digest). Its staged rows go through
    `INSERT … ON CONFLICT (key) DO UPDATE` (a new row inserted, a changed one updated in
    place; no guard needed, they differ); no other row of the slot is probed or locked.
    The answer is one row: how many were written, and the vanished keys as one array per
    key column (NULL when none), to delete by key. `staged` are the stage's columns; the
    `constants`, the same on every row, are parameters named after their column.

    A FULL JOIN can only be a hash or merge join, never a nested loop. Statistics never
    know the slot just written: for `NOT EXISTS` or `IN` against its rows the planner
    expected one row and could pick a nested loop that scans the stage once per row of
    the slot (minutes for 50,000 rows). Here it has no such choice: on a fresh,
    never-analyzed database it guessed 2 accounts and 2 rows of the slot (there were
    1,000 and 50,000) and still hashed.
    """
    keys = _vanishing_key(table)
    columns = [*staged, *constants]
    values = [c for c in columns if c not in key_columns(table)]
    compared = [c for c in staged if c not in keys and c not in NOT_COMPARED]
    cols = ", ".join(columns)
    rows = ", ".join([*staged, *(f"%({c})s" for c in constants)])
    gone = ", ".join(f"o.{k} AS gone_{k}" for k in keys)
    on = " AND ".join(f"n.{k} = o.{k}" for k in keys)
    new = ", ".join(f"n.{c}" for c in compared)
    old = ", ".join(f"o.{c}" for c in compared)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    arrays = ", ".join(f"array_agg(gone_{k})" for k in keys)
    slot_rows = source_rows(table.name, "snapshot_ts = %(slot)s")
    return (
        f"WITH diff AS MATERIALIZED (SELECT {', '.join(f'n.{c}' for c in staged)}, {gone} "
        f"FROM {stage_name(table)} AS n FULL JOIN ({slot_rows} AS o) ON {on} "
        f"WHERE n.{keys[0]} IS NULL OR o.{keys[0]} IS NULL OR ROW({new})::text IS DISTINCT FROM ROW({old})::text), "
        f"written AS (INSERT INTO {table.name} AS t ({cols}) SELECT {rows} FROM diff "
        f"WHERE {keys[0]} IS NOT NULL "
        f"ON CONFLICT ({', '.join(key_columns(table))}) DO UPDATE SET {sets} RETURNING 1) "
        f"SELECT (SELECT count(*) FROM written), {arrays} FROM diff WHERE {keys[0]} IS NULL"
    )


def delete_key_sql(table: Table) -> str:
    """One row by its full key (executemany over the vanished keys of `reload_sql`, usually none)."""
    match = " AND ".join(f"{k} = %s" for k in _vanishing_key(table))
    return f"DELETE FROM {table.name} WHERE snapshot_ts = %s AND {match}"


def _vanishing_key(table: Table) -> list[str]:
    return [k for k in key_columns(table) if k != "snapshot_ts"]
