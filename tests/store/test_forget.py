"""`etl forget`: a slot loaded by mistake leaves no trace in the rows, views and rollups."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from etl.pipeline import close_rollups
from etl.store.forget import forget
from etl.store.schema import metadata
from tests.helpers import rows
from tests.store.builders import at, load

T0 = at("2026-03-02T10:00:00")
MISTAKE = at("2030-01-01T00:00:00")  # far ahead: the CLI refuses it, so it is loaded directly here
VIEWS = (
    "portfolio_equity", "portfolio_equity_hourly", "portfolio_equity_daily", "latest_balances",
    "balances_hourly", "balances_daily", "account_equity_hourly", "account_equity_daily",
    "accounts", "rollup_watermarks", "ingestion_runs", "raw_payloads",
)  # fmt: skip


def _load(engine, source: str, slot, equity: str, account: str | None = None) -> None:
    result = load(engine, source, slot, {account or source: equity})
    if result.closes:
        close_rollups(engine, result.closes)  # as the pipeline does after each commit


def _state(engine) -> dict[str, list]:
    drop = {"accounts": "id, source, external_id, first_seen_at, last_seen_at",
            "ingestion_runs": "source, snapshot_ts, status", "raw_payloads": "source, snapshot_ts"}
    return {v: sorted(map(tuple, rows(engine, f"SELECT {drop.get(v, '*')} FROM {v}")), key=repr) for v in VIEWS}


def _genuine(engine, mistake: bool) -> None:
    for n in range(6):  # 10:00 .. 12:30, two sources
        slot = T0 + timedelta(minutes=30 * n)
        _load(engine, "a", slot, str(100 + n))
        _load(engine, "b", slot, "50")
        if mistake and n == 2:
            _load(engine, "a", MISTAKE, "999")
            _load(engine, "a", MISTAKE, "1", account="ghost")  # an account only the mistake had


def test_forgetting_a_mistaken_slot_leaves_the_store_as_if_it_had_never_been_loaded(engine):
    _genuine(engine, mistake=False)
    never = _state(engine)
    with engine.begin() as conn:  # the same database, emptied, for the history with the mistake
        conn.execute(text(f"TRUNCATE {', '.join(t.name for t in metadata.sorted_tables)} RESTART IDENTITY"))
    _genuine(engine, mistake=True)
    assert rows(engine, "SELECT max(closed_until) FROM rollup_watermarks")[0][0] == MISTAKE
    assert _state(engine) != never
    done = forget(engine, MISTAKE, source="a")
    assert done.sources == ("a",) and done.runs == 1
    assert _state(engine) == never


def test_forget_command_names_what_it_removed_and_refuses_a_slot_not_loaded(engine, database_url, monkeypatch):
    from typer.testing import CliRunner

    from etl.cli import app

    _load(engine, "a", T0, "1")
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    runner = CliRunner()
    done = runner.invoke(app, ["forget", "--slot", "2026-03-02T10:00:00Z"])
    assert done.exit_code == 0, done.output
    assert "forgot slot 2026-03-02T10:00:00Z of a: 2 snapshot row(s), 1 run record(s)" in done.output
    again = runner.invoke(app, ["forget", "--slot", "2026-03-02T10:00:00Z", "--source", "a"])
    assert again.exit_code == 2 and "no slot 2026-03-02T10:00:00Z of source 'a' is loaded" in again.output


def test_a_slot_loaded_again_after_forget_is_fresh_and_gets_its_digests_anew(engine):
    """forget deletes the run row with the rows, so no digest of them is left to match."""
    _load(engine, "a", MISTAKE, "1")
    forget(engine, MISTAKE, "a")
    assert rows(engine, "SELECT count(*) FROM ingestion_runs") == [(0,)]
    result = load(engine, "a", MISTAKE, {"a": "1"})
    assert result.written == {"balance_snapshots": 1, "account_snapshots": 1, "position_snapshots": 0}
    (digests,) = rows(engine, "SELECT row_digests FROM ingestion_runs")[0]
    assert set(digests) == {"balance_snapshots", "account_snapshots", "position_snapshots"}
    assert load(engine, "a", MISTAKE, {"a": "2"}).written["balance_snapshots"] == 1  # compared, written
