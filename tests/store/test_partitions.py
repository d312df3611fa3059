"""Monthly partitions: made ahead by the loader, cached per process, never a failed load."""

from __future__ import annotations

import threading

from sqlalchemy import event, text

from etl.store import partitions
from etl.store.schema import balance_snapshots
from etl.store.upsert import create_stage_sql
from tests.helpers import rows
from tests.store.builders import at, fail, load


def _months(engine, parent: str) -> list[str]:
    with engine.connect() as conn:
        return [f"{p.lower:%Y-%m}" for p in partitions.list_partitions(conn) if p.parent == parent]


def test_a_slot_in_a_month_without_partition_loads_and_its_month_and_the_next_exist(engine):
    load(engine, "s1", at("2031-05-31T23:59:00"), {"s1": "100"})
    for parent in partitions.PARENTS:
        assert {"2031-05", "2031-06"} <= set(_months(engine, parent)), parent
    assert rows(engine, "SELECT tableoid::regclass::text FROM balance_snapshots") == [
        ("balance_snapshots_p2031_05",)
    ]


def test_a_failed_poll_of_a_new_month_still_keeps_its_raw_body(engine):
    from etl.records import RawResponse

    slot = at("2033-02-01T00:00:00")
    fail(engine, "s1", slot, (RawResponse("/x", 500, {"code": "boom"}, slot),))
    assert rows(engine, "SELECT body->>'code' FROM raw_payloads") == [("boom",)]


def test_known_months_are_not_looked_up_again(engine):
    slot = at("2031-07-15T00:00:00")
    load(engine, "s1", slot, {"s1": "1"})  # created here: not cached until seen committed
    statements: list[str] = []

    def spy(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        with engine.begin() as conn:
            partitions.ensure(conn, [slot])  # sees them committed: cached from now on
        seen = len(statements)
        with engine.begin() as conn:
            partitions.ensure(conn, [slot, at("2031-07-01T00:00:00")])
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert seen >= 1
    assert len(statements) == seen  # the second ensure asked the database nothing


def test_a_rolled_back_creation_is_created_again(engine):
    slot = at("2034-03-03T00:00:00")
    with engine.connect() as conn, conn.begin() as tx:
        partitions.ensure(conn, [slot])
        tx.rollback()
    assert "2034-03" not in _months(engine, "balance_snapshots")
    load(engine, "s1", slot, {"s1": "1"})
    assert "2034-03" in _months(engine, "balance_snapshots")


def test_two_processes_creating_the_same_month_both_succeed(engine):
    slot = at("2035-01-10T00:00:00")
    first_created = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            first_created.wait(5)
            with engine.begin() as conn:  # waits on the first's lock, then finds the tables
                partitions.ensure(conn, [slot])
        except BaseException as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=second)
    thread.start()
    with engine.begin() as conn:
        partitions.ensure(conn, [slot])
        partitions.forget()  # the other "process" has not seen them
        first_created.set()
        conn.execute(text("SELECT pg_sleep(0.3)"))
    thread.join(10)
    assert errors == []
    assert _months(engine, "balance_snapshots").count("2035-01") == 1


def test_a_pruned_month_is_created_again_when_a_slot_needs_it(engine):
    from datetime import timedelta

    from etl.store.retention import prune

    slot = at("2030-01-15T00:00:00")
    load(engine, "s1", slot, {"s1": "1"})
    with engine.begin() as conn:
        partitions.ensure(conn, [slot])  # now cached
    prune(engine, timedelta(days=1), now=at("2030-03-01T00:00:00"))
    assert "2030-01" not in _months(engine, "balance_snapshots")
    load(engine, "s1", slot, {"s1": "2"})
    assert rows(engine, "SELECT total FROM balance_snapshots")[0][0] == 2


def test_the_staging_table_can_be_made_like_a_partitioned_table(engine):
    types = (
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
        "CAST(:t AS regclass) AND attname IN ('account_id', 'total', 'extra') ORDER BY attname"
    )
    with engine.connect() as conn:  # rolled back: a stage of other columns must not outlive the test
        conn.execute(text(create_stage_sql(balance_snapshots, ["account_id", "total", "extra"])))
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE relname = 'stage_balance_snapshots'")
        ).scalar()
        staged = conn.execute(text(types), {"t": "stage_balance_snapshots"}).all()
        parent = conn.execute(text(types), {"t": "balance_snapshots"}).all()
        conn.rollback()
    assert kind == "r"  # a plain temporary table, the parent's columns typed alike
    assert staged == parent and len(staged) == 3


def test_partition_bounds_are_read_in_utc_whatever_the_session_zone(engine):
    load(engine, "s1", at("2031-09-01T00:00:00"), {"s1": "1"})
    with engine.connect() as conn:
        conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        (sept,) = [p for p in partitions.list_partitions(conn) if p.name == "balance_snapshots_p2031_09"]
    assert (sept.lower, sept.upper) == (at("2031-09-01T00:00:00"), at("2031-10-01T00:00:00"))
