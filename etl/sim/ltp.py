"""LTP simulator: `GET /api/v1/asset/getAccountCurrencyInfo`, signed with X-MBX-APIKEY/nonce/signature.

One API key reaches several trade accounts, each with several sub-wallets (accountType),
as on LTP: the answer has one `data[]` element per accountId x accountType, the same
accountId repeating. Amounts are strings with many decimals and move a little on each
call; a Funding wallet may hold one currency on several networks. The `accountId` and
`currency` filters are applied (with a currency filter, `totalUsdt` sums the assets
shown: ASSUMED). A bad key, signature or timestamp answers `2000 API verification
failed` with HTTP 200 (the status is not documented: ASSUMED). A user registered with
`body=` gets that body verbatim (the seed example).

The signature is checked with this module's own code, written from LTP's "Authentication"
page (never the client's): every query parameter as received, URL-decoded to its raw
value, sorted by key, joined `k=v&…`, then `&<nonce>`; lower-case hex HMAC-SHA256. The
`nonce` header (unix seconds) must be within 30 s (not documented: ASSUMED).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl.sim.base import Simulator, json_response

ACCOUNT_BALANCE = "/api/v1/asset/getAccountCurrencyInfo"
SKEW_SECONDS = 30
_USDT = Decimal("1E-8")


def expected_signature(secret: str, raw_query: str, ts: str) -> str:
    """`signature` for a GET whose URL carried `raw_query`: signed over the decoded values."""
    params = sorted(parse_qsl(raw_query, keep_blank_values=True))
    message = "&".join(f"{k}={v}" for k, v in params) + f"&{ts}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass
class LtpAsset:
    currency: str
    total: Decimal
    price: Decimal = Decimal(1)  # USDT per unit
    network: str | None = None
    frozen_share: Decimal = Decimal("0.05")


def asset(currency: str, total: str, price: str = "1", network: str | None = None) -> LtpAsset:
    """An asset from the decimal strings a fixture or the demo writes."""
    return LtpAsset(currency, Decimal(total), Decimal(price), network)


@dataclass
class LtpWallet:
    """One accountId x accountType: one `data[]` element."""

    account_id: int
    account_type: str
    venue: str
    note: str
    assets: list[LtpAsset] = field(default_factory=list)


@dataclass
class LtpUser:
    secret: str
    wallets: list[LtpWallet] = field(default_factory=list)
    body: Any = None  # fixed response, served as is


def _error(code: int, message: str) -> Response:
    return json_response({"code": code, "message": message, "data": None})


class LtpSimulator(Simulator):
    venue = "ltp"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        super().__init__(seed, latency)
        self.users: dict[str, LtpUser] = {}

    def add_user(self, api_key: str, secret: str, *, body: Any = None) -> LtpUser:
        user = LtpUser(secret=secret, body=body)
        self.users[api_key] = user
        return user

    def add_wallet(
        self,
        api_key: str,
        account_id: int,
        account_type: str,
        *,
        venue: str,
        note: str = "",
        assets: list[LtpAsset] | None = None,
    ) -> LtpWallet:
        wallet = LtpWallet(account_id, account_type, venue, note, assets or [])
        self.users[api_key].wallets.append(wallet)
        return wallet

    def venue_routes(self) -> list[Route]:
        return [Route(ACCOUNT_BALANCE, self.account_balance, methods=["GET"])]

    def _authenticate(self, request: Request) -> LtpUser | Response:
        headers = request.headers
        user = self.users.get(headers.get("X-MBX-APIKEY") or "")
        ts, signature = headers.get("nonce") or "", headers.get("signature") or ""
        ok = (
            user is not None
            and ts.isdigit()
            and abs(int(ts) - time.time()) <= SKEW_SECONDS
            and hmac.compare_digest(expected_signature(user.secret, request.url.query, ts), signature)
        )
        if not ok or user is None:
            self.rejected += 1
            return _error(2000, "API verification failed")
        return user

    async def account_balance(self, request: Request) -> Response:
        user = self._authenticate(request)
        if isinstance(user, Response):
            return user
        if user.body is not None:
            return json_response(copy.deepcopy(user.body))
        ids = {i.strip() for i in request.query_params.get("accountId", "").split(",") if i.strip()}
        currency = request.query_params.get("currency") or None
        data = [self._element(w, currency) for w in user.wallets if not ids or str(w.account_id) in ids]
        return json_response({"code": 200000, "message": "Success", "data": data})

    def _element(self, wallet: LtpWallet, currency: str | None) -> dict[str, Any]:
        assets = []
        for asset in wallet.assets:
            asset.total = self.drift(asset.total, "0.0005")
            if asset.currency not in ("USDT", "USDC"):
                asset.price = self.drift(asset.price, "0.002")
            if currency is None or asset.currency == currency:
                assets.append(self._asset(asset))
        total_usdt = sum((Decimal(a["valueUsdt"]) for a in assets), Decimal(0))
        return {
            "accountId": wallet.account_id,
            "accountNote": wallet.note,
            "venues": wallet.venue,
            "accountType": wallet.account_type,
            "totalUsdt": str(total_usdt.quantize(_USDT)) if assets else "0",
            "assetInfo": assets,
        }

    @staticmethod
    def _asset(asset: LtpAsset) -> dict[str, Any]:
        frozen = (asset.total * asset.frozen_share).quantize(asset.total)
        available = asset.total - frozen
        return {
            "currency": asset.currency,
            "totalBalance": str(asset.total),
            "available": str(available),
            "withdrawAvailable": str(available),
            "frozen": str(frozen),
            "valueUsdt": str((asset.total * asset.price).quantize(_USDT)),
            "network": asset.network,
        }


@dataclass
class DemoSource:
    """One demo LTP key: its trade accounts, and the filters its source sends."""

    name: str
    wallets: list[LtpWallet]
    params: dict[str, str] = field(default_factory=dict)


def demo_sources() -> list[DemoSource]:
    """Two keys with three trade accounts each (several sub-wallets, one empty, USDT on two
    networks in Funding); the second key also sees an account its source filters out."""
    a, w = asset, LtpWallet
    return [
        DemoSource(
            "demo-ltp-desk",
            [
                w(10001, "Spot", "BINANCE", "Desk A", [a("USDT", "182500.125"), a("BTC", "1.84", "64250.5")]),
                w(10001, "Margin-PM", "BINANCE", "Desk A"),
                w(10001, "USDT-M", "BINANCE", "Desk A", [a("USDT", "54012.000000000000000001")]),
                w(10002, "Unified", "BYBIT", "", [a("USDT", "75310.5"), a("ETH", "12.5", "3120.25")]),
                w(10002, "Funding", "BYBIT", "", [a("USDC", "9800")]),
                w(
                    33333,
                    "Funding",
                    "LTP",
                    "Funding Account",
                    [a("USDT", "25000.00", network="ERC20"), a("USDT", "14000.50", network="TRC20")],
                ),
            ],
        ),
        DemoSource(
            "demo-ltp-fund",
            [
                w(20001, "Trading", "OKEX", "Fund B", [a("USDT", "310000.75"), a("SOL", "800", "145.3")]),
                w(20001, "Funding", "OKEX", "Fund B", [a("USDT", "1200")]),
                w(20002, "Spot", "GATE", "Fund B hedge", [a("USDT", "42000.42")]),
                w(20002, "Futures", "GATE", "Fund B hedge", [a("USDT", "18500")]),
                w(20003, "Spot", "KUCOIN", "", []),
                w(20009, "Spot", "KUCOIN", "archived", [a("USDT", "5")]),
            ],
            params={"accountId": "20001,20002,20003"},
        ),
    ]
