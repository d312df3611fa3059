"""The demo's accounts: per venue, a simulator with demo credentials and the sources that use them.

Each builder returns the simulator and config entries (as a TOML `[[sources]]` table
would hold them, secrets as `env:` references whose variables it sets), so the demo
goes through exactly the config path users do. Adding a venue = one builder + one line
in `BUILDERS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from etl.sim.base import Simulator
from etl.sim.bittap import BittapSimulator
from etl.sim.htx import HtxSimulator
from etl.sim.ltp import LtpSimulator, demo_sources
from etl.sim.treadfi import TreadfiSimulator

SourceEntry = dict[str, Any]


def _credentials(name: str) -> dict[str, str]:
    """Demo-only credentials, put in the environment so the config references them."""
    var = name.upper().replace("-", "_")
    os.environ[f"ETL_DEMO_{var}_KEY"] = f"{name}-key"
    os.environ[f"ETL_DEMO_{var}_SECRET"] = f"{name}-secret-not-a-real-one"
    return {"api_key": f"env:ETL_DEMO_{var}_KEY", "api_secret": f"env:ETL_DEMO_{var}_SECRET"}


def bittap() -> tuple[Simulator, list[SourceEntry]]:
    sim = BittapSimulator(seed=7)
    sources: list[SourceEntry] = []
    for i, (name, wallet) in enumerate([("demo-bittap-a", "25000.5"), ("demo-bittap-b", "8200.125")]):
        creds = _credentials(name)
        sim.add_account(
            os.environ[creds["api_key"][4:]],
            os.environ[creds["api_secret"][4:]],
            wallet=wallet,
            positions=2 + i,
        )
        sources.append({"name": name, "venue": "bittap", **creds})
    return sim, sources


def ltp() -> tuple[Simulator, list[SourceEntry]]:
    """Two LTP keys on one simulator, each reaching several trade accounts."""
    sim = LtpSimulator(seed=11)
    sources: list[SourceEntry] = []
    for demo in demo_sources():
        creds = _credentials(demo.name)
        user = sim.add_user(os.environ[creds["api_key"][4:]], os.environ[creds["api_secret"][4:]])
        user.wallets.extend(demo.wallets)
        sources.append({"name": demo.name, "venue": "ltp", **creds, "params": demo.params})
    return sim, sources


def htx() -> tuple[Simulator, list[SourceEntry]]:
    """Two HTX multi-asset accounts: USDT only, and USDT with BTC collateral."""
    sim = HtxSimulator(seed=3)
    sources: list[SourceEntry] = []
    for name, wallet, btc, positions in [
        ("demo-htx-a", "41000.25", None, 2),
        ("demo-htx-b", "12500.5", "0.75", 3),
    ]:
        creds = _credentials(name)
        sim.add_account(
            os.environ[creds["api_key"][4:]],
            os.environ[creds["api_secret"][4:]],
            wallet=wallet,
            btc=btc,
            positions=positions,
        )
        sources.append({"name": name, "venue": "htx", **creds})
    return sim, sources


def treadfi() -> tuple[Simulator, list[SourceEntry]]:
    """Two Tread.fi tokens with accounts on several exchanges; the second filters by account_names."""
    sim = TreadfiSimulator(seed=13)
    desks = {
        "demo-treadfi-desk": [
            ("DeskBybit", "Bybit", "18250.75", 2, 0),
            ("DeskBinance", "Binance", "9400.5", 3, 2),
            ("DeskOKX", "OKX", "5120.25", 1, 0),
        ],
        "demo-treadfi-fund": [
            ("FundBinance", "Binance", "31000.0", 2, 1),
            ("FundBybit", "Bybit", "7750.125", 3, 0),
            ("FundOKX", "OKX", "2600.5", 1, 0),
            ("FundArchive", "Binance", "150.0", 0, 0),  # left out by the source's filter
        ],
    }
    sources: list[SourceEntry] = []
    for name, accounts in desks.items():
        key = _credentials(name)["api_key"]  # unsigned venue: the token is the only secret
        for account, exchange, wallet, positions, spot in accounts:
            sim.add_account(
                os.environ[key[4:]], account, exchange, wallet=wallet, positions=positions, spot=spot
            )
        sources.append({"name": name, "venue": "treadfi", "api_key": key})
    sources[1]["params"] = {"account_names": "FundBinance,FundBybit,FundOKX"}
    return sim, sources


BUILDERS: dict[str, Callable[[], tuple[Simulator, list[SourceEntry]]]] = {
    "bittap": bittap,
    "ltp": ltp,
    "htx": htx,
    "treadfi": treadfi,
}
