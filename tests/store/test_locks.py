"""The advisory locks of the store: a load and a prune never wait on each other for good."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from etl.store import partitions, retention, rollups
from etl.store.engine import driver_cursor
from etl.store.load import load_slot
from tests.helpers import rows
from tests.store.builders import batch

NEW_MONTH = datetime(2039, 11, 1, tzinfo=UTC)  # a month no other test creates
WAIT = 5.0  # seconds: far above what either side needs alone


def _waiting_for_an_advisory_lock(engine: Engine) -> bool:
    return bool(
        rows(engine, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0]
    )


def test_a_load_into_a_new_month_and_a_prune_never_block_each_other(engine):
    """The cycle of old: a load holds the rollup lock shared and asks for the partition
    lock; a prune holds its lock (then the partition lock's key) on an idle session and
    asks for the rollup lock exclusively, which waits for the load. PostgreSQL cannot see
    the cycle through the idle session: both waited for ever."""
    partitions.forget()
    pruned: list[object] = []
    with engine.connect() as conn, conn.begin():
        assert NEW_MONTH not in {p.lower for p in partitions.list_partitions(conn)}  # this load creates it
        with driver_cursor(conn) as cur:
            rollups.share_lock(cur)  # a load in flight, past its first statement
            cur.execute(f"SET LOCAL lock_timeout = '{int(WAIT)}s'")
        prune = threading.Thread(
            target=lambda: pruned.append(retention.prune_once(engine, timedelta(days=3650))), daemon=True
        )
        prune.start()
        deadline = time.monotonic() + WAIT
        while not _waiting_for_an_advisory_lock(engine):  # the prune's close waits for this load
            assert time.monotonic() < deadline, "the prune never asked for the rollup lock"
            time.sleep(0.05)
        t0 = time.perf_counter()
        load_slot(
            conn,
            source="s",
            venue="bittap",
            slot=NEW_MONTH,
            batch=batch({"s": "1"}),
            responses=(),
            started_at=NEW_MONTH,
            attempts=1,
        )
        assert time.perf_counter() - t0 < WAIT / 2  # it did not wait for the prune
    prune.join(WAIT)
    assert not prune.is_alive() and pruned and str(pruned[0]).startswith("nothing older than")
    assert rows(engine, "SELECT count(*) FROM balance_snapshots WHERE snapshot_ts = :t", t=NEW_MONTH) == [
        (1,)
    ]
