"""Revisions 0002 and 0004 convert data both ways, and the drift check ignores partitions on purpose only."""

from __future__ import annotations

from etl.store import migrate
from tests.helpers import rows
from tests.store.builders import at, load


def test_no_drift_with_monthly_partitions_present(engine):
    load(engine, "s", at("2026-05-05T00:00:00"), {"s": "1"})
    assert rows(engine, "SELECT count(*) FROM pg_class WHERE relname LIKE 'balance_snapshots_p%'")[0][0] >= 2
    assert migrate.drift(engine) == []


def test_only_partition_children_are_left_out_of_the_comparison():
    assert not migrate.include_object(None, "balance_snapshots_p2026_01", "table", True, None)
    assert not migrate.include_object(None, "raw_payloads_p2031_12", "table", True, None)
    # a stray table (or a child named by hand) is still reported as drift
    assert migrate.include_object(None, "balance_snapshots_old", "table", True, None)
    assert migrate.include_object(None, "balances_hourly_p2026_01", "table", True, None)


SEED_0001 = """
INSERT INTO accounts (source, venue, external_id, first_seen_at, last_seen_at)
    VALUES ('s', 'bittap', 's', '2026-01-31 23:00Z', '2026-02-01 01:00Z');
INSERT INTO ingestion_runs (source, snapshot_ts, started_at, status)
    VALUES ('s', '2026-01-31 23:00Z', now(), 'ok'), ('s', '2026-02-01 01:00Z', now(), 'ok');
INSERT INTO balance_snapshots (account_id, account_type, currency, snapshot_ts, total, fetched_at, run_id)
    VALUES (1, 'futures', 'USDT', '2026-01-31 23:00Z', 1.5, now(), 1),
           (1, 'futures', 'USDT', '2026-02-01 01:00Z', 2.25, now(), 2);
INSERT INTO account_snapshots (account_id, account_type, snapshot_ts, equity, fetched_at, run_id)
    VALUES (1, 'futures', '2026-01-31 23:00Z', 10, now(), 1), (1, 'futures', '2026-02-01 01:00Z', 12, now(), 2);
INSERT INTO position_snapshots (account_id, account_type, symbol, side, snapshot_ts, fetched_at, run_id)
    VALUES (1, 'futures', 'BTCUSDT', 'long', '2026-02-01 01:00Z', now(), 2);
INSERT INTO raw_payloads (source, endpoint, snapshot_ts, fetched_at, http_status, body)
    VALUES ('s', '/a', '2026-01-31 23:00Z', now(), 200, '{"n": 1.10}');
"""


def test_0002_moves_existing_rows_into_partitions_and_back(scratch):
    migrate.upgrade(scratch, "0001")
    with scratch.begin() as conn:
        conn.exec_driver_sql(SEED_0001)
    migrate.upgrade(scratch)
    assert rows(scratch, "SELECT tableoid::regclass::text, total FROM balance_snapshots ORDER BY 1") == [
        ("balance_snapshots_p2026_01", 1.5),
        ("balance_snapshots_p2026_02", 2.25),
    ]
    assert rows(scratch, "SELECT bucket, equity FROM account_equity_daily ORDER BY 1") == [
        (at("2026-01-31T00:00:00"), 10),
        (at("2026-02-01T00:00:00"), 12),
    ]
    assert rows(scratch, "SELECT count(*) FROM balances_hourly")[0][0] == 2
    assert rows(scratch, "SELECT body::text FROM raw_payloads") == [('{"n": 1.10}',)]
    assert migrate.drift(scratch) == []

    migrate.downgrade(scratch, "0001")
    assert rows(scratch, "SELECT relkind FROM pg_class WHERE relname = 'balance_snapshots'") == [("r",)]
    assert rows(scratch, "SELECT total FROM balance_snapshots ORDER BY snapshot_ts") == [(1.5,), (2.25,)]
    assert rows(scratch, "SELECT count(*) FROM position_snapshots")[0][0] == 1
    assert rows(scratch, "SELECT id, body::text FROM raw_payloads") == [(1, '{"n": 1.10}')]
    assert rows(scratch, "SELECT total_equity FROM portfolio_equity ORDER BY slot") == [(10,), (12,)]


def test_0004_keeps_what_the_rollups_held_and_gives_it_back(scratch):
    migrate.upgrade(scratch, "0001")
    with scratch.begin() as conn:
        conn.exec_driver_sql(SEED_0001)
    migrate.upgrade(scratch, "0003")  # rollups kept by the loader, every bucket a row
    rollups = ("balances_hourly", "balances_daily", "account_equity_hourly", "account_equity_daily")
    kept = {r: rows(scratch, f"SELECT * FROM {r} ORDER BY 1, 2, 3") for r in rollups}
    migrate.upgrade(scratch)
    # the buckets of the newest slot are open (computed), the older ones stay rows
    assert rows(scratch, "SELECT width, closed_until FROM rollup_watermarks ORDER BY 1") == [
        ("day", at("2026-02-01T00:00:00")),
        ("hour", at("2026-02-01T01:00:00")),
    ]
    assert rows(scratch, "SELECT bucket FROM account_equity_hourly_closed") == [(at("2026-01-31T23:00:00"),)]
    assert {r: rows(scratch, f"SELECT * FROM {r} ORDER BY 1, 2, 3") for r in rollups} == kept
    assert rows(scratch, "SELECT bucket, total_equity FROM portfolio_equity_daily ORDER BY 1") == [
        (at("2026-01-31T00:00:00"), 10),
        (at("2026-02-01T00:00:00"), 12),
    ]
    assert migrate.drift(scratch) == []

    migrate.downgrade(scratch, "0003")
    assert rows(scratch, "SELECT relkind FROM pg_class WHERE relname = 'balances_hourly'") == [("r",)]
    assert {r: rows(scratch, f"SELECT * FROM {r} ORDER BY 1, 2, 3") for r in rollups} == kept
    assert rows(scratch, "SELECT count(*) FROM portfolio_equity_hourly") == [(2,)]


def test_0005_bounds_the_portfolio_buckets_in_hours_and_goes_back(scratch):
    def definition() -> str:
        return rows(scratch, "SELECT pg_get_viewdef('portfolio_equity_daily')")[0][0]

    migrate.upgrade(scratch)
    assert "'24:00:00'::interval" in definition() and "'1 day'" not in definition()
    migrate.downgrade(scratch, "0004")
    assert "'1 day'::interval" in definition()
    migrate.upgrade(scratch)
    assert migrate.drift(scratch) == []


def test_0006_adds_row_digests_null_on_every_run_row_and_drops_it_again(scratch):
    def columns() -> list[str]:
        sql = "SELECT column_name FROM information_schema.columns WHERE table_name = 'ingestion_runs'"
        return [c for (c,) in rows(scratch, sql)]

    migrate.upgrade(scratch, "0001")
    with scratch.begin() as conn:
        conn.exec_driver_sql(SEED_0001)
    migrate.upgrade(scratch)
    assert rows(scratch, "SELECT DISTINCT row_digests FROM ingestion_runs") == [(None,)]  # not known
    migrate.downgrade(scratch, "0005")
    assert "row_digests" not in columns() and len(columns()) > 0
    migrate.upgrade(scratch)
    assert migrate.drift(scratch) == []
