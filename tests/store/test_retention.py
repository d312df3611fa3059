"""Retention drops whole months of fine-grained rows and raw bodies, and keeps the rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from etl.errors import StoreError
from etl.records import RawResponse
from etl.store import locks, partitions, retention, rollups
from tests.helpers import rows
from tests.store.builders import at, load

NOW = at("2026-06-15T12:00:00")


def _months_of_data(engine) -> None:
    for day in ("2026-02-10", "2026-03-10", "2026-03-20", "2026-05-01"):
        slot = at(f"{day}T00:00:00")
        raw = (RawResponse("/account", 200, {"day": day}, slot),)
        load(engine, "s", slot, {"s": day[-2:]}, positions={"s": {"BTCUSDT": "1"}}, responses=raw)


def test_prune_drops_whole_months_past_the_horizon_and_keeps_the_rollups(engine):
    _months_of_data(engine)
    daily_before = rows(engine, "SELECT * FROM portfolio_equity_daily ORDER BY bucket")
    report = retention.prune(engine, timedelta(days=90), now=NOW)  # horizon 2026-03-17 12:00
    assert report.horizon == at("2026-03-17T12:00:00")
    # February's; other tests of the session may have left older months, past it too
    dropped = {d.partition for d in report.dropped}
    assert {f"{parent}_p2026_02" for parent in partitions.PARENTS} <= dropped
    assert all(name.rsplit("_p", 1)[1] < "2026_03" for name in dropped), dropped
    # March straddles the horizon: kept whole, including the 10th, which is past it
    assert rows(engine, "SELECT snapshot_ts FROM account_snapshots ORDER BY 1") == [
        (at("2026-03-10T00:00:00"),),
        (at("2026-03-20T00:00:00"),),
        (at("2026-05-01T00:00:00"),),
    ]
    assert rows(engine, "SELECT count(*) FROM raw_payloads")[0][0] == 3
    assert rows(engine, "SELECT count(*) FROM position_snapshots")[0][0] == 3
    assert rows(engine, "SELECT * FROM portfolio_equity_daily ORDER BY bucket") == daily_before
    assert f"dropped {len(dropped)} partition(s)" in report.summary()


def test_prune_with_nothing_old_enough_drops_nothing_and_says_so(engine):
    _months_of_data(engine)
    report = retention.prune(engine, timedelta(days=400), now=NOW)
    assert report.dropped == ()
    assert report.summary().startswith("nothing older than 2025-05-11")
    assert rows(engine, "SELECT count(*) FROM balance_snapshots")[0][0] == 4


def test_a_table_locked_by_a_long_query_is_one_clear_error_not_a_queue(engine, monkeypatch):
    _months_of_data(engine)
    monkeypatch.setattr(retention, "LOCK_TIMEOUT", "200ms")
    with engine.connect() as reader, reader.begin():
        reader.execute(text("SELECT count(*) FROM account_snapshots"))  # holds its lock until commit
        with pytest.raises(StoreError, match="account_snapshots stayed locked for 200ms"):
            retention.prune(engine, timedelta(days=90), now=NOW)
    with engine.connect() as conn:
        left = {p.name for p in partitions.list_partitions(conn)}
    assert "balance_snapshots_p2026_02" not in left  # the table before it was pruned
    assert "account_snapshots_p2026_02" in left
    report = retention.prune(engine, timedelta(days=90), now=NOW)  # and a later run finishes
    assert {d.parent for d in report.dropped} == {"account_snapshots", "position_snapshots", "raw_payloads"}


def test_etl_prune_takes_its_horizon_from_the_retention_table(engine, database_url, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from etl.cli import app

    old = datetime.now(UTC) - timedelta(days=200)
    load(engine, "s", old, {"s": "1"})
    load(engine, "s", datetime.now(UTC) - timedelta(minutes=5), {"s": "2"})
    config = tmp_path / "etl.toml"
    config.write_text('[retention]\nolder_than = "60d"\n')
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    result = CliRunner().invoke(app, ["prune", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"dropped balance_snapshots_p{old:%Y_%m}" in result.output
    assert rows(engine, "SELECT count(*) FROM account_snapshots") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM account_equity_daily") == [(2,)]
    bad = CliRunner().invoke(app, ["prune", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than: expected a duration" in bad.output


def test_etl_rollup_rebuild_recomputes_and_needs_its_flag(engine, database_url, monkeypatch):
    from typer.testing import CliRunner

    from etl.cli import app

    load(engine, "s", at("2026-03-01T10:00:00"), {"s": "5"})
    rollups.close(engine, at("2026-03-02T00:00:00"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE account_equity_daily_closed SET equity = 0"))
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    result = CliRunner().invoke(app, ["rollup", "--rebuild", "--since", "2026-03-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "account_equity_daily_closed: 1 rows" in result.output
    assert rows(engine, "SELECT equity FROM account_equity_daily") == [(5,)]
    missing = CliRunner().invoke(app, ["rollup"])
    assert missing.exit_code == 2 and "needs --rebuild" in missing.output


def test_prune_once_skips_while_another_replica_prunes(engine):
    load(engine, "s", at("2025-02-10T00:00:00"), {"s": "1"})
    with engine.connect() as other:  # another replica, mid-prune
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": locks.PRUNE})
        assert retention.prune_once(engine, timedelta(days=90)) is None
        assert rows(engine, "SELECT count(*) FROM balance_snapshots")[0][0] == 1
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": locks.PRUNE})
    assert retention.prune_once(engine, timedelta(days=90)).startswith("dropped ")
    assert rows(engine, "SELECT count(*) FROM balance_snapshots")[0][0] == 0


def _digests(engine, slot: datetime) -> dict[str, str]:
    return rows(engine, "SELECT row_digests FROM ingestion_runs WHERE snapshot_ts = :s", s=slot)[0][0]


def test_a_load_after_prune_copies_its_rows_and_stores_their_digest(engine):
    """Prune drops every row of a month's slots and keeps their run rows, digests and all:
    the held check then finds no row, so a re-load copies its rows (never trusting the
    digest), and the digest it leaves is of what it wrote."""
    slot = at("2026-02-10T00:00:00")
    load(engine, "s", slot, {"s": "1"}, positions={"s": {"BTCUSDT": "1"}})
    first = _digests(engine, slot)
    retention.prune(engine, timedelta(days=90), now=NOW)  # drops February
    assert rows(engine, "SELECT count(*) FROM balance_snapshots") == [(0,)]
    other = load(engine, "s", slot, {"s": "2"})  # other rows, into the slot's recreated month
    assert other.written == {"balance_snapshots": 1, "account_snapshots": 1, "position_snapshots": 0}
    assert _digests(engine, slot) != first
    # the first rows again: compared with the rows held (not skipped on the digest pruned)
    again = load(engine, "s", slot, {"s": "1"}, positions={"s": {"BTCUSDT": "1"}})
    assert again.written == {"balance_snapshots": 1, "account_snapshots": 1, "position_snapshots": 1}
    assert rows(engine, "SELECT total::text FROM balance_snapshots") == [("1",)]
    assert _digests(engine, slot) == first
    retention.prune(engine, timedelta(days=90), now=NOW)
    same = load(engine, "s", slot, {"s": "1"}, positions={"s": {"BTCUSDT": "1"}})  # the same rows
    assert same.written == {"balance_snapshots": 1, "account_snapshots": 1, "position_snapshots": 1}
    assert _digests(engine, slot) == first
