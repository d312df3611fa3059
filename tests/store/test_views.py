"""The reporting views and balances_as_of, over partitioned tables and rollups."""

from __future__ import annotations

from sqlalchemy import text

from tests.helpers import rows
from tests.store.builders import at, fail, load

T1, T2, T3 = at("2026-03-31T23:58:00"), at("2026-03-31T23:59:00"), at("2026-04-01T00:00:00")


def _history(engine) -> None:
    """Two sources across a month boundary; at T2 source b fails, at T3 a has sold its BTC."""
    load(engine, "a", T1, {"a": "100"}, {"a": {"USDT": "100", "BTC": "1"}})
    load(engine, "b", T1, {"b1": "10", "b2": "20"})
    load(engine, "a", T2, {"a": "101"}, {"a": {"USDT": "101", "BTC": "1"}})
    fail(engine, "b", T2)
    load(engine, "a", T3, {"a": "102"}, {"a": {"USDT": "102"}})
    load(engine, "b", T3, {"b1": "11", "b2": "21"})


def test_latest_balances_are_each_sources_latest_ok_slot_only(engine):
    _history(engine)
    fail(engine, "a", at("2026-04-01T00:01:00"))
    got = rows(engine, "SELECT external_id, currency, total, snapshot_ts FROM latest_balances ORDER BY 1, 2")
    assert got == [("a", "USDT", 102, T3), ("b1", "USDT", 11, T3), ("b2", "USDT", 21, T3)]


def test_balances_as_of_a_past_time_has_the_latest_columns_and_rows_of_then(engine):
    _history(engine)
    got = rows(
        engine, "SELECT external_id, currency, total, snapshot_ts FROM balances_as_of(:t) ORDER BY 1, 2", t=T2
    )
    # b failed at T2: its balances as of T2 are those of T1; a's BTC was still held at T2
    assert got == [
        ("a", "BTC", 1, T2),
        ("a", "USDT", 101, T2),
        ("b1", "USDT", 10, T1),
        ("b2", "USDT", 20, T1),
    ]
    assert rows(engine, "SELECT count(*) FROM balances_as_of(:t)", t=at("2026-01-01T00:00:00")) == [(0,)]
    with engine.connect() as conn:
        a = conn.execute(text("SELECT * FROM latest_balances")).keys()
        b = conn.execute(text("SELECT * FROM balances_as_of(now())")).keys()
    assert list(a) == list(b)


def test_a_dip_from_a_missing_account_shows_as_reporting_below_expected(engine):
    _history(engine)
    got = rows(engine, "SELECT * FROM portfolio_equity ORDER BY slot")
    assert got == [(T1, 130, 3, 3), (T2, 101, 1, 3), (T3, 134, 3, 3)]


def test_an_account_that_closed_is_no_longer_expected(engine):
    load(engine, "b", T1, {"b1": "10", "b2": "20"})
    load(engine, "b", T2, {"b1": "10"})  # b2 closed
    assert rows(
        engine, "SELECT slot, accounts_reporting, accounts_expected FROM portfolio_equity ORDER BY slot"
    ) == [
        (T1, 2, 2),
        (T2, 1, 1),
    ]


def test_portfolio_equity_hourly_and_daily_sum_each_accounts_last_value(engine):
    _history(engine)
    assert rows(engine, "SELECT * FROM portfolio_equity_daily ORDER BY bucket") == [
        (at("2026-03-31T00:00:00"), 101 + 10 + 20, 3, 3),
        (at("2026-04-01T00:00:00"), 134, 3, 3),
    ]
    assert rows(engine, "SELECT * FROM portfolio_equity_hourly ORDER BY bucket") == [
        (at("2026-03-31T23:00:00"), 131, 3, 3),
        (at("2026-04-01T00:00:00"), 134, 3, 3),
    ]


def test_a_bucket_where_a_vanished_accounts_source_failed_is_incomplete(engine):
    load(engine, "b", at("2026-03-30T10:00:00"), {"b1": "10", "b2": "20"})
    load(engine, "b", at("2026-03-31T10:00:00"), {"b1": "10", "b2": "20"})
    fail(engine, "b", at("2026-04-01T10:00:00"))  # both silent from here on
    fail(engine, "b", at("2026-04-01T11:00:00"))
    load(engine, "c", at("2026-04-01T11:00:00"), {"c": "5"})
    daily = rows(
        engine,
        "SELECT bucket, total_equity, accounts_reporting, accounts_expected FROM portfolio_equity_daily",
    )
    assert daily[-1] == (at("2026-04-01T00:00:00"), 5, 1, 3)
