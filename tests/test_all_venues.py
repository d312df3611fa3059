"""All four venues' seed examples in one `etl run --once --slot`, exact, and a re-run changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from typer.testing import CliRunner

from etl import exactjson
from etl.cli import app
from etl.sim.bittap import BittapSimulator
from etl.sim.htx import HtxSimulator
from etl.sim.ltp import LtpSimulator
from etl.sim.treadfi import TreadfiSimulator
from tests.conftest import FIXTURES
from tests.helpers import row_versions, rows, served

SLOT = "2026-03-01T12:00:00Z"


def fixture(name: str):
    return exactjson.loads((FIXTURES / name).read_text())


@pytest.fixture
def seed_config(tmp_path, monkeypatch, database_url):
    bittap, htx, ltp, tread = BittapSimulator(), HtxSimulator(), LtpSimulator(), TreadfiSimulator()
    bittap.add_account("bk", "bs", body=fixture("bittap_account_info.json"))
    htx.add_account(
        "hk",
        "hs",
        body=fixture("htx_account_balance.json"),
        positions_body=fixture("htx_position_opens.json"),
    )
    ltp.add_user("lk", "ls", body=fixture("ltp_account_balance.json"))
    tread.add_user("tk", body=fixture("treadfi_balances.json"))
    for name, value in {
        "BK": "bk",
        "BS": "bs",
        "HK": "hk",
        "HS": "hs",
        "LK": "lk",
        "LS": "ls",
        "TK": "tk",
    }.items():
        monkeypatch.setenv(f"SEED_{name}", value)
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    with served(bittap) as b, served(htx) as h, served(ltp) as lt, served(tread) as t:
        path = tmp_path / "etl.toml"
        path.write_text(
            f"""
[[sources]]
name = "bittap-seed"
venue = "bittap"
base_url = "{b.url}"
api_key = "env:SEED_BK"
api_secret = "env:SEED_BS"

[[sources]]
name = "htx-seed"
venue = "htx"
base_url = "{h.url}"
api_key = "env:SEED_HK"
api_secret = "env:SEED_HS"

[[sources]]
name = "ltp-seed"
venue = "ltp"
base_url = "{lt.url}"
api_key = "env:SEED_LK"
api_secret = "env:SEED_LS"

[[sources]]
name = "treadfi-seed"
venue = "treadfi"
base_url = "{t.url}"
api_key = "env:SEED_TK"
"""
        )
        yield path


def test_every_seed_example_loads_exactly_and_a_rerun_changes_nothing(engine, seed_config):
    args = ["run", "--once", "--config", str(seed_config), "--slot", SLOT]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert rows(engine, "SELECT source, status FROM ingestion_runs ORDER BY source") == [
        ("bittap-seed", "ok"),
        ("htx-seed", "ok"),
        ("ltp-seed", "ok"),
        ("treadfi-seed", "ok"),
    ]
    exact = dict(
        rows(
            engine,
            """
        SELECT a.source || ':' || b.currency || ':' || b.account_type, b.total::text FROM balance_snapshots b
        JOIN accounts a ON a.id = b.account_id""",
        )
    )
    assert exact["bittap-seed:USDT:futures"] == "12282.88002680674743639045"
    assert rows(
        engine,
        """SELECT b.equity::text, b.available::text FROM balance_snapshots b
                           JOIN accounts a ON a.id = b.account_id
                           WHERE a.source = 'htx-seed' AND b.currency = 'USDT'""",
    ) == [("-0.0969198676", "-0.0050448676")]
    assert rows(
        engine,
        """SELECT s.maintenance_margin_rate::text FROM account_snapshots s
                           JOIN accounts a ON a.id = s.account_id WHERE a.source = 'htx-seed'""",
    ) == [("0.000000725000886893",)]
    assert rows(
        engine,
        """SELECT p.quantity, p.side FROM position_snapshots p JOIN accounts a ON a.id = p.account_id
                           WHERE a.source = 'treadfi-seed' AND p.symbol = 'ETH:PERP-USDT'""",
    ) == [(Decimal("1.69"), "long")]
    assert len(rows(engine, "SELECT 1 FROM accounts WHERE source = 'ltp-seed'")) >= 2
    before = row_versions(engine)
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert row_versions(engine) == before
