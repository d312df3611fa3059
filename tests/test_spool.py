"""The durable spool: exact round trip, atomic files, and idempotent loads through the real upsert."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from etl.pipeline import Polled, client_for, poll, store
from etl.records import RawResponse
from etl.sim.bittap import BittapSimulator
from etl.spool import Spool, SpooledMissed, SpooledPoll, SpoolError, replayed, spooled
from etl.venues import bittap
from tests.helpers import SLOT, asgi_client, count, row_versions, rows, settings_for, source_entry
from tests.venues.test_bittap import seed_body

FETCHED = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def sim_and_settings():
    sim = BittapSimulator(seed=3)
    sim.add_account("spool-key", "spool-secret", body=seed_body())
    settings = settings_for(
        source_entry("spooled", "bittap", "http://bittap.test", "spool-key", "spool-secret")
    )
    return sim, settings


def polled_from(sim: BittapSimulator, settings) -> Polled:
    (source,) = settings.sources

    async def go() -> Polled:
        async with asgi_client({"bittap.test": sim}) as client:
            return await poll(source, SLOT, client_for(source, client, settings))

    return asyncio.run(go())


def test_a_spooled_poll_reads_back_exactly(tmp_path):
    body = {"code": "0", "data": {"balance": Decimal("12282.88002680674743639045"), "n": 7, "x": None}}
    entry = SpooledPoll(
        source="s",
        venue="bittap",
        slot=SLOT,
        started_at=FETCHED,
        attempts=3,
        error=None,
        responses=(RawResponse(bittap.ACCOUNT_INFO, 200, body, FETCHED),),
    )
    spool = Spool(tmp_path / "spool")
    path = spool.put(entry)
    again = Spool(tmp_path / "spool").read(path)  # as a restarted process would
    assert again == entry
    assert str(again.responses[0].body["data"]["balance"]) == "12282.88002680674743639045"
    assert "12282.88002680674743639045" in path.read_text()  # the digits on disk, not a float


def test_entries_sort_oldest_slot_first_and_temp_files_are_not_entries(tmp_path):
    spool = Spool(tmp_path)
    late = spool.put(SpooledMissed("b", (datetime(2026, 1, 2, tzinfo=UTC),), "paused"))
    early = spool.put(SpooledMissed("a", (datetime(2026, 1, 1, tzinfo=UTC),), "paused"))
    (tmp_path / ".tmp-20250101T000000000000Z@a@poll@x.json").write_text('{"trunc')  # a crash mid-write
    assert spool.oldest(10) == [early, late] and spool.oldest(1) == [early]
    assert spool.depth_by_source() == {"a": 1, "b": 1}
    assert spool.recover() == 1
    assert sorted(os.listdir(tmp_path)) == sorted([early.name, late.name])


def test_an_entry_written_while_the_folder_is_counted_is_counted_at_the_next_look(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    listed = spool._names

    def racing():  # the ledger's put runs in a worker thread: here, half-way through a count
        yield from listed()
        spool.put(SpooledMissed("a", (datetime(2026, 1, 1, tzinfo=UTC),), "paused"))

    monkeypatch.setattr(spool, "_names", racing)
    assert spool.depth() == 0  # the count that missed it
    monkeypatch.setattr(spool, "_names", listed)
    assert spool.depth() == 1  # counted again at once, not RESCAN seconds later


def test_a_process_starting_on_a_shared_spool_leaves_a_live_writers_temp_file(tmp_path):
    """`etl daemon --processes N` shares one spool: a child restarted while another writes
    must not delete that write's temp file before its rename."""
    spool = Spool(tmp_path)
    name = "20250101T000000000000Z@a@poll@x.json"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as writer:
        try:
            live = tmp_path / f".tmp-{writer.pid}-{name}"
            live.write_text('{"half')
            stale = tmp_path / f".tmp-{writer.pid}-{name.replace('a@', 'b@')}"
            stale.write_text('{"half')
            os.utime(stale, (time.time() - 3600, time.time() - 3600))  # pid reused: too old to be a write
            own = tmp_path / f".tmp-{os.getpid()}-{name.replace('a@', 'c@')}"  # this process's own crash
            own.write_text('{"half')
            assert spool.recover() == 2
            assert sorted(os.listdir(tmp_path)) == [live.name]
        finally:
            writer.kill()
    assert spool.recover() == 1 and os.listdir(tmp_path) == []  # the writer is gone


def test_an_unreadable_file_is_a_spool_error_and_is_moved_aside_not_deleted(tmp_path):
    spool = Spool(tmp_path)
    bad = tmp_path / "20260101T000000000000Z@a@poll@0.json"
    bad.write_text('{"format": 1, "kind": "poll"}')
    with pytest.raises(SpoolError, match="unreadable"):
        spool.read(bad)
    moved = spool.reject(bad)
    assert spool.oldest(10) == [] and moved.read_text() == '{"format": 1, "kind": "poll"}'


def test_a_spooled_slot_loads_exactly_like_a_live_one(engine, tmp_path, sim_and_settings):
    sim, settings = sim_and_settings
    polled = polled_from(sim, settings)
    spool = Spool(tmp_path)
    path = spool.put(spooled(polled))
    entry = Spool(tmp_path).read(path)
    result = store(engine, replayed(entry, settings.sources[0]), keep_loaded=True)
    assert result.status == "ok" and not result.already_loaded
    assert rows(engine, "SELECT total::text FROM balance_snapshots") == [("12282.88002680674743639045",)]
    assert rows(engine, "SELECT status, attempts FROM ingestion_runs") == [("ok", 1)]
    assert count(engine, "raw_payloads") == 1


def test_draining_a_slot_twice_changes_nothing(engine, tmp_path, sim_and_settings):
    """A crash between the load and the removal of the file: the file is drained again."""
    sim, settings = sim_and_settings
    entry = Spool(tmp_path).read(Spool(tmp_path).put(spooled(polled_from(sim, settings))))
    store(engine, replayed(entry, settings.sources[0]), keep_loaded=True)
    before = row_versions(engine)
    runs = rows(engine, "SELECT xmin::text, * FROM ingestion_runs")
    again = store(engine, replayed(entry, settings.sources[0]), keep_loaded=True)
    assert again.already_loaded
    assert row_versions(engine) == before
    assert rows(engine, "SELECT xmin::text, * FROM ingestion_runs") == runs


def test_a_spooled_copy_never_overwrites_a_slot_loaded_first(engine, tmp_path, sim_and_settings):
    """Two replicas polled the same slot while the database was down: the first load wins."""
    sim, settings = sim_and_settings
    first = polled_from(sim, settings)
    sim.accounts["spool-key"].body["data"]["assets"][0]["balance"] = "1.5"
    second = polled_from(sim, settings)
    store(engine, first, keep_loaded=True)
    assert store(engine, second, keep_loaded=True).already_loaded
    assert rows(engine, "SELECT total::text FROM balance_snapshots") == [("12282.88002680674743639045",)]


def test_a_spooled_venue_failure_is_recorded_as_the_slots_error(engine, tmp_path, sim_and_settings):
    sim, settings = sim_and_settings
    sim.accounts.clear()  # the venue now refuses the key
    failed = polled_from(sim, settings)
    entry = Spool(tmp_path).read(Spool(tmp_path).put(spooled(failed)))
    result = store(engine, replayed(entry, settings.sources[0]), keep_loaded=True)
    assert result.status == "error" and "410001" in (result.error or "")
    assert rows(engine, "SELECT status, error FROM ingestion_runs") == [("error", failed.error)]


def test_a_body_no_encoding_can_write_spools_and_reads_back_the_same(tmp_path):
    """A lone surrogate (from a `\\ud800` escape in the venue's JSON) cannot be UTF-8 encoded."""
    body = {"code": "0", "data": {"note": "broken \ud800 name", "balance": Decimal("1.25")}}
    entry = SpooledPoll(
        "s", "bittap", SLOT, FETCHED, 1, None, (RawResponse(bittap.ACCOUNT_INFO, 200, body, FETCHED),)
    )
    spool = Spool(tmp_path)
    again = spool.read(spool.put(entry))
    assert again == entry and spool.depth() == 1


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    class FailingFsync(Spool):
        def _write(self, out, text: str) -> None:
            out.write(text)
            raise OSError(28, "No space left on device")

    spool = FailingFsync(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        spool.put(SpooledMissed("a", (SLOT,), "paused"))
    assert os.listdir(tmp_path) == [] and spool.depth() == 0
