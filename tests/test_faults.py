"""The failure taxonomy: each kind of failure maps to one fault, and only two are retried."""

from __future__ import annotations

import psycopg
import pytest

from etl.errors import ConfigError, Fault, NormalizeError, StoreError, VenueError
from etl.faults import classify


@pytest.mark.parametrize(
    ("err", "fault"),
    [
        (NormalizeError("x"), Fault.SOURCE_DATA),
        (VenueError("x", transient=True), Fault.VENUE_TRANSIENT),
        (VenueError("x"), Fault.VENUE_TERMINAL),
        (VenueError("x", fault=Fault.SOURCE_DATA), Fault.SOURCE_DATA),
        (StoreError("x", transient=True), Fault.DATABASE_DOWN),
        (TimeoutError(), Fault.DATABASE_DOWN),
        (psycopg.OperationalError("connection refused"), Fault.DATABASE_DOWN),
        (KeyError("x"), Fault.BUG),
        (ConfigError("x"), Fault.VENUE_TERMINAL),
    ],
)
def test_each_failure_has_one_fault(err: BaseException, fault: Fault) -> None:
    assert classify(err) is fault


def test_only_transient_venue_and_database_faults_are_retried() -> None:
    assert {f for f in Fault if f.retry} == {Fault.VENUE_TRANSIENT, Fault.DATABASE_DOWN}
