"""Load fresh slots of several sources in one transaction, in the caller's transaction.

The daemon's common case is many small sources polled on time: each slot a handful of
rows, loaded for the first time. One transaction per source cost more than its rows
(locks, a pipeline, three COPYs and a commit each: ~9 round trips and ~2 ms of poller
CPU for a one-account source). `load_slots` writes the slot of N sources with
statements that each cover all of them, in this order:

1. the slot locks of every source (`locks.slot_key`, taken in the order of their keys,
   so two batches over overlapping sources cannot deadlock), the rollup lock shared,
   and the sources' run statuses: one round trip;
2. one upsert of their run rows (a claim `running` becomes `ok`), one of their accounts
   (and their ids), whether any of them holds snapshot rows at the slot, the rollup
   watermarks: one round trip (pipeline);
3. one COPY per snapshot table and one of the raw payloads, for all of them.

A source whose slot is `ok` already is kept as it is (the first load wins, as
`pipeline.store(keep_loaded=True)`): its result is None. What is not a fresh slot (an
`error` row, which may have raw payloads; rows already held at the slot, a re-load)
is not this module's work: `Unusual` names those sources, and the caller rolls back and
loads them one by one (`etl.store.load.load_slot`). The transaction is the caller's, so
it commits every source's slot or none; a source whose data PostgreSQL refuses fails the
whole statement, and the caller finds it by loading fewer at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection

from etl import exactjson
from etl.records import Batch, RawResponse
from etl.store import copy, locks, partitions, rollups, upsert
from etl.store.engine import driver_cursor
from etl.store.load import _LOADED, _TAIL, ACCOUNTS_ON_CONFLICT, LoadResult, _check_accounts, _check_keys
from etl.store.schema import raw_payloads

FRESH = frozenset({"running", "missed"})  # statuses (besides no row) of a slot nothing was loaded for
_RAW_COLUMNS = ["source", "endpoint", "snapshot_ts", "fetched_at", "http_status", "body", "run_id"]


@dataclass(frozen=True)
class SlotLoad:
    """One source's batch for the slot, as `load_slot` takes it."""

    source: str
    venue: str
    batch: Batch
    responses: Sequence[RawResponse]
    started_at: datetime
    attempts: int

    @property
    def fetched_at(self) -> datetime:
        return min((r.fetched_at for r in self.responses), default=self.started_at)


class Unusual(Exception):
    """These sources' slots are no fresh load: load them one by one."""

    def __init__(self, sources: Sequence[str]):
        super().__init__(f"not fresh slots: {', '.join(sources)}")
        self.sources = frozenset(sources)


def load_slots(
    conn: Connection, slot: datetime, loads: Sequence[SlotLoad], *, keep_loaded: bool = True
) -> list[LoadResult | None]:
    """Load every source's batch for `slot`; one result per load, in order (None: the slot
    was `ok` already and is kept; without keep_loaded such a slot is `Unusual`, for a
    re-load). Raises `Unusual` before writing anything the caller would keep (it rolls
    back), and whatever PostgreSQL or the checks refuse."""
    names = [load.source for load in loads]
    if len(set(names)) != len(names):
        raise ValueError("a source twice in one batch")
    with (
        driver_cursor(conn) as cur,
        driver_cursor(conn) as ids_cur,
        driver_cursor(conn) as held_cur,
        driver_cursor(conn) as marks,
    ):
        status = _lock(cur, slot, names)
        unusual = sorted(n for n, s in status.items() if s not in FRESH and not (keep_loaded and s == "ok"))
        if unusual:
            raise Unusual(unusual)
        pending = sorted((load for load in loads if status.get(load.source) != "ok"), key=lambda x: x.source)
        if not pending:
            return [None] * len(loads)
        partitions.ensure(conn, [slot])  # last lock of the transaction (etl.store.locks.ORDER)
        with cur.connection.pipeline():
            _upsert_runs(cur, slot, pending)
            _upsert_accounts(ids_cur, slot, pending)
            held_cur.execute(
                _held_sql(), {"slot": slot, "sources": [p.source for p in pending]}, prepare=False
            )
            closed_until_of = rollups.watermarks(marks)
        run_ids = {str(s): int(i) for s, i in cur.fetchall()}
        ids: dict[str, dict[str, int]] = defaultdict(dict)
        for source, external_id, account_id in ids_cur.fetchall():
            ids[source][external_id] = int(account_id)
        held = sorted(str(s) for (s,) in held_cur.fetchall())
        closed_until = closed_until_of()
        if held:
            raise Unusual(held)
        written = _copy_snapshots(cur, slot, pending, run_ids, ids)
        _copy_raw(cur, slot, pending, run_ids)
    hour = rollups.floor(slot, "hour")
    results: dict[str, LoadResult] = {}
    for load in pending:
        changed = [name for name, n in written[load.source].items() if n]
        rollups.upsert_slot(conn, load.source, slot, closed_until, changed=changed)
        results[load.source] = LoadResult(
            run_id=run_ids[load.source],
            written=written[load.source],
            deleted=dict.fromkeys(written[load.source], 0),
            closes=hour if hour > closed_until["hour"] else None,
        )
    return [results.get(name) for name in names]


def _lock(cur: psycopg.Cursor[Any], slot: datetime, names: list[str]) -> dict[str, str]:
    """Take the slot locks and the rollup lock (shared); the run status of each source that has a row."""
    keys = [locks.slot_key(name, slot) for name in names]
    with cur.connection.pipeline():
        # in the order of the keys' hashes: every batch takes its locks in one order
        cur.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended(t, 0) AS k "
            "FROM unnest(%b::text[]) AS u(t) ORDER BY 1 OFFSET 0) AS keys",
            (keys,),
        )
        rollups.share_lock(cur)  # after the slot locks (etl.store.locks.ORDER)
        cur.execute(
            "SELECT source, status FROM ingestion_runs WHERE snapshot_ts = %s AND source = ANY(%b)",
            (slot, names),
        )
    return {str(source): str(status) for source, status in cur.fetchall()}


def _upsert_runs(cur: psycopg.Cursor[Any], slot: datetime, loads: Sequence[SlotLoad]) -> None:
    """Every source's run row `ok` (a claim of this worker, or no row, before); replies (source, id).

    These loads hash nothing, so `row_digests` is NULL (not known) after them. Only a slot
    nothing was loaded for comes here, whose run row has no digest; cleared all the same, so
    that no digest can outlive a write of other rows (`etl.store.upsert`)."""
    counts = [load.batch.counts() for load in loads]
    cur.execute(
        """
        INSERT INTO ingestion_runs AS r (source, snapshot_ts, started_at, finished_at, status, error,
            accounts, balances, account_rows, positions, attempts)
        SELECT s, %(slot)s, st, now(), 'ok', NULL, a, b, ar, p, n
        FROM unnest(%(sources)b::text[], %(started)b::timestamptz[], %(accounts)b::int[],
            %(balances)b::int[], %(account_rows)b::int[], %(positions)b::int[], %(attempts)b::int[])
            WITH ORDINALITY AS u(s, st, a, b, ar, p, n, i)
        ORDER BY i
        ON CONFLICT (source, snapshot_ts) DO UPDATE SET started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, status = EXCLUDED.status, error = EXCLUDED.error,
            accounts = EXCLUDED.accounts, balances = EXCLUDED.balances,
            account_rows = EXCLUDED.account_rows, positions = EXCLUDED.positions,
            attempts = EXCLUDED.attempts, worker = NULL, row_digests = NULL
        RETURNING source, id
        """,
        {
            "slot": slot,
            "sources": [load.source for load in loads],
            "started": [load.started_at for load in loads],
            "attempts": [load.attempts for load in loads],
            **{
                name: [c[name] for c in counts]
                for name in ("accounts", "balances", "account_rows", "positions")
            },
        },
    )


def _upsert_accounts(cur: psycopg.Cursor[Any], slot: datetime, loads: Sequence[SlotLoad]) -> None:
    """`load.upsert_accounts` for all the sources at once (in the order of (source, id), so
    row locks are taken in one order); replies (source, external id, id) per account."""
    refs = sorted(
        ((load.source, load.venue, ref) for load in loads for ref in load.batch.accounts),
        key=lambda r: (r[0], r[2].external_id),
    )
    sources, external = [r[0] for r in refs], [r[2].external_id for r in refs]
    cur.execute(
        """
        INSERT INTO accounts AS a (source, venue, external_id, exchange, note, first_seen_at, last_seen_at)
        SELECT s, v, e, x, n, %(slot)s, %(slot)s
        FROM unnest(%(sources)b::text[], %(venues)b::text[], %(ids)b::text[], %(exchanges)b::text[],
            %(notes)b::text[]) WITH ORDINALITY AS u(s, v, e, x, n, i)
        ORDER BY i
        """
        + ACCOUNTS_ON_CONFLICT,
        {
            "slot": slot,
            "sources": sources,
            "venues": [r[1] for r in refs],
            "ids": external,
            "exchanges": [r[2].exchange for r in refs],
            "notes": [r[2].note for r in refs],
        },
    )
    cur.execute(
        "SELECT a.source, a.external_id, a.id FROM unnest(%b::text[], %b::text[]) AS u(s, e) "
        "JOIN accounts a ON a.source = u.s AND a.external_id = u.e",
        (sources, external),
    )


def _held_sql() -> str:
    """The sources that hold any snapshot row at the slot (a re-load: not ours)."""
    tests = " OR ".join(
        f"EXISTS (SELECT 1 FROM {upsert.source_rows(t.name, 'snapshot_ts = %(slot)s', source='u.s', select='1')} AS h)"
        for t, _, _ in _LOADED
    )
    return f"SELECT u.s FROM unnest(%(sources)b::text[]) AS u(s) WHERE {tests}"


def _copy_snapshots(
    cur: psycopg.Cursor[Any],
    slot: datetime,
    loads: Sequence[SlotLoad],
    run_ids: dict[str, int],
    ids: dict[str, dict[str, int]],
) -> dict[str, dict[str, int]]:
    """One COPY per snapshot table, into the slot's month, with every source's rows; the
    rows written per source and table."""
    month = partitions.month_start(slot)
    written: dict[str, dict[str, int]] = {load.source: {} for load in loads}
    for table, layout, attr in _LOADED:
        for load in loads:
            records = getattr(load.batch, attr)
            _check_accounts(records, ids[load.source], table)
            _check_keys(records, table)  # one COPY for many sources: a bad key is found before it
            written[load.source][table.name] = len(records)
        if not any(written[load.source][table.name] for load in loads):
            continue
        columns = [*layout.columns, *_TAIL]
        chunks = [
            chunk
            for load in loads
            if getattr(load.batch, attr)
            for chunk in copy.lines(
                getattr(load.batch, attr),
                layout,
                ids[load.source],
                (slot, load.fetched_at, run_ids[load.source]),
            )
        ]
        # written at once: a write per source's few lines is a libpq call each (measured:
        # a third of the poller's CPU of a batch of one-account sources)
        with cur.copy(upsert.copy_sql(partitions.child_name(table.name, month), columns)) as pipe:
            pipe.write("".join(chunks))
    return written


def _copy_raw(
    cur: psycopg.Cursor[Any], slot: datetime, loads: Sequence[SlotLoad], run_ids: dict[str, int]
) -> None:
    """The raw bodies of every source, in one COPY: as the venue's own text when the response
    kept it (jsonb parses it to the same value; see `load.write_raw`)."""
    lines = []
    for load in loads:
        head = f"{copy.escape_text(load.source)}\t"
        tail = f"\t{run_ids[load.source]}\n"
        for r in load.responses:
            body = r.text if r.text is not None else exactjson.dumps(r.body)
            lines.append(
                f"{head}{copy.escape_text(r.endpoint)}\t{slot}\t{r.fetched_at}\t{r.http_status}\t"
                f"{copy.escape_text(body)}{tail}"
            )
    if lines:
        into = partitions.child_name(raw_payloads.name, partitions.month_start(slot))
        with cur.copy(upsert.copy_sql(into, _RAW_COLUMNS)) as pipe:
            pipe.write("".join(lines))
