"""Every query of the README's SQL cookbook runs, as written there, and answers what it says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from etl.slots import floor_to_slot
from tests.helpers import rows
from tests.store.builders import fail, load

README = Path(__file__).resolve().parents[2] / "README.md"


def cookbook() -> dict[str, str]:
    """The README's ```sql blocks of the cookbook section, by their first-line comment."""
    text = README.read_text()
    section = text.split("## Reporting and SQL cookbook", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    return {block.splitlines()[0].removeprefix("-- "): block for block in blocks}


QUERIES = cookbook()


@pytest.fixture
def desk(engine):
    """Two venues at 10:00, 11:00 and 12:00 yesterday; bittap-main fails at the last slot."""
    yesterday = floor_to_slot(datetime.now(UTC), timedelta(days=1)) - timedelta(days=1)
    slots = [yesterday + timedelta(hours=h) for h in (10, 11, 12)]
    for n, slot in enumerate(slots):
        load(
            engine,
            "ltp-desk",
            slot,
            {"10001": str(100 + n), "10002": "50"},
            {"10001": {"USDT": "60", "BTC": "0.5"}, "10002": {"USDT": "50"}},
            {"10001": {"BTCUSDT": "30000", "ETHUSDT:short": "2000"}, "10002": {"BTCUSDT:short": "10000"}},
            venue="ltp",
        )
        if n < 2:
            load(
                engine,
                "bittap-main",
                slot,
                {"bittap-main": "7"},
                positions={"bittap-main": {"ETHUSDT": "500"}},
            )
    fail(engine, "bittap-main", slots[-1])
    return slots


def test_the_cookbook_has_the_five_queries_the_readme_promises():
    assert set(QUERIES) == {
        "latest balances by venue",
        "equity history of one account, hourly, last 7 days",
        "portfolio equity per day, with the accounts that were missing",
        "exposure by base asset, from the open positions of each source's latest slot",
        "which sources missed slots last week, and why",
    }


def test_latest_balances_by_venue(engine, desk):
    got = rows(engine, QUERIES["latest balances by venue"])
    assert got == [
        ("bittap", "USDT", Decimal("7"), 1),
        ("ltp", "BTC", Decimal("0.5"), 1),
        ("ltp", "USDT", Decimal("110"), 2),
    ]


def test_equity_history_of_one_account(engine, desk):
    got = rows(engine, QUERIES["equity history of one account, hourly, last 7 days"])
    assert got == [(slot, Decimal(100 + n)) for n, slot in enumerate(desk)]


def test_portfolio_equity_per_day(engine, desk):
    got = rows(engine, QUERIES["portfolio equity per day, with the accounts that were missing"])
    assert got
    day, total, reporting, expected = got[-1]
    assert day == desk[-1].replace(hour=0)
    assert total == Decimal(102 + 50 + 7) and reporting == expected == 3


def test_exposure_by_base_asset(engine, desk):
    got = rows(
        engine, QUERIES["exposure by base asset, from the open positions of each source's latest slot"]
    )
    assert got == [
        ("BTC", Decimal("20000"), Decimal("40000"), 2),
        ("ETH", Decimal("-1500"), Decimal("2500"), 2),  # bittap-main's latest ok slot is the one before
    ]


def test_which_sources_missed_slots_last_week(engine, desk):
    got = rows(engine, QUERIES["which sources missed slots last week, and why"])
    assert got == [("bittap-main", "error", 1, desk[-1], desk[-1], "bittap-main: venue down")]
