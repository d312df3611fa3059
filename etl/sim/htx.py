"""HTX v5 simulator: balance and positions (Signature v2 in the query string), contract info.

One multi-asset collateral account per access key. The gateway check runs the way HTX
documents it (ASSUMED for the exact codes of each case, all with HTTP 200 and the
legacy envelope): unknown key -> 403 "Incorrect Access key", missing or out-of-window
`Timestamp` (5 minutes) -> 12001, wrong `SignatureVersion` -> 12002, wrong
`SignatureMethod` -> 12003, signature mismatch -> 403 "Verification failure [校验失败]".
The signature is recomputed from the decoded parameters, the host and the path with this
module's own code, written from HTX's "Signature Authentication" page (never the
client's): every key and value percent-encoded (UTF-8, upper-case hex), pairs sorted by
key in ASCII order, `GET\n<host>\n<path>\n<query>`, base64 HMAC-SHA256. Mark prices walk a little on every balance call, moving uPnL and equity.
An account registered with `body=` / `positions_body=` serves them verbatim (the seed
page's examples). `GET /linear-swap-api/v1/swap_contract_info` is public and answers
from a small contract table.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl.sim.base import Simulator, json_response

BALANCE = "/v5/account/balance"
POSITIONS = "/v5/trade/position/opens"
CONTRACT_INFO = "/linear-swap-api/v1/swap_contract_info"
SKEW = 300  # seconds a Timestamp may be off, per the docs


def expected_signature(secret: str, host: str, path: str, params: dict[str, str]) -> str:
    """`Signature` for a GET carrying the decoded `params` (all but `Signature` itself)."""
    encoded = sorted((quote(k, safe=""), quote(v, safe="")) for k, v in params.items())
    presign = f"GET\n{host.lower()}\n{path}\n" + "&".join(f"{k}={v}" for k, v in encoded)
    return base64.b64encode(hmac.new(secret.encode(), presign.encode(), hashlib.sha256).digest()).decode()


@dataclass
class Contract:
    code: str
    size: Decimal
    mark: Decimal


@dataclass
class HtxAccount:
    secret: str
    wallet: Decimal = Decimal("50000.0000000000")  # USDT
    btc: Decimal = Decimal(0)  # extra BTC collateral
    positions: list[dict[str, Any]] = field(default_factory=list)
    body: Any = None  # fixed balance response, served as is
    positions_body: Any = None  # fixed positions response, served as is


def _now_ms() -> int:
    return int(time.time() * 1000)


def _gateway_error(code: int, message: str) -> Response:
    return json_response({"status": "error", "err_code": code, "err_msg": message, "ts": _now_ms()})


class HtxSimulator(Simulator):
    venue = "htx"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        super().__init__(seed, latency)
        self.accounts: dict[str, HtxAccount] = {}
        self.contracts = {
            c.code: c
            for c in (
                Contract("BTC-USDT", Decimal("0.001"), Decimal("64250.5")),
                Contract("ETH-USDT", Decimal("0.01"), Decimal("3120.25")),
                Contract("XRP-USDT", Decimal("10"), Decimal("0.6123")),
                Contract("BTC-USDT-260327", Decimal("0.001"), Decimal("65010.1")),
            )
        }

    def add_account(
        self,
        api_key: str,
        secret: str,
        *,
        body: Any = None,
        positions_body: Any = None,
        wallet: str | None = None,
        btc: str | None = None,
        positions: int = 2,
    ) -> HtxAccount:
        account = HtxAccount(secret=secret, body=body, positions_body=positions_body)
        if wallet is not None:
            account.wallet = Decimal(wallet)
        if btc is not None:
            account.btc = Decimal(btc)
        held = [("BTC-USDT", "buy", 350, 10), ("ETH-USDT", "sell", 420, 5), ("XRP-USDT", "buy", 871, 20)]
        for code, direction, volume, lever in held[:positions]:
            entry = self.contracts[code].mark
            account.positions.append(
                {"code": code, "direction": direction, "entry": entry, "volume": volume, "lever": lever}
            )
        self.accounts[api_key] = account
        return account

    def venue_routes(self) -> list[Route]:
        return [
            Route(BALANCE, self.balance, methods=["GET"]),
            Route(POSITIONS, self.positions, methods=["GET"]),
            Route(CONTRACT_INFO, self.contract_info, methods=["GET"]),
        ]

    # --- the gateway's signature check ---------------------------------------------

    def _authenticate(self, request: Request) -> HtxAccount | Response:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        params = {k: v for k, v in pairs if k != "Signature"}
        signature = next((v for k, v in pairs if k == "Signature"), "")
        account = self.accounts.get(params.get("AccessKeyId", ""))
        if account is None:
            return self._reject(403, "Incorrect Access key [Access key错误]")
        if params.get("SignatureVersion") != "2":
            return self._reject(12002, "Wrong signature version")
        if params.get("SignatureMethod") != "HmacSHA256":
            return self._reject(12003, "Wrong signature method")
        try:
            sent = datetime.strptime(params.get("Timestamp", ""), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            return self._reject(12001, "Invalid submission time")
        if abs((datetime.now(UTC) - sent).total_seconds()) > SKEW:
            return self._reject(12001, "Invalid submission time")
        expected = expected_signature(account.secret, request.url.hostname or "", request.url.path, params)
        if not hmac.compare_digest(expected, signature):
            return self._reject(403, "Verification failure [校验失败]")
        return account

    def _reject(self, code: int, message: str) -> Response:
        self.rejected += 1
        return _gateway_error(code, message)

    # --- routes --------------------------------------------------------------------

    async def balance(self, request: Request) -> Response:
        account = self._authenticate(request)
        if isinstance(account, Response):
            return account
        if account.body is not None:
            return json_response(copy.deepcopy(account.body))
        for contract in self.contracts.values():
            contract.mark = self.drift(contract.mark, "0.002")
        return json_response(
            {"code": 200, "message": "Success", "data": self._balance(account), "ts": _now_ms()}
        )

    async def positions(self, request: Request) -> Response:
        account = self._authenticate(request)
        if isinstance(account, Response):
            return account
        if account.positions_body is not None:
            return json_response(copy.deepcopy(account.positions_body))
        wanted = request.query_params.get("contract_code")
        data = [self._position(p) for p in account.positions if wanted in (None, p["code"])]
        return json_response({"code": 200, "message": "Success", "data": data, "ts": _now_ms()})

    async def contract_info(self, request: Request) -> Response:
        wanted = request.query_params.get("contract_code")
        futures = request.query_params.get("business_type") in ("futures", "all")
        data = [
            self._contract(c)
            for c in self.contracts.values()
            if wanted in (None, c.code) and (futures or c.code.count("-") == 1)
        ]
        if wanted is not None and not data:
            return _gateway_error(1014, "This contract doesn't exist.")
        return json_response({"status": "ok", "data": data, "ts": _now_ms()})

    # --- payloads ------------------------------------------------------------------

    def _figures(self, p: dict[str, Any]) -> dict[str, Decimal]:
        contract = self.contracts[p["code"]]
        qty = contract.size * p["volume"]
        sign_ = 1 if p["direction"] == "buy" else -1
        margin = (contract.mark * qty / p["lever"]).quantize(Decimal("1E-8"))
        return {
            "pnl": ((contract.mark - p["entry"]) * qty * sign_).quantize(Decimal("1E-10")),
            "im": margin,
            "mm": (margin / 20).quantize(Decimal("1E-11")),
        }

    def _position(self, p: dict[str, Any]) -> dict[str, Any]:
        contract = self.contracts[p["code"]]
        figures = self._figures(p)
        return {
            "contract_code": p["code"],
            "position_side": "both",
            "direction": p["direction"],
            "margin_mode": "cross",
            "open_avg_price": str(p["entry"]),
            "volume": str(p["volume"]),
            "available": str(p["volume"]),
            "lever_rate": p["lever"],
            "adl_risk_percent": None,
            "liquidation_price": "-6615323.17169213120630934",
            "initial_margin": str(figures["im"]),
            "maintenance_margin": str(figures["mm"]),
            "profit_unreal": str(figures["pnl"]),
            "profit_rate": str((figures["pnl"] / figures["im"]).quantize(Decimal("1E-4"))),
            "margin_rate": "0.000000681298594547",
            "mark_price": str(contract.mark),
            "margin_currency": "USDT",
            "contract_type": "swap",
            "created_time": 1740451087505,
            "updated_time": _now_ms(),
        }

    def _balance(self, account: HtxAccount) -> dict[str, Any]:
        figures = [self._figures(p) for p in account.positions]
        pnl = sum((f["pnl"] for f in figures), Decimal(0))
        im = sum((f["im"] for f in figures), Decimal(0))
        mm = sum((f["mm"] for f in figures), Decimal(0))
        usdt_equity = account.wallet + pnl
        btc_value = (account.btc * self.contracts["BTC-USDT"].mark).quantize(Decimal("1E-10"))
        equity = usdt_equity + btc_value
        now = _now_ms()

        def detail(
            currency: str, eq: Decimal, available: Decimal, upnl: Decimal, i: Decimal, m: Decimal
        ) -> dict[str, Any]:
            return {
                "currency": currency,
                "equity": str(eq),
                "available": str(available),
                "withdraw_available": str(max(available, Decimal(0))),
                "profit_unreal": str(upnl),
                "initial_margin": str(i),
                "maintenance_margin": str(m),
                "maintenance_margin_rate": str((m / eq).quantize(Decimal("1E-18"))) if eq and m else "0",
                "initial_margin_rate": str((i / eq).quantize(Decimal("1E-18"))) if eq and i else "0",
                "voucher": "",
                "voucher_value": "",
                "created_time": 1736756095314,
                "updated_time": now,
            }

        details = [detail("USDT", usdt_equity, usdt_equity - im, pnl, im, mm)]
        if account.btc:
            zero = Decimal(0)
            details.append(detail("BTC", account.btc, account.btc, zero, zero, zero))
        return {
            "state": "normal",
            "equity": str(equity),
            "initial_margin": str(im),
            "maintenance_margin": str(mm),
            "maintenance_margin_rate": str((mm / equity).quantize(Decimal("1E-18"))) if equity else "0",
            "profit_unreal": str(pnl),
            "available_margin": str(equity - im),
            "voucher_value": "",
            "created_time": 1736736784249,
            "updated_time": now,
            "details": details,
        }

    def _contract(self, c: Contract) -> dict[str, Any]:
        swap = c.code.count("-") == 1
        return {
            "symbol": c.code.split("-")[0],
            "contract_code": c.code,
            "contract_size": c.size,
            "price_tick": Decimal("0.1"),
            "delivery_date": "" if swap else "20" + c.code.rsplit("-", 1)[1],
            "delivery_time": "" if swap else "1774598400000",
            "create_date": "20201021",
            "contract_status": 1,
            "settlement_date": "1740470400000",
            "support_margin_mode": "all" if swap else "cross",
            "business_type": "swap" if swap else "futures",
            "pair": "-".join(c.code.split("-")[:2]),
            "contract_type": "swap" if swap else "quarter",
        }
