"""The daemon's live loads (`etl.daemon.loads`): polls of a slot that arrive together go to
the database in one transaction, each slot still gets its own outcome."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from etl.daemon import loads
from etl.daemon.health import Database
from etl.daemon.loads import Loads
from etl.daemon.supervisor import Supervisor
from etl.errors import StoreError
from etl.metrics import Metrics
from etl.pipeline import Polled, RunResult
from etl.store.engine import make_engine
from tests.helpers import rows
from tests.store.test_batch import _polls


class Counting(Loads):
    def __init__(self, *args: Any):
        super().__init__(*args)
        self.together: list[int] = []

    def store_together(self, polls: list[Polled]) -> Any:
        self.together.append(len(polls))
        return super().store_together(polls)


def _loads(engine: Any) -> Counting:
    metrics = Metrics()
    return Counting(Database(engine, metrics, tick=1.0), Supervisor(metrics.task_restarts), metrics)


def _run(part: Loads, polls: list[Polled]) -> list[RunResult | BaseException]:
    async def go() -> list[RunResult | BaseException]:
        try:
            return await asyncio.gather(
                *(part.store_live(p, timeout=30) for p in polls), return_exceptions=True
            )
        finally:
            part.database.close()

    return asyncio.run(go())


def test_polls_of_a_slot_that_arrive_together_load_in_one_transaction(engine):
    part = _loads(engine)
    results = _run(part, _polls(12))
    assert part.together == [12]
    assert all(isinstance(r, RunResult) and r.status == "ok" and not r.already_loaded for r in results)
    assert rows(engine, "SELECT count(*), count(DISTINCT status) FROM ingestion_runs") == [(12, 1)]


def test_more_than_a_batch_is_split_and_a_failed_poll_loads_on_its_own(engine, monkeypatch):
    monkeypatch.setattr(loads, "BATCH_MAX", 5)
    polls = _polls(12)
    polls[7] = replace(polls[7], batch=None, error="s7: venue said no")
    part = _loads(engine)
    results = _run(part, polls)
    assert sorted(part.together) == [1, 5, 5]
    assert [r.status for r in results if isinstance(r, RunResult)] == ["ok"] * 7 + ["error"] + ["ok"] * 4
    assert rows(engine, "SELECT source, error FROM ingestion_runs WHERE status = 'error'") == [
        ("s7", "s7: venue said no")
    ]


def test_a_refused_source_in_a_batch_is_its_own_error(engine):
    polls = _polls(8)
    bad = polls[5].batch
    assert bad is not None
    polls[5] = replace(
        polls[5], batch=replace(bad, balances=(replace(bad.balances[0], total=Decimal("1e999999")),))
    )
    results = _run(_loads(engine), polls)
    assert [r.status for r in results if isinstance(r, RunResult)] == ["ok"] * 5 + ["error", "ok", "ok"]
    assert rows(engine, "SELECT count(*) FROM ingestion_runs WHERE status = 'ok'") == [(7,)]


def test_a_database_that_is_down_fails_every_waiting_slot_as_transient(database_url):
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2})
    results = _run(_loads(down), _polls(4))
    assert all(isinstance(r, StoreError) and r.transient for r in results), results
    down.dispose()


@pytest.mark.parametrize("cancelled", [0, 2])
def test_a_slot_cancelled_while_waiting_leaves_the_others_loading(engine, cancelled):
    part = _loads(engine)
    polls = _polls(4)

    async def go() -> list[Any]:
        tasks = [asyncio.create_task(part.store_live(p, timeout=30)) for p in polls]
        await asyncio.sleep(0)
        tasks[cancelled].cancel()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        part.database.close()
        return out

    results = asyncio.run(go())
    assert isinstance(results[cancelled], asyncio.CancelledError)
    assert part.together == [3]
    loaded = rows(engine, "SELECT source FROM ingestion_runs ORDER BY source")
    assert [s for (s,) in loaded] == [p.source.name for i, p in enumerate(polls) if i != cancelled]
