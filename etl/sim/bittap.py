"""Bittap futures simulator: `GET /ftapi/v1/account/info`, signed with X-BT-* headers.

One account per API key. The account serves the documented fields as strings with many
decimals; the mark price walks a little on each call, moving uPnL and equity. A key
registered with `body=` serves that body verbatim (the seed page's example).

The signature is checked the way developers.bittap.com documents it, with this module's
own code (never the client's): the parameters after `?` exactly as received (the
official sample signs the URL's encoded query), empty values filtered, sorted by key and
then value, `&timestamp=<X-BT-TS>&nonce=<X-BT-NONCE>` appended (a leading `&` when there
are none), HMAC-SHA256 with the secret, lower-case hex (ASSUMED, as by the client). A bad
key answers 410001, anything wrong with the signature 410002, both with HTTP 401; the
timestamp must be within 30 s (the window is not documented: ASSUMED).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl.sim.base import Simulator, json_response

ACCOUNT_INFO = "/ftapi/v1/account/info"
SKEW_MS = 30_000


def expected_signature(secret: str, raw_query: str, ts: str, nonce: str) -> str:
    """X-BT-SIGN for a GET whose URL carried `raw_query` (still percent-encoded)."""
    pairs = (pair.partition("=") for pair in raw_query.split("&") if pair)
    query = "&".join(f"{k}={v}" for k, v in sorted((k, v) for k, _, v in pairs if v))
    message = (f"{query}&" if query else "&") + f"timestamp={ts}&nonce={nonce}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass
class BittapAccount:
    secret: str
    wallet: Decimal = Decimal("25000.00000000000000000000")
    positions: list[dict[str, Any]] = field(default_factory=list)
    body: Any = None  # fixed response, served as is


def _error(code: str, msg: str, status: int) -> Response:
    return json_response({"code": code, "msg": msg, "success": False}, status)


class BittapSimulator(Simulator):
    venue = "bittap"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        super().__init__(seed, latency)
        self.accounts: dict[str, BittapAccount] = {}

    def add_account(
        self,
        api_key: str,
        secret: str,
        *,
        body: Any = None,
        wallet: str | None = None,
        positions: int = 2,
    ) -> BittapAccount:
        account = BittapAccount(secret=secret, body=body)
        if wallet is not None:
            account.wallet = Decimal(wallet)
        symbols = [
            ("BTC-USDT-M", "64250.5", "0.35"),
            ("ETH-USDT-M", "3120.25", "4.2"),
            ("XRP-USDT-M", "0.6123", "8711.1"),
        ]
        for i, (symbol, price, qty) in enumerate(symbols[:positions]):
            account.positions.append(
                {
                    "symbolId": symbol,
                    "side": "BUY" if i % 2 == 0 else "SELL",
                    "entry": Decimal(price),
                    "mark": Decimal(price),
                    "qty": Decimal(qty),
                    "leverage": 10 + 5 * i,
                    "id": str(8039784359178546030 + i),
                }
            )
        self.accounts[api_key] = account
        return account

    def venue_routes(self) -> list[Route]:
        return [Route(ACCOUNT_INFO, self.account_info, methods=["GET"])]

    def _authenticate(self, request: Request) -> BittapAccount | Response:
        headers = request.headers
        key, signature = headers.get("X-BT-APIKEY"), headers.get("X-BT-SIGN")
        ts, nonce = headers.get("X-BT-TS"), headers.get("X-BT-NONCE")
        account = self.accounts.get(key or "")
        if account is None:
            self.rejected += 1
            return _error("410001", "Invalid API key", 401)
        if not (signature and ts and nonce and ts.isdigit()):
            self.rejected += 1
            return _error("410002", "Signature verification failed: missing headers", 401)
        if abs(int(ts) - int(time.time() * 1000)) > SKEW_MS:
            self.rejected += 1
            return _error("410002", "Signature verification failed: timestamp out of window", 401)
        expected = expected_signature(account.secret, request.url.query, ts, nonce)
        if not hmac.compare_digest(expected, signature):
            self.rejected += 1
            return _error("410002", "Signature verification failed", 401)
        return account

    async def account_info(self, request: Request) -> Response:
        account = self._authenticate(request)
        if isinstance(account, Response):
            return account
        if account.body is not None:
            return json_response(copy.deepcopy(account.body))
        return json_response(
            {"code": "0", "msg": "Request successful", "success": True, "data": self._data(account)}
        )

    def _data(self, account: BittapAccount) -> dict[str, Any]:
        positions, upnl, locked = [], Decimal(0), Decimal(0)
        for p in account.positions:
            p["mark"] = self.drift(p["mark"], "0.002")
            sign_ = 1 if p["side"] == "BUY" else -1
            pnl = ((p["mark"] - p["entry"]) * p["qty"] * sign_).quantize(Decimal("1E-12"))
            margin = (p["entry"] * p["qty"] / p["leverage"]).quantize(Decimal("1E-9"))
            upnl += pnl
            locked += margin
            positions.append(
                {
                    "positionId": p["id"],
                    "uid": "76957286",
                    "symbolId": p["symbolId"],
                    "side": p["side"],
                    "positionMode": "HEDGE",
                    "marginMode": "CROSSED",
                    "leverage": p["leverage"],
                    "quantity": str(p["qty"]),
                    "avgEntryPrice": str(p["entry"]),
                    "entryValue": str(p["entry"] * p["qty"]),
                    "margin": str(margin),
                    "maintainMargin": str((margin / 20).quantize(Decimal("1E-9"))),
                    "liquidPrice": "0",
                    "markPrice": str(p["mark"]),
                    "lastPrice": str(p["mark"]),
                    "marginRate": None,
                    "profitUnreal": str(pnl),
                    "profitUnrealRate": None,
                    "realizedPnl": "-0.267610631",
                    "pnl": "0",
                    "feeAmount": "0.267610631",
                    "feeAssetId": "USDT",
                    "frozenFee": "0",
                    "fundAmount": "0",
                    "bkrFee": None,
                    "closedFee": None,
                    "otherClosedFee": None,
                    "otherMaintainMargin": None,
                    "deductFeeAmount": "0",
                    "deductFundingAmount": "0",
                    "deductLossAmount": "0",
                    "tpSl": None,
                    "tpSlOrders": [],
                    "tpSlSize": 0,
                    "posTpSlSize": 0,
                    "ctime": 1758179319000,
                    "lastUpdateTime": int(time.time() * 1000),
                }
            )
        wallet = account.wallet
        equity = wallet + upnl
        available = wallet - locked + min(upnl, Decimal(0))
        totals = {
            "balance": str(wallet),
            "available": str(available),
            "canTransfer": str(available),
            "crossLocked": "0",
            "crossMargin": str(locked),
            "crossProfitUnreal": str(upnl),
            "crossedMaintainMargin": str((locked / 20).quantize(Decimal("1E-7"))),
            "crossedMaintainMarginRate": "0.0018351061760195",
            "isolatedLocked": "0",
            "isolatedMargin": "0",
            "profitUnreal": str(upnl),
            "totalTrialFundBalance": "0",
            "trialFundBalance": "0",
        }
        asset = {
            "coin": "USDT",
            **{k: v for k, v in totals.items()},
            "equities": str(equity),
            "locked": str(locked),
        }
        return {
            **totals,
            "totalEquities": str(equity),
            "totalLocked": str(locked),
            "assets": [asset],
            "positions": positions,
        }
