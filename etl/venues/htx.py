"""HTX (Huobi) USDT-M futures, Multi-Assets Collateral mode, v5 API.

Facts (shared/venues/htx.md):
- Base URL `https://api.hbdm.com` (AWS clients: `https://api.hbdm.vn`) (CONFIRMED for the
  positions page; the balance page's own address table is empty, same host ASSUMED).
- `GET /v5/account/balance` (no parameters) and `GET /v5/trade/position/opens` (optional
  `contract_code`, taken from the source's `params`) (CONFIRMED). The balance is
  documented for Multi-Assets Collateral mode; a single-asset account is most likely
  answered with account-level zeros (see below), and codes 4002-4007 are the other answers
  a wrong-mode account may get (ASSUMED): the error says so.
- Auth: Signature Version 2 in the query string, also for /v5 (CONFIRMED by HTX.Net):
  `AccessKeyId`, `SignatureMethod=HmacSHA256`, `SignatureVersion=2`, `Timestamp`
  (UTC `YYYY-MM-DDThh:mm:ss`, valid 5 minutes) plus the business parameters, each
  RFC 3986-encoded with upper-case hex, sorted by key in ASCII order; pre-sign string
  `GET\\n<host>\\n<path>\\n<query>`; `Signature` = base64(HMAC-SHA256(secret, presign)),
  appended last. The query sent is exactly the one signed.
- Envelopes: v5 `{"code": 200, "message"|"msg": ..., "data": ..., "ts": ...}`; the
  contract-info endpoint and the gateway (auth) use the legacy
  `{"status": "ok"|"error", "err_code"|"err-code": ..., "err_msg"|"err-msg": ...}`; all
  of these keys are read. Auth codes (403, 12001-12009, 1253, and 1003 "invalid
  signature", which HTX.Net's HTXErrors.cs maps as Unauthorized) are terminal and carry
  the auth hint; "system busy" 1004, system errors 1000/1001, rate limit 1032 and
  settlement-in-progress 1077-1080 are transient. Whether errors come with HTTP 200 or
  4xx is not documented: both work.
- A gateway 403 is retried once, with a fresh timestamp and signature, then terminal
  (decided). Evidence: HuobiRDCenter/huobi_Java#43 sees 403 "Verification failure" on a
  few requests in a row, then success; HTX.Net (HTXErrors.cs,
  FuturesMapping, commit 3e6b23a) marks futures 403 as transient. Against more: #43's
  request sends its signature unencoded (`+` and `/` raw), a client bug ours does not
  have (the signature is percent-encoded), HTX.Net marks "API key expired" transient in
  the same table (so its flag is not evidence of flakiness), and a wrong key or secret
  also answers 403. One retry costs one request of the 72 per 3 s and saves a slot from
  a gateway hiccup; a second 403 is a credential problem, reported as such.
- Rate limit: 72 read requests per 3 s per UID (CONFIRMED; shared by all keys of a UID).

Mapping: `data` -> one account row (account_type `futures`, equity in USDT, `state`
lower-cased, the documented numeric states 1/3/5/6 given their names), `data.details[]`
-> one balance row per currency (no wallet `total` is sent: it stays NULL), positions ->
position rows with `direction` buy/sell -> long/short. The source is one account: its
external id is the source name. `""`/null -> NULL, never 0; negative balances are legal.

Account-level zeros beside funded details (decided; the state itself is ASSUMED). A live
code-200 answer recorded by ccxt (ccxt/ccxt `ts/src/test/static/response/htx.json`,
fetchBalance "Linear swap fetch balance") has `data.equity`, `available_margin`, both
margins and `profit_unreal` all `"0"`, and an account `updated_time` 19 days older than the
answer, while `details[0]` (USDT) holds equity 162.52, initial margin 4.024. ccxt asked
with `subType: linear`, not its multi-asset mode: since HTX moved USDT-M futures to v5
(ccxt #28884, #28926), single-asset-collateral accounts are read here too, and HTX
documents this endpoint's account totals for Multi-Assets Collateral mode only
(`/v5/account/asset_mode` 0 = single-asset, 1 = multi-assets). So the account-level
figures are read as not maintained for such an account; ccxt reads only `details[]`.
What the row says then: account equity `0` while a detail's equity is not 0 makes the
account row the USDT detail's figures (equity, its `available_margin`, margins, rate,
PnL, `updated_time`), exact and in USDT like the row always is, and the account-level
figures as sent go to `extra` under their own names (so the `0`s stay visible). If a
currency other than USDT holds funds in that state, no USDT total can be derived without
prices: the slot fails loudly (SOURCE_DATA) and the portfolio shows the account as
expected but not reporting, never as a loss to 0. Otherwise the account-level figures are
stored as sent.

Position `volume` counts contracts. Quantity in base units = volume x `contract_size`
from the public `GET /linear-swap-api/v1/swap_contract_info?contract_code=..&business_type=all`
(unsigned; `business_type=all` so delivery contracts such as `BTC-USDT-250328` are found
too). `fetch` asks only for the contracts held, caches each answer in the process for
an hour (keyed by base URL and contract) and returns it with the poll's responses, so
`normalize` stays pure and `etl replay` finds the sizes in the raw payloads. The venue's
`volume` stays in `extra`. `mark_price` (the example's field) is the mark price;
`last_price` (the doc table's field) is a trade price and stays in `extra`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from etl.config import SourceConfig
from etl.errors import NormalizeError, VenueError
from etl.records import AccountRef, AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.venues.fields import EXACT, Fields, parse_decimal
from etl.venues.http import RequestFactory, VenueClient

DEFAULT_BASE_URL = "https://api.hbdm.com"
RATE_LIMIT = (72, 3.0)
BALANCE = "/v5/account/balance"
POSITIONS = "/v5/trade/position/opens"
CONTRACT_INFO = "/linear-swap-api/v1/swap_contract_info"
ACCOUNT_TYPE = "futures"
EQUITY_CURRENCY = "USDT"
CONTRACT_INFO_TTL = 3600.0  # seconds; contract sizes change rarely, new listings are fetched on sight

AUTH_CODES = {"403", "1003", "1253", *(str(c) for c in range(12001, 12010)), "api-signature-not-valid"}
RETRIED_ONCE = {"403"}  # the gateway's intermittent verification failure (module docstring)
TRANSIENT_CODES = {"1000", "1001", "1004", "1032", "1077", "1078", "1079", "1080"}
MODE_CODES = {"4002", "4003", "4004", "4005", "4007"}


# --- signing -------------------------------------------------------------------------


def encode(text: str) -> str:
    """RFC 3986 percent-encoding with upper-case hex (`:` -> `%3A`, space -> `%20`)."""
    return quote(text, safe="")


def canonical_query(params: Mapping[str, str]) -> str:
    """Encoded `key=value` pairs sorted by encoded key in ASCII order, joined with `&`."""
    return "&".join(f"{k}={v}" for k, v in sorted((encode(k), encode(v)) for k, v in params.items()))


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def auth_params(api_key: str, ts: str) -> dict[str, str]:
    return {
        "AccessKeyId": api_key,
        "SignatureMethod": "HmacSHA256",
        "SignatureVersion": "2",
        "Timestamp": ts,
    }


def sign(secret: str, method: str, host: str, path: str, query: str) -> str:
    presign = f"{method}\n{host.lower()}\n{path}\n{query}"
    digest = hmac.new(secret.encode(), presign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def build_request(
    base_url: str, path: str, params: Mapping[str, str], api_key: str, secret: str, ts: str
) -> httpx.Request:
    """A signed GET whose query string is byte for byte the one that was signed."""
    url = httpx.URL(base_url.rstrip("/") + path)
    query = canonical_query({**params, **auth_params(api_key, ts)})
    signature = sign(secret, "GET", url.host, url.path, query)
    return httpx.Request("GET", url.copy_with(query=f"{query}&Signature={encode(signature)}".encode()))


def public_request(base_url: str, path: str, params: Mapping[str, str]) -> httpx.Request:
    return httpx.Request("GET", base_url.rstrip("/") + path, params=dict(params))


# --- envelopes -----------------------------------------------------------------------


def _first(body: Mapping[str, Any], *names: str) -> Any:
    return next((body[n] for n in names if body.get(n) not in (None, "")), None)


def _failure(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, message) of an error envelope, None for success, in either shape."""
    message = _first(body, "err_msg", "err-msg", "message", "msg") or "no message"
    if "status" in body:
        if body["status"] == "ok":
            return None
        return str(_first(body, "err_code", "err-code", "code")), str(message)
    if "code" in body:
        code = str(body["code"])
        return None if code == "200" else (code, str(message))
    return "none", "neither `code` nor `status` in the reply"


def check_envelope(status: int, body: Any) -> None:
    if not isinstance(body, dict):
        raise VenueError(f"HTTP {status}: expected a JSON object, got {type(body).__name__}")
    failure = _failure(body)
    if failure is None:
        return
    code, message = failure
    hint = ""
    if code in AUTH_CODES:
        hint = " (authentication failed: check the API key, its secret and the clock)"
    elif code in MODE_CODES:
        hint = " (is the account in Multi-Assets Collateral mode?)"
    raise VenueError(
        f"HTTP {status}, code {code}: {message}{hint}",
        transient=code in TRANSIENT_CODES,
        retries=1 if code in RETRIED_ONCE else 0,
    )


# --- fetch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cached:
    response: RawResponse
    expires: float  # time.monotonic()


class ContractInfoCache:
    """Contract-info answers per (base URL, contract code), kept for `ttl` seconds."""

    def __init__(self, ttl: float = CONTRACT_INFO_TTL):
        self.ttl = ttl
        self._items: dict[tuple[str, str], _Cached] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[RawResponse]] = {}

    def get(self, base_url: str, code: str) -> RawResponse | None:
        item = self._items.get((base_url, code))
        return item.response if item is not None and item.expires > time.monotonic() else None

    def put(self, base_url: str, code: str, response: RawResponse) -> None:
        self._items[(base_url, code)] = _Cached(response, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._items.clear()
        self._inflight.clear()

    async def fetch_once(
        self, base_url: str, code: str, request: Callable[[], Awaitable[RawResponse]]
    ) -> RawResponse:
        """`request()`, unless a poll of another source is asking for the same contract right
        now: then its answer. A hundred HTX sources start at the same slot second; without
        this, each would ask for the same public contract info and burst the rate limit."""
        key = (base_url, code)
        task = self._inflight.get(key)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._inflight[key] = asyncio.ensure_future(request())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._inflight.get(key) is task:
                del self._inflight[key]


CONTRACTS = ContractInfoCache()


def contract_info_endpoint(code: str) -> str:
    return f"{CONTRACT_INFO}?contract_code={code}"


def held_contracts(positions_body: Any) -> list[str]:
    """The contract codes of a positions reply, in order, once each; anything malformed is
    left for `normalize` to report with its position."""
    data = positions_body.get("data") if isinstance(positions_body, dict) else None
    codes = [p.get("contract_code") for p in data if isinstance(p, dict)] if isinstance(data, list) else []
    return list(dict.fromkeys(c for c in codes if isinstance(c, str) and c))


def _lists(response: RawResponse, code: str) -> bool:
    data = response.body.get("data") if isinstance(response.body, dict) else None
    return isinstance(data, list) and any(
        isinstance(d, dict) and d.get("contract_code") == code for d in data
    )


async def _request_contract_info(http: VenueClient, code: str) -> RawResponse:
    params = {"contract_code": code, "business_type": "all"}
    response = await http.send(
        contract_info_endpoint(code),
        lambda: public_request(http.base_url, CONTRACT_INFO, params),
        check_envelope,
    )
    if _lists(response, code):
        CONTRACTS.put(http.base_url, code, response)
    return response


async def _contract_info(http: VenueClient, code: str, poll_time: datetime) -> RawResponse:
    answer = CONTRACTS.get(http.base_url, code) or await CONTRACTS.fetch_once(
        http.base_url, code, lambda: _request_contract_info(http, code)
    )
    if any(r is answer for r in http.received):  # this poll asked the venue itself
        return answer
    # Cached, or asked by another source's poll: the loader dates a poll's rows by its
    # earliest response, so the answer carries this poll's time; it is stored with the
    # poll's raw payloads like a fresh one.
    reused = replace(answer, fetched_at=poll_time)
    http.received.append(reused)
    return reused


async def fetch(http: VenueClient, source: SourceConfig) -> list[RawResponse]:
    secret = source.api_secret
    assert secret is not None  # config requires it for signed venues

    def signed(path: str, params: Mapping[str, str]) -> RequestFactory:
        def build() -> httpx.Request:  # a fresh timestamp on every attempt
            ts = timestamp(http.clock())
            return build_request(http.base_url, path, params, source.api_key.reveal(), secret.reveal(), ts)

        return build

    balance = await http.send(BALANCE, signed(BALANCE, {}), check_envelope)
    positions = await http.send(POSITIONS, signed(POSITIONS, source.params), check_envelope)
    infos = [await _contract_info(http, code, balance.fetched_at) for code in held_contracts(positions.body)]
    return [balance, positions, *infos]


# --- normalize -----------------------------------------------------------------------

_STATES = {"1": "normal", "3": "liquidating", "5": "adl", "6": "open_limit"}
_SIDES = {"buy": "long", "sell": "short"}
_MODES = {"cross": "cross", "isolated": "isolated"}


def _one(responses: Sequence[RawResponse], endpoint: str) -> RawResponse:
    found = [r for r in responses if r.endpoint == endpoint]
    if len(found) != 1:
        raise NormalizeError(f"htx: expected one response of GET {endpoint}, got {len(found)}")
    return found[0]


def contract_sizes(responses: Iterable[RawResponse]) -> dict[str, Decimal]:
    sizes: dict[str, Decimal] = {}
    for response in responses:
        body = Fields(response.body, "htx contract_info")
        for i, item in enumerate(body.list("data")):
            f = Fields(item, f"htx contract_info data[{i}]")
            code = f.text("contract_code", required=True) or ""
            size = f.decimal("contract_size", required=True)
            if size is None or size <= 0:
                raise NormalizeError(f"{f.where}.contract_size: expected a positive number, got {size}")
            sizes[code] = size
    return sizes


def _balance(account: str, item: Any, where: str) -> BalanceRow:
    f = Fields(item, where)
    return BalanceRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        currency=f.text("currency", required=True) or "",
        available=f.decimal("available"),
        withdrawable=f.decimal("withdraw_available"),
        equity=f.decimal("equity"),
        unrealized_pnl=f.decimal("profit_unreal"),
        initial_margin=f.decimal("initial_margin"),
        maintenance_margin=f.decimal("maintenance_margin"),
        venue_ts=f.ms_time("updated_time"),
        extra=f.rest(),
    )


# The account-level money of `data`: kept in `extra` as sent when it is not what the row says.
_ACCOUNT_FIGURES = (
    "equity", "available_margin", "initial_margin", "maintenance_margin",
    "maintenance_margin_rate", "profit_unreal", "updated_time",
)  # fmt: skip


def _state(data: Fields) -> str | None:
    state = data.text("state")
    return _STATES.get(state, state.lower()) if state is not None else None


def _account(account: str, data: Fields, balances: Sequence[BalanceRow]) -> AccountRow:
    if data.decimal("equity") == 0 and any(b.equity for b in balances):
        return _account_from_details(account, data, balances)
    return AccountRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        equity=data.decimal("equity"),
        available_margin=data.decimal("available_margin"),
        initial_margin=data.decimal("initial_margin"),
        maintenance_margin=data.decimal("maintenance_margin"),
        maintenance_margin_rate=data.decimal("maintenance_margin_rate"),
        unrealized_pnl=data.decimal("profit_unreal"),
        equity_currency=EQUITY_CURRENCY,
        state=_state(data),
        venue_ts=data.ms_time("updated_time"),
        extra=data.rest("details"),
    )


def _account_from_details(account: str, data: Fields, balances: Sequence[BalanceRow]) -> AccountRow:
    """Account-level figures all "0" while a currency holds funds (see the module docstring):
    the account row is the USDT detail's, exact; anything else held cannot be put in USDT."""
    held = sorted({b.currency for b in balances if b.equity and b.currency != EQUITY_CURRENCY})
    if held:
        raise NormalizeError(
            f"{data.where}.equity: 0 while details hold {', '.join(held)}: no account total in "
            f"{EQUITY_CURRENCY} can be derived (is the account in Multi-Assets Collateral mode?)"
        )
    usdts = [b for b in balances if b.currency == EQUITY_CURRENCY]
    if len(usdts) != 1:
        raise NormalizeError(f"{data.where}.details: expected one {EQUITY_CURRENCY} entry, got {len(usdts)}")
    usdt = usdts[0]
    where = f"{data.where}.details[{balances.index(usdt)}]"
    sent = {name: data.raw(name) for name in _ACCOUNT_FIGURES if data.raw(name) is not None}
    return AccountRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        equity=usdt.equity,
        available_margin=parse_decimal(usdt.extra.get("available_margin"), f"{where}.available_margin"),
        initial_margin=usdt.initial_margin,
        maintenance_margin=usdt.maintenance_margin,
        maintenance_margin_rate=parse_decimal(
            usdt.extra.get("maintenance_margin_rate"), f"{where}.maintenance_margin_rate"
        ),
        unrealized_pnl=usdt.unrealized_pnl,
        equity_currency=EQUITY_CURRENCY,
        state=_state(data),
        venue_ts=usdt.venue_ts,
        extra={**data.rest("details"), **sent},
    )


def _choice(f: Fields, name: str, choices: Mapping[str, str], required: bool = False) -> str | None:
    text = f.text(name, required=required)
    if text is None:
        return None
    value = choices.get(text.lower())
    if value is None:
        raise NormalizeError(f"{f.where}.{name}: expected {' or '.join(choices)}, got {text!r}")
    return value


def _position(account: str, item: Any, where: str, sizes: Mapping[str, Decimal]) -> PositionRow:
    f = Fields(item, where)
    symbol = f.text("contract_code", required=True) or ""
    side = _choice(f, "direction", _SIDES, required=True)
    volume = f.decimal("volume")
    quantity = None
    if volume is not None:
        size = sizes.get(symbol)
        if size is None:
            raise NormalizeError(
                f"{where}.contract_code: no contract size for {symbol!r} in the contract info"
            )
        quantity = EXACT.multiply(volume.copy_abs(), size)
    base, _, rest = symbol.partition("-")
    quote_ccy = rest.split("-")[0] if rest else None
    return PositionRow(
        account=account,
        account_type=ACCOUNT_TYPE,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        base=base or None,
        quote=quote_ccy or None,
        quantity=quantity,
        entry_price=f.decimal("open_avg_price"),
        mark_price=f.decimal("mark_price"),
        unrealized_pnl=f.decimal("profit_unreal"),
        leverage=f.decimal("lever_rate"),
        margin=f.decimal("initial_margin"),
        maintenance_margin=f.decimal("maintenance_margin"),
        liquidation_price=f.decimal("liquidation_price"),
        margin_mode=_choice(f, "margin_mode", _MODES),  # type: ignore[arg-type]
        venue_ts=f.ms_time("updated_time"),
        # the venue's own figure (contracts) is kept beside the converted quantity
        extra={**f.rest(), **({"volume": item["volume"]} if "volume" in item else {})},
    )


def normalize(source: str, responses: Sequence[RawResponse]) -> Batch:
    balance = Fields(_one(responses, BALANCE).body, "htx balance")
    data = Fields(balance.raw("data", required=True), "htx balance data")
    balances = tuple(
        _balance(source, item, f"htx balance data.details[{i}]")
        for i, item in enumerate(data.list("details"))
    )
    sizes = contract_sizes(r for r in responses if r.endpoint.startswith(CONTRACT_INFO))
    opens = Fields(_one(responses, POSITIONS).body, "htx positions")
    positions = tuple(
        _position(source, item, f"htx positions data[{i}]", sizes)
        for i, item in enumerate(opens.list("data"))
    )
    return Batch(
        accounts=(AccountRef(external_id=source),),
        balances=balances,
        account_rows=(_account(source, data, balances),),
        positions=positions,
    )
