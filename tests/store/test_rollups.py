"""Hourly and daily rollups: the last value of each key in the bucket, kept by the loader."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text

from etl.store import rollups
from etl.store.retention import prune
from tests.helpers import rows
from tests.store.builders import at, load

HOURLY = "SELECT bucket, currency, total, snapshot_ts FROM balances_hourly ORDER BY bucket, currency"
DAILY = "SELECT bucket, currency, total, snapshot_ts FROM balances_daily ORDER BY bucket, currency"


def _equity(engine, table: str) -> list[tuple]:
    return rows(engine, f"SELECT bucket, equity, snapshot_ts FROM {table} ORDER BY bucket")


def _everything(engine) -> dict[str, list[tuple]]:
    out = {}
    for table in ("balances_hourly", "balances_daily", "account_equity_hourly", "account_equity_daily"):
        out[table] = rows(engine, f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")
    return out


def test_each_bucket_holds_the_last_row_of_each_key(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "100"}, {"s": {"USDT": "1", "BTC": "5"}})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"}, {"s": {"USDT": "2"}})
    load(engine, "s", at("2026-03-01T11:15:00"), {"s": "120"}, {"s": {"USDT": "3"}})
    assert rows(engine, HOURLY) == [
        (at("2026-03-01T10:00:00"), "BTC", 5, at("2026-03-01T10:00:00")),
        (at("2026-03-01T10:00:00"), "USDT", 2, at("2026-03-01T10:30:00")),
        (at("2026-03-01T11:00:00"), "USDT", 3, at("2026-03-01T11:15:00")),
    ]
    # BTC's last row in the day is its 10:00 one: the rollup keeps each key's own last value
    assert rows(engine, DAILY) == [
        (at("2026-03-01T00:00:00"), "BTC", 5, at("2026-03-01T10:00:00")),
        (at("2026-03-01T00:00:00"), "USDT", 3, at("2026-03-01T11:15:00")),
    ]
    assert _equity(engine, "account_equity_hourly") == [
        (at("2026-03-01T10:00:00"), 110, at("2026-03-01T10:30:00")),
        (at("2026-03-01T11:00:00"), 120, at("2026-03-01T11:15:00")),
    ]
    assert _equity(engine, "account_equity_daily") == [
        (at("2026-03-01T00:00:00"), 120, at("2026-03-01T11:15:00"))
    ]


def test_reloading_an_older_slot_never_moves_a_bucket_back_in_time(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "100"})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "999"})  # a late re-run of 10:00
    assert _equity(engine, "account_equity_hourly") == [
        (at("2026-03-01T10:00:00"), 110, at("2026-03-01T10:30:00"))
    ]
    assert rows(engine, "SELECT equity FROM account_snapshots ORDER BY snapshot_ts") == [(999,), (110,)]


def test_rerunning_the_latest_slot_with_new_values_updates_its_bucket(engine):
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "111.5"})
    assert _equity(engine, "account_equity_daily") == [
        (at("2026-03-01T00:00:00"), Decimal("111.5"), at("2026-03-01T10:30:00"))
    ]


def test_an_unchanged_rerun_rewrites_no_rollup_row(engine):
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    before = rows(engine, "SELECT xmin::text, ctid::text FROM balances_hourly")
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    assert rows(engine, "SELECT xmin::text, ctid::text FROM balances_hourly") == before
    # not even visited: an upsert whose guard says "no change" still locks the row (xmax)
    assert rows(engine, "SELECT DISTINCT xmax::text FROM account_equity_daily") == [("0",)]


def test_rollup_tables_keep_room_on_each_page_for_the_next_slot(engine):
    # the loader rewrites each key's bucket row every slot: fillfactor 50 keeps the new
    # version on the same page (no index entries), see migration 0003
    options = rows(
        engine,
        "SELECT relname, reloptions FROM pg_class WHERE relname IN ('balances_hourly', "
        "'balances_daily', 'account_equity_hourly', 'account_equity_daily') ORDER BY relname",
    )
    assert [o for _, o in options] == [["fillfactor=50"]] * 4


def test_a_currency_gone_on_rerun_falls_back_to_its_previous_row_in_the_bucket(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"}, {"s": {"USDT": "1", "BTC": "5"}})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "1"}, {"s": {"USDT": "2", "BTC": "6", "ETH": "7"}})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "1"}, {"s": {"USDT": "2"}})  # sold BTC, ETH
    expected = [
        (at("2026-03-01T10:00:00"), "BTC", 5, at("2026-03-01T10:00:00")),
        (at("2026-03-01T10:00:00"), "USDT", 2, at("2026-03-01T10:30:00")),
    ]
    assert rows(engine, HOURLY) == expected
    assert [r[1:] for r in rows(engine, DAILY)] == [r[1:] for r in expected]


def test_sources_loaded_at_the_same_slot_keep_their_own_rows(engine):
    slot = at("2026-03-01T10:00:00")
    load(engine, "a", slot, {"a1": "10", "a2": "20"})
    load(engine, "b", slot, {"b1": "30"})
    load(engine, "a", slot, {"a1": "10"})  # a2 closed on a re-run of a's slot
    assert rows(engine, "SELECT sum(equity), count(*) FROM account_equity_hourly") == [(40, 2)]


def test_rebuild_gives_what_the_loader_kept(engine):
    for minute, (usdt, btc) in enumerate([("1", "2"), ("3", "4"), ("5", "6")]):
        for day in ("2026-03-01", "2026-03-02", "2026-04-30"):
            slot = at(f"{day}T23:{minute * 20:02d}:00")
            load(engine, "s", slot, {"s": usdt}, {"s": {"USDT": usdt, "BTC": btc}})
    kept = _everything(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE balances_daily SET total = 0"))
        conn.execute(text("DELETE FROM account_equity_hourly"))
    rebuilt = rollups.rebuild(engine, since=at("2026-03-01T00:00:00"))
    assert _everything(engine) == kept
    assert {r.table for r in rebuilt} == set(kept)


def test_rebuild_of_a_range_leaves_buckets_outside_it_alone(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"})
    load(engine, "s", at("2026-03-05T10:00:00"), {"s": "2"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE account_equity_hourly SET equity = -1"))
    rollups.rebuild(engine, since=at("2026-03-04T00:00:00"), until=at("2026-03-06T00:00:00"))
    assert [r[1] for r in _equity(engine, "account_equity_hourly")] == [-1, 2]


def test_rebuild_never_empties_buckets_whose_rows_were_pruned(engine):
    load(engine, "s", at("2026-01-10T10:00:00"), {"s": "1"})
    load(engine, "s", at("2026-03-10T10:00:00"), {"s": "3"})
    prune(engine, timedelta(days=30), now=at("2026-03-15T00:00:00"))  # drops January and February
    assert rows(engine, "SELECT count(*) FROM account_snapshots") == [(1,)]
    rollups.rebuild(engine)
    assert [r[1] for r in _equity(engine, "account_equity_daily")] == [1, 3]
    assert [r[1] for r in _equity(engine, "account_equity_hourly")] == [1, 3]
