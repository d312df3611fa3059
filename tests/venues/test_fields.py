"""The shared field reader: exact numbers or a clear error, never a silent 0."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from etl.errors import NormalizeError
from etl.venues.fields import Fields, ms_to_datetime, parse_decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12282.88002680674743639045", "12282.88002680674743639045"), ("1E-8", "1E-8"), ("-0.5", "-0.5"),
     (" 7 ", "7"), (Decimal("3.0100"), "3.0100"), (20, "20"), (".5", "0.5"), ("5.", "5")],
)
def test_numbers_parse_exactly(value, expected):
    assert str(parse_decimal(value, "v")) == expected


@pytest.mark.parametrize("value", ["", None])
def test_empty_is_none_never_zero(value):
    assert parse_decimal(value, "v") is None


@pytest.mark.parametrize("value", ["12,5 USDT", "1_000", "Infinity", "NaN", "١٢", "0x10", True, 1.5, [1], "--1"])
def test_anything_else_is_an_error_naming_the_field(value):
    with pytest.raises(NormalizeError, match=r"^venue data\[2\]\.total: expected a (finite )?number"):
        parse_decimal(value, "venue data[2].total")


def test_epoch_milliseconds_become_utc():
    assert ms_to_datetime(1736995068674, "t") == datetime(2025, 1, 16, 2, 37, 48, 674000, tzinfo=UTC)
    assert ms_to_datetime("1736995068674", "t") == datetime(2025, 1, 16, 2, 37, 48, 674000, tzinfo=UTC)


def test_rest_keeps_unread_fields_unchanged():
    f = Fields({"a": "1", "b": None, "c": {"x": Decimal("1.10")}}, "v")
    assert f.decimal("a") == 1
    assert f.rest() == {"b": None, "c": {"x": Decimal("1.10")}}


def test_missing_required_field_and_wrong_shapes():
    with pytest.raises(NormalizeError, match=r"^v\.coin: missing$"):
        Fields({}, "v").text("coin", required=True)
    with pytest.raises(NormalizeError, match=r"^v: expected an object, got list$"):
        Fields([], "v")
    with pytest.raises(NormalizeError, match=r"^v\.assets: expected a list, got str$"):
        Fields({"assets": "x"}, "v").list("assets")
