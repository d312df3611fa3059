"""Bittap: signing against the documented vectors, and the seed example normalized exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from etl import exactjson
from etl.errors import NormalizeError, VenueError
from etl.records import RawResponse
from etl.venues import bittap
from tests.conftest import FIXTURES

FETCHED = datetime(2026, 1, 1, tzinfo=UTC)


def seed_body() -> dict:
    return exactjson.loads((FIXTURES / "bittap_account_info.json").read_text())


def response(body: object) -> list[RawResponse]:
    return [RawResponse(bittap.ACCOUNT_INFO, 200, body, FETCHED)]


# Self-computed vectors (shared/venues/bittap.md): neither Bittap nor any public client
# publishes one, so these pin today's output; tests/sim/test_auth.py proves the signer
# against the simulator's own verifier, written from Bittap's docs.


def test_signature_matches_the_documented_vector_without_params():
    assert bittap.sign("test-secret", "", "1758179319143", "8f14e45fceea167a") == (
        "da78a10209801b36770ee659ba4dac687f7601e70612d146ce3b1c73671b7cd5"
    )


def test_signature_matches_the_documented_vector_with_a_query():
    query = bittap.canonical_query({"symbolId": "XRP-USDT-M"})
    assert bittap.sign("test-secret", query, "1758179319143", "8f14e45fceea167a") == (
        "14fa0ed7c8895f73fa828fac44f21a2e4b996f5408901cc143b84ee6f8154e22"
    )


def test_the_query_is_built_once_encoded_and_without_empty_values():
    params = {"tag": "a b,c", "note": "", "symbolId": "XRP-USDT-M"}
    assert bittap.canonical_query(params) == "symbolId=XRP-USDT-M&tag=a%20b%2Cc"
    request = bittap.build_request(
        "https://openapi.bittap.com", bittap.ACCOUNT_INFO, params, "k", "s", "1", "n"
    )
    assert request.url.query == b"symbolId=XRP-USDT-M&tag=a%20b%2Cc"
    assert request.headers["X-BT-SIGN"] == bittap.sign("s", "symbolId=XRP-USDT-M&tag=a%20b%2Cc", "1", "n")


def test_request_carries_the_four_auth_headers_and_no_secret():
    request = bittap.build_request(
        "https://openapi.bittap.com", bittap.ACCOUNT_INFO, {}, "k", "s3cret", "1758179319143", "n1"
    )
    assert request.headers["X-BT-APIKEY"] == "k"
    assert request.headers["X-BT-TS"] == "1758179319143"
    assert request.headers["X-BT-NONCE"] == "n1"
    assert len(request.headers["X-BT-SIGN"]) == 64
    assert "s3cret" not in str(request.url) + json.dumps(dict(request.headers))


def test_seed_example_normalizes_exactly():
    batch = bittap.normalize("bittap-main", response(seed_body()))
    assert [a.external_id for a in batch.accounts] == ["bittap-main"]
    (usdt,) = batch.balances
    assert usdt.account_type == "futures" and usdt.currency == "USDT"
    assert usdt.total == Decimal("12282.88002680674743639045")
    assert str(usdt.total) == "12282.88002680674743639045"
    assert usdt.equity == Decimal("11765.70795680674743639045")
    assert usdt.extra["trialFundBalance"] == "0"
    (totals,) = batch.account_rows
    assert totals.equity == Decimal("11765.70795680674743639045")
    assert totals.extra["totalTrialFundBalance"] == "0" and "assets" not in totals.extra
    (position,) = batch.positions
    assert (position.symbol, position.side, position.margin_mode) == ("XRP-USDT-M", "long", "cross")
    assert (position.base, position.quote) == ("XRP", "USDT")
    assert position.quantity == Decimal("871.1")
    assert position.mark_price is None and position.unrealized_pnl is None  # null stays NULL
    assert position.leverage == Decimal(20)
    assert position.extra["positionId"] == "8039784359178546030"
    assert position.extra["tpSlOrders"] == [] and position.extra["bkrFee"] is None
    assert position.venue_ts == datetime(2025, 9, 18, 7, 8, 39, 143000, tzinfo=UTC)


def test_sell_is_short_and_quantity_is_absolute():
    body = seed_body()
    body["data"]["positions"][0].update(side="SELL", quantity="-5", marginMode="ISOLATED")
    (position,) = bittap.normalize("b", response(body)).positions
    assert (position.side, position.quantity, position.margin_mode) == (
        "short",
        Decimal(5),
        "isolated",
    )


@pytest.mark.parametrize("quantity", ["0", "0.000", "-0"])
def test_a_zero_quantity_position_is_not_open_and_gets_no_row(quantity):
    """It used to be stored as an open long of 0 (side BUY, quantity 0)."""
    body = seed_body()
    body["data"]["positions"][0]["quantity"] = quantity
    assert bittap.normalize("b", response(body)).positions == ()


def test_a_non_number_names_the_field_and_its_position():
    body = seed_body()
    body["data"]["assets"][0]["balance"] = "12,5 USDT"
    with pytest.raises(
        NormalizeError,
        match=r"bittap data\.assets\[0\]\.balance: expected a number, got '12,5 USDT'",
    ):
        bittap.normalize("b", response(body))


def test_an_unknown_side_is_an_error():
    body = seed_body()
    body["data"]["positions"][0]["side"] = "BOTH"
    with pytest.raises(NormalizeError, match=r"positions\[0\]\.side"):
        bittap.normalize("b", response(body))


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            401,
            {"code": "410002", "msg": "Signature verification failed", "success": False},
            "HTTP 401, code 410002: Signature verification failed "
            r"\(check the API key, its secret, its Futures permission and the clock\)$",
        ),
        (
            200,
            {"code": "10001", "msg": "Parameter error", "success": False},
            "code 10001: Parameter error",
        ),
        (200, [], "expected a JSON object"),
    ],
)
def test_error_envelopes_become_venue_errors(status, body, message):
    with pytest.raises(VenueError, match=message):
        bittap.check_envelope(status, body)


def test_success_envelope_passes():
    bittap.check_envelope(200, seed_body())


def test_a_quantity_longer_than_the_decimal_context_stays_exact():
    body = seed_body()
    body["data"]["positions"][0].update(side="SELL", quantity="-123456789012345678901234567890.123")
    (position,) = bittap.normalize("b", response(body)).positions
    assert str(position.quantity) == "123456789012345678901234567890.123"
