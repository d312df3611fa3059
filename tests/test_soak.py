"""The soak of issue 13 in CI: two minutes of the daemon under every fault kind, then its invariants.

One run (about 3 minutes of wall time) serves both tests: that the soak itself works (a
JSON line, slots checked, every fault kind injected), and that the daemon violates no
invariant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soak import KINDS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak() -> dict[str, Any]:
    # Its own embedded PostgreSQL, not the tests' server: stopping and starting it is a fault.
    env = {k: v for k, v in os.environ.items() if k != "ETL_DATABASE_URL"}
    command = [sys.executable, "bench/soak.py", "--minutes", "2", "--seed", "13", "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert (done.returncode == 0) == (figures["violations"] == [])
    return figures


def test_soak_checks_slots_after_injecting_every_fault_kind(soak: dict[str, Any]) -> None:
    assert soak["slots"] > 0
    assert {kind for kind, n in soak["faults"].items() if n > 0} == set(KINDS)


def test_soak_finds_no_violation(soak: dict[str, Any]) -> None:
    assert soak["violations"] == []
