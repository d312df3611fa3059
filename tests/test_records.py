"""The records every venue produces: the rules kept once for all venues."""

from __future__ import annotations

from decimal import Decimal

from etl.records import Batch, PositionRow


def position(symbol: str, quantity: Decimal | None) -> PositionRow:
    return PositionRow("acct", "futures", symbol, "long", quantity=quantity)


def test_a_position_of_size_zero_is_not_open_and_the_batch_drops_it():
    batch = Batch(
        positions=(
            position("BTC-USDT", Decimal("0")),
            position("ETH-USDT", Decimal("1.5")),
            position("XRP-USDT", Decimal("-0.000")),
            position("SOL-USDT", None),  # size not sent: unknown, not zero, kept
        )
    )
    assert [p.symbol for p in batch.positions] == ["ETH-USDT", "SOL-USDT"]
    assert batch.counts()["positions"] == 2
