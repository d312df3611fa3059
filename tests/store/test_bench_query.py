"""bench/query.py at a tiny size: it runs end to end, and ours and the reference return the same
rows for every query (it exits otherwise). Not a timing test."""

from __future__ import annotations

import pytest

from bench.query import main


@pytest.mark.slow
def test_query_bench_smoke_run(database_url):
    figures = main(
        ["--rows", "6000", "--accounts", "6", "--sources", "3", "--interval", "1h", "--url", database_url]
    )
    keys = ("hourly_equity", "daily_portfolio", "latest_balances", "balances_as_of", "slot_of_source")
    for key in keys:
        assert figures[f"{key}_ms"] > 0 and figures[f"{key}_ref_ms"] > 0
    assert figures["daily_unchanged_after_prune"] is True
    # 200 hourly slots end now: only months that ended 90 days ago could go, and none did
    assert figures["partitions_dropped"] == 0
