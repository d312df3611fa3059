"""HTX v5: signing against the documented vectors, the seed examples normalized exactly,
error envelopes, properties of the normalizer, and the pipeline against the simulator."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from etl import exactjson
from etl.errors import NormalizeError, VenueError
from etl.records import RawResponse
from etl.sim.base import Fault
from etl.sim.htx import HtxSimulator
from etl.store.load import load_slot
from etl.venues import htx
from etl.venues.fields import parse_decimal
from etl.venues.http import VenueClient
from tests.conftest import FIXTURES
from tests.helpers import SLOT, count, row_versions, rows, run, served, settings_for, source_entry

FETCHED = datetime(2026, 1, 1, tzinfo=UTC)
TS = "2025-01-16T02:37:50"
ETH_INFO = htx.contract_info_endpoint("ETH-USDT")


def fixture(name: str) -> Any:
    return exactjson.loads((FIXTURES / name).read_text())


def seed_balance() -> dict[str, Any]:
    return fixture("htx_account_balance.json")


def seed_positions() -> dict[str, Any]:
    return fixture("htx_position_opens.json")


def responses(balance: Any = None, positions: Any = None, info: Any = None) -> list[RawResponse]:
    return [
        RawResponse(htx.BALANCE, 200, seed_balance() if balance is None else balance, FETCHED),
        RawResponse(htx.POSITIONS, 200, seed_positions() if positions is None else positions, FETCHED),
        RawResponse(ETH_INFO, 200, fixture("htx_swap_contract_info.json") if info is None else info, FETCHED),
    ]


@pytest.fixture(autouse=True)
def _fresh_contract_cache() -> Iterator[None]:
    """Loopback ports are reused between tests: no test may see another's cached contract info."""
    htx.CONTRACTS.clear()
    yield
    htx.CONTRACTS.clear()


# --- signing ---------------------------------------------------------------------------


def test_signature_reproduces_the_vector_of_htx_net_unit_tests():
    """A vector published by an independent implementation.

    Source: JKorf/HTX.Net, `HTX.Net.UnitTests/HTXRestClientTests.cs`, test
    `CheckSignatureExample`, commit 3300a72a69d788a3bf0c2be050dc1c0c601c8a6b: key
    `e2xxxxxx-99xxxxxx-84xxxxxx-7xxxx`, secret `XXXXXXXXXX`, `GET https://api.huobi.pro
    /v1/order/orders` with `order-id=1234567890`, expected `Signature`
    `2ZQ7/roKBjdnAv8z5DymwzgSaOPyPgJl0BIlq9fa94w=`. The test hands the library the time
    15:19:31; the library signs one second earlier (shared/venues/htx.md), 15:19:30,
    which is also the Timestamp of HTX's own documentation example.
    """
    params = {
        "order-id": "1234567890",
        **htx.auth_params("e2xxxxxx-99xxxxxx-84xxxxxx-7xxxx", "2017-05-11T15:19:30"),
    }
    query = htx.canonical_query(params)
    assert query == (
        "AccessKeyId=e2xxxxxx-99xxxxxx-84xxxxxx-7xxxx&SignatureMethod=HmacSHA256&SignatureVersion=2"
        "&Timestamp=2017-05-11T15%3A19%3A30&order-id=1234567890"
    )
    assert htx.sign("XXXXXXXXXX", "GET", "api.huobi.pro", "/v1/order/orders", query) == (
        "2ZQ7/roKBjdnAv8z5DymwzgSaOPyPgJl0BIlq9fa94w="
    )
    request = htx.build_request(
        "https://api.huobi.pro",
        "/v1/order/orders",
        {"order-id": "1234567890"},
        "e2xxxxxx-99xxxxxx-84xxxxxx-7xxxx",
        "XXXXXXXXXX",
        "2017-05-11T15:19:30",
    )
    assert request.url.params["Signature"] == "2ZQ7/roKBjdnAv8z5DymwzgSaOPyPgJl0BIlq9fa94w="


# The vectors below are self-computed from the recipe (shared/venues/htx.md says so):
# they pin today's output, they do not prove it.


def test_signature_matches_the_documented_vector_for_the_balance():
    query = htx.canonical_query(htx.auth_params("test-access-key", TS))
    assert query == (
        "AccessKeyId=test-access-key&SignatureMethod=HmacSHA256&SignatureVersion=2"
        "&Timestamp=2025-01-16T02%3A37%3A50"
    )
    assert htx.sign("test-secret", "GET", "api.hbdm.com", htx.BALANCE, query) == (
        "NB+MTVvATY4qoXyksjWbQy50aSXTaloFr8SGi6hWrYo="
    )


def test_signature_matches_the_documented_vector_with_a_business_parameter():
    # upper-case keys sort before lower-case ones in ASCII order
    query = htx.canonical_query({"contract_code": "BTC-USDT", **htx.auth_params("test-access-key", TS)})
    assert query.endswith("&Timestamp=2025-01-16T02%3A37%3A50&contract_code=BTC-USDT")
    assert htx.sign("test-secret", "GET", "api.hbdm.com", htx.POSITIONS, query) == (
        "rYs8BRdPgeKcHnWdGmGDP/Bg9EoCkRS5J/q/ena9kaI="
    )


def test_the_request_sends_exactly_the_documented_url_and_no_secret():
    request = htx.build_request("https://api.hbdm.com", htx.BALANCE, {}, "test-access-key", "test-secret", TS)
    assert str(request.url) == (
        "https://api.hbdm.com/v5/account/balance?AccessKeyId=test-access-key&SignatureMethod=HmacSHA256"
        "&SignatureVersion=2&Timestamp=2025-01-16T02%3A37%3A50"
        "&Signature=NB%2BMTVvATY4qoXyksjWbQy50aSXTaloFr8SGi6hWrYo%3D"
    )
    assert "test-secret" not in str(request.url) + str(dict(request.headers))


def test_encoding_is_rfc3986_with_upper_case_hex():
    assert htx.encode("a b:c/d+e~f") == "a%20b%3Ac%2Fd%2Be~f"


def test_the_timestamp_is_utc_seconds_without_zone():
    from zoneinfo import ZoneInfo

    local = datetime(2025, 1, 16, 10, 37, 50, 999000, tzinfo=ZoneInfo("Asia/Singapore"))
    assert htx.timestamp(local) == TS


# --- the seed examples -------------------------------------------------------------------


def test_seed_balance_normalizes_exactly():
    batch = htx.normalize("htx-main", responses())
    assert [a.external_id for a in batch.accounts] == ["htx-main"]
    usdt, btc = batch.balances
    assert (usdt.account_type, usdt.currency) == ("futures", "USDT")
    assert usdt.equity == Decimal("-0.0969198676") and str(usdt.equity) == "-0.0969198676"
    assert usdt.available == Decimal("-0.0050448676")  # negative balances are legal
    assert usdt.withdrawable == Decimal("123456")
    assert usdt.unrealized_pnl == Decimal("-0.091875")
    assert usdt.initial_margin == Decimal("2.8999998")
    assert usdt.maintenance_margin == Decimal("0.05437499625")
    assert usdt.total is None and usdt.frozen is None and usdt.value_usdt is None  # not sent: NULL
    assert usdt.venue_ts == datetime(2025, 1, 16, 2, 37, 48, 674000, tzinfo=UTC)
    assert usdt.extra == {
        "created_time": 1736756095314,
        "initial_margin_rate": "-29.921623623844075494",
        "maintenance_margin_rate": "-0.561030442947076415",
        "voucher": "",
        "voucher_value": "",
    }
    assert (btc.currency, btc.equity, btc.available) == ("BTC", Decimal(1), Decimal(1))


def test_seed_account_totals_normalize_exactly():
    (totals,) = htx.normalize("htx-main", responses()).account_rows
    assert totals.account_type == "futures" and totals.equity_currency == "USDT"
    assert totals.equity == Decimal("74999.9030801324")
    assert totals.available_margin == Decimal("74997.0030803324")
    assert totals.initial_margin == Decimal("2.8999998")
    assert totals.maintenance_margin == Decimal("0.05437499625")
    assert f"{totals.maintenance_margin_rate:f}" == "0.000000725000886893"
    assert totals.unrealized_pnl == Decimal("-0.091875")
    assert totals.state == "normal"
    assert totals.venue_ts == datetime(2025, 1, 16, 2, 37, 48, 674000, tzinfo=UTC)
    assert totals.extra == {"voucher_value": "", "created_time": 1736736784249}


def test_seed_position_quantity_is_contracts_times_contract_size():
    (position,) = htx.normalize("htx-main", responses()).positions
    assert (position.symbol, position.side, position.margin_mode) == ("ETH-USDT", "long", "cross")
    assert (position.base, position.quote) == ("ETH", "USDT")
    assert position.quantity == Decimal("0.1")  # 10 contracts x 0.01 ETH
    assert position.extra["volume"] == "10" and position.extra["available"] == "10"
    assert position.entry_price == Decimal("1672.36")
    assert position.mark_price == Decimal("1197.58")
    assert position.leverage == Decimal(5)
    assert position.margin == Decimal("23.9516")
    assert position.maintenance_margin == Decimal("0.4490925")
    assert position.unrealized_pnl == Decimal("-47.478")
    assert str(position.liquidation_price) == "-6615323.17169213120630934"
    assert position.extra["adl_risk_percent"] is None and position.extra["position_side"] == "both"
    assert position.notional is None and position.realized_pnl is None
    assert position.venue_ts == datetime(2025, 2, 25, 2, 38, 7, 505000, tzinfo=UTC)


def test_hedge_mode_gives_a_long_and_a_short_row_for_one_contract():
    body = seed_positions()
    short = {**body["data"][0], "position_side": "short", "direction": "sell", "volume": "3"}
    body["data"] = [{**body["data"][0], "position_side": "long"}, short]
    positions = htx.normalize("h", responses(positions=body)).positions
    assert [(p.symbol, p.side, p.quantity) for p in positions] == [
        ("ETH-USDT", "long", Decimal("0.1")),
        ("ETH-USDT", "short", Decimal("0.03")),
    ]


def test_the_conversion_keeps_every_digit():
    body = seed_positions()
    body["data"][0]["volume"] = "123456789012345678901234567890.123456789"
    (position,) = htx.normalize("h", responses(positions=body)).positions
    assert str(position.quantity) == "1234567890123456789012345678.90123456789"


@pytest.mark.parametrize("volume", ["0", "0.0"])
def test_a_position_of_zero_contracts_is_not_open_and_gets_no_row(volume):
    body = seed_positions()
    body["data"][0].update(volume=volume, available=volume)
    assert htx.normalize("h", responses(positions=body)).positions == ()


def test_a_delivery_contract_splits_into_base_and_quote():
    body = seed_positions()
    body["data"][0]["contract_code"] = "BTC-USDT-260327"
    info = fixture("htx_swap_contract_info.json")
    info["data"][0].update(contract_code="BTC-USDT-260327", contract_size=Decimal("0.001"))
    (position,) = htx.normalize("h", responses(positions=body, info=info)).positions
    assert (position.base, position.quote, position.quantity) == ("BTC", "USDT", Decimal("0.010"))


def test_a_position_without_its_contract_size_is_an_error():
    body = seed_positions()
    body["data"][0]["contract_code"] = "SOL-USDT"
    with pytest.raises(
        NormalizeError,
        match=re.escape("htx positions data[0].contract_code: no contract size for 'SOL-USDT'"),
    ):
        htx.normalize("h", responses(positions=body))


def test_an_unknown_direction_is_an_error():
    body = seed_positions()
    body["data"][0]["direction"] = "both"
    with pytest.raises(NormalizeError, match=r"htx positions data\[0\]\.direction: expected buy or sell"):
        htx.normalize("h", responses(positions=body))


@pytest.mark.parametrize(("sent", "stored"), [(1, "normal"), ("3", "liquidating"), ("NORMAL", "normal")])
def test_numeric_and_upper_case_states_are_named(sent, stored):
    body = seed_balance()
    body["data"]["state"] = sent
    assert htx.normalize("h", responses(balance=body)).account_rows[0].state == stored


def test_no_open_positions_is_an_empty_list_and_needs_no_contract_info():
    batch = htx.normalize(
        "h", [*responses()[:1], RawResponse(htx.POSITIONS, 200, {"code": 200, "data": []}, FETCHED)]
    )
    assert batch.positions == ()


def test_a_missing_balance_response_is_named():
    with pytest.raises(NormalizeError, match=r"htx: expected one response of GET /v5/account/balance, got 0"):
        htx.normalize("h", responses()[1:])


# A live answer recorded by ccxt: ccxt/ccxt, ts/src/test/static/response/htx.json, methods ->
# fetchBalance -> "Linear swap fetch balance" -> httpResponse (commit
# 0094a48beb788f92ae50d788bf957e49c07dac6f). Account-level figures all "0", USDT funded.
CCXT_LINEAR_SWAP_BALANCE = """{"code": "200", "message": "Success", "data": {
  "state": "normal", "equity": "0",
  "details": [{"currency": "USDT", "equity": "162.523160998562004875",
    "available": "162.523160998562004875", "profit_unreal": "0", "initial_margin": "4.024",
    "maintenance_margin": "0.21621246", "maintenance_margin_rate": "0.001330348601833513",
    "initial_margin_rate": "0.024759547963970526", "available_margin": "158.499160998562004875",
    "voucher": "0", "voucher_value": "0", "withdraw_available": "158.499160998562004875",
    "created_time": "1770293270932", "updated_time": "1781939212041",
    "isolated_equity": "0", "isolated_profit_unreal": "0"}],
  "initial_margin": "0", "maintenance_margin": "0", "maintenance_margin_rate": "0",
  "profit_unreal": "0", "available_margin": "0", "voucher_value": "0",
  "created_time": "1770293268881", "updated_time": "1780329743956"},
  "ts": "1781939212050"}"""
NO_POSITIONS = {"code": "200", "message": "Success", "data": [], "ts": "1781939212050"}


def test_account_zeros_beside_a_funded_usdt_detail_take_the_details_figures_ccxt_payload():
    batch = htx.normalize("h", responses(exactjson.loads(CCXT_LINEAR_SWAP_BALANCE), NO_POSITIONS)[:2])
    (row,) = batch.account_rows
    assert (row.equity, row.equity_currency, row.state) == (
        Decimal("162.523160998562004875"),
        "USDT",
        "normal",
    )
    assert (row.available_margin, row.initial_margin, row.maintenance_margin) == (
        Decimal("158.499160998562004875"),
        Decimal("4.024"),
        Decimal("0.21621246"),
    )
    assert (row.maintenance_margin_rate, row.unrealized_pnl) == (
        Decimal("0.001330348601833513"),
        Decimal("0"),
    )
    # the USDT detail's update time (1781939212041 ms), not the account's 19-day-old one
    assert row.venue_ts == datetime(2026, 6, 20, 7, 6, 52, 41000, tzinfo=UTC)
    # what the venue said at account level stays visible, unchanged
    assert {k: row.extra[k] for k in ("equity", "available_margin", "initial_margin", "updated_time")} == {
        "equity": "0",
        "available_margin": "0",
        "initial_margin": "0",
        "updated_time": "1780329743956",
    }
    (usdt,) = batch.balances
    assert usdt.equity == row.equity


def test_account_zeros_beside_funds_in_another_coin_fail_loudly_rather_than_show_zero():
    body = exactjson.loads(CCXT_LINEAR_SWAP_BALANCE)
    btc = {**body["data"]["details"][0], "currency": "BTC", "equity": "0.5"}
    body["data"]["details"].append(btc)
    with pytest.raises(
        NormalizeError, match=r"^htx balance data\.equity: 0 while details hold BTC: no account"
    ):
        htx.normalize("h", responses(body, NO_POSITIONS)[:2])


def test_an_empty_account_is_an_equity_of_zero():
    body = exactjson.loads(CCXT_LINEAR_SWAP_BALANCE)
    body["data"]["details"][0].update(equity="0", available_margin="0")
    (row,) = htx.normalize("h", responses(body, NO_POSITIONS)[:2]).account_rows
    assert row.equity == 0 and "equity" not in row.extra


def test_the_ccxt_payload_loads_into_the_portfolio_total_not_as_zero(engine):
    sim = HtxSimulator()
    sim.add_account("k", "s", body=exactjson.loads(CCXT_LINEAR_SWAP_BALANCE), positions_body=NO_POSITIONS)
    with served(sim) as server:
        assert (
            run(engine, settings_for(source_entry("htx-ccxt", "htx", server.url, "k", "s")))[
                "htx-ccxt"
            ].status
            == "ok"
        )
    assert rows(engine, "SELECT total_equity::text, accounts_reporting FROM portfolio_equity") == [
        ("162.523160998562004875", 1)
    ]


# --- envelopes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message", "transient"),
    [
        (
            200,
            {"status": "error", "err_code": 403, "err_msg": "Verification failure [校验失败]", "ts": 1},
            r"HTTP 200, code 403: Verification failure \[校验失败\] \(authentication failed",
            False,
        ),
        (
            403,
            {"status": "error", "err-code": "api-signature-not-valid", "err-msg": "Signature not valid"},
            r"HTTP 403, code api-signature-not-valid: Signature not valid \(authentication failed",
            False,
        ),
        (
            200,
            {"status": "error", "err_code": 12001, "err_msg": "Invalid submission time"},
            r"code 12001",
            False,
        ),
        (
            200,
            {"code": 1004, "message": "System busy. Please try again later."},
            r"code 1004: System busy",
            True,
        ),
        (
            200,
            {"code": 1032, "msg": "The number of access exceeded the limit."},
            r"code 1032: The number",
            True,
        ),
        (
            200,
            {"code": 4007, "msg": "Unified account special interface"},
            r"Multi-Assets Collateral mode",
            False,
        ),
        (
            # HTX.Net HTXErrors.cs (commit 3e6b23a5): "1003" Invalid signature, Unauthorized, not transient
            200,
            {"code": "1003", "message": "invalid signature"},
            r"HTTP 200, code 1003: invalid signature \(authentication failed: check the API key, its secret and the clock\)$",
            False,
        ),
        (200, {"code": 1030, "message": "", "msg": "Input error"}, r"code 1030: Input error$", False),
        (200, [], r"expected a JSON object, got list", False),
        (200, {"data": {}}, r"neither `code` nor `status`", False),
    ],
)
def test_error_envelopes_become_venue_errors(status, body, message, transient):
    with pytest.raises(VenueError, match=message) as caught:
        htx.check_envelope(status, body)
    assert caught.value.transient is transient
    assert caught.value.retries == (1 if "code 403" in str(caught.value) else 0)  # only the gateway's 403


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "message": "Success", "data": {}},
        {"code": 200, "msg": "", "data": {}},
        {"status": "ok", "data": [], "ts": 1},
    ],
)
def test_success_envelopes_pass(body):
    htx.check_envelope(200, body)


# --- properties ----------------------------------------------------------------------------

DECIMALS = st.builds(
    lambda sign, digits, exponent: Decimal(f"{sign}{digits}E{exponent}"),
    st.sampled_from(["", "-"]),
    st.integers(0, 10**40),
    st.integers(-30, 12),
)
# how a venue can write a number: a string in either notation, or a JSON number literal
WIRE_FORMS = st.sampled_from(["string", "plain string", "json number"])


def on_the_wire(value: Decimal, form: str) -> Any:
    if form == "string":
        return str(value)
    if form == "plain string":
        return f"{value:f}"
    return exactjson.loads(f'{{"v": {value}}}')["v"]  # what the body parser makes of the literal


# (place, field, record attribute) of every mapped number
BALANCE_NUMBERS = [
    ("equity", "equity"),
    ("available", "available"),
    ("withdraw_available", "withdrawable"),
    ("profit_unreal", "unrealized_pnl"),
    ("initial_margin", "initial_margin"),
    ("maintenance_margin", "maintenance_margin"),
]
ACCOUNT_NUMBERS = [
    ("equity", "equity"),
    ("available_margin", "available_margin"),
    ("initial_margin", "initial_margin"),
    ("maintenance_margin", "maintenance_margin"),
    ("maintenance_margin_rate", "maintenance_margin_rate"),
    ("profit_unreal", "unrealized_pnl"),
]
POSITION_NUMBERS = [
    ("open_avg_price", "entry_price"),
    ("mark_price", "mark_price"),
    ("profit_unreal", "unrealized_pnl"),
    ("lever_rate", "leverage"),
    ("initial_margin", "margin"),
    ("maintenance_margin", "maintenance_margin"),
    ("liquidation_price", "liquidation_price"),
]
NUMBER_PLACES = (
    [("balance", f, a) for f, a in BALANCE_NUMBERS]
    + [("account", f, a) for f, a in ACCOUNT_NUMBERS]
    + [("position", f, a) for f, a in POSITION_NUMBERS]
)


def with_value(place: str, name: str, value: Any, index: int = 1) -> tuple[list[RawResponse], str]:
    """The seed responses with one field replaced (or removed, for `...`), and its payload path."""
    balance, positions = seed_balance(), seed_positions()
    target, where = {
        "balance": (balance["data"]["details"][index], f"htx balance data.details[{index}]"),
        "account": (balance["data"], "htx balance data"),
        "position": (positions["data"][0], "htx positions data[0]"),
    }[place]
    if value is ...:
        del target[name]
    else:
        target[name] = value
    return responses(balance, positions), f"{where}.{name}"


def record_of(batch: Any, place: str, index: int = 1) -> Any:
    if place == "balance":
        return batch.balances[index]
    return batch.account_rows[0] if place == "account" else batch.positions[0]


@given(st.sampled_from(NUMBER_PLACES), DECIMALS, WIRE_FORMS)
def test_any_venue_decimal_is_read_exactly(place, value, form):
    where, name, attribute = place
    # an account equity of 0 beside funded details is the state tested with ccxt's payload below
    assume(not (place == ("account", "equity", "equity") and value == 0))
    batch = htx.normalize("h", with_value(where, name, on_the_wire(value, form))[0])
    assert getattr(record_of(batch, where), attribute) == value


@given(DECIMALS.map(lambda d: d.copy_abs()).filter(lambda d: d != 0), WIRE_FORMS)
def test_any_volume_converts_exactly_to_base_units(volume, form):
    batch = htx.normalize("h", with_value("position", "volume", on_the_wire(volume, form))[0])
    digits = volume.as_tuple()
    assert batch.positions[0].quantity == Decimal((0, digits.digits, int(digits.exponent) - 2))  # x 0.01


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(
    st.sampled_from(["balance", "account", "position"]),
    st.dictionaries(st.text(min_size=1, max_size=12).map(lambda k: "x_" + k), JSON_VALUES, max_size=4),
)
def test_unknown_fields_land_in_extra_unchanged(place, unknown):
    balance, positions = seed_balance(), seed_positions()
    {"balance": balance["data"]["details"][0], "account": balance["data"], "position": positions["data"][0]}[
        place
    ].update(copy.deepcopy(unknown))
    batch = htx.normalize("h", responses(balance, positions))
    extra = record_of(batch, place, 0).extra
    assert {k: extra[k] for k in unknown} == unknown


@given(st.sampled_from(NUMBER_PLACES), st.sampled_from([..., None, ""]))
def test_a_missing_null_or_empty_number_is_null_never_zero(place, absent):
    where, name, attribute = place
    batch = htx.normalize("h", with_value(where, name, absent)[0])
    assert getattr(record_of(batch, where), attribute) is None


def _not_a_number(value: Any) -> bool:
    try:
        parse_decimal(value, "x")
    except NormalizeError:
        return True
    return False


BAD_VALUES = (
    st.text(max_size=12) | st.booleans() | st.lists(st.integers(), max_size=2) | st.just({"v": 1})
).filter(_not_a_number)


@given(st.sampled_from(NUMBER_PLACES), BAD_VALUES, st.integers(0, 1))
def test_a_malformed_number_names_venue_field_and_position(place, bad, index):
    where, name, _ = place
    sent, path = with_value(where, name, bad, index)
    with pytest.raises(NormalizeError, match="^" + re.escape(f"{path}: expected")):
        htx.normalize("h", sent)


@given(st.integers(0, 1), st.sampled_from([None, 7, "text", ["USDT"]]))
def test_a_malformed_element_is_named_by_its_position(index, element):
    balance = seed_balance()
    balance["data"]["details"][index] = element
    expected = f"htx balance data.details[{index}]: expected an object"
    with pytest.raises(NormalizeError, match="^" + re.escape(expected)):
        htx.normalize("h", responses(balance=balance))


@settings(max_examples=25, deadline=None)
@given(st.lists(DECIMALS, min_size=3, max_size=3), WIRE_FORMS)
def test_any_venue_decimal_round_trips_exactly_through_postgresql(session_engine: Engine, values, form):
    assume(values[1] != 0)  # account equity 0 beside funded details: see the ccxt payload test
    balance, positions = seed_balance(), seed_positions()
    balance["data"]["details"][0]["available"] = on_the_wire(values[0], form)
    balance["data"]["equity"] = on_the_wire(values[1], form)
    positions["data"][0]["open_avg_price"] = on_the_wire(values[2], form)
    sent = responses(balance, positions)
    batch = htx.normalize("htx-prop", sent)
    with session_engine.connect() as conn, conn.begin() as tx:
        load_slot(
            conn,
            source="htx-prop",
            venue="htx",
            slot=SLOT,
            batch=batch,
            responses=sent,
            started_at=FETCHED,
            attempts=1,
        )
        stored = conn.execute(
            text(
                """SELECT (SELECT b.available FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id
                           WHERE a.source = 'htx-prop' AND b.currency = 'USDT'),
                          (SELECT s.equity FROM account_snapshots s JOIN accounts a ON a.id = s.account_id
                           WHERE a.source = 'htx-prop'),
                          (SELECT p.entry_price FROM position_snapshots p JOIN accounts a ON a.id = p.account_id
                           WHERE a.source = 'htx-prop')"""
            )
        ).one()
        tx.rollback()
    assert list(stored) == values


# --- against the simulator ---------------------------------------------------------------


def test_the_simulator_refuses_a_stale_timestamp_with_12001():
    sim = HtxSimulator()
    sim.add_account("k", "s")
    source = settings_for(source_entry("htx-clock", "htx", "http://sim.test", "k", "s")).sources[0]

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app())) as client:
            late = VenueClient(
                client, "htx", "http://sim.test", clock=lambda: datetime.now(UTC) - timedelta(minutes=6)
            )
            await htx.fetch(late, source)

    with pytest.raises(VenueError, match=r"code 12001: Invalid submission time \(authentication failed"):
        asyncio.run(go())
    assert sim.rejected == 1


@pytest.fixture
def seed_server() -> Iterator[tuple[HtxSimulator, str]]:
    sim = HtxSimulator(seed=5)
    sim.add_account("seed-key", "seed-secret", body=seed_balance(), positions_body=seed_positions())
    sim.add_account("live-key", "live-secret", btc="0.25")
    with served(sim) as server:
        yield sim, server.url


def by_source(engine: Engine, table: str, source: str) -> int:
    return int(
        rows(
            engine,
            f"SELECT count(*) FROM {table} t JOIN accounts a ON a.id = t.account_id WHERE a.source = :s",
            s=source,
        )[0][0]
    )


def test_seed_examples_load_exactly_through_the_pipeline(engine, seed_server):
    _, url = seed_server
    settings_ = settings_for(source_entry("htx-seed", "htx", url, "seed-key", "seed-secret"))
    result = run(engine, settings_)["htx-seed"]
    assert result.status == "ok", result.error
    assert rows(engine, "SELECT external_id, venue FROM accounts") == [("htx-seed", "htx")]
    balances = rows(
        engine,
        "SELECT currency, equity::text, available::text, withdrawable, total, extra->>'voucher' "
        "FROM balance_snapshots ORDER BY currency DESC",
    )
    assert balances == [
        ("USDT", "-0.0969198676", "-0.0050448676", Decimal("123456"), None, ""),
        ("BTC", "1", "1", Decimal("123456"), None, ""),
    ]
    (account,) = rows(
        engine,
        "SELECT equity::text, maintenance_margin_rate::text, state, equity_currency, venue_ts "
        "FROM account_snapshots",
    )
    assert account == (
        "74999.9030801324",
        "0.000000725000886893",
        "normal",
        "USDT",
        datetime(2025, 1, 16, 2, 37, 48, 674000, tzinfo=UTC),
    )
    (position,) = rows(
        engine,
        "SELECT symbol, side, quantity::text, liquidation_price::text, extra->>'volume' FROM position_snapshots",
    )
    assert position == ("ETH-USDT", "long", "0.10", "-6615323.17169213120630934", "10")
    endpoints = {r[0] for r in rows(engine, "SELECT endpoint FROM raw_payloads")}
    assert endpoints == {htx.BALANCE, htx.POSITIONS, ETH_INFO}  # everything replay needs


def test_rerunning_a_slot_rewrites_no_row(engine, seed_server):
    _, url = seed_server
    settings_ = settings_for(source_entry("htx-seed", "htx", url, "seed-key", "seed-secret"))
    first = run(engine, settings_)["htx-seed"]
    before = row_versions(engine)
    second = run(engine, settings_)["htx-seed"]
    assert sum(first.written.values()) == 2 + 1 + 1
    assert len(before) == 4
    assert row_versions(engine) == before
    assert sum(second.written.values()) == 0


def test_contract_info_is_fetched_once_per_process_and_stored_with_every_slot(engine, seed_server):
    sim, url = seed_server
    settings_ = settings_for(source_entry("htx-live", "htx", url, "live-key", "live-secret"))

    async def poll_at(slot: datetime) -> None:
        from etl.pipeline import run_sources

        async with httpx.AsyncClient() as client:
            (result,) = await run_sources(settings_, settings_.sources, {"htx-live": slot}, engine, client)
            assert result.status == "ok", result.error

    asyncio.run(poll_at(SLOT))
    asyncio.run(poll_at(SLOT + timedelta(minutes=1)))
    assert sim.requests[htx.CONTRACT_INFO] == 2  # BTC-USDT and ETH-USDT, once each
    stored = rows(
        engine,
        "SELECT snapshot_ts, count(*) FROM raw_payloads WHERE endpoint LIKE :p GROUP BY 1",
        p=htx.CONTRACT_INFO + "%",
    )
    assert [n for _, n in stored] == [2, 2]
    quantities = rows(engine, "SELECT DISTINCT symbol, quantity FROM position_snapshots ORDER BY 1")
    assert quantities == [("BTC-USDT", Decimal("0.350")), ("ETH-USDT", Decimal("4.20"))]


def test_wrong_credentials_give_htx_auth_error_and_write_nothing_for_that_source(engine, seed_server):
    sim, url = seed_server
    settings_ = settings_for(
        source_entry("htx-bad", "htx", url, "seed-key", "not-the-secret"),
        source_entry("htx-seed", "htx", url, "seed-key", "seed-secret"),
    )
    results = run(engine, settings_)
    error = results["htx-bad"].error
    assert results["htx-bad"].status == "error" and results["htx-seed"].status == "ok"
    assert error == (
        "htx-bad: htx GET /v5/account/balance: HTTP 200, code 403: Verification failure [校验失败] "
        "(authentication failed: check the API key, its secret and the clock)"
    )
    assert results["htx-bad"].attempts == 2 and sim.rejected == 2  # a 403 is retried once, then terminal
    assert "not-the-secret" not in error
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'htx-bad'") == [
        ("error", error)
    ]
    assert rows(engine, "SELECT count(*) FROM accounts WHERE source = 'htx-bad'") == [(0,)]
    assert rows(engine, "SELECT count(*) FROM raw_payloads WHERE source = 'htx-bad'") == [(0,)]
    assert by_source(engine, "balance_snapshots", "htx-seed") == 2
    assert count(engine, "balance_snapshots") == 2


def test_an_intermittent_403_is_retried_once_with_a_fresh_signature_and_the_slot_loads(engine, seed_server):
    """huobi_Java#43: "it fails for about 3,4 request, and then the next request succeeded"."""
    sim, url = seed_server
    denied = '{"status": "error", "err_code": 403, "err_msg": "Verification failure [校验失败]", "ts": 1}'
    sim.fail_next(Fault(status=200, body=denied, content_type="application/json"))
    result = run(engine, settings_for(source_entry("htx-seed", "htx", url, "seed-key", "seed-secret")))[
        "htx-seed"
    ]
    assert result.status == "ok", result.error
    assert result.attempts == 2 and sim.requests[htx.BALANCE] == 2
    assert by_source(engine, "balance_snapshots", "htx-seed") == 2


def test_a_403_twice_is_terminal_and_not_retried_five_times(engine, seed_server):
    sim, url = seed_server
    denied = '{"status": "error", "err_code": 403, "err_msg": "Verification failure [校验失败]", "ts": 1}'
    sim.fail_next(*(Fault(status=200, body=denied, content_type="application/json") for _ in range(3)))
    result = run(engine, settings_for(source_entry("htx-seed", "htx", url, "seed-key", "seed-secret")))[
        "htx-seed"
    ]
    assert result.status == "error" and result.error.endswith(
        "(authentication failed: check the API key, its secret and the clock)"
    )
    assert result.attempts == 2 and sim.requests[htx.BALANCE] == 2
    assert rows(engine, "SELECT status FROM ingestion_runs WHERE source = 'htx-seed'") == [("error",)]


def test_an_unknown_key_is_refused_with_htx_access_key_error(engine, seed_server):
    _, url = seed_server
    settings_ = settings_for(source_entry("htx-nokey", "htx", url, "nobody", "x"))
    error = run(engine, settings_)["htx-nokey"].error
    assert error.endswith(
        "code 403: Incorrect Access key [Access key错误] "
        "(authentication failed: check the API key, its secret and the clock)"
    )
    assert count(engine, "accounts") == 0


def test_sources_polled_together_ask_for_a_contract_once(engine, seed_server):
    """A slot's start: many HTX sources holding the same contract must not each ask for it
    (that burst met the venue's rate limit in bench/poll.py)."""
    sim, url = seed_server
    settings_ = settings_for(
        *(source_entry(f"htx-{i}", "htx", url, "live-key", "live-secret") for i in range(5))
    )
    results = run(engine, settings_)
    assert all(r.status == "ok" for r in results.values()), results
    assert sim.requests[htx.CONTRACT_INFO] == 2  # BTC-USDT and ETH-USDT, once each for all five
    stored = rows(
        engine,
        "SELECT source, count(*) FROM raw_payloads WHERE endpoint LIKE :p GROUP BY 1",
        p=htx.CONTRACT_INFO + "%",
    )
    assert sorted(n for _, n in stored) == [2] * 5  # every source keeps what it was normalized with
