"""Credentials never reach logs, errors, the database or a repr."""

from __future__ import annotations

import logging

from etl.sim.base import Fault
from etl.sim.bittap import BittapSimulator
from tests.helpers import rows, run, served, settings_for, source_entry

KEY, SECRET = "key-7f3a9c1e55", "secret-b8d2e4f6a0"


def test_secrets_appear_nowhere_after_good_and_failed_runs(engine, caplog):
    sim = BittapSimulator()
    sim.add_account(KEY, SECRET)
    with served(sim) as server, caplog.at_level(logging.DEBUG):
        settings = settings_for(source_entry("s", "bittap", server.url, KEY, SECRET), timeout="0.5s")
        run(engine, settings)
        # a venue that echoes the key back in its error must not get it into our records
        sim.fail_next(*[Fault(400, f"bad key {KEY} / {SECRET}")] * 5)
        result = run(engine, settings)["s"]
    assert result.status == "error" and "***" in result.error
    dumped = " ".join(
        str(r)
        for table in (
            "accounts",
            "ingestion_runs",
            "raw_payloads",
            "balance_snapshots",
            "account_snapshots",
            "position_snapshots",
        )
        for r in rows(engine, f"SELECT t::text FROM {table} t")
    )
    for secret in (KEY, SECRET):
        assert secret not in dumped
        assert secret not in caplog.text
        assert secret not in repr(settings) + str(result)
