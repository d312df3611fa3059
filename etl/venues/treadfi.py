"""Tread.fi (Tread Labs TaaS): `GET /api/balances/` gives every account behind a token at once.

Facts (shared/venues/treadfi.md; docs.tread.fi "Accounts → Get account balances"):
- Base URL `https://app.tread.fi` (the hosted app; self-hosted TaaS instances exist, hence
  `base_url`). Live balances `GET /api/balances/`, trailing slash (CONFIRMED).
- Auth: a static API token, `Authorization: Token <api_key>`, Django REST Framework style;
  no signature, timestamp or secret (CONFIRMED; the registry marks the venue unsigned).
  A few doc snippets say `Bearer`: we send `Token`, which DRF's TokenAuthentication and
  both known client libraries use. We also send a descriptive User-Agent: known clients
  work around a WAF in front of the hosted app (ASSUMED to dislike library defaults).
- Filter: `params = { account_names = "AccountABC, Account123" }` is sent as one query
  parameter `account_names=AccountABC,Account123` (name CONFIRMED, comma encoding ASSUMED
  from the cached-balance endpoint, which documents it). Names are trimmed; a name with a
  comma in it cannot be filtered. Names the venue does not know are (ASSUMED) left out of
  the answer, not an error. No other `params` key is accepted.
- Success is HTTP 200 and a bare JSON object keyed by account display name, each with
  `exchange` and `assets[]`; no envelope (CONFIRMED). Errors (ASSUMED, DRF convention):
  401/403 `{"detail": "Invalid token."}`, 400 `{"detail": ...}` or a field-error object;
  all terminal. 429 and 5xx are retried by the HTTP layer.
- Rate limit: none published. RATE_LIMIT is one request per 2 s per token: every live
  call makes Tread query each exchange account behind the token, so a burst costs the
  user exchange-side weight on every venue at once. A normal poll is one request per
  interval, so the limit only paces retries and `etl check` next to a running daemon, and
  still fits the demo's 2 s cycle. Poll the live endpoint every minute or slower (the
  docs suggest the cached endpoint for anything faster; we do not use it).

Numbers are JSON numbers (`3051.5284`), parsed straight to Decimal by the HTTP layer
(`parse_float=Decimal`); nothing here goes through float, and sums and absolute values
are taken without the 28-digit Decimal context rounding.

Mapping (one source = one token = several accounts; `external_id` = the account name,
`exchange` = its `exchange`; `account_type` = the asset's `market_type` as sent):
- `asset_type: token` -> balance_snapshots: symbol -> currency, size -> total, notional ->
  value_usdt (USD), margin_balance -> equity (size + unrealized_profit, in the coin's
  units: the coin's equity), unrealized_profit, initial_margin, maint_margin.
- `asset_type: position` -> position_snapshots: symbol as given (`ETH:PERP-USDT`), base =
  before the last `:` of the part before the last `-`, quote = after the last `-`; side
  from the sign of `size` (negative = short: CONFIRMED, the client README's `-181.0`), quantity = |size|, notional,
  unrealized_profit, leverage, initial_margin -> margin, maint_margin. Entry and mark
  prices are not sent and stay NULL. A position of size 0 is not open: `Batch` drops it,
  as for every venue (exchanges such as Bybit list flat symbols with size 0).
- account_snapshots, one row per account and market type *that holds tokens*, in USD:
  equity = the exact sum of its tokens' `notional` (equity_currency `USD`); NULL if a
  token lacks it (a partial sum would understate). Decided from public evidence:
  * `margin_balance` is in the coin's own units (CONFIRMED: the official client's README,
    tread-labs-public/taas-api-client "Getting Account Balances", shows an OKX BTC token
    with `size 3.0`, `margin_balance 3.0`, `notional 89409.0`), so it is never summed
    across coins: it stays the coin's equity in its balance_snapshots row;
  * `notional` is the USD value (CONFIRMED, same README: BTC 3.0 -> 89409.0, USDT
    8930.59 -> 8930.59; `notional_pct_total` is notional over the sum of the notionals of
    the market type), the only figure of a token in one currency for every coin. It is
    size x price: unrealized PnL is not in it (Tread sends no USD PnL; the coins' PnL
    stays in their rows), so for a margin account this is the wallet's value;
  * unrealized_pnl, initial_margin and maintenance_margin of the tokens are coin units
    too: the account row leaves them NULL, each coin's are in its balance row;
  * a market type with only positions gets no row: its collateral is reported under the
    market type holding the tokens (Bybit: `perp` positions, `unified` USDT), and a
    position's notional is exposure, not money held;
  * spot wallets (margin_balance null) get a row like any other, valued by notional.
  Rows loaded before this rule (equity = the sum of margin_balance, "USDT") are rewritten
  by `etl replay`, which normalizes the stored raw payloads again.
- Every other field (`notional_pct_total`, token `leverage`, position `margin_balance`,
  unknown ones) goes to `extra` unchanged; unknown fields of an account object go to the
  extra of that account's account_snapshots rows. An unknown `asset_type` is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from etl.config import SourceConfig
from etl.errors import ConfigError, NormalizeError, VenueError
from etl.records import AccountRef, AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.venues.fields import Fields, exact_sum
from etl.venues.http import VenueClient

DEFAULT_BASE_URL = "https://app.tread.fi"
RATE_LIMIT = (1, 2.0)
BALANCES = "/api/balances/"
USER_AGENT = "balance-etl/0.1 (+treadfi balances poller)"
EQUITY_CURRENCY = "USD"  # the unit of `notional`
PARAMS = ("account_names",)


def account_names(text: str) -> str:
    """`"A, B,,C "` -> `"A,B,C"`: the comma-separated filter as the venue expects it."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("treadfi params.account_names: no account name given (omit it to poll all)")
    return ",".join(names)


def request_params(params: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(
            f"treadfi params: unknown key {', '.join(unknown)} (supported: {', '.join(PARAMS)})"
        )
    return {"account_names": account_names(params["account_names"])} if "account_names" in params else {}


def build_request(base_url: str, params: Mapping[str, str], token: str) -> httpx.Request:
    headers = {
        "Authorization": f"Token {token}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    return httpx.Request("GET", base_url + BALANCES, params=dict(params), headers=headers)


def _detail(body: Any) -> str:
    """DRF error bodies: `{"detail": "..."}` or `{"field": ["problem", ...], ...}`."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    if isinstance(body, dict) and body:
        return "; ".join(
            f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in body.items()
        )
    return json.dumps(body, default=str)[:120]


def check_envelope(status: int, body: Any) -> None:
    if status >= 400:
        raise VenueError(f"HTTP {status}: {_detail(body)}")
    if not isinstance(body, dict):
        raise VenueError(
            f"HTTP {status}: expected a JSON object keyed by account name, got {type(body).__name__}"
        )


async def fetch(http: VenueClient, source: SourceConfig) -> list[RawResponse]:
    params = request_params(source.params)
    token = source.api_key

    def build() -> httpx.Request:
        return build_request(http.base_url, params, token.reveal())

    return [await http.send(BALANCES, build, check_envelope)]


def _sum_if_complete(values: Iterable[Decimal | None]) -> Decimal | None:
    """The exact sum, or None if any value is missing (a partial sum would understate)."""
    listed = list(values)
    known = [v for v in listed if v is not None]
    return exact_sum(known) if known and len(known) == len(listed) else None


def _where(name: str) -> str:
    """How errors name an account: `treadfi AccountABC`, or `treadfi ["My main"]` if it needs quoting."""
    return f"treadfi {name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f"treadfi [{json.dumps(name)}]"


def split_symbol(symbol: str) -> tuple[str | None, str | None]:
    """`ETH:PERP-USDT` -> (ETH, USDT); `xyz:TSLA:PERP-USDC` -> (xyz:TSLA, USDC); `BTC` -> (BTC, None)."""
    head, dash, quote = symbol.rpartition("-")
    if not dash:
        head, quote = symbol, ""
    base = head.rpartition(":")[0] if ":" in head else head
    return base or None, quote or None


def _balance(account: str, market_type: str, f: Fields) -> BalanceRow:
    return BalanceRow(
        account=account,
        account_type=market_type,
        currency=f.text("symbol", required=True) or "",
        total=f.decimal("size"),
        equity=f.decimal("margin_balance"),
        unrealized_pnl=f.decimal("unrealized_profit"),
        initial_margin=f.decimal("initial_margin"),
        maintenance_margin=f.decimal("maint_margin"),
        value_usdt=f.decimal("notional"),
        extra=f.rest(),
    )


def _position(account: str, market_type: str, f: Fields) -> PositionRow:
    symbol = f.text("symbol", required=True) or ""
    size = f.decimal("size", required=True)
    if size is None:
        raise NormalizeError(f"{f.where}.size: a position needs a signed size, got null")
    base, quote = split_symbol(symbol)
    return PositionRow(
        account=account,
        account_type=market_type,
        symbol=symbol,
        side="short" if size < 0 else "long",
        base=base,
        quote=quote,
        quantity=size.copy_abs(),  # not abs(): that rounds to the context's 28 digits
        notional=f.decimal("notional"),
        unrealized_pnl=f.decimal("unrealized_profit"),
        leverage=f.decimal("leverage"),
        margin=f.decimal("initial_margin"),
        maintenance_margin=f.decimal("maint_margin"),
        extra=f.rest(),
    )


def _account_rows(account: str, balances: Sequence[BalanceRow], extra: dict[str, Any]) -> list[AccountRow]:
    by_type: dict[str, list[BalanceRow]] = {}
    for row in balances:
        by_type.setdefault(row.account_type, []).append(row)
    return [
        AccountRow(
            account=account,
            account_type=market_type,
            equity=_sum_if_complete(b.value_usdt for b in rows),
            equity_currency=EQUITY_CURRENCY,
            extra=dict(extra),
        )
        for market_type, rows in by_type.items()
    ]


@dataclass
class _Account:
    ref: AccountRef
    balances: list[BalanceRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)
    account_rows: list[AccountRow] = field(default_factory=list)


def _read_account(name: str, value: Any) -> _Account:
    where = _where(name)
    f = Fields(value, where)
    out = _Account(AccountRef(external_id=name, exchange=f.text("exchange")))
    for i, item in enumerate(f.list("assets", required=True)):
        asset = Fields(item, f"{where}.assets[{i}]")
        kind = asset.text("asset_type", required=True)
        market_type = asset.text("market_type", required=True) or ""
        if kind == "token":
            out.balances.append(_balance(name, market_type, asset))
        elif kind == "position":
            out.positions.append(_position(name, market_type, asset))
        else:
            raise NormalizeError(f"{asset.where}.asset_type: expected token or position, got {kind!r}")
    out.account_rows = _account_rows(name, out.balances, f.rest())
    return out


def normalize(source: str, responses: Sequence[RawResponse]) -> Batch:
    (response,) = [r for r in responses if r.endpoint == BALANCES]
    body = response.body
    if not isinstance(body, Mapping):
        raise NormalizeError(f"treadfi: expected an object keyed by account name, got {type(body).__name__}")
    accounts = [_read_account(name, value) for name, value in body.items()]
    return Batch(
        accounts=tuple(a.ref for a in accounts),
        balances=tuple(b for a in accounts for b in a.balances),
        account_rows=tuple(r for a in accounts for r in a.account_rows),
        positions=tuple(p for a in accounts for p in a.positions),
    )
