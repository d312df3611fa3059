"""Bittap futures: `GET /ftapi/v1/account/info` gives balances, totals and positions at once.

Facts (shared/venues/bittap.md):
- Base URL `https://openapi.bittap.com` (CONFIRMED). No request parameters.
- Auth headers `X-BT-APIKEY`, `X-BT-SIGN`, `X-BT-TS` (epoch ms), `X-BT-NONCE` (UUID)
  (CONFIRMED). Message = sorted query + `&timestamp=<ts>&nonce=<nonce>`; an empty query
  leaves the leading `&` (CONFIRMED by the official sample). Digest HMAC-SHA256,
  lower-case hex: ASSUMED (third-party client; the official page cuts off there).
- The query is built once and that one string is both signed and sent: the official JS
  sample signs `urlObj.search`, the query as the URL carries it (CONFIRMED), and the docs
  drop empty values from what is signed, so they are not sent either. Values are
  percent-encoded RFC 3986 style with upper-case hex (ASSUMED: the docs show only
  values that need no encoding). No published signature vector exists to check against.
- Envelope `{"code": "0", "msg": ..., "success": true, "data": ...}`, `code` a string.
  Errors `410001` bad key, `410002` bad signature, `410006` no permission (CONFIRMED),
  each with the auth hint;
  whether auth errors come as HTTP 401 or 200 is not documented, both are handled.
- Limits 600 requests/min and 10/s (CONFIRMED numbers; scope ASSUMED per key).

Mapping: `data.assets[]` -> balance rows (account_type `futures`), `data` totals -> the
account row, `data.positions[]` -> position rows. The source is one account: its
external id is the source name. `liquidPrice: "0"` means "no liquidation" and is kept
as the venue sent it; nulls stay NULL. Quantities are base units (CONFIRMED by the docs'
own arithmetic: 871.1 x 3.0721 = 2676.10631 = `entryValue`); a quantity of 0 is not an
open position and gets no row (the rule `Batch` keeps for every venue).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from etl.config import SourceConfig
from etl.errors import NormalizeError, VenueError
from etl.records import AccountRef, AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.venues.fields import Fields
from etl.venues.http import VenueClient

DEFAULT_BASE_URL = "https://openapi.bittap.com"
RATE_LIMIT = (10, 1.0)
ACCOUNT_INFO = "/ftapi/v1/account/info"
ACCOUNT_TYPE = "futures"
AUTH_CODES = {"410001", "410002", "410006"}


def encode(text: str) -> str:
    """RFC 3986 percent-encoding with upper-case hex (`,` -> `%2C`, space -> `%20`)."""
    return quote(text, safe="")


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string as sent and as signed: encoded `k=v` pairs, empty values dropped,
    sorted in the docs' dictionary order (by key, then value) of the text the venue receives."""
    pairs = sorted((encode(k), encode(v)) for k, v in params.items() if v not in (None, ""))
    return "&".join(f"{k}={v}" for k, v in pairs)


def sign(secret: str, query: str, ts: str, nonce: str) -> str:
    message = (f"{query}&" if query else "&") + f"timestamp={ts}&nonce={nonce}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def build_request(
    base_url: str,
    path: str,
    params: Mapping[str, str],
    api_key: str,
    secret: str,
    ts: str,
    nonce: str,
) -> httpx.Request:
    """A signed GET whose query string is byte for byte the one that was signed."""
    query = canonical_query(params)
    headers = {
        "X-BT-APIKEY": api_key,
        "X-BT-SIGN": sign(secret, query, ts, nonce),
        "X-BT-TS": ts,
        "X-BT-NONCE": nonce,
    }
    url = httpx.URL(base_url + path)
    return httpx.Request("GET", url.copy_with(query=query.encode()) if query else url, headers=headers)


def check_envelope(status: int, body: Any) -> None:
    if not isinstance(body, dict):
        raise VenueError(f"HTTP {status}: expected a JSON object, got {type(body).__name__}")
    code = str(body.get("code"))
    if body.get("success") is True and code == "0":
        return
    message = body.get("msg") or "no message"
    hint = (
        " (check the API key, its secret, its Futures permission and the clock)" if code in AUTH_CODES else ""
    )
    raise VenueError(f"HTTP {status}, code {code}: {message}{hint}", transient=code == "500")


async def fetch(http: VenueClient, source: SourceConfig) -> list[RawResponse]:
    secret = source.api_secret
    assert secret is not None  # config requires it for signed venues

    def build() -> httpx.Request:
        return build_request(
            http.base_url,
            ACCOUNT_INFO,
            source.params,
            source.api_key.reveal(),
            secret.reveal(),
            str(int(time.time() * 1000)),
            uuid.uuid4().hex,
        )

    return [await http.send(ACCOUNT_INFO, build, check_envelope)]


def _balance(account: str, item: Any, where: str) -> BalanceRow:
    f = Fields(item, where)
    return BalanceRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        currency=f.text("coin", required=True) or "",
        total=f.decimal("balance"),
        available=f.decimal("available"),
        frozen=f.decimal("locked"),
        withdrawable=f.decimal("canTransfer"),
        equity=f.decimal("equities"),
        unrealized_pnl=f.decimal("profitUnreal"),
        maintenance_margin=f.decimal("crossedMaintainMargin"),
        extra=f.rest(),
    )


def _account(account: str, data: Fields) -> AccountRow:
    return AccountRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        equity=data.decimal("totalEquities"),
        available_margin=data.decimal("available"),
        maintenance_margin=data.decimal("crossedMaintainMargin"),
        maintenance_margin_rate=data.decimal("crossedMaintainMarginRate"),
        unrealized_pnl=data.decimal("profitUnreal"),
        equity_currency="USDT",
        extra=data.rest("assets", "positions"),
    )


_SIDES = {"BUY": "long", "SELL": "short"}
_MODES = {"CROSSED": "cross", "ISOLATED": "isolated"}


def _position(account: str, item: Any, where: str) -> PositionRow:
    f = Fields(item, where)
    symbol = f.text("symbolId", required=True) or ""
    side_text = f.text("side", required=True)
    side = _SIDES.get(side_text or "")
    if side is None:
        raise NormalizeError(f"{where}.side: expected BUY or SELL, got {side_text!r}")
    mode_text = f.text("marginMode")
    mode = _MODES.get(mode_text) if mode_text else None
    if mode_text and mode is None:
        raise NormalizeError(f"{where}.marginMode: expected CROSSED or ISOLATED, got {mode_text!r}")
    quantity = f.decimal("quantity")
    base, _, rest = symbol.partition("-")
    quote = rest.split("-")[0] if rest else None
    return PositionRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        base=base or None,
        quote=quote or None,
        quantity=quantity.copy_abs() if quantity is not None else None,  # abs() would round past 28 digits
        entry_price=f.decimal("avgEntryPrice"),
        mark_price=f.decimal("markPrice"),
        notional=f.decimal("entryValue"),
        unrealized_pnl=f.decimal("profitUnreal"),
        realized_pnl=f.decimal("realizedPnl"),
        leverage=f.decimal("leverage"),
        margin=f.decimal("margin"),
        maintenance_margin=f.decimal("maintainMargin"),
        liquidation_price=f.decimal("liquidPrice"),
        margin_mode=mode,  # type: ignore[arg-type]
        venue_ts=f.ms_time("lastUpdateTime"),
        extra=f.rest(),
    )


def normalize(source: str, responses: Sequence[RawResponse]) -> Batch:
    (response,) = [r for r in responses if r.endpoint == ACCOUNT_INFO]
    envelope = Fields(response.body, "bittap")
    data = Fields(envelope.raw("data", required=True), "bittap data")
    balances = tuple(
        _balance(source, item, f"bittap data.assets[{i}]") for i, item in enumerate(data.list("assets"))
    )
    positions = tuple(
        _position(source, item, f"bittap data.positions[{i}]")
        for i, item in enumerate(data.list("positions"))
    )
    return Batch(
        accounts=(AccountRef(external_id=source),),
        balances=balances,
        account_rows=(_account(source, data),),
        positions=positions,
    )
