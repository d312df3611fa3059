"""Load one source's batch for one slot, in the caller's transaction.

`load_slot` writes, in order: the run record (its id goes on every row), the accounts
(upserted; ids looked up) and the raw payloads, all in one round trip (pipeline mode),
then the three snapshot tables (a fresh slot: one COPY; a re-load: staged COPY compared
with the slot, only new, changed and vanished rows written, or not compared at all when
the rows hash to the digest the run row keeps of them; see `etl.store.upsert`), after
creating the slot's monthly partitions if needed, then the run row's new digests if any
differ (`Written.digest`). A slot in an open rollup bucket (the usual case) writes no
rollup row: the rollup views compute open buckets; a slot in a closed bucket upserts it
(`etl.store.rollups`). `LoadResult.closes` tells the caller
when, after the commit, older buckets can be closed. The caller owns the
transaction (`with engine.begin() as conn: load_slot(conn, ...)`): a slot loads whole
or not at all. `record_failure` writes the run record of a failed poll, with the raw
bodies that were received (to replay once the normalizer is fixed; as marked text where
PostgreSQL refuses them as jsonb: `etl.store.refused`), and no snapshot row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from operator import attrgetter
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Table

from etl import exactjson
from etl.errors import Fault, NormalizeError
from etl.faults import classify
from etl.records import AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.store import copy, locks, partitions, refused, rollups, upsert
from etl.store.engine import driver_cursor
from etl.store.schema import account_snapshots, balance_snapshots, position_snapshots

# Record field -> column: the record's own fields, with account -> account_id, then
# snapshot_ts, fetched_at and run_id (the same for every row of a load: the COPY tail).
# The records mirror the tables on purpose.
_LOADED = (
    (balance_snapshots, copy.Layout.of(BalanceRow), "balances"),
    (account_snapshots, copy.Layout.of(AccountRow), "account_rows"),
    (position_snapshots, copy.Layout.of(PositionRow), "positions"),
)
_TAIL = ["snapshot_ts", "fetched_at", "run_id"]

T = TypeVar("T")
# What a statement answers, read when called: a statement sent in a pipeline has its
# answer only once the pipeline is synced, so the caller decides when to read it.
Reply = Callable[[], T]


@dataclass(frozen=True)
class Run:
    """A (source, slot) run row, as its upsert found it."""

    id: int
    # `row_digests` as the last writing load left it: table -> `copy.digest_text` of the
    # rows it left there ({}: none known). Read under the row lock the upsert takes.
    digests: dict[str, str]


@dataclass(frozen=True)
class Written:
    """What a load did to one snapshot table."""

    rows: int  # inserted or changed (0 on an unchanged re-run)
    deleted: int
    digest: str  # of the records loaded: what the table now holds of the source at the slot


@dataclass(frozen=True)
class LoadResult:
    run_id: int
    written: dict[str, int]  # rows inserted or changed per table (0 on an unchanged re-run)
    deleted: dict[str, int]
    # the slot's hour when it is later than the open rollup buckets: once this load has
    # committed, `rollups.close(engine, closes)` closes the buckets before it
    closes: datetime | None = None


def upsert_run(
    cur: psycopg.Cursor[Any],
    *,
    source: str,
    slot: datetime,
    started_at: datetime,
    status: str,
    error: str | None,
    counts: dict[str, int],
    attempts: int,
    keep_ok: bool,
) -> Reply[Run | None]:
    """Insert or update the (source, slot) run row; with keep_ok, an `ok` row is left alone.
    The reply is the row (None: it was `ok` and kept). The upsert never sets `row_digests`,
    so RETURNING gives the value before it (NULL for a new row)."""
    guard = "WHERE r.status <> 'ok'" if keep_ok else ""
    cur.execute(
        f"""
        INSERT INTO ingestion_runs AS r (source, snapshot_ts, started_at, finished_at, status, error,
            accounts, balances, account_rows, positions, attempts)
        VALUES (%(source)s, %(slot)s, %(started)s, now(), %(status)s, %(error)s,
            %(accounts)s, %(balances)s, %(account_rows)s, %(positions)s, %(attempts)s)
        ON CONFLICT (source, snapshot_ts) DO UPDATE SET started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, status = EXCLUDED.status, error = EXCLUDED.error,
            accounts = EXCLUDED.accounts, balances = EXCLUDED.balances,
            account_rows = EXCLUDED.account_rows, positions = EXCLUDED.positions,
            attempts = EXCLUDED.attempts, worker = NULL
        {guard}
        RETURNING id, row_digests
        """,
        {
            "source": source,
            "slot": slot,
            "started": started_at,
            "status": status,
            "error": error,
            "attempts": attempts,
            **counts,
        },
    )

    def run() -> Run | None:
        row = cur.fetchone()
        return Run(int(row[0]), row[1] or {}) if row else None

    return run


# How a load updates an account it finds: `exchange` and `note` only from a slot at least as
# late as the last one seen, so a late load (a spool drain, a replay) never reverts them;
# the seen range only widens. Shared by the single and the batched loads (etl.store.batch).
ACCOUNTS_ON_CONFLICT = """
        ON CONFLICT (source, external_id) DO UPDATE SET
            exchange = CASE WHEN EXCLUDED.last_seen_at >= a.last_seen_at THEN EXCLUDED.exchange ELSE a.exchange END,
            note = CASE WHEN EXCLUDED.last_seen_at >= a.last_seen_at THEN EXCLUDED.note ELSE a.note END,
            first_seen_at = LEAST(a.first_seen_at, EXCLUDED.first_seen_at),
            last_seen_at = GREATEST(a.last_seen_at, EXCLUDED.last_seen_at)
        WHERE (EXCLUDED.last_seen_at >= a.last_seen_at
                AND (a.exchange, a.note) IS DISTINCT FROM (EXCLUDED.exchange, EXCLUDED.note))
            OR EXCLUDED.last_seen_at > a.last_seen_at OR EXCLUDED.first_seen_at < a.first_seen_at
"""


def upsert_accounts(
    cur: psycopg.Cursor[Any], source: str, venue: str, slot: datetime, batch: Batch
) -> Reply[dict[str, int]]:
    """Upsert the batch's accounts (locking each one's row until the transaction ends);
    the reply maps their external ids to ids.

    `exchange` and `note` are what the newest slot listing the account said: that slot is
    `last_seen_at`, so a slot loaded late (a spool drain after live loads resumed, a
    replay) leaves them, and `last_seen_at`, as they are."""
    refs = batch.accounts
    cur.execute(
        """
        INSERT INTO accounts AS a (source, venue, external_id, exchange, note, first_seen_at, last_seen_at)
        SELECT %(source)s, %(venue)s, e, x, n, %(slot)s, %(slot)s
        FROM unnest(%(ids)s::text[], %(exchanges)s::text[], %(notes)s::text[]) AS u(e, x, n)
        """
        + ACCOUNTS_ON_CONFLICT,
        {
            "source": source,
            "venue": venue,
            "slot": slot,
            "ids": [r.external_id for r in refs],
            "exchanges": [r.exchange for r in refs],
            "notes": [r.note for r in refs],
        },
    )
    cur.execute(
        "SELECT external_id, id FROM accounts WHERE source = %s AND external_id = ANY(%s)",
        (source, [r.external_id for r in refs]),
    )
    return lambda: {external_id: int(account_id) for external_id, account_id in cur.fetchall()}


def _check_accounts(records: Sequence[Any], ids: dict[str, int], table: Table) -> None:
    """Every row's account is one the batch lists (a C-speed set)."""
    unknown = {r.account for r in records}.difference(ids)
    if unknown:
        raise NormalizeError(f"{table.name}: row for account {min(unknown)!r} that the batch does not list")


def _check_keys(records: Sequence[Any], table: Table) -> None:
    """No key comes twice in the batch."""
    names = ["account" if k == "account_id" else k for k in upsert.key_columns(table) if k != "snapshot_ts"]
    keys = list(map(attrgetter(*names), records))
    if len(set(keys)) == len(keys):
        return
    seen = set()
    for key in keys:
        if key in seen:
            raise NormalizeError(f"{table.name}: the venue sent {key[1:]} twice for account {key[0]!r}")
        seen.add(key)


@contextmanager
def _keys_checked(records: Sequence[Any], table: Table, held: bool) -> Iterator[None]:
    """The load of `records` inside, with a key sent twice refused as the source's error.

    A fresh slot goes straight into the table, whose primary key refuses a second row of a
    key anyway: the check runs only then, to name the key as the venue sent it (it cost 4 %
    of a 50,000-row slot's load, measured, when it ran on every load). A re-load's stage
    has no key, and identical duplicates would pass its comparison: checked first."""
    if held:
        _check_keys(records, table)
        yield
        return
    try:
        yield
    except psycopg.errors.UniqueViolation:
        _check_keys(records, table)
        raise


def _held(cur: psycopg.Cursor[Any], source: str, slot: datetime) -> Reply[dict[str, bool]]:
    """Which snapshot tables already hold rows of the source at the slot (a re-load).

    Loads of one (source, slot) are serialized by the lock `upsert_run` takes on its run
    row (sent before this check), so no such row can appear between this check and the COPY.
    """
    tables = [table for table, _, _ in _LOADED]
    # unprepared, like every statement on upsert.source_rows: see there
    cur.execute(upsert.held_sql(tables), {"slot": slot, "source": source}, prepare=False)

    def held() -> dict[str, bool]:
        row = cur.fetchone()
        assert row is not None
        return {t.name: bool(held) for t, held in zip(tables, row, strict=True)}

    return held


def _copy(
    cur: psycopg.Cursor[Any],
    into: str,
    layout: copy.Layout,
    records: Sequence[Any],
    ids: dict[str, int],
    tail: tuple[Any, ...],
    digest: copy.Digest,
) -> None:
    """COPY `records` into `into`, with `tail` as the values of `_TAIL` on every row
    (none given: the stage, which has no such columns); `digest` is fed as they go."""
    # Python encoding and PostgreSQL parsing overlap without a thread: a chunk (~165 KB) fits
    # the socket's buffer, so each write returns while the server still parses it. Chunks of
    # 5,000 rows (1.65 MB) through psycopg's QueuedLibpqWriter thread did worse (bench/load.py,
    # 50k rows: 1.17-1.42x COPY fresh against 1.55-1.61x; 1M: 1.27x against 1.41x).
    columns = [*layout.columns, *_TAIL] if tail else layout.columns
    with cur.copy(upsert.copy_sql(into, columns)) as pipe:
        for chunk in copy.lines(records, layout, ids, tail, digest):
            pipe.write(chunk)


@contextmanager
def _work_mem(cur: psycopg.Cursor[Any], budget: str) -> Iterator[None]:
    """`work_mem` set to `budget` for the statements inside, then back to what it was, so
    the rest of the caller's transaction plans and runs as before. Not put back when the
    block raises: the transaction is failing, and its end undoes the setting anyway."""
    cur.execute(
        "SELECT previous, set_config('work_mem', %s, true) "
        "FROM (SELECT current_setting('work_mem') AS previous OFFSET 0) AS p",
        (budget,),
    )
    row = cur.fetchone()
    assert row is not None
    yield
    cur.execute("SELECT set_config('work_mem', %s, true)", (row[0],))


def upsert_snapshots(
    cur: psycopg.Cursor[Any],
    table: Table,
    layout: copy.Layout,
    records: Sequence[Any],
    ids: dict[str, int],
    tail: tuple[Any, ...],
    *,
    source: str,
    slot: datetime,
    held: bool,
    digest_before: str | None,
) -> Written:
    """Write the slot's `records` into `table`. `digest_before` is the run row's digest of
    what the table held of the source at the slot (None: not known)."""
    digest = copy.new_digest(table.name, layout)
    if not held:  # a fresh slot: nothing to compare with, nothing vanished
        if records:
            # straight into the slot's month (created by `partitions.ensure`): no per-row
            # routing through the parent (measured: 5 % of a 50,000-row COPY)
            month = partitions.child_name(table.name, partitions.month_start(slot))
            _copy(cur, month, layout, records, ids, tail, digest)
        return Written(len(records), 0, copy.digest_text(digest))
    cur.execute(upsert.create_stage_sql(table, layout.columns))
    if records:
        _copy(cur, upsert.stage_name(table), layout, records, ids, (), digest)
    if (staged := copy.digest_text(digest)) == digest_before:  # the rows are these already
        return Written(0, 0, staged)
    params = {"slot": slot, "source": source, **dict(zip(_TAIL, tail, strict=True))}
    with _work_mem(cur, upsert.RELOAD_WORK_MEM):
        cur.execute(upsert.reload_sql(table, layout.columns, _TAIL), params, prepare=False)  # see source_rows
        reply = cur.fetchone()
    assert reply is not None
    written, *gone = reply
    vanished = [(slot, *key) for key in zip(*gone, strict=True)] if gone[0] else []
    if vanished:
        cur.executemany(upsert.delete_key_sql(table), vanished)
    return Written(int(written), len(vanished), staged)


def write_raw(
    cur: psycopg.Cursor[Any], source: str, slot: datetime, responses: Sequence[RawResponse]
) -> None:
    """The raw bodies, under the id of the slot's run row (written before, in this transaction).

    A body is sent as the venue's own text when the response kept it: jsonb parses it to
    the same value (numbers as numeric, exact), and re-encoding a large body in Python
    cost more poller CPU than anything else of the raw payloads (measured: 4 % of it)."""
    # One statement per body, not one with arrays: psycopg escapes a text array element by
    # element in Python, which for JSON bodies cost more than the round trips it saved.
    cur.executemany(
        """
        INSERT INTO raw_payloads AS p (source, endpoint, snapshot_ts, fetched_at, http_status, body, run_id)
        VALUES (%(source)s, %(endpoint)s, %(slot)s, %(fetched)s, %(status)s, %(body)s::jsonb,
            (SELECT id FROM ingestion_runs WHERE source = %(source)s AND snapshot_ts = %(slot)s))
        ON CONFLICT (source, snapshot_ts, endpoint) DO UPDATE SET fetched_at = EXCLUDED.fetched_at,
            http_status = EXCLUDED.http_status, body = EXCLUDED.body, run_id = EXCLUDED.run_id
        WHERE p.body IS DISTINCT FROM EXCLUDED.body OR p.run_id IS DISTINCT FROM EXCLUDED.run_id
        """,
        [
            {
                "source": source,
                "endpoint": r.endpoint,
                "slot": slot,
                "fetched": r.fetched_at,
                "status": r.http_status,
                "body": r.text if r.text is not None else exactjson.dumps(r.body),
            }
            for r in responses
        ],
    )


def load_slot(
    conn: Connection,
    *,
    source: str,
    venue: str,
    slot: datetime,
    batch: Batch,
    responses: Sequence[RawResponse],
    started_at: datetime,
    attempts: int,
) -> LoadResult:
    fetched_at = min((r.fetched_at for r in responses), default=started_at)
    with (
        driver_cursor(conn) as cur,
        driver_cursor(conn) as runs,
        driver_cursor(conn) as accounts,
        driver_cursor(conn) as raw,
        driver_cursor(conn) as marks,
    ):
        rollups.share_lock(cur)  # first: before any lock that a close could wait on
        partitions.ensure(conn, [slot])
        # What comes before the snapshots goes in one pipeline: sent together, one round
        # trip, run by the server in this order, each statement seeing the ones before.
        with cur.connection.pipeline():
            run_of = upsert_run(
                runs,
                source=source,
                slot=slot,
                started_at=started_at,
                status="ok",
                error=None,
                counts=batch.counts(),
                attempts=attempts,
                keep_ok=False,
            )
            ids_of = upsert_accounts(accounts, source, venue, slot, batch)
            held_of = _held(cur, source, slot)
            write_raw(raw, source, slot, responses)
            closed_until_of = rollups.watermarks(marks)
        run, ids, held, closed_until = run_of(), ids_of(), held_of(), closed_until_of()
        assert run is not None
        done: dict[str, Written] = {}
        for table, layout, attr in _LOADED:
            records = getattr(batch, attr)
            _check_accounts(records, ids, table)
            with _keys_checked(records, table, held[table.name]):
                done[table.name] = upsert_snapshots(
                    cur,
                    table,
                    layout,
                    records,
                    ids,
                    (slot, fetched_at, run.id),
                    source=source,
                    slot=slot,
                    held=held[table.name],
                    digest_before=run.digests.get(table.name),
                )
        digests = {name: w.digest for name, w in done.items()}
        if digests != run.digests:  # none on an unchanged re-load
            cur.execute("UPDATE ingestion_runs SET row_digests = %s WHERE id = %s", (Jsonb(digests), run.id))
    written = {name: w.rows for name, w in done.items()}
    deleted = {name: w.deleted for name, w in done.items()}
    rollups.upsert_slot(
        conn,
        source,
        slot,
        closed_until,
        changed=[name for name in written if written[name] or deleted[name]],
        shrunk=[name for name, n in deleted.items() if n],
    )
    hour = rollups.floor(slot, "hour")
    return LoadResult(
        run_id=run.id,
        written=written,
        deleted=deleted,
        closes=hour if hour > closed_until["hour"] else None,
    )


def record_failure(
    conn: Connection,
    *,
    source: str,
    slot: datetime,
    started_at: datetime,
    error: str,
    attempts: int,
    responses: Sequence[RawResponse] = (),
) -> str | None:
    """The run row of a failed poll (an earlier `ok` for the same slot is kept) and its raw
    bodies; returns the error as stored (None: the `ok` row was kept).

    Nothing the venue sent can make this fail: the error is stored as `refused.storable`
    text, and a body jsonb refuses (NaN, 1e999999, \\u0000, a lone surrogate) is kept as
    `refused.kept_as_text`, which the error then mentions."""
    empty = {"accounts": 0, "balances": 0, "account_rows": 0, "positions": 0}
    partitions.ensure(conn, [slot])  # raw_payloads is partitioned too
    error = refused.storable(error)
    with driver_cursor(conn) as cur:
        run = upsert_run(
            cur,
            source=source,
            slot=slot,
            started_at=started_at,
            status="error",
            error=error,
            counts=empty,
            attempts=attempts,
            keep_ok=True,
        )()
        if run is None:
            return None
        notes = [note for r in responses if (note := _write_raw_or_keep(conn, cur, source, slot, r))]
        if notes:
            error = refused.storable("; ".join([error, *notes]))
            cur.execute("UPDATE ingestion_runs SET error = %s WHERE id = %s", (error, run.id))
    return error


def _write_raw_or_keep(
    conn: Connection, cur: psycopg.Cursor[Any], source: str, slot: datetime, response: RawResponse
) -> str | None:
    """Write the body as sent, in a savepoint; if PostgreSQL refuses it for its content
    (or a parsed body has no JSON text), write it as `refused.kept_as_text` instead and
    return a note saying so."""
    text, reason = _body_text(response)
    if reason is None:
        try:
            with conn.begin_nested():
                write_raw(cur, source, slot, [replace(response, text=text)])
            return None
        except Exception as err:  # classified once: only what the data caused is kept as text
            if classify(err) is not Fault.SOURCE_DATA:
                raise
            reason = refused.describe(err)
    write_raw(cur, source, slot, [replace(response, text=refused.kept_as_text(text, reason))])
    return f"raw body of {response.endpoint} kept as text ({refused.KEPT_AS_TEXT}): {reason}"


def _body_text(response: RawResponse) -> tuple[str, str | None]:
    """The body's text, and why it cannot be JSON (None: it may be)."""
    if response.text is not None:
        return response.text, None
    try:
        return exactjson.dumps(response.body), None
    except ValueError as err:  # a NaN or an Infinity in the parsed body
        return exactjson.dumps(response.body, allow_nan=True), f"not JSON: {err}"


def claim_slots(
    conn: Connection,
    *,
    sources: Collection[str],
    slot: datetime,
    worker: str,
    abandoned: tuple[datetime, datetime],
) -> set[str]:
    """Claim (source, slot) for `worker` for each of `sources`; returns the ones it got.

    Replicas of the daemon race here: the unique (source, snapshot_ts) lets exactly one
    insert win. The rows are inserted in the order of their source, so two replicas
    claiming overlapping sets wait on each other in one order and cannot deadlock. A
    `missed` row may still be claimed (a replica that slept wrote it while this one was
    on time). Claims of other workers in the `abandoned` window [from, to) that never
    finished (the worker died) are marked `missed` first, so status does not show them
    running forever; the window is bounded so this stays an index range scan, and rows
    another replica is marking already are skipped, not waited for (no lock cycle).
    """
    names = sorted(sources)
    with driver_cursor(conn) as cur:
        cur.execute(
            """
            UPDATE ingestion_runs r SET status = 'missed', finished_at = now(),
                error = 'claimed by worker ' || coalesce(r.worker, '?') || ', which never finished it'
            FROM (
                SELECT id FROM ingestion_runs WHERE source = ANY(%(sources)s) AND status = 'running'
                    AND snapshot_ts >= %(from)s AND snapshot_ts < %(to)s
                ORDER BY id FOR UPDATE SKIP LOCKED
            ) AS dead
            WHERE r.id = dead.id
            """,
            {"sources": names, "from": abandoned[0], "to": abandoned[1]},
        )
        cur.execute(
            """
            INSERT INTO ingestion_runs AS r (source, snapshot_ts, started_at, status, worker)
            SELECT s, %(slot)s, now(), 'running', %(worker)s
            FROM unnest(%(sources)s::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i
            ON CONFLICT (source, snapshot_ts) DO UPDATE SET status = 'running', worker = EXCLUDED.worker,
                started_at = EXCLUDED.started_at, finished_at = NULL, error = NULL
            WHERE r.status = 'missed'
            RETURNING source
            """,
            {"sources": names, "slot": slot, "worker": worker},
        )
        return {str(source) for (source,) in cur.fetchall()}


def record_missed(
    conn: Connection, *, source: str, slots: Sequence[datetime], reason: str, worker: str | None = None
) -> int:
    """Rows `missed` for slots nobody polled; a slot that has any row already is left alone,
    except a claim of `worker` itself (it claimed the slot and then could not keep the poll)."""
    with driver_cursor(conn) as cur:
        cur.execute(
            """
            INSERT INTO ingestion_runs AS r (source, snapshot_ts, started_at, finished_at, status, error)
            SELECT %(source)s, s, now(), now(), 'missed', %(reason)s FROM unnest(%(slots)s::timestamptz[]) AS u(s)
            ON CONFLICT (source, snapshot_ts) DO UPDATE SET status = 'missed', finished_at = now(),
                error = EXCLUDED.error, worker = NULL
            WHERE r.status = 'running' AND r.worker = %(worker)s
            """,
            {"source": source, "reason": reason, "slots": list(slots), "worker": worker},
        )
        return cur.rowcount


def lock_slot(conn: Connection, source: str, slot: datetime) -> str | None:
    """Serialize loads of one (source, slot) until the transaction ends; return its run status.

    A spooled slot may be drained by two replicas at once, or again after a crash between
    its load and the removal of its file: under this lock the second sees `ok` and skips.
    """
    with driver_cursor(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (locks.slot_key(source, slot),))
        cur.execute(
            "SELECT status FROM ingestion_runs WHERE source = %s AND snapshot_ts = %s", (source, slot)
        )
        row = cur.fetchone()
    return str(row[0]) if row else None


def last_slots(conn: Connection, sources: Sequence[str]) -> dict[str, datetime]:
    """Per source, the latest slot that has a run row (sources without one are absent)."""
    with driver_cursor(conn) as cur:
        cur.execute(
            """
            SELECT s, (SELECT max(snapshot_ts) FROM ingestion_runs WHERE source = s)
            FROM unnest(%s::text[]) AS u(s)
            """,
            (list(sources),),
        )
        return {str(source): last for source, last in cur.fetchall() if last is not None}
