"""LTP (Liquidity Technology) user-level API: `GET /api/v1/asset/getAccountCurrencyInfo`.

One API key (an LTP primary-user or sub-user key with READ; RapidX portfolio keys are
refused by this endpoint) reaches every LTP trade account of the user: DMA accounts on
BINANCE, BYBIT, OKEX, … and the LTP Funding account. Facts (shared/venues/ltp.md):

- Base URL `https://api.liquiditytech.com` (HA; `https://api-az4.liquiditytech.com` is the
  low-latency alternative, set it as `base_url`) (CONFIRMED).
- Filters (CONFIRMED): `accountId` (comma-separated ids, e.g. `10001,10002`) and
  `currency` (one symbol). They come from the source's `params`; any other key, or several
  currencies, is a config error before anything is sent.
- Auth (CONFIRMED by the docs and the official Python SDK `signature_util.py`): headers
  `X-MBX-APIKEY`, `nonce` (unix *seconds*) and `signature` = lower-case hex
  HMAC-SHA256(secret, sorted raw `k=v&…` + `&` + ts); no params -> `&<ts>`. Values are
  signed raw and sent URL-encoded (`10001,10002` is signed, `10001%2C10002` is sent).
  Keys made before 2023-10-19 are V1 keys, which cannot use this endpoint (CONFIRMED,
  "Get started with LTP API V2"): use a V2 key.
- Envelope `{"code", "message", "data"}`. Success `200000`; `200` also accepted (a
  third-party write-up and a ccxt-style adapter both see `200`) (ASSUMED for this
  endpoint). `2000` "API verification failed", `2002` "Invalid API authorization" (arena
  docs, advanced API page) and `2003` (key level not allowed) are terminal, each with a
  hint; body code `429` and HTTP 429 are transient. Whether errors come with HTTP 200
  or 4xx is not documented: the body decides either way.
- Rate limit not stated for this endpoint: ASSUMED 10 requests/min per key, as for the V2
  asset endpoints. The clock-skew window is not documented (the simulator allows ±30 s).
- The official example body was not captured on the seed page: the fixture
  `etl/sim/fixtures/ltp_account_balance.json` is the example of the venue file (ASSUMED
  values, documented fields).

Mapping: each `data[]` element is one accountId x accountType. Every accountId is an
account (`external_id` = accountId as text, `exchange` = `venues`, `note` = `accountNote`,
`""` -> NULL; the first non-empty value wins if elements of one id differ); each element
is an account row (`totalUsdt` -> equity in USDT, as sent, so an empty `assetInfo` still
records the sub-wallet, with the `0` LTP sends); `assetInfo[]` -> balance rows
(`totalBalance` -> total, `available`, `withdrawAvailable` -> withdrawable, `frozen`,
`valueUsdt` -> value_usdt; `network` and unknown fields -> extra).

One currency on several networks (CONFIRMED for Funding: "USDT on Ethereum and USDT on
Tron are tracked separately"): the contract keys balances by currency, so such elements
become ONE row whose amounts are the exact sums (NULL if any network lacks the figure,
since a partial sum would be wrong) and whose `extra` is `{"networks": [the elements as
received, in payload order]}`. The same currency twice on the same network (or twice
without one), or the same accountId x accountType twice, is an error, not a sum: it
would double count.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from etl.config import SourceConfig
from etl.errors import ConfigError, NormalizeError, VenueError
from etl.records import AccountRef, AccountRow, BalanceRow, Batch, RawResponse
from etl.venues.fields import Fields, exact_sum
from etl.venues.http import VenueClient

DEFAULT_BASE_URL = "https://api.liquiditytech.com"
RATE_LIMIT = (10, 60.0)
ACCOUNT_BALANCE = "/api/v1/asset/getAccountCurrencyInfo"
FILTERS = ("accountId", "currency")
SUCCESS_CODES = {"200000", "200"}
AUTH_CODES = {"2000", "2002"}  # API verification failed; Invalid API authorization
LEVEL_CODES = {"2003"}  # the key's level may not use this endpoint
TRANSIENT_CODES = {"429"}
_AMOUNTS = ("totalBalance", "available", "withdrawAvailable", "frozen", "valueUsdt")


def canonical_params(params: Mapping[str, str]) -> str:
    """Sorted `k=v&...` with raw (not URL-encoded) values; empty values are not sent."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v not in (None, ""))


def sign(secret: str, param_string: str, ts: str) -> str:
    message = f"{param_string}&{ts}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def request_params(params: Mapping[str, str]) -> dict[str, str]:
    """The source's `params` as the venue's filters; anything it cannot take is a config error."""
    unknown = sorted(set(params) - set(FILTERS))
    if unknown:
        raise ConfigError(f"params: unknown ltp filter {unknown[0]!r} (expected accountId or currency)")
    if "," in params.get("currency", ""):
        raise ConfigError("params.currency: ltp takes one currency at a time")
    return {k: v.strip() for k, v in params.items() if v.strip()}


def build_request(
    base_url: str, params: Mapping[str, str], api_key: str, secret: str, ts: str
) -> httpx.Request:
    headers = {
        "X-MBX-APIKEY": api_key,
        "nonce": ts,
        "signature": sign(secret, canonical_params(params), ts),
        "Content-Type": "application/json",
    }
    sent = {k: v for k, v in sorted(params.items()) if v}
    return httpx.Request("GET", base_url + ACCOUNT_BALANCE, params=sent, headers=headers)


def check_envelope(status: int, body: Any) -> None:
    if not isinstance(body, dict):
        raise VenueError(f"HTTP {status}: expected a JSON object, got {type(body).__name__}")
    code = str(body.get("code"))
    if code in SUCCESS_CODES:
        return
    message = body.get("message") or "no message"
    hint = ""
    if code in AUTH_CODES:
        hint = " (check the key and secret, that it is a V2 key, and the clock)"
    elif code in LEVEL_CODES:
        hint = " (use an LTP primary-user or sub-user key with READ; RapidX portfolio keys are refused)"
    raise VenueError(f"HTTP {status}, code {code}: {message}{hint}", transient=code in TRANSIENT_CODES)


async def fetch(http: VenueClient, source: SourceConfig) -> list[RawResponse]:
    secret = source.api_secret
    assert secret is not None  # config requires it for signed venues
    params = request_params(source.params)

    def build() -> httpx.Request:
        ts = str(int(time.time()))
        return build_request(http.base_url, params, source.api_key.reveal(), secret.reveal(), ts)

    return [await http.send(ACCOUNT_BALANCE, build, check_envelope)]


@dataclass(frozen=True)
class _Part:
    """One `assetInfo[]` element: a currency's amounts on one network."""

    where: str
    currency: str
    network: str | None
    amounts: tuple[Decimal | None, ...]  # in _AMOUNTS order
    extra: dict[str, Any]
    raw: Any


def _part(item: Any, where: str) -> _Part:
    f = Fields(item, where)
    currency = f.text("currency", required=True) or ""
    amounts = tuple(f.decimal(name) for name in _AMOUNTS)
    extra = f.rest()
    network = extra.get("network")
    if network is not None and not isinstance(network, str):
        raise NormalizeError(f"{where}.network: expected text or null, got {network!r}")
    return _Part(where, currency, network, amounts, extra, item)


def _sum_if_complete(values: Sequence[Decimal | None]) -> Decimal | None:
    """The exact sum, or None if any network lacks the figure (a partial sum would mislead)."""
    known = [v for v in values if v is not None]
    return exact_sum(known) if known and len(known) == len(values) else None


def _balance(account: str, account_type: str, parts: list[_Part]) -> BalanceRow:
    if len(parts) == 1:
        amounts, extra = parts[0].amounts, parts[0].extra
    else:
        seen: dict[str | None, str] = {}
        for part in parts:
            if part.network in seen:
                raise NormalizeError(
                    f"{part.where}: {part.currency} on network {part.network!r} repeats {seen[part.network]}"
                )
            seen[part.network] = part.where
        amounts = tuple(_sum_if_complete(column) for column in zip(*(p.amounts for p in parts), strict=True))
        extra = {"networks": [p.raw for p in parts]}
    total, available, withdrawable, frozen, value_usdt = amounts
    return BalanceRow(
        account=account,
        account_type=account_type,
        currency=parts[0].currency,
        total=total,
        available=available,
        withdrawable=withdrawable,
        frozen=frozen,
        value_usdt=value_usdt,
        extra=extra,
    )


def _balances(account: str, account_type: str, assets: list[Any], where: str) -> list[BalanceRow]:
    by_currency: dict[str, list[_Part]] = {}
    for j, item in enumerate(assets):
        part = _part(item, f"{where}.assetInfo[{j}]")
        by_currency.setdefault(part.currency, []).append(part)
    return [_balance(account, account_type, parts) for parts in by_currency.values()]


def _account_id(f: Fields) -> str:
    value = f.raw("accountId", required=True)
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise NormalizeError(f"{f.where}.accountId: expected an integer id, got {value!r}")
    return text


def _merge(known: AccountRef | None, new: AccountRef) -> AccountRef:
    if known is None:
        return new
    return AccountRef(known.external_id, known.exchange or new.exchange, known.note or new.note)


def normalize(source: str, responses: Sequence[RawResponse]) -> Batch:
    (response,) = [r for r in responses if r.endpoint == ACCOUNT_BALANCE]
    envelope = Fields(response.body, "ltp")
    accounts: dict[str, AccountRef] = {}
    first_at: dict[tuple[str, str], str] = {}
    balances: list[BalanceRow] = []
    account_rows: list[AccountRow] = []
    for i, item in enumerate(envelope.list("data", required=True)):
        where = f"ltp data[{i}]"
        f = Fields(item, where)
        account = _account_id(f)
        account_type = f.text("accountType", required=True) or ""
        if (account, account_type) in first_at:
            raise NormalizeError(
                f"{where}: account {account} {account_type} repeats {first_at[account, account_type]}"
            )
        first_at[account, account_type] = where
        ref = AccountRef(account, exchange=f.text("venues"), note=f.text("accountNote"))
        accounts[account] = _merge(accounts.get(account), ref)
        balances += _balances(account, account_type, f.list("assetInfo"), where)
        account_rows.append(
            AccountRow(
                account=account,
                account_type=account_type,
                equity=f.decimal("totalUsdt"),
                equity_currency="USDT",
                extra=f.rest(),
            )
        )
    return Batch(
        accounts=tuple(accounts.values()),
        balances=tuple(balances),
        account_rows=tuple(account_rows),
    )
