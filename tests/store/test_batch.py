"""Several sources' slots in one transaction (`pipeline.store_many`, `etl.store.batch`):
the same tables as one load per source, and each source's slot still whole or not at all."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from etl import pipeline
from etl.errors import StoreError
from etl.pipeline import Polled, RunResult, store, store_many
from etl.records import AccountRef, AccountRow, BalanceRow, Batch, PositionRow, RawResponse
from etl.store import rollups
from etl.store.engine import make_engine
from etl.store.load import claim_slots
from etl.store.schema import ROLLUPS, metadata
from tests.helpers import SLOT, row_versions, rows, settings_for, source_entry

N = 6


def _batch(i: int) -> Batch:
    """Source i: two accounts (one of them shared by name with every other source), texts
    that COPY must escape, a None, JSON in extra, a position."""
    accounts = (AccountRef("main", exchange="BINANCE", note=f"desk\t{i}"), AccountRef(f"sub-{i}"))
    return Batch(
        accounts=accounts,
        balances=tuple(
            BalanceRow(
                a.external_id,
                "spot",
                ccy,
                total=Decimal(f"{i}.{n}00000000000000000001"),
                available=None,
                extra={"path": "C:\\x", "n": Decimal("1E-8")},
            )
            for a in accounts
            for n, ccy in enumerate(("USDT", "BTC", "None"))
        ),
        account_rows=(AccountRow("main", "futures", equity=Decimal(i), state="ok\nfine"),),
        positions=(PositionRow(f"sub-{i}", "futures", "BTCUSDT", "long", quantity=Decimal("0.5")),),
    )


def _responses(i: int) -> tuple[RawResponse, ...]:
    body = f'{{"i": {i},\n\t"path": "C:\\\\x", "v": 1.10}}'
    return (
        RawResponse("/account", 200, None, SLOT + timedelta(seconds=i), text=body),
        RawResponse("/positions", 200, {"rows": [Decimal("2.50")]}, SLOT + timedelta(seconds=i)),
    )


def _polls(n: int = N) -> list[Polled]:
    settings = settings_for(
        *(source_entry(f"s{i}", "bittap", "http://127.0.0.1:9", f"k{i}", "x") for i in range(n))
    )
    return [
        Polled(source, SLOT, SLOT, _responses(i), _batch(i), None, 1 + i % 2)
        for i, source in enumerate(settings.sources)
    ]


def _tables(engine: Engine) -> dict[str, list[Any]]:
    """Every table's rows, with generated ids replaced by what they point at."""
    snapshot = (
        "SELECT a.source, a.external_id, to_jsonb(t) - 'account_id' - 'run_id', r.source, r.snapshot_ts "
        "FROM {} t JOIN accounts a ON a.id = t.account_id JOIN ingestion_runs r ON r.id = t.run_id"
    )
    tables = {
        name: snapshot.format(name)
        for name in ("balance_snapshots", "account_snapshots", "position_snapshots")
    }
    tables["accounts"] = "SELECT to_jsonb(t) - 'id' FROM accounts t"
    # row_digests: a single load keeps them, a batched one hashes nothing (NULL: not known)
    tables["ingestion_runs"] = (
        "SELECT to_jsonb(t) - 'id' - 'finished_at' - 'row_digests' FROM ingestion_runs t"
    )
    tables["raw_payloads"] = (
        "SELECT to_jsonb(p) - 'run_id' - 'body', p.body::text, r.source, r.snapshot_ts "
        "FROM raw_payloads p LEFT JOIN ingestion_runs r ON r.id = p.run_id"
    )
    return {name: sorted(map(tuple, rows(engine, sql)), key=repr) for name, sql in tables.items()}


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(t.name for t in metadata.sorted_tables)} RESTART IDENTITY"))


def _ok(results: list[RunResult | StoreError]) -> list[RunResult]:
    assert all(isinstance(r, RunResult) for r in results), results
    return [r for r in results if isinstance(r, RunResult)]


def _no_single_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def single(*_: Any, **__: Any) -> Any:
        raise AssertionError("a fresh slot was loaded on its own")

    monkeypatch.setattr(pipeline, "store", single)


def test_a_batch_of_sources_loads_exactly_what_one_load_per_source_would(engine, monkeypatch):
    polls = _polls()
    for polled in polls:
        assert store(engine, polled, keep_loaded=True).status == "ok"
    singly = _tables(engine)
    _empty(engine)
    _no_single_loads(monkeypatch)
    results = _ok(store_many(engine, polls))
    assert [(r.source, r.status, r.already_loaded) for r in results] == [
        (f"s{i}", "ok", False) for i in range(N)
    ]
    assert results[0].counts == {"accounts": 2, "balances": 6, "account_rows": 1, "positions": 1}
    assert results[0].written == {"balance_snapshots": 6, "account_snapshots": 1, "position_snapshots": 1}
    assert _tables(engine) == singly
    assert len(singly["balance_snapshots"]) == 6 * N and len(singly["raw_payloads"]) == 2 * N
    assert rows(engine, "SELECT DISTINCT row_digests FROM ingestion_runs") == [(None,)]


def test_a_batched_load_leaves_no_digest_behind(engine, monkeypatch):
    """The batched loads hash nothing, so a run row they write says `not known` (NULL),
    whatever it held before: no digest outlives a write of other rows. (Only slots nothing
    was loaded for come here, whose rows hold none; this one is set by hand.)"""
    polls = _polls(2)
    with engine.begin() as conn:
        claim_slots(
            conn, sources=[p.source.name for p in polls], slot=SLOT, worker="w", abandoned=(SLOT, SLOT)
        )
        conn.execute(text("""UPDATE ingestion_runs SET row_digests = '{"balance_snapshots": "0"}'"""))
    _no_single_loads(monkeypatch)
    _ok(store_many(engine, polls))
    assert rows(engine, "SELECT DISTINCT status, row_digests FROM ingestion_runs") == [("ok", None)]


def test_claims_of_this_worker_become_ok_rows(engine, monkeypatch):
    polls = _polls()
    _no_single_loads(monkeypatch)
    with engine.begin() as conn:
        claimed = claim_slots(
            conn, sources=[p.source.name for p in polls], slot=SLOT, worker="w", abandoned=(SLOT, SLOT)
        )
    assert len(claimed) == N
    _ok(store_many(engine, polls))
    assert rows(engine, "SELECT DISTINCT status, worker, balances FROM ingestion_runs") == [("ok", None, 6)]


def test_a_source_whose_value_postgresql_refuses_is_its_error_and_the_others_load(engine):
    polls = _polls()
    bad = polls[3]
    row = replace(bad.batch.balances[0], total=Decimal("1e999999"))  # type: ignore[union-attr]
    polls[3] = replace(bad, batch=replace(bad.batch, balances=(row,)))  # type: ignore[arg-type]
    alone = store(engine, polls[3])  # the message of the single path, for comparison
    _empty(engine)
    results = _ok(store_many(engine, polls))
    assert [r.status for r in results] == ["ok", "ok", "ok", "error", "ok", "ok"]
    assert results[3].error == alone.error and "balance_snapshots.total of account 'main'" in results[3].error
    assert rows(engine, "SELECT source, status FROM ingestion_runs WHERE status <> 'ok'") == [("s3", "error")]
    assert rows(engine, "SELECT count(*) FROM raw_payloads WHERE source = 's3'") == [(2,)]  # kept for replay
    loaded = rows(
        engine, "SELECT DISTINCT a.source FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id"
    )
    assert sorted(s for (s,) in loaded) == ["s0", "s1", "s2", "s4", "s5"]


def test_a_slot_loaded_already_is_kept_and_the_others_load(engine):
    polls = _polls()
    store(engine, polls[2], keep_loaded=True)
    before = row_versions(engine)
    changed = replace(polls[2], batch=_batch(99))
    results = _ok(store_many(engine, [*polls[:2], changed, *polls[3:]]))
    assert [r.already_loaded for r in results] == [False, False, True, False, False, False]
    assert before <= row_versions(engine)  # the first load's rows, untouched
    assert rows(engine, "SELECT count(*) FROM accounts WHERE external_id = 'sub-99'") == [(0,)]


def test_rerunning_a_batch_rewrites_nothing(engine, monkeypatch):
    polls = _polls()
    _no_single_loads(monkeypatch)
    _ok(store_many(engine, polls))
    before, tables = row_versions(engine), _tables(engine)
    results = _ok(store_many(engine, polls))
    assert all(r.already_loaded for r in results)
    assert row_versions(engine) == before and _tables(engine) == tables


def test_a_slot_that_failed_before_is_loaded_on_its_own_and_replaces_the_error(engine):
    polls = _polls()
    store(engine, replace(polls[1], batch=None, error="s1: venue said no"))
    results = _ok(store_many(engine, polls))
    assert all(r.status == "ok" and not r.already_loaded for r in results)
    assert rows(engine, "SELECT DISTINCT status, error FROM ingestion_runs") == [("ok", None)]
    assert rows(engine, "SELECT count(*) FROM raw_payloads") == [(2 * N,)]


def test_a_database_that_is_down_is_a_transient_store_error(database_url):
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2})
    with pytest.raises(StoreError) as caught:
        store_many(down, _polls())
    assert caught.value.transient
    down.dispose()


def _rollups(engine: Engine) -> list[Any]:
    return sorted(
        (
            tuple(r)
            for rollup, _, _ in ROLLUPS
            for r in rows(
                engine,
                f"SELECT '{rollup.name}', a.source, a.external_id, to_jsonb(t) - 'account_id' "
                f"FROM {rollup.name} t JOIN accounts a ON a.id = t.account_id",
            )
        ),
        key=repr,
    )


def test_a_batch_into_closed_rollup_buckets_writes_them_as_single_loads_would(engine):
    later = SLOT + timedelta(days=2)
    polls = _polls()
    for loaded in (False, True):
        rollups.close(engine, later)  # the slot's hour and day are closed: a late load upserts them
        if loaded:
            _ok(store_many(engine, polls))
        else:
            for polled in polls:
                store(engine, polled, keep_loaded=True)
            singly = _rollups(engine)
            _empty(engine)
    assert singly and _rollups(engine) == singly


def test_the_first_batch_of_a_new_hour_asks_for_the_close_of_the_hours_before(engine):
    store(engine, _polls()[0], keep_loaded=True)
    polls = [replace(p, slot=SLOT + timedelta(hours=1)) for p in _polls()]
    results = _ok(store_many(engine, polls))
    assert {r.closes for r in results} == {SLOT + timedelta(hours=1)}
