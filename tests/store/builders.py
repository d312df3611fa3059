"""Load hand-made batches through the real loader: equity and balances per account and slot."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine

from etl.records import AccountRef, AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.store.load import LoadResult, load_slot, record_failure


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def batch(
    equity: Mapping[str, str | None],
    balances: Mapping[str, Mapping[str, str]] | None = None,
    positions: Mapping[str, Mapping[str, str]] | None = None,
) -> Batch:
    """`equity`: account -> equity; `balances`: account -> {currency: total} (default USDT =
    equity); `positions`: account -> {symbol or symbol:short: notional}."""
    balances = balances if balances is not None else {a: {"USDT": e or "0"} for a, e in equity.items()}
    return Batch(
        accounts=tuple(AccountRef(a) for a in equity),
        balances=tuple(
            BalanceRow(a, "futures", ccy, total=Decimal(v), available=Decimal(v), equity=Decimal(v))
            for a, by_ccy in balances.items()
            for ccy, v in by_ccy.items()
        ),
        account_rows=tuple(
            AccountRow(a, "futures", equity=None if e is None else Decimal(e), equity_currency="USDT")
            for a, e in equity.items()
        ),
        positions=tuple(
            _position(a, key, Decimal(v))
            for a, by_sym in (positions or {}).items()
            for key, v in by_sym.items()
        ),
    )


def _position(account: str, key: str, notional: Decimal) -> PositionRow:
    """`key` is `SYMBOL` (long) or `SYMBOL:short`; the base is the symbol's first 3 letters."""
    symbol, _, side = key.partition(":")
    return PositionRow(
        account, "futures", symbol, "short" if side == "short" else "long", base=symbol[:3], notional=notional
    )


def load(
    engine: Engine,
    source: str,
    slot: datetime,
    equity: Mapping[str, str | None],
    balances: Mapping[str, Mapping[str, str]] | None = None,
    positions: Mapping[str, Mapping[str, str]] | None = None,
    responses: tuple[RawResponse, ...] = (),
    venue: str = "bittap",
) -> LoadResult:
    with engine.begin() as conn:
        return load_slot(
            conn,
            source=source,
            venue=venue,
            slot=slot,
            batch=batch(equity, balances, positions),
            responses=responses,
            started_at=slot,
            attempts=1,
        )


def fail(engine: Engine, source: str, slot: datetime, responses: tuple[RawResponse, ...] = ()) -> None:
    with engine.begin() as conn:
        record_failure(
            conn,
            source=source,
            slot=slot,
            started_at=slot,
            error=f"{source}: venue down",
            attempts=1,
            responses=responses,
        )
