"""Equity analysis for people: pandas over the reporting views, and plots (matplotlib, headless)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, text


def account_equity(
    engine: Engine, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Equity per account (summed over its account types) and slot: one column per account."""
    query = text(
        """
        SELECT slot, source || '/' || external_id AS account, sum(equity) AS equity
        FROM account_equity
        WHERE (CAST(:since AS timestamptz) IS NULL OR slot >= :since)
          AND (CAST(:until AS timestamptz) IS NULL OR slot <= :until)
        GROUP BY slot, account ORDER BY slot
        """
    )
    with engine.connect() as conn:
        frame = pd.read_sql(query, conn, params={"since": since, "until": until})
    if frame.empty:
        return frame
    # Analysis only: Decimal -> float happens here, never on the way in.
    frame["equity"] = frame["equity"].astype(float)
    return frame.pivot(index="slot", columns="account", values="equity").sort_index()


def plot_equity(wide: pd.DataFrame, path: Path, title: str = "Equity") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=[1, 2])
    total = wide.sum(axis=1, min_count=1)
    top.plot(total.index, total.values, color="black", linewidth=2)
    top.set_title(f"{title}: total")
    top.grid(alpha=0.3)
    for column in wide.columns:
        bottom.plot(wide.index, wide[column].values, label=column)
    bottom.set_title("per account")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
