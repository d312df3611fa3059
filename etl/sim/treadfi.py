"""Tread.fi simulator: `GET /api/balances/`, token auth the Django REST Framework way.

One API token sees several accounts (display names), each on an exchange. Numbers are
JSON numbers with up to 8 decimals, as the venue sends them. The collateral token sits in
`unified` (Bybit, OKX: positions under `perp` repeat the account's margin_balance, as in
the seed) or in `perp` (Binance: positions carry margin_balance null); spot coins sit in
`spot` with margin_balance null. Mark prices walk a little on every call, moving uPnL,
notional and margin balance. A token registered with `body=` serves that body verbatim
(the seed page's example), filtered by `account_names` like the live answer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl.sim.base import Simulator, json_response

BALANCES = "/api/balances/"

Q8 = Decimal("1E-8")
Q6 = Decimal("1E-6")
MAINT_RATE = Decimal("0.005")
# (symbol, mark price, size): negative sizes are shorts
PERPS = [
    ("ETH:PERP-USDT", "3120.25", "1.69"),
    ("BTC:PERP-USDT", "64250.5", "-0.021"),
    ("SOL:PERP-USDT", "142.315", "35"),
]
SPOT = [("BTC", "64250.5", "0.12"), ("ETH", "3120.25", "2.5")]


@dataclass
class SimPosition:
    symbol: str
    entry: Decimal
    mark: Decimal
    size: Decimal
    leverage: Decimal


@dataclass
class TreadfiAccount:
    exchange: str
    collateral_type: str  # market_type holding the USDT collateral: unified or perp
    wallet: Decimal
    positions: list[SimPosition] = field(default_factory=list)
    spot: list[tuple[str, Decimal, Decimal]] = field(default_factory=list)  # symbol, price, size


@dataclass
class TreadfiUser:
    accounts: dict[str, TreadfiAccount] = field(default_factory=dict)
    body: Any = None  # fixed response, served as is (filtered by account_names)


def _unauthorized(detail: str) -> Response:
    response = json_response({"detail": detail}, 401)
    response.headers["WWW-Authenticate"] = "Token"
    return response


def _share(notional: Decimal, total: Decimal) -> Decimal:
    return (notional / total).quantize(Q6) if total else Decimal(0)


class TreadfiSimulator(Simulator):
    venue = "treadfi"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        super().__init__(seed, latency)
        self.users: dict[str, TreadfiUser] = {}

    def add_user(self, token: str, *, body: Any = None) -> TreadfiUser:
        user = self.users.setdefault(token, TreadfiUser())
        user.body = body
        return user

    def add_account(
        self,
        token: str,
        name: str,
        exchange: str,
        *,
        wallet: str = "10000.0",
        positions: int = 2,
        spot: int = 0,
    ) -> TreadfiAccount:
        collateral_type = "perp" if exchange == "Binance" else "unified"
        account = TreadfiAccount(exchange, collateral_type, Decimal(wallet))
        for i, (symbol, price, size) in enumerate(PERPS[:positions]):
            account.positions.append(
                SimPosition(symbol, Decimal(price), Decimal(price), Decimal(size), Decimal(5 + 5 * i))
            )
        account.spot = [(s, Decimal(p), Decimal(q)) for s, p, q in SPOT[:spot]]
        self.users.setdefault(token, TreadfiUser()).accounts[name] = account
        return account

    def venue_routes(self) -> list[Route]:
        return [Route(BALANCES, self.balances, methods=["GET"])]

    def _authenticate(self, request: Request) -> TreadfiUser | Response:
        """DRF TokenAuthentication's answers, word for word."""
        parts = request.headers.get("Authorization", "").split()
        if not parts or parts[0].lower() != "token":
            self.rejected += 1
            return _unauthorized("Authentication credentials were not provided.")
        if len(parts) == 1:
            self.rejected += 1
            return _unauthorized("Invalid token header. No credentials provided.")
        if len(parts) > 2:
            self.rejected += 1
            return _unauthorized("Invalid token header. Token string should not contain spaces.")
        user = self.users.get(parts[1])
        if user is None:
            self.rejected += 1
            return _unauthorized("Invalid token.")
        return user

    async def balances(self, request: Request) -> Response:
        user = self._authenticate(request)
        if isinstance(user, Response):
            return user
        body = copy.deepcopy(user.body) if user.body is not None else self._live(user)
        wanted = {
            name.strip()
            for value in request.query_params.getlist("account_names")
            for name in value.split(",")
            if name.strip()
        }
        if wanted:
            body = {name: value for name, value in body.items() if name in wanted}
        return json_response(body)

    def _live(self, user: TreadfiUser) -> dict[str, Any]:
        return {
            name: {"exchange": account.exchange, "assets": self._assets(account)}
            for name, account in user.accounts.items()
        }

    def _assets(self, account: TreadfiAccount) -> list[dict[str, Any]]:
        positions = [self._position(p) for p in account.positions]
        upnl = sum((p["unrealized_profit"] for p in positions), Decimal(0))
        margin_balance = account.wallet + upnl
        collateral = {
            "symbol": "USDT",
            "size": account.wallet,
            "notional": account.wallet.quantize(Q6),
            "market_type": account.collateral_type,
            "asset_type": "token",
            "unrealized_profit": upnl,
            "initial_margin": sum((p["initial_margin"] for p in positions), Decimal(0)),
            "maint_margin": sum((p["maint_margin"] for p in positions), Decimal(0)),
            "margin_balance": margin_balance,
            "leverage": None,
        }
        for p in positions:
            # Bybit-style unified accounts repeat the account's margin balance on positions.
            p["margin_balance"] = margin_balance if account.collateral_type == "unified" else None
        spot = [
            {
                "symbol": symbol,
                "size": size,
                "notional": (self.drift(price, "0.002") * size).quantize(Q6),
                "market_type": "spot",
                "asset_type": "token",
                "unrealized_profit": Decimal("0.0"),
                "initial_margin": Decimal("0.0"),
                "maint_margin": Decimal("0.0"),
                "margin_balance": None,
                "leverage": None,
            }
            for symbol, price, size in account.spot
        ]
        assets = [*positions, collateral, *spot]
        totals: dict[str, Decimal] = {}
        for asset in assets:
            totals[asset["market_type"]] = totals.get(asset["market_type"], Decimal(0)) + asset["notional"]
        for asset in assets:
            asset["notional_pct_total"] = _share(asset["notional"], totals[asset["market_type"]])
        return assets

    def _position(self, p: SimPosition) -> dict[str, Any]:
        p.mark = self.drift(p.mark, "0.002")
        notional = (p.mark * p.size.copy_abs()).quantize(Q6)
        return {
            "symbol": p.symbol,
            "size": p.size,
            "notional": notional,
            "market_type": "perp",
            "asset_type": "position",
            "unrealized_profit": ((p.mark - p.entry) * p.size).quantize(Q8),
            "initial_margin": (notional / p.leverage).quantize(Q8),
            "maint_margin": (notional * MAINT_RATE).quantize(Q8),
            "margin_balance": None,
            "leverage": p.leverage.quantize(Decimal("0.1")),
        }
