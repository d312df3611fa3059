"""Tread.fi: token auth, the seed example normalized exactly, JSON numbers kept exact, the
DRF error answers, and the seed loaded through the pipeline into PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from etl import exactjson
from etl.errors import ConfigError, NormalizeError, VenueError
from etl.records import AccountRow, RawResponse
from etl.replay import replay
from etl.sim.treadfi import TreadfiSimulator
from etl.store.load import load_slot
from etl.venues import treadfi
from tests.conftest import FIXTURES
from tests.helpers import SLOT, count, row_versions, rows, run, served, settings_for, source_entry

FETCHED = datetime(2026, 1, 1, tzinfo=UTC)
LONG = "1414.0603964112345678901234567890123"  # 35 significant digits; a float keeps 17


def seed_body() -> dict[str, Any]:
    return exactjson.loads((FIXTURES / "treadfi_balances.json").read_text())


def response(body: object) -> list[RawResponse]:
    return [RawResponse(treadfi.BALANCES, 200, body, FETCHED)]


def normalize(body: object) -> Any:
    return treadfi.normalize("treadfi-main", response(body))


def wire(body: object) -> Any:
    """The body as the HTTP layer would parse it from the venue's JSON text."""
    return exactjson.loads(exactjson.dumps(body))


# --- request -------------------------------------------------------------------------


def test_request_sends_the_token_the_drf_way_and_no_secret_elsewhere():
    request = treadfi.build_request("https://app.tread.fi", {}, "tok3n-value")
    assert request.method == "GET"
    assert str(request.url) == "https://app.tread.fi/api/balances/"
    assert request.headers["Authorization"] == "Token tok3n-value"
    assert "tok3n-value" not in str(request.url)
    assert "python-httpx" not in request.headers["User-Agent"]


def test_the_request_is_the_one_the_official_client_sends():
    """Tread.fi signs nothing: what an independent implementation can prove is the request.

    Source: tread-labs-public/taas-api-client, `taas_api/client.py`, commit
    a630d77576757751aa67098344ec13146056a147: `_common_headers` sends
    `Authorization: Token <auth_token>`; `get_balances(account_names=[...])` GETs
    `/api/balances/` with `account_names` joined by `,` into one parameter.
    """
    params = treadfi.request_params({"account_names": "AccountABC,Account123"})
    request = treadfi.build_request("https://app.tread.fi", params, "the-token")
    assert (request.method, request.url.path) == ("GET", "/api/balances/")
    assert request.headers["Authorization"] == "Token the-token"
    assert list(request.url.params.multi_items()) == [("account_names", "AccountABC,Account123")]


def test_account_names_are_sent_as_one_comma_separated_parameter():
    params = treadfi.request_params({"account_names": " AccountABC, Account123 ,, "})
    request = treadfi.build_request("https://app.tread.fi", params, "t")
    assert request.url.params.get_list("account_names") == ["AccountABC,Account123"]
    assert treadfi.request_params({}) == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"account_names": " , "}, r"params\.account_names: no account name given"),
        ({"accountId": "1"}, r"params: unknown key accountId \(supported: account_names\)"),
    ],
)
def test_a_bad_filter_is_a_config_error(params, message):
    with pytest.raises(ConfigError, match=message):
        treadfi.request_params(params)


# --- envelope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"detail": "Invalid token."}, r"^HTTP 401: Invalid token\.$"),
        (403, {"detail": "You do not have permission to perform this action."}, r"^HTTP 403: You do not"),
        (400, {"account_names": ["Unknown account: X"]}, r"^HTTP 400: account_names: Unknown account: X$"),
        (200, [], r"expected a JSON object keyed by account name, got list"),
    ],
)
def test_error_answers_become_terminal_venue_errors(status, body, message):
    with pytest.raises(VenueError, match=message) as caught:
        treadfi.check_envelope(status, body)
    assert not caught.value.transient


def test_success_is_a_bare_object():
    treadfi.check_envelope(200, seed_body())
    treadfi.check_envelope(200, {})  # a token with no accounts


# --- normalizer ----------------------------------------------------------------------


def test_seed_example_normalizes_exactly():
    batch = normalize(seed_body())
    assert [(a.external_id, a.exchange) for a in batch.accounts] == [
        ("AccountABC", "Bybit"),
        ("Account123", "Binance"),
    ]
    abc, b123 = batch.balances
    assert (abc.account, abc.account_type, abc.currency) == ("AccountABC", "unified", "USDT")
    assert str(abc.total) == "275.56989474" and str(abc.value_usdt) == "275.569895"
    assert abc.equity == Decimal("298.90609459") == abc.total + abc.unrealized_pnl
    assert (abc.initial_margin, abc.maintenance_margin) == (Decimal("308.47710954"), Decimal("17.08121552"))
    assert abc.extra == {"leverage": None, "notional_pct_total": Decimal("0.817474")}
    assert (b123.account_type, b123.total, b123.equity) == (
        "perp",
        Decimal("1414.06039641"),
        Decimal("1425.08678423"),
    )
    eth, btc = batch.positions
    assert (eth.account, eth.account_type, eth.symbol, eth.side) == (
        "AccountABC",
        "perp",
        "ETH:PERP-USDT",
        "long",
    )
    assert (eth.base, eth.quote, eth.quantity, eth.notional) == (
        "ETH",
        "USDT",
        Decimal("1.69"),
        Decimal("3051.5284"),
    )
    assert (eth.unrealized_pnl, eth.leverage, eth.margin, eth.maintenance_margin) == (
        Decimal("24.6772"),
        Decimal("10.0"),
        Decimal("306.80066534"),
        Decimal("16.90546734"),
    )
    assert eth.entry_price is None and eth.mark_price is None  # not sent, not derived
    assert eth.extra == {"margin_balance": Decimal("298.90609459"), "notional_pct_total": Decimal("0.994565")}
    assert (btc.symbol, btc.base, btc.quote, btc.leverage) == ("BTC:PERP-USDT", "BTC", "USDT", Decimal("5.0"))
    assert btc.extra["margin_balance"] is None


def test_account_rows_are_the_tokens_usd_notional_and_none_for_a_market_type_with_only_positions():
    batch = normalize(seed_body())
    assert [(r.account, r.account_type, r.equity, r.equity_currency) for r in batch.account_rows] == [
        ("AccountABC", "unified", Decimal("275.569895"), "USD"),
        ("Account123", "perp", Decimal("1414.060396"), "USD"),
    ]  # AccountABC's `perp` holds only the ETH position: no row, its collateral is counted once
    unified = batch.account_rows[0]
    # the tokens' PnL and margins are in coin units: they stay in the coin's balance row
    assert (unified.unrealized_pnl, unified.initial_margin, unified.maintenance_margin) == (None, None, None)


# The official client's README (tread-labs-public/taas-api-client, README.md, "Getting Account
# Balances", at commit a630d77576757751aa67098344ec13146056a147; the same example ships in the
# taas-api-client wheel): one OKX account, printed as a Python dict, here as JSON.
CLIENT_README_BALANCES = """{"test": {"exchange": "OKX", "assets": [
 {"symbol": "BTC", "size": 3.0, "notional": 89409.0, "market_type": "unified", "asset_type": "token",
  "unrealized_profit": 0.0, "initial_margin": 0.0, "maint_margin": 0.0, "margin_balance": 3.0,
  "leverage": null, "notional_pct_total": 0.438558},
 {"symbol": "USDT", "size": 8930.5901255465, "notional": 8930.5901255465, "market_type": "unified",
  "asset_type": "token", "unrealized_profit": -47.43906302083299, "initial_margin": 37.148328685,
  "maint_margin": 28.57563745, "margin_balance": 8883.151062525667, "leverage": null,
  "notional_pct_total": 0.043805},
 {"symbol": "ETH:PERP-USDT", "size": -181.0, "notional": -33618.397, "market_type": "perp",
  "asset_type": "position", "unrealized_profit": -47.43906302083299, "initial_margin": 37.148328685,
  "maint_margin": 28.57563745, "margin_balance": 8883.151062525667, "leverage": 0.0,
  "notional_pct_total": 1.0}]}}"""


def test_account_equity_never_adds_coin_units_the_client_readme_example():
    """3 BTC + 8,883 USDT was stored as "8886.151062525667 USDT" (margin_balance summed across
    coins); the account is worth about 98,000 USD."""
    batch = normalize(exactjson.loads(CLIENT_README_BALANCES))
    (row,) = batch.account_rows
    assert (row.account_type, row.equity, row.equity_currency) == (
        "unified",
        Decimal("98339.5901255465"),
        "USD",
    )
    assert row.equity == Decimal("89409.0") + Decimal("8930.5901255465")  # the tokens' notionals, exactly
    btc, usdt = batch.balances
    assert (btc.currency, btc.total, btc.equity, btc.value_usdt) == (
        "BTC",
        Decimal("3.0"),
        Decimal("3.0"),
        Decimal("89409.0"),
    )
    assert (usdt.currency, usdt.equity) == ("USDT", Decimal("8883.151062525667"))  # the coin's own equity
    (eth,) = batch.positions
    assert (eth.side, eth.quantity, eth.notional) == ("short", Decimal("181.0"), Decimal("-33618.397"))


def spot_token(symbol: str, size: str, notional: str | None) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "size": Decimal(size),
        "notional": Decimal(notional) if notional is not None else None,
        "market_type": "spot",
        "asset_type": "token",
        "unrealized_profit": None,
        "initial_margin": None,
        "maint_margin": None,
        "margin_balance": None,
        "leverage": None,
        "notional_pct_total": Decimal("0.5"),
    }


def test_a_spot_wallet_is_valued_by_its_tokens_notional():
    body = seed_body()
    body["Account123"]["assets"] += [
        spot_token("BTC", "0.12", "7710.06"),
        spot_token("ETH", "2.5", "7800.62"),
    ]
    (spot,) = [r for r in normalize(body).account_rows if r.account_type == "spot"]
    assert (spot.equity, spot.equity_currency, spot.unrealized_pnl) == (Decimal("15510.68"), "USD", None)


def test_a_token_without_notional_leaves_the_account_equity_unknown_not_understated():
    body = seed_body()
    body["Account123"]["assets"] += [spot_token("BTC", "0.12", "7710.06"), spot_token("XYZ", "9", None)]
    (spot,) = [r for r in normalize(body).account_rows if r.account_type == "spot"]
    assert spot.equity is None


def test_equity_sums_the_tokens_notionals_without_rounding():
    body = seed_body()
    usdc = {**body["Account123"]["assets"][0], "symbol": "USDC", "notional": Decimal("0." + "1" * 40)}
    body["Account123"]["assets"][0]["notional"] = Decimal(LONG)
    body["Account123"]["assets"].append(usdc)
    row = next(r for r in normalize(wire(body)).account_rows if r.account == "Account123")
    # 44 digits: `Decimal(LONG) + ...` in the default context would round to 28
    assert str(row.equity) == "1414.1715075223456790012345679001234111111111"


def test_a_json_number_with_more_digits_than_a_float_holds_arrives_exactly():
    raw = (FIXTURES / "treadfi_balances.json").read_text().replace("1414.06039641", LONG, 1)
    assert json.loads(raw)["Account123"]["assets"][0]["size"] != Decimal(LONG)  # float would lose it
    (_, usdt) = normalize(exactjson.loads(raw)).balances
    assert usdt.total == Decimal(LONG) and str(usdt.total) == LONG


def test_a_negative_size_is_a_short_with_the_exact_absolute_quantity():
    body = seed_body()
    body["AccountABC"]["assets"][0]["size"] = Decimal("-" + LONG)
    (eth, _) = normalize(body).positions
    assert (eth.side, eth.quantity) == ("short", Decimal(LONG))
    assert str(eth.quantity) == LONG  # abs() would round to 28 digits


@pytest.mark.parametrize("size", [0, Decimal("0.0"), Decimal("-0E-8"), "0"])
def test_a_flat_position_is_not_an_open_position(size):
    body = seed_body()
    body["AccountABC"]["assets"][0]["size"] = size
    assert [p.symbol for p in normalize(body).positions] == ["BTC:PERP-USDT"]


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [
        ("ETH:PERP-USDT", "ETH", "USDT"),
        ("xyz:TSLA:PERP-USDC", "xyz:TSLA", "USDC"),
        ("BTC-USDT", "BTC", "USDT"),
        ("BTC", "BTC", None),
    ],
)
def test_symbols_split_into_base_and_quote(symbol, base, quote):
    assert treadfi.split_symbol(symbol) == (base, quote)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b["Account123"]["assets"][1].update(notional="5,72 USDT"),
            r"^treadfi Account123\.assets\[1\]\.notional: expected a number, got '5,72 USDT'$",
        ),
        (
            lambda b: b["AccountABC"]["assets"][0].update(asset_type="option"),
            r"^treadfi AccountABC\.assets\[0\]\.asset_type: expected token or position, got 'option'$",
        ),
        (
            lambda b: b["AccountABC"]["assets"][0].update(size=None),
            r"^treadfi AccountABC\.assets\[0\]\.size: a position needs a signed size, got null$",
        ),
        (lambda b: b["Account123"].pop("assets"), r"^treadfi Account123\.assets: missing$"),
        (lambda b: b["Account123"]["assets"].append("USDT"), r"assets\[2\]: expected an object, got str"),
        (lambda b: b.update({"My main": []}), r'^treadfi \["My main"\]: expected an object, got list$'),
    ],
)
def test_a_malformed_element_names_the_account_field_and_position(change, message):
    body = seed_body()
    change(body)
    with pytest.raises(NormalizeError, match=message):
        normalize(body)


# --- properties ----------------------------------------------------------------------

TOKEN_FIELDS = {
    "size": "total",
    "notional": "value_usdt",
    "margin_balance": "equity",
    "unrealized_profit": "unrealized_pnl",
    "initial_margin": "initial_margin",
    "maint_margin": "maintenance_margin",
}
POSITION_FIELDS = {
    "notional": "notional",
    "unrealized_profit": "unrealized_pnl",
    "leverage": "leverage",
    "initial_margin": "margin",
    "maint_margin": "maintenance_margin",
}
KNOWN = {*TOKEN_FIELDS, *POSITION_FIELDS, "symbol", "market_type", "asset_type"}

decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(map(int, digits)), exponent)),
    st.integers(0, 1),
    st.text("0123456789", min_size=1, max_size=40),
    st.integers(-30, 20),
)
# As the venue could send them: JSON numbers (`1E-8`, 40 digits, negatives) or numeric strings.
sent = st.one_of(decimals, decimals.map(str))
# Text PostgreSQL can store: a body with a NUL is refused by the HTTP layer (tests/venues/test_http.py).
storable = st.characters(exclude_characters="\x00")
json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(storable, max_size=8), decimals)


def one_account(token: dict[str, Any], position: dict[str, Any], **more: Any) -> dict[str, Any]:
    token = {"symbol": "USDT", "market_type": "unified", "asset_type": "token", **token}
    position = {"symbol": "ETH:PERP-USDT", "market_type": "perp", "asset_type": "position", **position}
    return {"Acct": {"exchange": "OKX", "assets": [token, position], **more}}


@settings(max_examples=60, deadline=None)
@given(
    token=st.fixed_dictionaries({k: sent for k in TOKEN_FIELDS}),
    position=st.fixed_dictionaries({k: sent for k in POSITION_FIELDS}),
    size=decimals.filter(lambda d: d != 0),
)
def test_any_decimal_the_venue_sends_arrives_exactly(token, position, size):
    batch = normalize(wire(one_account(token, {**position, "size": size})))
    (balance,), (row,) = batch.balances, batch.positions
    for name, attr in TOKEN_FIELDS.items():
        assert getattr(balance, attr) == Decimal(token[name])
    for name, attr in POSITION_FIELDS.items():
        assert getattr(row, attr) == Decimal(position[name])
    assert row.quantity == size.copy_abs() and row.side == ("short" if size < 0 else "long")
    assert batch.account_rows[0].equity == Decimal(token["notional"])


@settings(max_examples=40, deadline=None)
@given(
    unknown=st.dictionaries(st.text(storable, min_size=1, max_size=12).filter(lambda k: k not in KNOWN), json_values),
    level=st.sampled_from(["token", "position", "account"]),
)
def test_unknown_fields_land_in_extra_unchanged(unknown, level):
    if level == "account":
        unknown = {k: v for k, v in unknown.items() if k not in ("exchange", "assets")}
    body = wire(
        one_account(
            unknown if level == "token" else {},
            {"size": 1, **(unknown if level == "position" else {})},
            **(unknown if level == "account" else {}),
        )
    )
    batch = normalize(body)
    record = {"token": batch.balances, "position": batch.positions, "account": batch.account_rows}[level][0]
    assert {k: record.extra[k] for k in unknown} == wire(unknown)


@settings(max_examples=40, deadline=None)
@given(
    token_missing=st.dictionaries(
        st.sampled_from(sorted(TOKEN_FIELDS)), st.sampled_from(["absent", None, ""])
    ),
    position_missing=st.dictionaries(
        st.sampled_from(sorted(POSITION_FIELDS)), st.sampled_from(["absent", None])
    ),
)
def test_missing_optional_fields_give_null_never_zero(token_missing, position_missing):
    token = {k: v for k, v in token_missing.items() if v != "absent"}
    position = {"size": Decimal("-2.5"), **{k: v for k, v in position_missing.items() if v != "absent"}}
    batch = normalize(wire(one_account(token, position)))
    for name in token_missing:
        assert getattr(batch.balances[0], TOKEN_FIELDS[name]) is None
    for name in position_missing:
        assert getattr(batch.positions[0], POSITION_FIELDS[name]) is None


@settings(max_examples=40, deadline=None)
@given(
    account=st.sampled_from(["AccountABC", "Account123"]),
    index=st.integers(0, 1),
    name=st.sampled_from(sorted({*TOKEN_FIELDS, *POSITION_FIELDS} - {"leverage"})),
    bad=st.sampled_from(["x", "12,5", "NaN", True, [], {"v": 1}]),
)
def test_a_malformed_number_anywhere_names_venue_field_and_position(account, index, name, bad):
    body = seed_body()
    # a position's margin_balance is not mapped (it goes to extra as sent)
    assume(not (name == "margin_balance" and body[account]["assets"][index]["asset_type"] == "position"))
    body[account]["assets"][index][name] = bad
    with pytest.raises(NormalizeError, match=rf"^treadfi {account}\.assets\[{index}\]\.{name}: expected a"):
        normalize(body)


@settings(max_examples=25, deadline=None)
@given(
    token=st.fixed_dictionaries({k: sent for k in TOKEN_FIELDS}),
    position=st.fixed_dictionaries({k: sent for k in POSITION_FIELDS}),
    size=decimals.filter(lambda d: d != 0),
)
def test_any_decimal_round_trips_exactly_through_postgresql(session_engine, token, position, size):
    body = wire(one_account(token, {**position, "size": size}))
    batch = normalize(body)
    with session_engine.connect() as conn, conn.begin() as tx:
        load_slot(
            conn,
            source="treadfi-prop",
            venue="treadfi",
            slot=SLOT,
            batch=batch,
            responses=response(body),
            started_at=FETCHED,
            attempts=1,
        )
        stored = conn.execute(
            text(
                "SELECT total, value_usdt, equity, unrealized_pnl, initial_margin, maintenance_margin "
                "FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id WHERE a.source = :s"
            ),
            {"s": "treadfi-prop"},
        ).one()
        held = conn.execute(
            text(
                "SELECT quantity, notional, unrealized_pnl, leverage, margin, maintenance_margin "
                "FROM position_snapshots p JOIN accounts a ON a.id = p.account_id WHERE a.source = :s"
            ),
            {"s": "treadfi-prop"},
        ).one()
        raw_size = conn.execute(
            text("SELECT body->'Acct'->'assets'->1->>'size' FROM raw_payloads WHERE source = :s"),
            {"s": "treadfi-prop"},
        ).scalar()
        tx.rollback()
    assert list(stored) == [Decimal(token[k]) for k in TOKEN_FIELDS]
    assert held[0] == size.copy_abs()
    assert list(held[1:]) == [Decimal(position[k]) for k in POSITION_FIELDS]
    assert Decimal(raw_size) == size


# --- simulator -----------------------------------------------------------------------


def ask(
    sim: TreadfiSimulator, headers: dict[str, str], params: dict[str, str] | None = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app())) as client:
            return await client.get("http://sim" + treadfi.BALANCES, headers=headers, params=params)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Authentication credentials were not provided."),
        ({"Authorization": "Bearer good"}, "Authentication credentials were not provided."),
        ({"Authorization": "Token"}, "Invalid token header. No credentials provided."),
        ({"Authorization": "Token go od"}, "Invalid token header. Token string should not contain spaces."),
        ({"Authorization": "Token wrong"}, "Invalid token."),
    ],
)
def test_simulator_refuses_bad_tokens_like_drf(headers, detail):
    sim = TreadfiSimulator()
    sim.add_account("good", "Main", "Bybit")
    answer = ask(sim, headers)
    assert (answer.status_code, answer.json()) == (401, {"detail": detail})
    assert answer.headers["WWW-Authenticate"] == "Token" and sim.rejected == 1


def test_simulator_filters_by_account_names_and_moves_balances():
    sim = TreadfiSimulator(seed=3)
    for name, exchange in [("Main", "Bybit"), ("Hedge", "Binance"), ("Alt", "OKX")]:
        sim.add_account("good", name, exchange)
    auth = {"Authorization": "Token good"}
    assert list(ask(sim, auth, {"account_names": "Alt,Main"}).json()) == ["Main", "Alt"]
    first, second = (exactjson.loads(ask(sim, auth).content) for _ in range(2))
    assert first["Main"]["assets"][2]["margin_balance"] != second["Main"]["assets"][2]["margin_balance"]


# --- end to end through PostgreSQL ---------------------------------------------------


@pytest.fixture
def seeded():
    sim = TreadfiSimulator(seed=5)
    sim.add_user("seed-token", body=seed_body())
    sim.add_account("live-token", "Main", "Bybit", positions=2)
    sim.add_account("live-token", "Hedge", "Binance", positions=3, spot=2)
    sim.add_account("live-token", "Alt", "OKX", positions=1)
    with served(sim) as server:
        yield sim, server


def test_seed_loads_exactly_and_rerunning_the_slot_rewrites_no_row(engine, seeded):
    _, server = seeded
    settings_ = settings_for(source_entry("tread-seed", "treadfi", server.url, "seed-token"))
    first = run(engine, settings_)["tread-seed"]
    assert first.status == "ok", first.error
    assert rows(engine, "SELECT external_id, exchange, venue FROM accounts ORDER BY external_id") == [
        ("Account123", "Binance", "treadfi"),
        ("AccountABC", "Bybit", "treadfi"),
    ]
    assert rows(
        engine,
        """SELECT a.external_id, b.account_type, b.total::text, b.value_usdt::text, b.equity::text,
                  b.extra->>'notional_pct_total'
           FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id ORDER BY 1""",
    ) == [
        ("Account123", "perp", "1414.06039641", "1414.060396", "1425.08678423", "0.6449"),
        ("AccountABC", "unified", "275.56989474", "275.569895", "298.90609459", "0.817474"),
    ]
    assert rows(engine, "SELECT external_id, account_type, equity::text FROM account_equity ORDER BY 1") == [
        ("Account123", "perp", "1414.060396"),
        ("AccountABC", "unified", "275.569895"),
    ]
    assert rows(
        engine,
        """SELECT p.symbol, p.side, p.quantity::text, p.notional::text, p.leverage::text,
                  p.extra->>'margin_balance'
           FROM position_snapshots p ORDER BY 1""",
    ) == [
        ("BTC:PERP-USDT", "long", "0.021", "572.956735", "5.0", None),
        ("ETH:PERP-USDT", "long", "1.69", "3051.5284", "10.0", "298.90609459"),
    ]
    before = row_versions(engine)
    second = run(engine, settings_)["tread-seed"]
    assert second.status == "ok" and sum(second.written.values()) == 0
    assert row_versions(engine) == before and len(before) == 2 + 2 + 2


def test_a_wrong_token_is_one_auth_line_and_writes_nothing_for_that_source(engine, seeded):
    sim, server = seeded
    settings_ = settings_for(
        source_entry("tread-bad", "treadfi", server.url, "not-the-token"),
        source_entry("tread-live", "treadfi", server.url, "live-token"),
    )
    results = run(engine, settings_)
    bad = results["tread-bad"]
    assert bad.error == "tread-bad: treadfi GET /api/balances/: HTTP 401: Invalid token."
    assert bad.attempts == 1 and sim.rejected == 1  # terminal: not retried
    assert results["tread-live"].status == "ok"
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'tread-bad'") == [
        ("error", bad.error)
    ]
    assert rows(engine, "SELECT count(*) FROM accounts WHERE source = 'tread-bad'") == [(0,)]


def test_a_live_source_loads_its_accounts_filtered_by_account_names(engine, seeded):
    _, server = seeded
    entry = source_entry(
        "tread-live", "treadfi", server.url, "live-token", params={"account_names": "Main, Hedge"}
    )
    result = run(engine, settings_for(entry))["tread-live"]
    assert result.status == "ok", result.error
    assert rows(engine, "SELECT external_id, exchange FROM accounts ORDER BY 1") == [
        ("Hedge", "Binance"),
        ("Main", "Bybit"),
    ]
    assert rows(
        engine,
        "SELECT a.external_id, s.account_type, s.equity IS NULL FROM account_snapshots s "
        "JOIN accounts a ON a.id = s.account_id ORDER BY 1, 2",
    ) == [
        ("Hedge", "perp", False),
        ("Hedge", "spot", False),  # valued by its tokens' USD notional
        ("Main", "unified", False),
    ]
    assert count(engine, "position_snapshots") == 2 + 3
    assert rows(engine, "SELECT side FROM position_snapshots WHERE symbol = 'BTC:PERP-USDT'") == [
        ("short",),
        ("short",),
    ]


def _summed_margin_balances(source: str, responses: list[RawResponse]) -> Any:
    """The normalizer before the fix: every token's margin_balance summed as USDT."""
    batch = _normalize(source, responses)
    old = tuple(
        AccountRow(
            r.account,
            r.account_type,
            equity=sum((b.equity for b in batch.balances if b.account_type == r.account_type), Decimal(0)),
            equity_currency="USDT",
        )
        for r in batch.account_rows
    )
    return replace(batch, account_rows=old)


_normalize = treadfi.normalize


def test_etl_replay_rewrites_the_equity_loaded_by_the_old_rule(engine, monkeypatch):
    sim = TreadfiSimulator()
    sim.add_user("readme-token", body=exactjson.loads(CLIENT_README_BALANCES))
    with served(sim) as server:
        settings_ = settings_for(source_entry("tread-readme", "treadfi", server.url, "readme-token"))
        monkeypatch.setattr(treadfi, "normalize", _summed_margin_balances)
        assert run(engine, settings_)["tread-readme"].status == "ok"
    equity = "SELECT equity::text, equity_currency FROM account_equity"
    assert rows(engine, equity) == [("8886.151062525667", "USDT")]  # 3 BTC + 8,883 USDT, as loaded
    monkeypatch.setattr(treadfi, "normalize", _normalize)  # the fix

    report = replay(engine, settings_)

    assert report.failed == () and len(report.slots) == 1
    assert rows(engine, equity) == [("98339.5901255465", "USD")]
    assert rows(engine, "SELECT total_equity::text FROM portfolio_equity") == [("98339.5901255465",)]
