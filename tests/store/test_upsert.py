"""The load's SQL (snapshots of the pure builders) and its two paths against a real PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from etl import exactjson
from etl.errors import NormalizeError
from etl.records import AccountRef, BalanceRow, Batch, PositionRow, RawResponse
from etl.store import partitions, rollups, upsert
from etl.store.load import LoadResult, load_slot, record_failure
from etl.store.schema import account_snapshots, balance_snapshots, position_snapshots
from tests.helpers import rows
from tests.store import builders

SLOT = datetime(2026, 1, 1, tzinfo=UTC)


def test_copy_sql_names_the_columns_and_the_null_marker():
    assert upsert.copy_sql("stage_balance_snapshots", ["account_id", "total"]) == (
        "COPY stage_balance_snapshots (account_id, total) FROM STDIN (NULL 'None')"
    )


def test_held_sql_asks_each_table_for_a_row_of_the_source_at_the_slot():
    assert upsert.held_sql([balance_snapshots, position_snapshots]) == (
        "SELECT EXISTS (SELECT 1 FROM (SELECT id FROM accounts WHERE source = %(source)s) AS of_source "
        "CROSS JOIN LATERAL (SELECT 1 FROM balance_snapshots WHERE account_id = of_source.id "
        "AND snapshot_ts = %(slot)s OFFSET 0) AS s), "
        "EXISTS (SELECT 1 FROM (SELECT id FROM accounts WHERE source = %(source)s) AS of_source "
        "CROSS JOIN LATERAL (SELECT 1 FROM position_snapshots WHERE account_id = of_source.id "
        "AND snapshot_ts = %(slot)s OFFSET 0) AS s)"
    )


def test_a_reload_compares_values_but_not_run_id_or_fetched_at_and_writes_only_what_differs():
    sql = upsert.reload_sql(
        account_snapshots, ["account_id", "account_type", "equity"], ["snapshot_ts", "run_id"]
    )
    assert sql == (
        "WITH diff AS MATERIALIZED (SELECT n.account_id, n.account_type, n.equity, "
        "o.account_id AS gone_account_id, o.account_type AS gone_account_type "
        "FROM stage_account_snapshots AS n FULL JOIN ((SELECT id FROM accounts WHERE source = "
        "%(source)s) AS of_source CROSS JOIN LATERAL (SELECT * FROM account_snapshots WHERE "
        "account_id = of_source.id AND snapshot_ts = %(slot)s OFFSET 0) AS o) "
        "ON n.account_id = o.account_id AND n.account_type = o.account_type "
        "WHERE n.account_id IS NULL OR o.account_id IS NULL OR ROW(n.equity)::text IS DISTINCT FROM ROW(o.equity)::text), "
        "written AS (INSERT INTO account_snapshots AS t (account_id, account_type, equity, snapshot_ts, "
        "run_id) SELECT account_id, account_type, equity, %(snapshot_ts)s, %(run_id)s FROM diff "
        "WHERE account_id IS NOT NULL ON CONFLICT (account_id, account_type, snapshot_ts) "
        "DO UPDATE SET equity = EXCLUDED.equity, run_id = EXCLUDED.run_id RETURNING 1) "
        "SELECT (SELECT count(*) FROM written), array_agg(gone_account_id), "
        "array_agg(gone_account_type) FROM diff WHERE account_id IS NULL"
    )


def test_vanished_rows_are_deleted_by_key():
    assert upsert.delete_key_sql(position_snapshots) == (
        "DELETE FROM position_snapshots WHERE snapshot_ts = %s AND account_id = %s "
        "AND account_type = %s AND symbol = %s AND side = %s"
    )


def test_the_stage_is_a_temporary_table_of_the_staged_columns_emptied_at_commit():
    assert upsert.create_stage_sql(balance_snapshots, ["account_id", "currency", "total"]) == (
        "CREATE TEMP TABLE IF NOT EXISTS stage_balance_snapshots ON COMMIT DELETE ROWS "
        "AS SELECT account_id, currency, total FROM balance_snapshots WITH NO DATA"
    )


# --- the loader's two paths, end to end


def balances(n: int, scale: str = "1") -> tuple[BalanceRow, ...]:
    return tuple(
        BalanceRow("acct", "Spot", f"C{i:03d}", total=Decimal(f"{i}.25") * Decimal(scale), extra={"i": i})
        for i in range(n)
    )


def positions(*symbols: str) -> tuple[PositionRow, ...]:
    return tuple(PositionRow("acct", "perp", s, "long", quantity=Decimal("1.5")) for s in symbols)


def load_on(conn, batch: Batch, slot: datetime = SLOT) -> LoadResult:
    return load_slot(
        conn, source="src", venue="ltp", slot=slot, batch=batch, responses=(), started_at=slot, attempts=1
    )


def load(engine, batch_balances, batch_positions=(), slot: datetime = SLOT) -> LoadResult:
    batch = Batch(accounts=(AccountRef("acct"),), balances=batch_balances, positions=batch_positions)
    with engine.begin() as conn:
        return load_on(conn, batch, slot)


def versions(engine, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in rows(engine, f"SELECT currency, xmin::text FROM {table}")}


@pytest.mark.db
def test_a_fresh_slot_is_copied_and_a_rerun_rewrites_no_row(engine):
    first = load(engine, balances(120), positions("BTC", "ETH"))
    assert first.written == {"balance_snapshots": 120, "account_snapshots": 0, "position_snapshots": 2}
    before = versions(engine, "balance_snapshots")
    again = load(engine, balances(120), positions("BTC", "ETH"))
    assert again.written == {"balance_snapshots": 0, "account_snapshots": 0, "position_snapshots": 0}
    assert again.deleted == {"balance_snapshots": 0, "account_snapshots": 0, "position_snapshots": 0}
    assert versions(engine, "balance_snapshots") == before  # no new row version at all


@pytest.mark.db
def test_a_rerun_updates_changed_rows_and_deletes_vanished_ones(engine):
    load(engine, balances(10), positions("BTC", "ETH"))
    changed = (*balances(8)[:7], replace(balances(8)[7], total=Decimal("99.000")))
    result = load(engine, changed, positions("BTC"))
    assert result.written["balance_snapshots"] == 1
    assert result.deleted == {"balance_snapshots": 2, "account_snapshots": 0, "position_snapshots": 1}
    got = rows(engine, "SELECT currency, total::text FROM balance_snapshots ORDER BY currency")
    assert [tuple(r) for r in got][-1] == ("C007", "99.000")
    assert len(got) == 8
    assert [r[0] for r in rows(engine, "SELECT symbol FROM position_snapshots")] == ["BTC"]


@pytest.mark.db
def test_an_unchanged_rerun_neither_rewrites_nor_locks_a_row(engine):
    """The comparison only reads the slot: no row gets a new version, and none is locked
    either (an ON CONFLICT over every row would leave each one's xmax set)."""
    load(engine, balances(50), positions("BTC"))
    tuples = "SELECT currency, xmin::text, xmax::text FROM balance_snapshots ORDER BY currency"
    before = rows(engine, tuples)
    assert {r[2] for r in before} == {"0"}
    load(engine, balances(50), positions("BTC"))
    assert rows(engine, tuples) == before


@pytest.mark.db
def test_a_rerun_writes_exactly_the_changed_and_new_rows(engine):
    load(engine, balances(10))
    before = versions(engine, "balance_snapshots")
    again = list(balances(11))  # C010 is new
    again[3] = replace(again[3], total=Decimal("-3.5"))
    again[8] = replace(again[8], extra={"i": 8, "network": "TRC20"})  # only the JSON differs
    result = load(engine, tuple(again))
    assert result.written["balance_snapshots"] == 3 and result.deleted["balance_snapshots"] == 0
    after = versions(engine, "balance_snapshots")
    assert {c for c in after if after[c] != before.get(c)} == {"C003", "C008", "C010"}
    got = dict(rows(engine, "SELECT currency, total::text FROM balance_snapshots"))
    assert got["C003"] == "-3.5" and got["C010"] == "10.25" and len(got) == 11


@pytest.mark.db
def test_a_rerun_without_any_row_of_a_table_deletes_all_of_them(engine):
    load(engine, balances(3), positions("BTC", "ETH", "SOL"))
    result = load(engine, balances(3))
    assert result.deleted == {"balance_snapshots": 0, "account_snapshots": 0, "position_snapshots": 3}
    assert result.written["balance_snapshots"] == 0
    assert rows(engine, "SELECT count(*) FROM position_snapshots")[0][0] == 0


@pytest.mark.db
def test_a_rerun_leaves_the_transactions_work_mem_as_it_found_it(engine):
    load(engine, balances(3), positions("BTC"))
    batch = Batch(accounts=(AccountRef("acct"),), balances=balances(4), positions=positions("BTC"))
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL work_mem = '5MB'"))
        result = load_on(conn, batch)
        assert conn.execute(text("SHOW work_mem")).scalar_one() == "5MB"
    assert result.written["balance_snapshots"] == 1  # it was a re-load


@pytest.mark.db
def test_another_slot_of_the_same_source_is_fresh_and_leaves_the_first_alone(engine):
    load(engine, balances(5))
    result = load(engine, balances(3), slot=SLOT + timedelta(minutes=1))
    assert result.written["balance_snapshots"] == 3 and result.deleted["balance_snapshots"] == 0
    assert rows(engine, "SELECT count(*) FROM balance_snapshots WHERE snapshot_ts = :s", s=SLOT)[0][0] == 5


@pytest.mark.db
def test_a_large_batch_loads_in_several_chunks_exactly(engine):
    many = tuple(
        BalanceRow("acct", t, f"C{i:05d}", total=Decimal(f"1234567890.{i:016d}"), available=Decimal(-i))
        for i in range(6_000)
        for t in ("Spot",)
    )
    assert load(engine, many).written["balance_snapshots"] == 6_000
    got = rows(engine, "SELECT total::text, available FROM balance_snapshots WHERE currency = 'C05999'")
    assert tuple(got[0]) == ("1234567890.0000000000005999", Decimal(-5999))


@pytest.mark.db
def test_a_key_sent_twice_is_the_sources_error_naming_the_key(engine):
    twice = (*balances(3), balances(3)[1])
    with pytest.raises(NormalizeError, match=r"balance_snapshots: the venue sent \('Spot', 'C001'\) twice"):
        load(engine, twice)


@pytest.mark.db
def test_a_key_sent_twice_on_a_re_load_is_refused_too(engine):
    load(engine, balances(3))  # the re-load's stage has no key: checked before, not by the table
    twice = (*balances(3), balances(3)[1])
    with pytest.raises(NormalizeError, match=r"balance_snapshots: the venue sent \('Spot', 'C001'\) twice"):
        load(engine, twice)


@pytest.mark.db
def test_a_row_of_an_unlisted_account_is_refused(engine):
    stray = (*balances(2), replace(balances(1)[0], account="other"))
    with pytest.raises(NormalizeError, match="row for account 'other' that the batch does not list"):
        load(engine, stray)


def test_raw_bodies_are_stored_from_the_venues_text_or_re_encoded_to_the_same_jsonb(engine):
    text = '{"code": 0, "data": {"balance": 12282.880026806747436390450, "tiny": 1E-30, "name": "Ünïcode"}}'
    sent = RawResponse("/as-sent", 200, exactjson.loads(text), SLOT, text=text)
    parsed = RawResponse("/re-encoded", 200, exactjson.loads(text), SLOT)
    builders.load(engine, "raw", SLOT, {"a": "1"}, responses=(sent, parsed))
    stored = dict(rows(engine, "SELECT endpoint, body FROM raw_payloads WHERE source = 'raw'"))
    assert stored["/as-sent"] == stored["/re-encoded"]
    (digits,) = rows(
        engine,
        "SELECT body->'data'->>'balance', body->'data'->>'tiny' FROM raw_payloads WHERE endpoint = '/as-sent'",
    )
    assert digits == ("12282.880026806747436390450", "0.000000000000000000000000000001")
    # an unchanged re-run rewrites no raw row, whichever way the body was sent
    before = rows(engine, "SELECT endpoint, xmin::text FROM raw_payloads WHERE source = 'raw' ORDER BY 1")
    builders.load(engine, "raw", SLOT, {"a": "1"}, responses=(sent, parsed))
    assert (
        rows(engine, "SELECT endpoint, xmin::text FROM raw_payloads WHERE source = 'raw' ORDER BY 1")
        == before
    )


def _rows_read(plan: dict, table: str) -> int:
    """Rows the plan's scans of `table` (or its partitions) returned, over all their loops."""
    own = 0
    if plan.get("Relation Name", "").startswith(table):
        own = plan["Actual Rows"] * plan["Actual Loops"]
    return own + sum(_rows_read(p, table) for p in plan.get("Plans", []))


def test_a_loads_own_statements_read_only_its_sources_rows_of_the_slot(engine):
    """Many sources polled at one slot: each load's held check and rollup upsert probe their
    own accounts' rows. (Reading the whole slot instead, as the planner chose for an
    `IN (SELECT ... source)` it had no statistics for, is quadratic in the sources.)"""
    for n in range(40):
        builders.load(engine, f"s{n:02d}", SLOT, {f"s{n:02d}-a{i}": "1" for i in range(3)})
    held = upsert.held_sql([balance_snapshots]).replace("%(slot)s", ":slot").replace("%(source)s", ":source")
    # the held check stops at the first row; the rollups read the 3 rows once per rollup
    statements = {held: range(1, 4), rollups.upsert_slot_sql(["balance_snapshots"]): [2 * 3]}
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))  # the statistics now say: 120 rows at SLOT
        for sql, expected in statements.items():
            (plan,) = conn.execute(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), {"slot": SLOT, "source": "s07"}
            ).scalar_one()
            assert _rows_read(plan["Plan"], "balance_snapshots") in expected, sql
        conn.rollback()


def test_a_reloads_comparison_reads_only_its_sources_rows_and_cannot_be_a_nested_loop(engine):
    """Many sources at one slot, the statistics not knowing it: the re-load's comparison
    probes the source's own accounts and joins by hash or merge (a FULL JOIN cannot be a
    nested loop, which over a slot guessed at one row would be quadratic)."""
    for n in range(40):
        builders.load(engine, f"s{n:02d}", SLOT, {f"s{n:02d}-a{i}": "1" for i in range(3)})
    constants = ["snapshot_ts", "fetched_at", "run_id"]
    staged = [c.name for c in balance_snapshots.columns if c.name not in constants]
    sql = upsert.reload_sql(balance_snapshots, staged, constants)
    with engine.connect() as conn:
        conn.execute(text(upsert.create_stage_sql(balance_snapshots, staged)))
        conn.execute(
            text(
                f"INSERT INTO stage_balance_snapshots SELECT {', '.join('b.' + c for c in staged)} "
                "FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id WHERE a.source = 's07'"
            )
        )
        sql = re.sub(r"%\((\w+)\)s", r":\1", sql)
        params = {"slot": SLOT, "source": "s07", "snapshot_ts": SLOT, "fetched_at": SLOT, "run_id": 1}
        (plan,) = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), params).scalar_one()
        conn.rollback()
    assert _rows_read(plan["Plan"], "balance_snapshots") == 3
    assert {("Hash Join", "Full"), ("Merge Join", "Full")} & set(_joins(plan["Plan"]))
    assert not _rows_written(plan["Plan"])  # unchanged: nothing inserted, nothing updated


def _joins(plan: dict) -> list[tuple[str, str]]:
    own = [(plan["Node Type"], plan["Join Type"])] if "Join Type" in plan else []
    return own + [j for p in plan.get("Plans", []) for j in _joins(p)]


def _rows_written(plan: dict) -> int:
    own = plan["Actual Rows"] if plan["Node Type"] == "ModifyTable" else 0
    return own + sum(_rows_written(p) for p in plan.get("Plans", []))


def _seq_scans(conn, table: str) -> int:
    conn.execute(text("SELECT pg_stat_force_next_flush()"))  # flushed as the backend goes idle
    conn.commit()
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    found = conn.execute(text("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = :t"), {"t": table})
    scans = int(found.scalar_one())
    conn.commit()
    return scans


@pytest.mark.db
def test_a_load_into_a_month_that_was_vacuumed_empty_probes_the_index_not_the_whole_month(engine):
    """The next month's partition, created ahead, vacuumed while empty (a manual VACUUM
    ANALYZE): a plan made then and kept (a prepared statement's generic plan) scanned that
    partition whole for each account of every load once the month began."""
    refs = tuple(AccountRef(f"a{i}") for i in range(20))
    batch = Batch(
        accounts=refs,
        balances=tuple(
            BalanceRow(r.external_id, "Spot", f"C{c}", total=Decimal(c)) for r in refs for c in range(50)
        ),
    )
    january, february = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    with engine.connect() as conn:

        def load_at(slot: datetime) -> None:
            with conn.begin():
                load_on(conn, batch, slot)

        with conn.begin():  # January to March: no partition is created once February starts
            partitions.ensure(conn, [january, february])
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
            other.execute(text("VACUUM ANALYZE balance_snapshots_p2026_02"))
        for minute in range(15):  # enough runs on this connection to prepare and settle on a plan
            load_at(january + timedelta(minutes=minute))
        load_at(february)
        before = _seq_scans(conn, "balance_snapshots_p2026_02")
        load_at(february + timedelta(minutes=1))
        assert _seq_scans(conn, "balance_snapshots_p2026_02") == before  # was +20, one per account


def _listed(engine, slot: datetime, exchange: str, note: str | None) -> None:
    ref = AccountRef("acct", exchange=exchange, note=note)
    with engine.begin() as conn:
        load_slot(
            conn,
            source="ltp",
            venue="ltp",
            slot=slot,
            batch=Batch(accounts=(ref,), balances=(BalanceRow("acct", "Spot", "USDT", total=Decimal(1)),)),
            responses=(),
            started_at=slot,
            attempts=1,
        )


def test_a_late_load_leaves_the_account_metadata_of_the_newest_slot(engine):
    early, late = SLOT, SLOT + timedelta(minutes=5)
    _listed(engine, late, "Bybit", "new desk")  # live loads resumed
    _listed(engine, early, "BINANCE", "old desk")  # then the spool drains an older slot
    account = "SELECT exchange, note, first_seen_at, last_seen_at FROM accounts"
    assert rows(engine, account) == [("Bybit", "new desk", early, late)]
    _listed(engine, late, "Bybit", None)  # a re-run of the newest slot is what the account says now
    assert rows(engine, account) == [("Bybit", None, early, late)]
    _listed(engine, late + timedelta(minutes=5), "OKX", "moved")
    assert rows(engine, account) == [("OKX", "moved", early, late + timedelta(minutes=5))]


# --- the digest of what a load wrote (ingestion_runs.row_digests)


def digests(engine, slot: datetime = SLOT) -> dict[str, str]:
    """The run row's row_digests ({}: NULL)."""
    sql = "SELECT row_digests FROM ingestion_runs WHERE source = 'src' AND snapshot_ts = :s"
    (found,) = rows(engine, sql, s=slot)
    return found[0] or {}


@pytest.fixture
def comparisons(monkeypatch) -> list[str]:
    """The tables whose re-load ran the comparison (`reload_sql`), in order."""
    ran: list[str] = []
    build = upsert.reload_sql

    def counted(table, staged, constants):  # type: ignore[no-untyped-def]
        ran.append(table.name)
        return build(table, staged, constants)

    monkeypatch.setattr(upsert, "reload_sql", counted)
    return ran


@pytest.mark.db
def test_an_unchanged_reload_matches_the_digests_and_skips_the_comparison(engine, comparisons):
    load(engine, balances(6_000), positions("BTC", "ETH"))  # many chunks, one digest
    stored = digests(engine)
    assert set(stored) == {"balance_snapshots", "account_snapshots", "position_snapshots"}
    assert comparisons == []  # a fresh slot compares nothing
    tuples = "SELECT tableoid::regclass::text, xmin::text, xmax::text, t::text FROM {} t"
    before = [r for t in ("balance_snapshots", "position_snapshots") for r in rows(engine, tuples.format(t))]
    again = load(engine, balances(6_000), positions("BTC", "ETH"))
    assert again.written == dict.fromkeys(stored, 0) and again.deleted == dict.fromkeys(stored, 0)
    assert comparisons == []  # every table matched its digest
    after = [r for t in ("balance_snapshots", "position_snapshots") for r in rows(engine, tuples.format(t))]
    assert after == before  # no row version, no row lock
    assert digests(engine) == stored


@pytest.mark.db
def test_a_reload_with_values_changed_updates_exactly_those_and_stores_the_new_digest(engine, comparisons):
    load(engine, balances(10), positions("BTC"))
    stored, before = digests(engine), versions(engine, "balance_snapshots")
    changed = list(balances(10))
    changed[4] = replace(changed[4], total=Decimal("4.2500"))  # equal to 4.25 but for its scale
    changed[7] = replace(changed[7], total=Decimal("-1"))
    result = load(engine, tuple(changed), positions("BTC"))
    assert comparisons == ["balance_snapshots"]  # the other tables matched
    assert result.written["balance_snapshots"] == 2  # 4.2500 is not 4.25: it reads back as sent
    after = versions(engine, "balance_snapshots")
    assert {c for c in after if after[c] != before[c]} == {"C004", "C007"}
    assert rows(engine, "SELECT total::text FROM balance_snapshots WHERE currency = 'C004'") == [("4.2500",)]
    now = digests(engine)
    assert now["balance_snapshots"] != stored["balance_snapshots"]
    assert {t: d for t, d in now.items() if t != "balance_snapshots"} == {
        t: d for t, d in stored.items() if t != "balance_snapshots"
    }
    comparisons.clear()
    assert load(engine, tuple(changed), positions("BTC")).written["balance_snapshots"] == 0
    assert comparisons == []  # the new digest is what the next re-load matches


@pytest.mark.db
def test_a_reload_where_a_position_vanished_deletes_it_and_matches_afterwards(engine, comparisons):
    load(engine, balances(3), positions("BTC", "ETH"))
    result = load(engine, balances(3), positions("BTC"))
    assert result.deleted["position_snapshots"] == 1 and comparisons == ["position_snapshots"]
    comparisons.clear()
    assert load(engine, balances(3), positions("BTC")).deleted["position_snapshots"] == 0
    assert comparisons == []
    assert rows(engine, "SELECT symbol FROM position_snapshots") == [("BTC",)]


@pytest.mark.db
def test_a_table_left_without_rows_has_a_digest_too(engine, comparisons):
    load(engine, balances(3), positions("BTC"))
    assert load(engine, balances(3)).deleted["position_snapshots"] == 1  # every position closed
    emptied = digests(engine)
    comparisons.clear()
    load(engine, balances(3))
    assert comparisons == [] and digests(engine) == emptied
    # the digest of no rows is not a promise that none can come: a new position is written
    assert load(engine, balances(3), positions("SOL")).written["position_snapshots"] == 1
    assert rows(engine, "SELECT symbol FROM position_snapshots") == [("SOL",)]


@pytest.mark.db
def test_a_reload_without_a_matching_digest_compares(engine, comparisons):
    """Run rows from before migration 0006 (NULL) or a digest of other rows: compared, and
    the digest of the rows loaded stored."""
    load(engine, balances(4), positions("BTC"))
    stored = digests(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE ingestion_runs SET row_digests = NULL"))
    changed = (*balances(3), replace(balances(4)[3], total=Decimal(9)))
    assert load(engine, changed, positions("BTC")).written["balance_snapshots"] == 1
    assert comparisons == ["balance_snapshots", "position_snapshots"]  # held, nothing known
    now = digests(engine)
    assert now["position_snapshots"] == stored["position_snapshots"]
    assert now["balance_snapshots"] != stored["balance_snapshots"]
    comparisons.clear()
    with engine.begin() as conn:
        conn.execute(text("UPDATE ingestion_runs SET row_digests['balance_snapshots'] = '\"0\"'"))
    assert load(engine, changed, positions("BTC")).written["balance_snapshots"] == 0
    assert comparisons == ["balance_snapshots"]
    assert digests(engine) == now


@pytest.mark.db
def test_a_failed_poll_after_a_load_keeps_the_rows_and_their_digests(engine, comparisons):
    load(engine, balances(3))
    stored = digests(engine)
    with engine.begin() as conn:
        record_failure(conn, source="src", slot=SLOT, started_at=SLOT, error="timeout", attempts=3)
    assert rows(engine, "SELECT status FROM ingestion_runs") == [("ok",)]  # the ok row is kept
    assert digests(engine) == stored
    load(engine, balances(3))
    assert comparisons == []
