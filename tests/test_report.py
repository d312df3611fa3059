"""Equity and balances reports: what the views say, resampled, with returns, drawdowns and gaps."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from etl import report
from etl.cli import app
from etl.errors import ConfigError
from tests.helpers import rows
from tests.store.builders import at, fail, load

runner = CliRunner()
T0 = at("2026-03-02T10:00:00")


def _slot(n: int) -> object:
    return T0 + timedelta(minutes=20 * n)


def _desk(engine) -> None:
    """a and b every 20 minutes for 4 hours; b's source fails at slots 4 and 5 (a dip that is not a loss)."""
    a = [100, 110, 99, 120, 121, 122, 90, 100, 130, 131, 132, 133]
    b = [50] * 12
    for n in range(12):
        load(engine, "a", _slot(n), {"a": str(a[n])})
        if n in (4, 5):
            fail(engine, "b", _slot(n))
        else:
            load(engine, "b", _slot(n), {"b": str(b[n])})


def test_slot_totals_and_gaps_are_those_of_portfolio_equity(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, freq=timedelta(0)))
    view = rows(
        engine, "SELECT slot, total_equity, accounts_reporting, accounts_expected FROM portfolio_equity"
    )
    got = result.periods
    assert len(got) == len(view) == 12
    for slot, total, reporting, expected in view:
        period = got.loc[pd.Timestamp(slot)]
        assert period.total == pytest.approx(float(total))
        assert (period.accounts_reporting, period.accounts_expected) == (reporting, expected)
        assert period.incomplete == (reporting < expected)
    assert list(got.index[got.incomplete]) == [pd.Timestamp(_slot(4)), pd.Timestamp(_slot(5))]


def test_incomplete_slots_are_left_out_of_returns_and_drawdown(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, freq=timedelta(0)))
    periods = result.periods
    assert periods["return"].iloc[4:6].isna().all()  # b missing: total 121 and 122 are not losses
    assert periods["return"].iloc[6] == pytest.approx(140 / 170 - 1)  # against the last complete slot
    total = result.summary.loc["total"]
    assert total.max_drawdown == pytest.approx(140 / 170 - 1)
    assert (total.peak_at, total.trough_at, total.recovered_at) == (
        pd.Timestamp(_slot(3)),
        pd.Timestamp(_slot(6)),
        pd.Timestamp(_slot(8)),
    )
    assert total.incomplete_periods == 2
    assert total.cumulative_return == pytest.approx(183 / 150 - 1)
    assert result.summary.loc["a"].cumulative_return == pytest.approx(0.33)


def test_an_account_silent_over_the_whole_range_is_flagged_not_forgotten(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, since=_slot(4), until=_slot(5), freq=timedelta(0)))
    assert list(result.periods.incomplete) == [True, True]
    assert list(result.periods.accounts_expected) == [2, 2]
    assert result.periods.b.isna().all()  # b's column is there, empty: it is the one missing
    hourly = report.analyze(
        report.load_equity(engine, since=_slot(4), until=_slot(5), freq=timedelta(hours=1))
    )
    assert not hourly.periods.incomplete.any()  # b's 11:00 value (slot 3) is the hour's last


def test_hourly_and_daily_come_from_the_rollups_and_match_their_views(engine):
    _desk(engine)
    hourly = report.analyze(report.load_equity(engine, freq=timedelta(hours=1)))
    assert hourly.origin == "account_equity_hourly"
    view = rows(
        engine, "SELECT bucket, total_equity, accounts_expected FROM portfolio_equity_hourly ORDER BY 1"
    )
    assert [(p, t) for p, t in zip(hourly.periods.index, hourly.periods.total, strict=True)] == [
        (pd.Timestamp(b), float(t)) for b, t, _ in view
    ]
    # hour 11:00 holds slots 3..5: b was missing at 4 and 5 but reported at 3, so the hour is complete
    assert not hourly.periods.incomplete.any()
    daily = report.analyze(report.load_equity(engine, freq=timedelta(days=1)))
    assert daily.origin == "account_equity_daily"
    assert list(daily.periods.total) == [183.0]


def test_a_frequency_below_an_hour_resamples_the_slots(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, freq=timedelta(minutes=40)))
    assert result.origin == "account_equity"
    assert result.periods.index[0] == pd.Timestamp(T0)
    assert result.periods.a.iloc[0] == 110  # the last of slots 0 and 1
    assert result.periods.index.freq == pd.Timedelta(minutes=40)


def test_auto_frequency_follows_the_span():
    assert report.auto_freq(timedelta(hours=30)) == timedelta(0)
    assert report.auto_freq(timedelta(days=30)) == timedelta(hours=1)
    assert report.auto_freq(timedelta(days=400)) == timedelta(days=1)


def test_an_account_filter_keeps_that_account_only(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, freq=timedelta(0), account="b"))
    assert result.accounts == ["b"]
    assert result.periods.incomplete.sum() == 2
    with pytest.raises(ConfigError, match="unknown account 'nobody'"):
        report.load_equity(engine, account="nobody")


def test_drawdown_dates_peak_trough_and_recovery():
    index = pd.date_range("2026-01-01", periods=5, freq="D", tz="UTC")
    under, dd = report.drawdown(pd.Series([100.0, 120, 90, 110, 125], index=index))
    assert dd.max_drawdown == pytest.approx(-0.25)
    assert (dd.peak_at, dd.trough_at, dd.recovered_at) == (index[1], index[2], index[4])
    assert under.iloc[3] == pytest.approx(110 / 120 - 1)
    _, flat = report.drawdown(pd.Series([0.0, 0.0], index=index[:2]))
    assert pd.isna(flat.max_drawdown)


def test_csv_and_json_carry_every_period_and_the_note_on_returns(engine):
    _desk(engine)
    result = report.analyze(report.load_equity(engine, freq=timedelta(0)))
    csv = report.render_equity(result, "csv")
    assert isinstance(csv, str)
    assert csv.splitlines()[0].startswith("period,a,b,total,return,cumulative_return,drawdown")
    assert len(csv.splitlines()) == 13
    doc = json.loads(report.render_equity(result, "json"))  # type: ignore[arg-type]
    assert doc["note"] == "returns are equity changes, not adjusted for deposits and withdrawals"
    assert [p["incomplete"] for p in doc["periods"]].count(True) == 2
    assert doc["summary"][-1]["account"] == "total"


def test_report_equity_command_writes_a_chart_and_a_table(engine, database_url, monkeypatch, tmp_path):
    _desk(engine)
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    plot = tmp_path / "equity.png"
    result = runner.invoke(app, ["report", "equity", "--freq", "slot", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "incomplete" in result.output and "2 incomplete period(s)" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 20_000
    bad = runner.invoke(app, ["report", "equity", "--freq", "fortnightly"])
    assert bad.exit_code == 2 and "--freq: expected a duration" in bad.output


def test_balances_latest_and_as_of_exactly(engine, database_url, monkeypatch):
    load(engine, "a", T0, {"a": "1"}, {"a": {"USDT": "12282.88002680674743639045", "BTC": "0.5"}})
    load(engine, "a", _slot(1), {"a": "1"}, {"a": {"USDT": "7"}})
    latest = report.balances(engine)
    assert [(r["currency"], r["total"]) for r in latest] == [("USDT", Decimal("7"))]
    then = report.balances(engine, at=T0 + timedelta(minutes=5), account="a")
    assert [(r["currency"], r["total"]) for r in then] == [
        ("BTC", Decimal("0.5")),
        ("USDT", Decimal("12282.88002680674743639045")),
    ]
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    out = runner.invoke(app, ["report", "balances", "--at", "2026-03-02T10:05:00Z", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert '"total":12282.88002680674743639045' in out.output  # every digit, no float on the way
    csv = runner.invoke(app, ["report", "balances", "--format", "csv"])
    assert csv.output.splitlines()[1].startswith("a,a,,futures,USDT,2026-03-02T10:20:00Z,7,")


def test_times_are_iso_or_an_age():
    now = at("2026-05-01T00:00:00")
    assert report.parse_time("7d", now) == at("2026-04-24T00:00:00")
    assert report.parse_time("2026-01-02T03:04:05Z") == at("2026-01-02T03:04:05")
    assert report.parse_time("2026-01-02 03:04") == at("2026-01-02T03:04:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        report.parse_time("yesterday")


def test_equity_csv_and_json_carry_the_stored_digits_and_exact_sums(engine, database_url, monkeypatch):
    # 0.1 + 0.2 is 0.30000000000000004 in float; the 28-digit default context would round the second
    long_a, long_b = "12282.88002680674743639045", "1.00000000000000000000000001"
    load(engine, "a", T0, {"a": "0.1"})
    load(engine, "b", T0, {"b": "0.2"})
    load(engine, "a", _slot(1), {"a": long_a})
    load(engine, "b", _slot(1), {"b": long_b})
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    doc = json.loads(
        runner.invoke(app, ["report", "equity", "--freq", "slot", "--format", "json"]).output,
        parse_float=Decimal,
    )
    assert [p["total"] for p in doc["periods"]] == [Decimal("0.3"), Decimal("12283.88002680674743639045000001")]
    assert doc["periods"][1]["a"] == Decimal(long_a)
    assert doc["summary"][-1]["last_equity"] == Decimal("12283.88002680674743639045000001")
    csv = runner.invoke(app, ["report", "equity", "--freq", "slot", "--format", "csv"]).output.splitlines()
    assert csv[1].startswith("2026-03-02T10:00:00Z,0.1,0.2,0.3,")
    assert csv[2].startswith(f"2026-03-02T10:20:00Z,{long_a},{long_b},12283.88002680674743639045000001,")


def test_balances_show_every_digit_of_tiny_and_huge_amounts(engine, database_url, monkeypatch):
    huge = "123456789012345678901234.123456789"  # 24 integer digits, 9 decimals
    load(engine, "a", T0, {"a": "1"}, {"a": {"USDT": huge, "BTC": "0.00000001"}})
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    csv = runner.invoke(app, ["report", "balances", "--format", "csv"]).output.splitlines()
    assert csv[1].startswith("a,a,,futures,BTC,2026-03-02T10:00:00Z,0.00000001,")
    assert csv[2].startswith(f"a,a,,futures,USDT,2026-03-02T10:00:00Z,{huge},")
    assert report._amount(Decimal(huge)) == "123,456,789,012,345,678,901,234.12345679"
    table = runner.invoke(app, ["report", "balances"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "123,456,789,012,345,678,901,234.12345679" in table.output


def test_an_unknown_name_is_the_same_one_line_and_exit_2_everywhere(engine, database_url, monkeypatch):
    _desk(engine)
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    for args in (["report", "balances", "--account", "nobody"], ["report", "equity", "--account", "nobody"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output == "error: --account: unknown account 'nobody' (not a source, external id or " \
                                "source/external_id)\n"
    replay = runner.invoke(app, ["replay", "--source", "nonexistent"])
    assert replay.exit_code == 2
    assert replay.output == "error: --source: unknown source 'nonexistent' (neither configured nor loaded)\n"
    assert runner.invoke(app, ["replay", "--source", "a"]).exit_code == 0  # loaded, though not configured


def test_auto_frequency_follows_the_range_asked_for_and_an_inverted_range_is_refused(engine, database_url,
                                                                                     monkeypatch):
    from etl.store import rollups

    _desk(engine)
    rollups.close(engine, at("2026-03-04T00:00:00"))  # every bucket closed, then the fine rows gone (a prune)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM account_snapshots"))
    result = report.analyze(report.load_equity(engine, since=at("2026-03-01T00:00:00"),
                                               until=at("2026-03-31T00:00:00")))
    assert result.origin == "account_equity_hourly" and list(result.periods.total)[-1] == 183
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    inverted = runner.invoke(app, ["report", "equity", "--since", "2026-03-31", "--until", "2026-03-01"])
    assert inverted.exit_code == 2
    assert inverted.output == "error: --since 2026-03-31 00:00Z is after --until 2026-03-01 00:00Z\n"


def test_tables_at_80_columns_never_crop_a_number(engine, database_url, monkeypatch):
    from etl import cli

    huge = "123456789012345678901234.12345678"
    load(engine, "a-rather-long-source-name", T0, {"acct-1": "1"}, {"acct-1": {"USDT": huge}})
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    monkeypatch.setattr(cli.out, "width", 80)
    result = runner.invoke(app, ["report", "balances"])
    assert result.exit_code == 0, result.output
    assert "123,456,789,012,345,678,901,234.12345678" in result.output
    assert "…" not in result.output and max(map(len, result.output.splitlines())) <= 80
    equity = runner.invoke(app, ["report", "equity", "--freq", "slot"])
    assert "…" not in equity.output and "a-rather-long-source-name/acct-1  1.00" in equity.output
    monkeypatch.setattr(cli.out, "width", 200)
    wide = runner.invoke(app, ["report", "equity", "--freq", "slot"])
    assert "┃ note ┃" in wide.output  # the incomplete flag's column has a header


def test_a_one_slot_chart_spans_an_hour_not_years(tmp_path):
    one = pd.DatetimeIndex([pd.Timestamp("2026-08-01T00:00:00Z")])
    first, last = report._padded(one)
    assert last - first == pd.Timedelta(hours=1)
    hourly = pd.DataFrame({"a": [1.0, np.nan, 3.0, np.nan, 5.0]},
                          index=pd.date_range("2026-08-01", periods=5, freq="h", tz="UTC"))
    report.plot_equity(hourly, tmp_path / "gaps.png")  # lone values between gaps: drawn as dots
    assert (tmp_path / "gaps.png").stat().st_size > 20_000
