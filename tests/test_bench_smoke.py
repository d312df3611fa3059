"""The benchmarks run end to end on tiny sizes and end with their JSON line (not timed: figures
at this size mean nothing; that they run, check exactness and count 429s does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> dict:
    server = os.environ.get("ETL_TEST_DATABASE_URL")
    command = [sys.executable, *args, "--json", *(["--database-url", server] if server else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # with --json, stdout is the JSON line alone
    return json.loads(lines[0])


def test_load_bench_reports_every_ratio_and_reads_every_decimal_back_exactly():
    figures = run_bench("bench/load.py", "--rows", "2000")
    for key in (
        "ours_fresh_vs_copy",
        "ours_fresh_vs_server_limit",
        "ours_reload_vs_copy",
        "ours_vs_executemany",
        "ours_vs_to_sql",
    ):
        assert figures[key] > 0, key
    assert figures["exact"] is True
    assert figures["reload_written"] == 0  # the unchanged re-load wrote nothing
    assert figures["rows"] == 2000


def test_poll_bench_runs_daemon_cycles_without_provoking_a_429():
    figures = run_bench("bench/poll.py", "--accounts", "20", "--cycles", "2", "--interval", "3")
    assert figures["rate_limited"] == 0
    assert figures["cycles"] == 2 and figures["accounts"] == 20
    assert figures["not_ok"] == 0
    for key in ("cycle_vs_floor", "cpu_ms_per_account", "peak_rss_mb"):
        assert figures[key] > 0, key


def test_poll_bench_with_two_replicas_polls_each_slot_once_and_fails_over():
    figures = run_bench(
        "bench/poll.py", "--sources", "8", "--cycles", "1", "--interval", "3", "--replicas", "2"
    )
    assert figures["polled_twice"] == 0 and figures["unpolled"] == 0 and figures["not_ok"] == 0
    assert figures["rate_limited"] == 0
    assert figures["failover"]["next_slot_runs"] == {"ok": 8}  # the survivor took every source
    assert sum(figures["share"].values()) == 1.0


def test_serve_bench_times_the_overview_against_the_per_slot_reference():
    figures = run_bench("bench/serve.py", "--accounts", "20", "--days", "2")
    assert figures["points_90d"] == 48  # two days of hourly buckets
    for key in ("overview_page_ms", "chart_90d_ms", "first_render_ms", "sql_90d_ms", "reference_ms"):
        assert figures[key] > 0, key


def test_loads_bench_compares_one_transaction_per_source_with_batches():
    figures = run_bench("bench/loads.py", "--sources", "40", "--repeats", "1")
    for path in ("single", "batch"):
        assert figures["load_cpu_ms"]["40"][path] > 0, path
    assert figures["sources"]["40"]["batch"]["sources_per_transaction"] > 1


def test_once_bench_runs_the_command_over_many_sources_and_counts_them_all_ok():
    figures = run_bench("bench/once.py", "--sources", "12")
    assert figures["ok"] == 12 and figures["failed"] == 0 and figures["rate_limited"] == 0
    assert figures["requests"] >= 12 and figures["poller_cpu_s"] > 0


def test_transport_bench_reports_cpu_per_request_of_both_transports():
    figures = run_bench("bench/transport.py", "--requests", "40", "--runs", "1", "--concurrency", "1", "4")
    for key in ("httpx_cpu_us_c1", "httpx-aiohttp_cpu_us_c4", "aiohttp_vs_httpx_cpu_c4"):
        assert figures[key] > 0, key


def test_daemon_bench_runs_the_real_command_with_two_processes_and_stops_it_cleanly():
    figures = run_bench(
        "bench/daemon.py", "--sources", "8", "--processes", "2", "--slots", "1", "--interval", "5"
    )
    assert figures["ok"] == 8 and figures["not_ok"] == 0  # every source's slot loaded
    assert figures["rate_limited"] == 0
    assert figures["exit_code"] == 0
    assert len(figures["peak_rss_mb"]) == 4  # the parent, multiprocessing's tracker, two daemons
