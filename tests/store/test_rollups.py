"""Hourly and daily rollups: the last value of each key in the bucket; open buckets computed,
closed ones written once."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text

from etl.store import rollups
from etl.store.load import load_slot
from etl.store.retention import prune
from tests.helpers import rows
from tests.store.builders import at, batch, load

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


def _close_all(engine) -> None:
    rollups.close(engine, at("2100-01-01T00:00:00"))


def test_an_unchanged_rerun_of_a_closed_bucket_rewrites_no_rollup_row(engine):
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    _close_all(engine)
    before = rows(engine, "SELECT xmin::text, ctid::text FROM balances_hourly_closed")
    assert len(before) == 1
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    assert rows(engine, "SELECT xmin::text, ctid::text FROM balances_hourly_closed") == before
    # not even visited: an upsert whose guard says "no change" still locks the row (xmax)
    assert rows(engine, "SELECT DISTINCT xmax::text FROM account_equity_daily_closed") == [("0",)]


def test_a_load_in_an_open_bucket_writes_no_rollup_row(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "100"})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"})
    for table in ("balances_hourly", "balances_daily", "account_equity_hourly", "account_equity_daily"):
        assert rows(engine, f"SELECT count(*) FROM {table}_closed") == [(0,)]
    assert _equity(engine, "account_equity_hourly") == [
        (at("2026-03-01T10:00:00"), 110, at("2026-03-01T10:30:00"))
    ]


def test_closing_buckets_keeps_what_the_views_showed(engine):
    for slot, usdt, btc in [
        ("2026-03-01T10:00:00", "1", "5"),
        ("2026-03-01T10:30:00", "2", None),  # BTC sold within the hour
        ("2026-03-01T23:50:00", "3", "6"),
        ("2026-03-02T00:10:00", "4", "7"),
    ]:
        balances = {"USDT": usdt, **({"BTC": btc} if btc else {})}
        load(engine, "s", at(slot), {"s": usdt}, {"s": balances})
    shown = _everything(engine)
    closed = rollups.close(engine, at("2026-03-02T00:10:00"))
    assert _everything(engine) == shown
    assert {(r.table, r.until) for r in closed} == {
        ("balances_hourly_closed", at("2026-03-02T00:00:00")),
        ("account_equity_hourly_closed", at("2026-03-02T00:00:00")),
        ("balances_daily_closed", at("2026-03-02T00:00:00")),
        ("account_equity_daily_closed", at("2026-03-02T00:00:00")),
    }
    # the buckets before the slot's hour and day are rows now; the open ones are not
    assert rows(engine, "SELECT count(*) FROM balances_hourly_closed") == [(4,)]
    assert rows(engine, "SELECT count(*) FROM balances_daily_closed") == [(2,)]
    assert rows(engine, "SELECT width, closed_until FROM rollup_watermarks ORDER BY 1") == [
        ("day", at("2026-03-02T00:00:00")),
        ("hour", at("2026-03-02T00:00:00")),
    ]
    assert rollups.close(engine, at("2026-03-02T00:10:00")) == []  # nothing left to close
    _close_all(engine)
    assert _everything(engine) == shown


def test_the_first_load_of_a_new_hour_says_the_buckets_before_it_can_close(engine):
    assert load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"}).closes == at("2026-03-01T10:00:00")
    rollups.close(engine, at("2026-03-01T10:00:00"))
    assert load(engine, "s", at("2026-03-01T10:30:00"), {"s": "2"}).closes is None
    assert load(engine, "s", at("2026-03-01T11:00:00"), {"s": "3"}).closes == at("2026-03-01T11:00:00")


def test_a_late_load_into_a_closed_bucket_updates_it(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "100"}, {"s": {"USDT": "100"}})
    load(engine, "s", at("2026-03-01T11:00:00"), {"s": "120"}, {"s": {"USDT": "120"}})
    rollups.close(engine, at("2026-03-02T00:00:00"))  # hour 10, 11 and the day closed
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "110"}, {"s": {"USDT": "110", "ETH": "2"}})
    assert _equity(engine, "account_equity_hourly_closed") == [
        (at("2026-03-01T10:00:00"), 110, at("2026-03-01T10:30:00")),
        (at("2026-03-01T11:00:00"), 120, at("2026-03-01T11:00:00")),
    ]
    # the day's last row stays 11:00's; ETH, seen only at 10:30, joins the day
    assert rows(engine, DAILY) == [
        (at("2026-03-01T00:00:00"), "ETH", 2, at("2026-03-01T10:30:00")),
        (at("2026-03-01T00:00:00"), "USDT", 120, at("2026-03-01T11:00:00")),
    ]


def test_a_close_waits_for_a_load_in_flight_and_keeps_its_rows(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "100"})
    with engine.connect() as conn, conn.begin():
        load_slot(
            conn,
            source="s",
            venue="bittap",
            slot=at("2026-03-01T10:30:00"),
            batch=batch({"s": "110"}),
            responses=(),
            started_at=at("2026-03-01T10:30:00"),
            attempts=1,
        )
        closing = threading.Thread(target=rollups.close, args=(engine, at("2026-03-01T11:00:00")))
        closing.start()
        closing.join(timeout=0.5)
        assert closing.is_alive()  # held back by the load's shared lock
    closing.join(timeout=10)
    assert not closing.is_alive()
    assert _equity(engine, "account_equity_hourly_closed") == [
        (at("2026-03-01T10:00:00"), 110, at("2026-03-01T10:30:00"))
    ]


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


def test_a_currency_gone_on_rerun_of_a_closed_bucket_falls_back_to_its_previous_row(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"}, {"s": {"USDT": "1", "BTC": "5"}})
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "1"}, {"s": {"USDT": "2", "BTC": "6", "ETH": "7"}})
    rollups.close(engine, at("2026-03-02T00:00:00"))  # the hour and the day closed
    load(
        engine, "s", at("2026-03-01T10:30:00"), {"s": "1"}, {"s": {"USDT": "2"}}
    )  # a late re-run: sold BTC, ETH
    expected = [
        (at("2026-03-01T10:00:00"), "BTC", 5, at("2026-03-01T10:00:00")),
        (at("2026-03-01T10:00:00"), "USDT", 2, at("2026-03-01T10:30:00")),
    ]
    assert (
        rows(engine, "SELECT bucket, currency, total, snapshot_ts FROM balances_hourly_closed ORDER BY 1, 2")
        == expected
    )
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
    _close_all(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE balances_daily_closed SET total = 0"))
        conn.execute(text("DELETE FROM account_equity_hourly_closed"))
    rebuilt = rollups.rebuild(engine, since=at("2026-03-01T00:00:00"))
    assert _everything(engine) == kept
    assert {r.table for r in rebuilt} == {f"{name}_closed" for name in kept}


def test_rebuild_of_a_range_leaves_buckets_outside_it_alone(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"})
    load(engine, "s", at("2026-03-05T10:00:00"), {"s": "2"})
    _close_all(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE account_equity_hourly_closed SET equity = -1"))
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


def test_rebuild_leaves_open_buckets_to_the_views(engine):
    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "1"})
    rollups.close(engine, at("2026-03-01T10:00:00"))
    load(engine, "s", at("2026-03-01T10:30:00"), {"s": "2"})
    rebuilt = rollups.rebuild(engine)
    assert max(r.until for r in rebuilt) <= at("2026-03-01T10:00:00")  # the hour is still open
    assert rows(engine, "SELECT count(*) FROM account_equity_hourly_closed") == [(0,)]
    assert [r[1] for r in _equity(engine, "account_equity_hourly")] == [2]
