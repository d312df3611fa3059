"""The typed records every venue's normalizer produces and the loader stores.

Money is `Decimal` end to end; a `None` is a value the venue did not send (or sent as
`""`/`null`) and is stored as NULL, never as 0. `extra` holds every venue field that
has no column, under its own name and unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

Side = Literal["long", "short"]
MarginMode = Literal["cross", "isolated"]
Json = Any


@dataclass(frozen=True, slots=True)
class AccountRef:
    """One venue account behind a source; `external_id` is its stable identity."""

    external_id: str
    exchange: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class BalanceRow:
    account: str  # AccountRef.external_id
    account_type: str
    currency: str
    total: Decimal | None = None
    available: Decimal | None = None
    frozen: Decimal | None = None
    withdrawable: Decimal | None = None
    equity: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    initial_margin: Decimal | None = None
    maintenance_margin: Decimal | None = None
    value_usdt: Decimal | None = None
    venue_ts: datetime | None = None
    extra: dict[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccountRow:
    account: str
    account_type: str
    equity: Decimal | None = None
    available_margin: Decimal | None = None
    initial_margin: Decimal | None = None
    maintenance_margin: Decimal | None = None
    maintenance_margin_rate: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    equity_currency: str | None = None
    state: str | None = None
    venue_ts: datetime | None = None
    extra: dict[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PositionRow:
    account: str
    account_type: str
    symbol: str
    side: Side
    base: str | None = None
    quote: str | None = None
    quantity: Decimal | None = None
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None
    notional: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    realized_pnl: Decimal | None = None
    leverage: Decimal | None = None
    margin: Decimal | None = None
    maintenance_margin: Decimal | None = None
    liquidation_price: Decimal | None = None
    margin_mode: MarginMode | None = None
    venue_ts: datetime | None = None
    extra: dict[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawResponse:
    """One venue response as received (parsed with Decimals; never holds a secret).

    `text` is the body exactly as the venue sent it, when known: what `raw_payloads`
    stores, so the loader does not re-encode what the wire already gave as JSON text.
    """

    endpoint: str
    http_status: int
    body: Json
    fetched_at: datetime
    text: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one source produced for one slot: what the loader writes in one transaction.

    A position of size 0 is not open and gets no row, whichever venue sent it (Bybit and
    others list flat symbols with size 0): every normalizer builds its Batch, so the rule
    is kept here, once. A position whose size was not sent (quantity None) is kept.
    """

    accounts: tuple[AccountRef, ...] = ()
    balances: tuple[BalanceRow, ...] = ()
    account_rows: tuple[AccountRow, ...] = ()
    positions: tuple[PositionRow, ...] = ()

    def __post_init__(self) -> None:
        if any(p.quantity == 0 for p in self.positions):
            open_ = tuple(p for p in self.positions if p.quantity != 0)
            object.__setattr__(self, "positions", open_)  # frozen: set once, at construction

    def counts(self) -> dict[str, int]:
        return {
            "accounts": len(self.accounts),
            "balances": len(self.balances),
            "account_rows": len(self.account_rows),
            "positions": len(self.positions),
        }
