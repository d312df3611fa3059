"""The reporting views and balances_as_of, over partitioned tables and rollups."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from etl.store import rollups
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


def _across_dst_changes(engine) -> None:
    """Loads around Europe/Berlin's and America/New_York's spring and autumn changes, each
    with an account first seen late in the day of the change; the first days closed."""
    load(engine, "n", at("2026-03-08T06:00:00"), {"n1": "1"})  # New York springs forward at 07:00Z
    load(engine, "n", at("2026-03-08T23:30:00"), {"n1": "2", "n2": "3"})
    load(engine, "a", at("2026-03-28T12:00:00"), {"a1": "10"})  # Berlin springs forward at 01:00Z
    load(engine, "a", at("2026-03-29T23:30:00"), {"a1": "11", "a2": "20"})
    fail(engine, "n", at("2026-03-29T23:45:00"))
    rollups.close(engine, at("2026-03-29T12:00:00"))
    load(engine, "a", at("2026-10-25T12:00:00"), {"a1": "12", "a2": "21"})  # and falls back at 01:00Z
    load(engine, "a", at("2026-10-26T00:30:00"), {"a1": "13", "a2": "22", "a3": "30"})


def _utc(row) -> tuple:
    return tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in row)


def _every_view_under(engine, zone: str) -> dict[str, list[tuple]]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('TimeZone', :zone, true)"), {"zone": zone})
        views = conn.execute(
            text("SELECT viewname FROM pg_views WHERE schemaname = current_schema() ORDER BY 1")
        ).scalars()
        out = {v: sorted(map(_utc, conn.execute(text(f"SELECT * FROM {v}"))), key=repr) for v in list(views)}
        out["balances_as_of"] = sorted(
            map(_utc, conn.execute(text("SELECT * FROM balances_as_of('2026-03-29T23:40:00Z')"))), key=repr
        )
    return out


def test_every_view_says_the_same_under_any_session_time_zone(engine):
    _across_dst_changes(engine)
    utc = _every_view_under(engine, "UTC")
    assert len(utc) == 10 and all(utc.values())
    # a2 and n2, first seen at 23:30Z on the days of the spring changes, are expected that
    # day; a3, first seen at 00:30Z the day after the autumn change, is not expected before
    daily = {row[0]: row[2:] for row in utc["portfolio_equity_daily"]}
    assert daily[at("2026-03-08T00:00:00")] == (2, 2)
    assert daily[at("2026-03-29T00:00:00")] == (2, 4)  # n failed at 23:45Z: n1, n2 expected too
    assert daily[at("2026-10-25T00:00:00")] == (2, 2)
    for zone in ("Europe/Berlin", "America/New_York", "Asia/Kolkata"):
        assert _every_view_under(engine, zone) == utc, zone
