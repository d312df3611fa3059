"""Text COPY encoding: every edge case read back exactly through a real PostgreSQL COPY."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import Engine

from etl import exactjson
from etl.records import AccountRow, BalanceRow, PositionRow
from etl.store import copy

SLOT = datetime(2026, 1, 1, tzinfo=UTC)
TAIL = (SLOT, SLOT + timedelta(seconds=2), 7)
BALANCES = copy.Layout.of(BalanceRow)


def test_layouts_put_numbers_and_texts_first_times_after_and_extra_last():
    assert BALANCES.columns == [
        "account_id", "account_type", "currency", "total", "available", "frozen", "withdrawable",
        "equity", "unrealized_pnl", "initial_margin", "maintenance_margin", "value_usdt",
        "venue_ts", "extra",
    ]  # fmt: skip
    assert BALANCES.text == ("account_type", "currency")
    positions = copy.Layout.of(PositionRow)
    assert positions.text == ("account_type", "symbol", "side", "base", "quote", "margin_mode")
    assert positions.times == ("venue_ts",)
    assert copy.Layout.of(AccountRow).text == ("account_type", "equity_currency", "state")


def test_plain_batch_is_tab_separated_with_none_as_null_and_the_tail_on_every_line():
    rows = [
        BalanceRow("a", "Spot", "USDT", total=Decimal("1.50"), venue_ts=SLOT, extra={"n": None}),
        BalanceRow("a", "Spot", "BTC", equity=Decimal("-0.00000001")),
    ]
    text = "".join(copy.lines(rows, BALANCES, {"a": 42}, TAIL))
    first, second = text.splitlines()
    assert first.split("\t") == [
        "42", "Spot", "USDT", "1.50", *["None"] * 8, "2026-01-01 00:00:00+00:00", '{"n":null}',
        "2026-01-01 00:00:00+00:00", "2026-01-01 00:00:02+00:00", "7",
    ]  # fmt: skip
    assert second.split("\t")[7] == "-1E-8"  # str(Decimal): PostgreSQL reads exponents


def _digest(rows, layout=BALANCES, tail=TAIL, ids=None, table="balance_snapshots") -> tuple[str, str]:
    """(the digest of `rows`, the COPY text sent) for one encoding."""
    digest = copy.new_digest(table, layout)
    text = "".join(copy.lines(rows, layout, ids or {"a": 1}, tail, digest))
    return copy.digest_text(digest), text


def test_the_digest_is_of_the_rows_not_of_the_loads_constants():
    rows = [*HARD, *(replace(HARD[0], currency=f"X{i}") for i in range(copy.CHUNK + 10))]  # two chunks
    first, sent = _digest(rows)
    later, sent_later = _digest(rows, tail=(SLOT + timedelta(minutes=1), SLOT + timedelta(minutes=2), 8))
    assert first == later and sent != sent_later
    assert _digest(rows, tail=())[0] == first  # the stage's COPY (no tail) hashes alike
    assert sent == "".join(copy.lines(rows, BALANCES, {"a": 1}, TAIL))  # hashing changes no byte sent
    assert len(first) == 32 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        lambda rows: [replace(rows[0], total=Decimal("12282.88002680674743639046")), *rows[1:]],
        lambda rows: [*rows[:3], replace(rows[3], total=Decimal("100.0000000000000000000000000"))],  # scale
        lambda rows: [replace(rows[0], total=None), *rows[1:]],
        lambda rows: [*rows[:5], replace(rows[5], extra={**rows[5].extra, "q": Decimal("0.10")})],
        lambda rows: [replace(rows[0], venue_ts=SLOT), *rows[1:]],
        lambda rows: rows[:-1],  # a row gone
        lambda rows: [rows[1], rows[0], *rows[2:]],  # another order
    ],
    ids=["value", "scale", "null", "json scale", "time", "row gone", "order"],
)
def test_the_digest_changes_with_any_value_sent(change):
    assert _digest(change(list(HARD)))[0] != _digest(HARD)[0]


def test_the_digest_changes_with_the_scale_of_a_number():
    one = [BalanceRow("a", "Spot", "USDT", total=Decimal("1.0"))]
    assert _digest(one)[0] != _digest([replace(one[0], total=Decimal("1.00"))])[0]


def test_the_digest_starts_with_the_table_and_its_columns():
    reordered = replace(BALANCES, plain=(BALANCES.plain[1], BALANCES.plain[0], *BALANCES.plain[2:]))
    assert reordered.columns != BALANCES.columns
    assert _digest(HARD, reordered)[0] != _digest(HARD)[0]
    assert _digest(HARD, table="position_snapshots")[0] != _digest(HARD)[0]
    assert _digest(HARD, ids={"a": 2})[0] != _digest(HARD)[0]  # another account id
    # no rows: the header alone, still one per table and layout
    assert _digest([])[0] == _digest([], tail=())[0] != _digest([], reordered)[0]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("tab\there", "tab\\there"),
        ("new\nline\r", "new\\nline\\r"),
        ("back\\slash", "back\\\\slash"),
        ("None", "\\None"),  # the NULL marker as a value: escaped, read back as text
        ("plain", "plain"),
    ],
)
def test_text_fields_that_need_it_are_escaped(value, expected):
    assert copy.escape_text(value) == expected


def test_json_keeps_decimals_exact_and_falls_back_for_integers_beyond_64_bits():
    assert copy.json_text({"a": Decimal("0.10"), "b": Decimal("1E-8"), "c": 1}) == '{"a":0.10,"b":1E-8,"c":1}'
    assert copy.json_text({"id": 2**70}) == '{"id":1180591620717411303424}'


def test_field_by_field_encoding_of_general_values():
    row = (1, "a\tb", None, Decimal("2.5"), True, {"k": "v\\"})
    assert "\t".join(map(copy.field, row)) == '1\ta\\tb\tNone\t2.5\tt\t{"k":"v\\\\\\\\"}'
    with pytest.raises(TypeError, match="cannot COPY a float"):
        copy.field(1.5)


def _round_trip(engine: Engine, rows: list[BalanceRow]) -> list[tuple]:
    """COPY the rows into a temporary copy of balance_snapshots and read them back."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    columns = [*BALANCES.columns, "snapshot_ts", "fetched_at", "run_id"]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE t (LIKE balance_snapshots)")
        with conn.cursor().copy(f"COPY t ({', '.join(columns)}) FROM STDIN {copy.COPY_OPTIONS}") as pipe:
            for chunk in copy.lines(rows, BALANCES, {"a": 1}, TAIL):
                pipe.write(chunk)
        return conn.execute(
            "SELECT account_type, currency, total, total::text, available, venue_ts, extra::text, run_id "
            "FROM t ORDER BY currency"
        ).fetchall()


HARD = [
    BalanceRow("a", "Spot", "A26", total=Decimal("12282.88002680674743639045")),  # 26 digits
    BalanceRow("a", "Spot", "B-EXP", total=Decimal("1E-8"), available=Decimal("-5E+3")),
    BalanceRow("a", "Spot", "C-NEG", total=Decimal("-0.000000000000000000000000001")),
    BalanceRow("a", "Spot", "D-ZEROS", total=Decimal("100.00000000000000000000000000")),
    BalanceRow("a", "Spot", "E-NULL", venue_ts=SLOT + timedelta(microseconds=250_000)),
    BalanceRow(
        "a",
        "Spot",
        "F-JSON",
        total=Decimal("1"),
        extra={"q": Decimal("0.100"), "s": 'quote " back\\ tab\t nl\n', "n": None, "l": [Decimal("1E-8")]},
    ),
]


@pytest.mark.db
def test_hard_values_read_back_exactly_through_copy(engine):
    got = {r[1]: r for r in _round_trip(engine, HARD)}
    assert got["A26"][3] == "12282.88002680674743639045"
    assert got["B-EXP"][2].as_tuple() == Decimal("1E-8").as_tuple() and got["B-EXP"][4] == Decimal("-5000")
    assert got["C-NEG"][3] == "-0.000000000000000000000000001"
    assert got["D-ZEROS"][3] == "100.00000000000000000000000000"  # the scale is kept
    assert got["E-NULL"][2] is None and got["E-NULL"][4] is None  # NULL, never 0
    assert got["E-NULL"][5] == SLOT + timedelta(microseconds=250_000)
    extra = exactjson.loads(got["F-JSON"][6])  # as text: the driver would parse floats
    assert extra == {
        "q": Decimal("0.100"),
        "s": 'quote " back\\ tab\t nl\n',
        "n": None,
        "l": [Decimal("1E-8")],
    }
    assert {r[7] for r in got.values()} == {7}


@pytest.mark.db
def test_a_batch_with_special_text_takes_the_escaping_path_and_reads_back_as_sent(engine):
    weird = ["None", "tab\tcur", "nl\ncur", "back\\cur", "cr\rcur"]
    rows = [replace(HARD[0], account_type=t, currency=c) for t, c in zip(weird, reversed(weird), strict=True)]
    got = _round_trip(engine, rows)
    assert sorted((r[0], r[1]) for r in got) == sorted(zip(weird, reversed(weird), strict=True))
    assert all(r[0] is not None for r in got)  # the text "None" is not NULL
