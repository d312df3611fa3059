"""Replay: stored raw bodies, normalized again by today's code and loaded again."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from etl.errors import NormalizeError
from etl.replay import replay
from etl.sim.bittap import BittapSimulator
from etl.venues import bittap
from tests.helpers import SLOT, row_versions, rows, run, served, settings_for, source_entry
from tests.venues.test_bittap import seed_body

NEXT = SLOT + timedelta(minutes=1)


@pytest.fixture
def sources():
    """`seed` serves the venue's example body (26-digit decimals); `other` a simulated account."""
    seed, other = BittapSimulator(seed=1), BittapSimulator(seed=2)
    seed.add_account("seed-key", "seed-secret", body=seed_body())
    other.add_account("other-key", "other-secret")
    with served(seed) as seed_server, served(other) as other_server:
        yield settings_for(
            source_entry("seed", "bittap", seed_server.url, "seed-key", "seed-secret"),
            source_entry("other", "bittap", other_server.url, "other-key", "other-secret"),
        )


def _broken(source, responses):  # type: ignore[no-untyped-def]
    raise NormalizeError("bittap data.assets[0].balance: the bug this replay fixes")


def _drops_balances(source, responses):  # type: ignore[no-untyped-def]
    return replace(_real(source, responses), balances=())


_real = bittap.normalize


def test_a_slot_the_old_normalizer_failed_on_loads_on_replay_exactly(engine, sources, monkeypatch):
    monkeypatch.setattr(bittap, "normalize", _broken)
    assert run(engine, sources)["seed"].status == "error"
    assert rows(engine, "SELECT count(*) FROM balance_snapshots") == [(0,)]
    monkeypatch.setattr(bittap, "normalize", _real)  # the fix

    report = replay(engine, sources)

    assert report.failed == ()
    assert {(s.source, s.slot) for s in report.slots} == {("seed", SLOT), ("other", SLOT)}
    assert rows(engine, "SELECT status FROM ingestion_runs ORDER BY source") == [("ok",), ("ok",)]
    totals = rows(
        engine,
        "SELECT b.total::text FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id "
        "WHERE a.source = 'seed' AND b.currency = 'USDT'",
    )
    assert totals == [("12282.88002680674743639045",)]  # through jsonb and back, not through float
    assert rows(engine, "SELECT count(*) FROM balances_daily")[0][0] == count_balances(engine)


def count_balances(engine) -> int:
    return rows(engine, "SELECT count(*) FROM balance_snapshots")[0][0]


def test_replay_restores_rows_and_rollups_a_buggy_normalizer_left_out(engine, sources, monkeypatch):
    monkeypatch.setattr(bittap, "normalize", _drops_balances)
    run(engine, sources)
    run(engine, sources, NEXT)
    assert count_balances(engine) == 0
    monkeypatch.setattr(bittap, "normalize", _real)

    report = replay(engine, sources, since=NEXT, sources=["seed"])

    assert [(s.source, s.slot) for s in report.slots] == [("seed", NEXT)]
    got = rows(
        engine,
        "SELECT a.source, b.snapshot_ts, b.total FROM balance_snapshots b "
        "JOIN accounts a ON a.id = b.account_id WHERE b.currency = 'USDT'",
    )
    assert got == [("seed", NEXT, Decimal("12282.88002680674743639045"))]
    assert rows(engine, "SELECT snapshot_ts FROM balances_hourly WHERE currency = 'USDT'") == [(NEXT,)]


def test_replaying_twice_rewrites_nothing(engine, sources):
    run(engine, sources)
    replay(engine, sources)
    before = row_versions(engine)
    report = replay(engine, sources)
    assert sum(s.written for s in report.slots) == 0
    assert row_versions(engine) == before


def _usdt_doubled(source, responses):  # type: ignore[no-untyped-def]
    batch = _real(source, responses)
    doubled = [replace(b, total=b.total * 2) if b.currency == "USDT" else b for b in batch.balances]
    return replace(batch, balances=tuple(doubled))


def test_a_replay_after_a_normalizer_change_writes_the_changed_rows_whatever_the_digests(
    engine, sources, monkeypatch
):
    run(engine, sources)
    replay(engine, sources)  # the first loads were batched (no digest): now every run row has one
    assert rows(engine, "SELECT count(*) FROM ingestion_runs WHERE row_digests IS NULL") == [(0,)]
    usdt = (
        "SELECT a.source, b.total FROM balance_snapshots b "
        "JOIN accounts a ON a.id = b.account_id WHERE b.currency = 'USDT' ORDER BY 1"
    )
    before, versions = rows(engine, usdt), row_versions(engine)
    monkeypatch.setattr(bittap, "normalize", _usdt_doubled)

    report = replay(engine, sources)

    assert sum(s.written for s in report.slots) == len(before) == 2
    assert rows(engine, usdt) == [(source, total * 2) for source, total in before]
    assert len(versions - row_versions(engine)) == 2  # those rows, and no other, rewritten
    assert sum(s.written for s in replay(engine, sources).slots) == 0  # then unchanged again


def test_a_slot_that_still_fails_is_reported_and_left_alone(engine, sources, monkeypatch):
    run(engine, sources)
    before = row_versions(engine)
    monkeypatch.setattr(bittap, "normalize", _broken)
    report = replay(engine, sources)
    assert len(report.failed) == 2
    assert "the bug this replay fixes" in (report.failed[0].error or "")
    assert row_versions(engine) == before
    assert rows(engine, "SELECT DISTINCT status FROM ingestion_runs") == [("ok",)]
    assert "2 still failing" in report.summary()


def _huge_coin(source, responses):  # type: ignore[no-untyped-def]
    """A 3 kB random currency: the index row is too big (SQLSTATE 54000), the data's fault."""
    batch = _real(source, responses)
    return replace(
        batch, balances=tuple(replace(b, currency=secrets.token_hex(1500)) for b in batch.balances)
    )


def test_a_value_postgresql_refuses_on_replay_names_its_column_not_an_internal_error(
    engine, sources, monkeypatch
):
    run(engine, sources)
    before = row_versions(engine)
    monkeypatch.setattr(bittap, "normalize", _huge_coin)
    report = replay(engine, sources, sources=["seed"])
    [failed] = report.failed
    assert failed.error is not None and "internal error" not in failed.error
    # a re-load stages its rows, so PostgreSQL names no COPY line: the table, and its message
    assert failed.error.startswith("seed: index row size ") and "table balance_snapshots" in failed.error
    assert "\n" not in failed.error
    assert row_versions(engine) == before  # the slot as it was


def test_etl_replay_finds_the_venue_from_loaded_accounts_when_the_config_lacks_it(
    engine, sources, monkeypatch, database_url, tmp_path
):
    from typer.testing import CliRunner

    from etl.cli import app

    monkeypatch.setattr(bittap, "normalize", _broken)
    run(engine, sources)
    monkeypatch.setattr(bittap, "normalize", _real)
    run(engine, sources, NEXT)  # these accounts are now known, with their venue
    monkeypatch.setenv("ETL_DATABASE_URL", database_url)
    config = tmp_path / "empty.toml"
    config.write_text("")
    result = CliRunner().invoke(app, ["replay", "--config", str(config), "--source", "seed"])
    assert result.exit_code == 0, result.output
    assert "replayed 2 slot(s): 2 loaded" in result.output
    assert rows(engine, "SELECT status FROM ingestion_runs WHERE source = 'seed'") == [("ok",), ("ok",)]
    assert rows(engine, "SELECT status FROM ingestion_runs WHERE source = 'other' ORDER BY 1") == [
        ("error",),
        ("ok",),
    ]


def test_a_source_in_neither_the_config_nor_the_accounts_is_reported(engine):
    from etl.config import Settings
    from etl.records import RawResponse
    from tests.store.builders import fail

    fail(engine, "ghost", SLOT, (RawResponse("/x", 200, {"ok": True}, SLOT),))
    report = replay(engine, Settings())
    assert [s.error for s in report.slots] == ["ghost: venue unknown (not in the config, no account loaded)"]
    assert report.rebuilt == ()
