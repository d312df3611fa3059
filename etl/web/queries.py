"""What the dashboard reads: SQL over the views and rollups only, sums of money in NUMERIC.

Each function takes an open connection and returns plain values (Decimals stay Decimals;
the JSON layer writes them as strings). Ranges of the equity chart read the rollups, so
90 days of hourly buckets cost about what a day of slots does: `1d` reads the slots of
the last day (`portfolio_equity`), `7d`..`90d` the hourly buckets, `all` the daily ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

# range name -> (how far back, the granularity it reads): "" the slots, else a rollup
RANGES: dict[str, tuple[timedelta | None, str]] = {
    "1d": (timedelta(days=1), ""),
    "7d": (timedelta(days=7), "_hourly"),
    "30d": (timedelta(days=30), "_hourly"),
    "90d": (timedelta(days=90), "_hourly"),
    "all": (None, "_daily"),
}


def _range_source(range_name: str, base: str) -> tuple[timedelta | None, str, str]:
    """(how far back, the view of `base` the range reads, its time column)."""
    back, width = RANGES[range_name]
    return back, base + width, "bucket" if width else "slot"


CHANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RUNS_LIMIT = 500

# Each source's latest `ok` slot: what "now" means for an account (as in latest_balances).
_LAST_OK = """
    SELECT source, max(snapshot_ts) AS slot FROM ingestion_runs WHERE status = 'ok' GROUP BY source
"""


@dataclass(frozen=True)
class Point:
    at: datetime
    total: Decimal
    reporting: int
    expected: int


def equity_series(conn: Connection, range_name: str, now: datetime) -> list[Point]:
    """Total equity over the range, oldest first."""
    back, view, column = _range_source(range_name, "portfolio_equity")
    where = "" if back is None else f"WHERE {column} >= :since"
    rows = conn.execute(
        text(
            f"SELECT {column} AS at, total_equity, accounts_reporting, accounts_expected "
            f"FROM {view} {where} ORDER BY {column}"
        ),
        {"since": now - back} if back is not None else {},
    )
    return [Point(r.at, r.total_equity, int(r.accounts_reporting), int(r.accounts_expected)) for r in rows]


def drawdowns(points: list[Point]) -> list[float | None]:
    """Each point's fall from the highest total before it, as a ratio (0 at a new high).
    A point where an expected account did not report has none and sets no peak: its total
    is short by that account, not a loss (as in `etl report equity`)."""
    peak: Decimal | None = None
    out: list[float | None] = []
    for p in points:
        if p.reporting < p.expected:
            out.append(None)
            continue
        peak = p.total if peak is None or p.total > peak else peak
        out.append(float(p.total / peak - 1) if peak > 0 else 0.0)
    return out


def latest_equity(conn: Connection) -> list[dict[str, Any]]:
    """Every account at its source's latest ok slot, one row per account and equity currency."""
    rows = conn.execute(
        text(
            f"""
            WITH last AS ({_LAST_OK})
            SELECT a.id, a.source, a.venue, a.external_id, a.exchange, a.note, last.slot,
                   string_agg(DISTINCT e.account_type, ', ' ORDER BY e.account_type) AS account_types,
                   e.equity_currency, sum(e.equity) AS equity
            FROM accounts a
            JOIN last ON last.source = a.source
            JOIN account_equity e ON e.account_id = a.id AND e.slot = last.slot
            GROUP BY a.id, a.source, a.venue, a.external_id, a.exchange, a.note, last.slot, e.equity_currency
            ORDER BY a.source, a.external_id, e.equity_currency
            """
        )
    )
    return [dict(r._mapping) for r in rows]


def equity_at(conn: Connection, moment: datetime) -> dict[tuple[int, str | None], Decimal]:
    """Per (account, equity currency): the equity of the last hourly bucket at or before `moment`."""
    rows = conn.execute(
        text(
            """
            SELECT h.account_id, h.equity_currency, sum(h.equity) AS equity
            FROM account_equity_hourly h
            JOIN (SELECT account_id, max(bucket) AS bucket FROM account_equity_hourly
                  WHERE bucket <= :at AND bucket > :at - interval '1 day' GROUP BY account_id) b
              ON b.account_id = h.account_id AND b.bucket = h.bucket
            GROUP BY h.account_id, h.equity_currency
            """
        ),
        {"at": moment},
    )
    return {(int(r.account_id), r.equity_currency): r.equity for r in rows}


def total_at(conn: Connection, moment: datetime) -> Decimal | None:
    """The portfolio total of the last hourly bucket at or before `moment` (within a day)."""
    row = conn.execute(
        text(
            "SELECT total_equity FROM portfolio_equity_hourly "
            "WHERE bucket <= :at AND bucket > :at - interval '1 day' ORDER BY bucket DESC LIMIT 1"
        ),
        {"at": moment},
    ).first()
    return None if row is None else row.total_equity


def first_slot(conn: Connection) -> datetime | None:
    """The oldest slot the store still summarizes (the daily rollup outlives retention)."""
    return conn.execute(text("SELECT min(bucket) FROM portfolio_equity_daily")).scalar()


def account(conn: Connection, account_id: int) -> dict[str, Any] | None:
    row = conn.execute(text("SELECT * FROM accounts WHERE id = :id"), {"id": account_id}).first()
    return None if row is None else dict(row._mapping)


def account_series(conn: Connection, account_id: int, range_name: str, now: datetime) -> list[dict[str, Any]]:
    """One account's equity over the range, per point and equity currency."""
    back, view, column = _range_source(range_name, "account_equity")
    since = "" if back is None else f"AND {column} >= :since"
    params: dict[str, Any] = {"id": account_id}
    if back is not None:
        params["since"] = now - back
    rows = conn.execute(
        text(
            f"SELECT {column} AS at, equity_currency, sum(equity) AS equity FROM {view} "
            f"WHERE account_id = :id {since} GROUP BY {column}, equity_currency ORDER BY {column}"
        ),
        params,
    )
    return [dict(r._mapping) for r in rows]


def balances(
    conn: Connection, at: datetime | None, *, account_id: int | None = None, detail: bool = False
) -> list[dict[str, Any]]:
    """Latest balances (or as of `at`), summed by venue and currency, or one row per account."""
    source = "latest_balances" if at is None else "balances_as_of(:at)"
    where = "" if account_id is None else "WHERE account_id = :account_id"
    if detail or account_id is not None:
        sql = (
            f"SELECT source, venue, external_id, exchange, account_type, currency, snapshot_ts, total, "
            f"available, frozen, equity, unrealized_pnl, value_usdt FROM {source} {where} "
            f"ORDER BY source, external_id, account_type, currency"
        )
    else:
        sql = (
            f"SELECT venue, currency, sum(total) AS total, sum(available) AS available, "
            f"sum(equity) AS equity, sum(value_usdt) AS value_usdt, "
            f"count(DISTINCT account_id) AS accounts, max(snapshot_ts) AS snapshot_ts "
            f"FROM {source} GROUP BY venue, currency ORDER BY venue, currency"
        )
    return [dict(r._mapping) for r in conn.execute(text(sql), {"at": at, "account_id": account_id})]


def runs(conn: Connection, *, source: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            """
            SELECT id, source, snapshot_ts, status, error, attempts, accounts, balances, positions,
                   started_at, finished_at,
                   extract(epoch FROM finished_at - started_at) AS seconds
            FROM ingestion_runs
            WHERE (CAST(:source AS text) IS NULL OR source = :source)
              AND (CAST(:status AS text) IS NULL OR status = :status)
            ORDER BY snapshot_ts DESC, source
            LIMIT :limit
            """
        ),
        {"source": source, "status": status, "limit": min(limit, RUNS_LIMIT)},
    )
    return [dict(r._mapping) for r in rows]


def run_sources(conn: Connection) -> list[str]:
    """Every source with a run row: the dashboard also shows sources no longer configured."""
    return [r.source for r in conn.execute(text("SELECT DISTINCT source FROM ingestion_runs ORDER BY 1"))]


def missed_since(conn: Connection, since: datetime) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT source, count(*) AS n FROM ingestion_runs "
            "WHERE status = 'missed' AND snapshot_ts >= :since GROUP BY source"
        ),
        {"since": since},
    )
    return {r.source: int(r.n) for r in rows}


def health(conn: Connection) -> list[dict[str, Any]]:
    """Per source with runs: last ok slot, last error after it (if any), with its message."""
    rows = conn.execute(
        text(
            """
            SELECT s.source,
                   (SELECT max(venue) FROM accounts a WHERE a.source = s.source) AS venue,
                   (SELECT max(snapshot_ts) FROM ingestion_runs r
                    WHERE r.source = s.source AND r.status = 'ok') AS last_ok,
                   e.snapshot_ts AS error_slot, e.error
            FROM (SELECT DISTINCT source FROM ingestion_runs) s
            LEFT JOIN LATERAL (
                SELECT snapshot_ts, error FROM ingestion_runs r
                WHERE r.source = s.source AND r.status = 'error'
                ORDER BY snapshot_ts DESC LIMIT 1
            ) e ON true
            ORDER BY s.source
            """
        )
    )
    return [dict(r._mapping) for r in rows]
