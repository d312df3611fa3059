"""Equity and balances for people: pandas over the reporting views and rollups, and plots.

Reading (talks to PostgreSQL): `balances`, `account_equity`, `load_equity`. Analysis
(pure pandas): `analyze`, `drawdown`, `completeness`. Output: `render_*`, `plot_equity`
(matplotlib, headless). Money is Decimal from the database to every CSV and JSON output
(sums exact, at any number of digits); floats appear only for ratios (returns,
drawdowns) and plots. JSON carries money as JSON numbers with the stored digits, like
`report balances`; CSV as plain decimals; tables for the eye round.

Returns are changes of equity from one period to the next, not investment
performance: a deposit shows as a gain and a withdrawal as a loss.

A period is *incomplete* when an account that was expected in it did not report (the
rule of the `portfolio_equity` views: known by the period's end and seen again at or
after its start, or its source failed inside it). Incomplete periods keep their total
(of the accounts that did report) but are left out of returns and drawdowns, so a
missing account is never read as a loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import MAX_PREC, Decimal, localcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table
from sqlalchemy import Engine, text

from etl import exactjson
from etl.config import parse_duration
from etl.errors import ConfigError, EtlError

FORMATS = ("table", "csv", "json")
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
TOTAL = "total"
_ROWS_SHOWN = 48  # periods printed in a terminal table; csv and json carry all of them


# ---------------------------------------------------------------- parsing options


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (UTC if no zone), or a duration meaning that long ago: `7d`, `12h`."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time (2026-01-01T00:00:00Z) or an age (7d), got {value!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_freq(value: str | None) -> timedelta | None:
    """`auto` (None), `slot` (the slots as loaded: timedelta(0)), or a duration (`15m`, `1h`, `1d`)."""
    if value is None or value == "auto":
        return None
    if value == "slot":
        return timedelta(0)
    return parse_duration(value)


# ---------------------------------------------------------------- balances


BALANCE_COLUMNS = (
    "source", "external_id", "exchange", "account_type", "currency", "snapshot_ts", "total",
    "available", "frozen", "withdrawable", "equity", "unrealized_pnl", "value_usdt",
)  # fmt: skip


def balances(engine: Engine, at: datetime | None = None, account: str | None = None) -> list[dict[str, Any]]:
    """Balances at each source's latest ok slot (or as of `at`), Decimal exact."""
    origin = "balances_as_of(:at)" if at else "latest_balances"
    query = text(
        f"SELECT {', '.join(BALANCE_COLUMNS)} FROM {origin} "
        "WHERE (CAST(:account AS text) IS NULL OR :account IN (source, external_id, "
        "CASE WHEN source = external_id THEN source ELSE source || '/' || external_id END)) "
        "ORDER BY source, external_id, account_type, currency"
    )
    with engine.connect() as conn:
        found = [dict(r._mapping) for r in conn.execute(query, {"at": at, "account": account})]
        if account and not found and _accounts(conn, account).empty:
            raise unknown_account(account)
    return found


def unknown_account(account: str) -> ConfigError:
    """The one answer to a name that matches no account, whichever command was asked (exit 2)."""
    return ConfigError(f"--account: unknown account {account!r} (not a source, external id or source/external_id)")


def render_balances(rows: list[dict[str, Any]], fmt: str) -> str | Table:
    if fmt == "json":
        return exactjson.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows])
    if fmt == "csv":
        return _plain(pd.DataFrame(rows, columns=list(BALANCE_COLUMNS))).to_csv(
            index=False, date_format="%Y-%m-%dT%H:%M:%SZ"
        )
    slots = sorted({r["snapshot_ts"] for r in rows})
    title = "Balances" + (f" at {slots[-1].astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if len(slots) == 1 else "")
    table = Table(title=title, caption="amounts shown to 8 decimals; --format csv or json give every digit")
    table.add_column("account", overflow="fold", min_width=12)
    table.add_column("type", overflow="fold", min_width=6)
    table.add_column("currency", min_width=4)
    for column in ("total", "available", "equity"):
        table.add_column(column, justify="right", no_wrap=True)
    if len(slots) > 1:
        table.add_column("slot", no_wrap=True)
    for r in rows:
        label = r["source"] if r["source"] == r["external_id"] else f"{r['source']}/{r['external_id']}"
        cells = [
            label,
            r["account_type"],
            r["currency"],
            *(_amount(r[c]) for c in ("total", "available", "equity")),
        ]
        table.add_row(*cells, *([_cell(r["snapshot_ts"])] if len(slots) > 1 else []))
    return table


def _jsonable(value: Any) -> Any:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def _amount(value: Decimal | None) -> str:
    """For the eye only: grouped thousands, at most 8 decimals, no trailing zeros.
    Formatted, not quantized: quantize rounds to the context's 28 digits and raises past them."""
    if value is None:
        return ""
    text = f"{value:,.8f}" if value.as_tuple().exponent < -8 else f"{value:,f}"  # type: ignore[operator]
    return text.rstrip("0").rstrip(".") if "." in text else text


def exact_sum(values: Iterable[Any]) -> Decimal | None:
    """The sum of the Decimals among `values`, unrounded (the default context would round
    to 28 significant digits); None if there is none."""
    present = [v for v in values if v is not None and not pd.isna(v)]
    if not present:
        return None
    with localcontext() as ctx:
        ctx.prec = MAX_PREC
        return sum(present, Decimal(0))


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Decimals as plain digits for CSV (`0.00000001`, not `1E-8`); other cells untouched."""
    return frame.map(lambda v: f"{v:f}" if isinstance(v, Decimal) else v)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return str(value)


# ---------------------------------------------------------------- equity: reading


@dataclass(frozen=True)
class EquityInputs:
    """What the analysis needs, read from the database: all frames indexed by period start."""

    equity: pd.DataFrame  # period x account label: last equity in the period (summed over account types), float
    exact: pd.DataFrame  # the same as Decimal (None where absent): what the outputs print
    present: pd.DataFrame  # period x account label: True where the account reported
    accounts: pd.DataFrame  # label, source, first_seen_at, last_seen_at
    failures: pd.DataFrame  # source, slot: runs that were not ok
    freq: timedelta  # timedelta(0): the slots as loaded
    origin: str  # which table the values came from


def account_equity(
    engine: Engine, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Equity per account (summed over its account types) and slot: one column per account."""
    inputs = load_equity(engine, since=since, until=until, freq=timedelta(0))
    return inputs.equity


def load_equity(
    engine: Engine,
    since: datetime | None = None,
    until: datetime | None = None,
    freq: timedelta | None = None,
    account: str | None = None,
) -> EquityInputs:
    """Per-account equity resampled to `freq` (None: chosen from the span), from the finest
    table that is needed: the hourly or daily rollup when `freq` is a whole number of
    hours or days, the slots otherwise."""
    if since and until and since > until:
        raise ConfigError(f"--since {since:%Y-%m-%d %H:%M}Z is after --until {until:%Y-%m-%d %H:%M}Z")
    with engine.connect() as conn:
        accounts = _accounts(conn, account)
        first, last = conn.execute(
            text(
                "SELECT min(snapshot_ts), max(snapshot_ts) FROM ingestion_runs WHERE "
                "(CAST(:since AS timestamptz) IS NULL OR snapshot_ts >= :since) "
                "AND (CAST(:until AS timestamptz) IS NULL OR snapshot_ts <= :until)"
            ),
            {"since": since, "until": until},
        ).one()
        if account and accounts.empty:
            raise unknown_account(account)
        if first is None or accounts.empty:
            raise EtlError(_nothing(since, until, account))
        # the range asked for, not the slots still held: after a prune only the rollups cover it
        freq = auto_freq((until or last) - (since or first)) if freq is None else freq
        origin = _origin(freq)
        values = _equity_rows(conn, origin, first, last, accounts)
        if freq:
            rule = pd.Timedelta(freq)
            periods = pd.date_range(
                pd.Timestamp(first).floor(rule), pd.Timestamp(last).floor(rule), freq=rule
            )
        else:
            periods = _run_slots(conn, first, last)
        failures = _failures(conn, first, last)
    if values.empty:
        raise EtlError(_nothing(since, until, account))
    exact, present = _wide(values, accounts)
    if freq:
        exact, present = _resample(exact, present, freq)
    # Every period any source attempted, even one where no account reported: a gap is
    # shown (and flagged), not skipped.
    exact, present = exact.reindex(periods), present.reindex(periods, fill_value=False)
    exact = exact.astype(object).where(exact.notna(), None)
    # analysis only: Decimal -> float happens here, never on the way in or out
    equity = exact.map(lambda v: np.nan if v is None else float(v)).astype(float)
    return EquityInputs(equity, exact, present, accounts, failures, freq, origin)


# where equity is read from -> the width of its buckets (None: the slots as loaded)
ORIGINS = {"account_equity": None, "account_equity_hourly": "hour", "account_equity_daily": "day"}


def _origin(freq: timedelta) -> str:
    if freq and freq % DAY == timedelta(0):
        return "account_equity_daily"
    if freq and freq % HOUR == timedelta(0):
        return "account_equity_hourly"
    return "account_equity"


def auto_freq(span: timedelta) -> timedelta:
    """The slots for two days or less, hours up to four months, days beyond."""
    if span <= 2 * DAY:
        return timedelta(0)
    return HOUR if span <= 120 * DAY else DAY


def _nothing(since: datetime | None, until: datetime | None, account: str | None) -> str:
    where = f" of account {account!r}" if account else ""
    since_text = f"{since:%Y-%m-%d %H:%M}Z" if since else "the start"
    until_text = f"{until:%Y-%m-%d %H:%M}Z" if until else "now"
    return f"no equity{where} between {since_text} and {until_text} (nothing loaded? try `etl run --once`)"


def _accounts(conn: Any, account: str | None) -> pd.DataFrame:
    rows = conn.execute(
        text(
            """
            SELECT id, CASE WHEN source = external_id THEN source ELSE source || '/' || external_id END,
                   source, external_id, first_seen_at, last_seen_at
            FROM accounts ORDER BY 2
            """
        )
    ).all()
    frame = pd.DataFrame(
        rows, columns=["id", "label", "source", "external_id", "first_seen_at", "last_seen_at"]
    )
    if account:
        frame = frame[(frame.label == account) | (frame.source == account) | (frame.external_id == account)]
    for column in ("first_seen_at", "last_seen_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.reset_index(drop=True)


def _equity_rows(
    conn: Any, origin: str, first: datetime, last: datetime, accounts: pd.DataFrame
) -> pd.DataFrame:
    width = ORIGINS[origin]
    time = (
        f"date_trunc('{width}', CAST(:first AS timestamptz), 'UTC')"
        if width
        else "CAST(:first AS timestamptz)"
    )
    column = "bucket" if width else "slot"
    rows = conn.execute(
        text(
            f"SELECT {column}, account_id, sum(equity), count(*) FROM {origin} "
            f"WHERE {column} >= {time} AND {column} <= :last AND account_id = ANY(:ids) GROUP BY 1, 2"
        ),
        {"first": first, "last": last, "ids": [int(i) for i in accounts.id]},
    ).all()
    frame = pd.DataFrame(rows, columns=["period", "id", "equity", "rows"])
    frame["period"] = pd.to_datetime(frame["period"], utc=True)
    frame["equity"] = frame["equity"].astype(object)
    return frame


def _run_slots(conn: Any, first: datetime, last: datetime) -> pd.DatetimeIndex:
    slots = conn.execute(
        text(
            "SELECT DISTINCT snapshot_ts FROM ingestion_runs WHERE snapshot_ts >= :a AND snapshot_ts <= :b ORDER BY 1"
        ),
        {"a": first, "b": last},
    ).scalars()
    return pd.DatetimeIndex(pd.to_datetime(list(slots), utc=True), name="period")


def _failures(conn: Any, first: datetime, last: datetime) -> pd.DataFrame:
    rows = conn.execute(
        text(
            "SELECT source, snapshot_ts FROM ingestion_runs WHERE status <> 'ok' "
            "AND snapshot_ts >= :a AND snapshot_ts <= :b"
        ),
        {"a": first, "b": last},
    ).all()
    frame = pd.DataFrame(rows, columns=["source", "slot"])
    frame["slot"] = pd.to_datetime(frame["slot"], utc=True)
    return frame


def _wide(values: pd.DataFrame, accounts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    label = dict(zip(accounts.id, accounts.label, strict=True))
    values = values.assign(account=values["id"].map(label))
    # Every account, even one silent over the whole range: it may be expected there.
    columns = pd.Index(accounts.label, name=None)
    equity = values.pivot(index="period", columns="account", values="equity").sort_index()
    present = values.pivot(index="period", columns="account", values="rows").sort_index().notna()
    return equity.reindex(columns=columns), present.reindex(columns=columns, fill_value=False)


def _resample(
    equity: pd.DataFrame, present: pd.DataFrame, freq: timedelta
) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Periods start on multiples of `freq` since the epoch, like slots: days at 00:00 UTC.
    rule = pd.Timedelta(freq)
    last = equity.resample(rule, origin="epoch", label="left", closed="left").last()
    seen = present.resample(rule, origin="epoch", label="left", closed="left").max()
    return last, seen.astype("boolean").fillna(False).astype(bool)


# ---------------------------------------------------------------- equity: analysis (pure)


def expected(inputs: EquityInputs) -> np.ndarray:
    """Period x account: known by the period's end, and seen at or after its start or its
    source failed inside it (the rule of the portfolio_equity views)."""
    periods = inputs.equity.index
    width = pd.Timedelta(inputs.freq) if inputs.freq else pd.Timedelta(microseconds=1)
    accounts = inputs.accounts.set_index("label").reindex(inputs.equity.columns)
    starts = periods.to_numpy()[:, None]
    ends = (periods + width).to_numpy()[:, None]
    known = accounts.first_seen_at.to_numpy()[None, :] < ends
    seen_later = accounts.last_seen_at.to_numpy()[None, :] >= starts
    failed = np.zeros(known.shape, dtype=bool)
    slots = inputs.failures.slot.dt.floor(width) if inputs.freq else inputs.failures.slot
    for row, source in zip(periods.get_indexer(slots), inputs.failures.source, strict=True):
        if row >= 0:  # a failure outside the periods shown (before the first) is not ours to flag
            failed[row, (accounts.source == source).to_numpy()] = True
    return known & (seen_later | failed)


def completeness(inputs: EquityInputs) -> pd.DataFrame:
    """Per period: accounts reporting, accounts expected, and whether some expected one is missing."""
    due = expected(inputs)
    reporting = inputs.present.to_numpy()
    return pd.DataFrame(
        {
            "accounts_reporting": reporting.sum(axis=1),
            "accounts_expected": due.sum(axis=1),
            "incomplete": (due & ~reporting).any(axis=1),
        },
        index=inputs.equity.index,
    )


@dataclass(frozen=True)
class Drawdown:
    max_drawdown: float  # <= 0, e.g. -0.12 for 12 % below the running peak
    peak_at: pd.Timestamp | None
    trough_at: pd.Timestamp | None
    recovered_at: pd.Timestamp | None  # back at the peak's level; None if not yet


def drawdown(series: pd.Series) -> tuple[pd.Series, Drawdown]:
    """The drawdown series (equity / running peak - 1) and its deepest point with its dates."""
    series = series.dropna()
    peak = series.cummax()
    under = (series / peak - 1).where(peak > 0)  # no drawdown below a peak of zero or less
    if under.isna().all():
        return under, Drawdown(float("nan"), None, None, None)
    trough_at = under.idxmin()
    peak_at = series.loc[:trough_at].idxmax()
    after = series.loc[trough_at:]
    recovered = after[after >= series.loc[peak_at]]
    recovered_at = recovered.index[0] if float(under.min()) < 0 and not recovered.empty else None
    return under, Drawdown(float(under.min()), peak_at, trough_at, recovered_at)


@dataclass(frozen=True)
class EquityReport:
    periods: (
        pd.DataFrame
    )  # accounts..., total, return, cumulative_return, drawdown, reporting, expected, incomplete
    summary: pd.DataFrame  # per account and total: first/last equity, returns, max drawdown and its dates
    accounts: list[str]
    freq: timedelta
    origin: str


def analyze(inputs: EquityInputs) -> EquityReport:
    flags = completeness(inputs)
    # An account silent over the range stays (an empty column) if it was expected in it.
    relevant = inputs.present.to_numpy().any(axis=0) | expected(inputs).any(axis=0)
    equity, exact = inputs.equity.loc[:, relevant], inputs.exact.loc[:, relevant]
    total = equity.sum(axis=1, min_count=1)  # for the ratios; the total printed is exact
    exact_total = pd.Series([exact_sum(row) for row in exact.itertuples(index=False)], index=exact.index,
                            dtype=object)
    complete = total[~flags.incomplete]
    under, _ = drawdown(complete)
    periods = exact.copy()
    periods[TOTAL] = exact_total
    periods["return"] = complete.pct_change(fill_method=None).reindex(total.index)
    base = complete.dropna()
    periods["cumulative_return"] = (complete / base.iloc[0] - 1).reindex(total.index) if len(base) else np.nan
    periods["drawdown"] = under.reindex(total.index)
    periods = periods.join(flags)
    summary = pd.DataFrame(
        [_summarize(equity[c], exact[c], c) for c in equity.columns]
        + [_summarize(complete, exact_total, TOTAL)]
    )
    summary.loc[summary.account == TOTAL, "incomplete_periods"] = int(flags.incomplete.sum())
    return EquityReport(
        periods, summary.set_index("account"), list(equity.columns), inputs.freq, inputs.origin
    )


def _summarize(series: pd.Series, exact: pd.Series, name: str) -> dict[str, Any]:
    """`series` (float) gives the ratios; `exact` the equities printed, at the same periods."""
    values = series.dropna()
    _, dd = drawdown(values)
    return {
        "account": name,
        "first_at": values.index[0] if len(values) else None,
        "last_at": values.index[-1] if len(values) else None,
        "first_equity": exact[values.index[0]] if len(values) else None,
        "last_equity": exact[values.index[-1]] if len(values) else None,
        "cumulative_return": values.iloc[-1] / values.iloc[0] - 1
        if len(values) and values.iloc[0]
        else np.nan,
        "max_drawdown": dd.max_drawdown,
        "peak_at": dd.peak_at,
        "trough_at": dd.trough_at,
        "recovered_at": dd.recovered_at,
        "incomplete_periods": 0,
    }


# ---------------------------------------------------------------- equity: output


def describe_freq(freq: timedelta) -> str:
    if not freq:
        return "slot"
    seconds = int(freq.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_equity(report: EquityReport, fmt: str) -> str | list[Table]:
    if fmt == "csv":  # money: every stored digit; ratios: 10 significant digits
        return _plain(report.periods).rename_axis("period").to_csv(
            date_format="%Y-%m-%dT%H:%M:%SZ", float_format="%.10g"
        )
    if fmt == "json":
        return _equity_json(report)
    return [_periods_table(report), _summary_table(report)]


def _equity_json(report: EquityReport) -> str:
    def records(frame: pd.DataFrame, index: str) -> list[dict[str, Any]]:
        # not DataFrame.to_json: it writes every number through float
        frame = frame.rename_axis(index).reset_index()
        return [{k: _json_cell(v) for k, v in zip(frame.columns, row, strict=True)}
                for row in frame.itertuples(index=False)]

    return exactjson.dumps(
        {
            "freq": describe_freq(report.freq),
            "from": report.origin,
            "note": "returns are equity changes, not adjusted for deposits and withdrawals",
            "periods": records(report.periods, "period"),
            "summary": records(report.summary, "account"),
        }
    )


def _json_cell(value: Any) -> Any:
    if isinstance(value, Decimal | str) or value is None:
        return value
    if value is pd.NaT:
        return None
    if isinstance(value, datetime):
        return _jsonable(value)
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    return None if pd.isna(value) else float(value)


def _when(report: EquityReport) -> str:
    """How a period is written: by day, by minute, or by second for fast slots."""
    if report.freq and report.freq % DAY == timedelta(0):
        return "%Y-%m-%d"
    return (
        "%Y-%m-%d %H:%M"
        if report.freq and report.freq % timedelta(minutes=1) == timedelta(0)
        else "%Y-%m-%d %H:%M:%S"
    )


def _periods_table(report: EquityReport) -> Table:
    periods = report.periods
    shown = periods.tail(_ROWS_SHOWN)
    per_account = report.accounts if len(report.accounts) <= 4 else []
    title = f"Equity per {describe_freq(report.freq)} (from {report.origin})"
    if len(periods) > len(shown):
        title += f": last {len(shown)} of {len(periods)} periods (--format csv for all)"
    table = Table(title=title)
    table.add_column("period", no_wrap=True)
    for column in (*per_account, TOTAL, "return", "drawdown", "reporting"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("note")
    for at, row in shown.iterrows():
        table.add_row(
            f"{at:{_when(report)}}",
            *(_money(row[c]) for c in (*per_account, TOTAL)),
            _percent(row["return"]),
            _percent(row["drawdown"]),
            f"{row.accounts_reporting}/{row.accounts_expected}",
            "[yellow]incomplete" if row.incomplete else "",
        )
    return table


def _summary_table(report: EquityReport) -> Table:
    table = Table(title="Change over the range (equity changes, not adjusted for deposits and withdrawals)")
    table.add_column("account", overflow="fold")
    for column in ("last", "change", "max drawdown"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("peak -> trough (recovered)", overflow="fold")
    when = _when(report).removeprefix("%Y-")
    for name, row in report.summary.iterrows():
        dates = ""
        if isinstance(row.peak_at, pd.Timestamp) and row.max_drawdown < 0:
            dates = f"{row.peak_at:{when}} -> {row.trough_at:{when}}"
            dates += f" ({row.recovered_at:{when}})" if isinstance(row.recovered_at, pd.Timestamp) else ""
        table.add_row(
            f"[bold]{name}" if name == TOTAL else str(name),
            _money(row.last_equity),
            _percent(row.cumulative_return),
            _percent(row.max_drawdown),
            dates,
        )
    incomplete = int(report.summary.loc[TOTAL, "incomplete_periods"])
    if incomplete:
        table.caption = f"{incomplete} incomplete period(s) left out of the total's change and drawdown"
    return table


def _money(value: Any) -> str:
    return "" if pd.isna(value) else f"{value:,.2f}"


def _percent(value: Any) -> str:
    return "" if pd.isna(value) else "0.00%" if value == 0 else f"{value:+.2%}"


def plot_equity(
    wide: pd.DataFrame,
    path: Path,
    title: str = "Equity",
    incomplete: pd.Series | None = None,
    currency: str = "USDT",
) -> None:
    """Total equity with its drawdowns shaded, the drawdown curve, and each account's change
    in % from its first value (levels hide a 0.1 % move on a 0-450k axis). Incomplete
    periods are shaded; a missing value is a gap in the line, an isolated one a dot."""
    wide = wide.dropna(axis=1, how="all")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    total = wide.sum(axis=1, min_count=1)
    flagged = (
        pd.Series(False, index=total.index)
        if incomplete is None
        else incomplete.reindex(total.index, fill_value=False).astype(bool)
    )
    complete = total[~flagged]
    under, dd = drawdown(complete)
    peak = complete.dropna().cummax()
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(12, 8.5), sharex=True, height_ratios=[3, 1, 3], constrained_layout=True
    )
    marker = {"marker": ".", "markersize": 4}  # a value between two gaps is still seen
    top.plot(complete.index, complete.values, color="black", linewidth=1.8, label="total equity", **marker)
    top.fill_between(
        peak.index, peak.values, complete.dropna().values, color="tab:red", alpha=0.25, label="drawdown"
    )
    for at in total.index[flagged.to_numpy()]:
        for axis in (top, middle, bottom):
            axis.axvspan(*_period_span(at, total.index), color="tab:orange", alpha=0.15, linewidth=0)
    if flagged.any():  # shaded only: a partial total plotted would stretch the axis down to it
        top.axvspan(total.index[0], total.index[0], color="tab:orange", alpha=0.15,
                    label="incomplete period: an expected account did not report")
    top.set_title(
        f"{title}: total" + (f" (max drawdown {dd.max_drawdown:.2%})" if pd.notna(dd.max_drawdown) else "")
    )
    top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    top.set_ylabel(f"equity ({currency})")
    top.legend(loc="upper left", fontsize=8)
    middle.fill_between(under.index, under.values, 0, color="tab:red", alpha=0.5)
    middle.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2%}"))
    middle.set_ylabel("drawdown")
    drawn = _accounts_to_draw(wide)
    for column in drawn.columns:
        series = drawn[column]
        first = series.dropna()
        base = first.iloc[0] if len(first) and first.iloc[0] else np.nan
        bottom.plot(drawn.index, (series / base - 1).values, label=column, linewidth=1.1, **marker)
    bottom.set_title("per account: change from its first value in the range")
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.2%}"))
    bottom.set_ylabel("change")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    locator = mdates.AutoDateLocator(tz=UTC)
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    bottom.set_xlabel("time (UTC)")
    bottom.set_xlim(*_padded(total.index))
    for axis in (top, middle, bottom):
        axis.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _period_span(at: pd.Timestamp, index: pd.Index) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A period's extent on the time axis: to the next period (or as wide as the one before)."""
    n = index.get_loc(at)
    step = index[n + 1] - at if n + 1 < len(index) else (at - index[n - 1] if n else pd.Timedelta(minutes=1))
    return at, at + step


def _padded(index: pd.Index) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The range shown: the periods and a margin; one slot gets an hour around it, not years."""
    first, last = index.min(), index.max()
    margin = max((last - first) * 0.02, pd.Timedelta(minutes=30) if first == last else pd.Timedelta(0))
    return first - margin, last + margin


def _accounts_to_draw(wide: pd.DataFrame, most: int = 10) -> pd.DataFrame:
    """Up to `most` accounts by latest equity; the rest summed into one line."""
    if wide.shape[1] <= most:
        return wide
    order = wide.ffill().iloc[-1].sort_values(ascending=False).index
    kept = wide[order[: most - 1]].copy()
    kept[f"other {wide.shape[1] - most + 1} accounts"] = wide[order[most - 1 :]].sum(axis=1, min_count=1)
    return kept
