"""Alembic owns the schema: the migrations round-trip, and they produce exactly the metadata."""

from __future__ import annotations

from sqlalchemy import inspect

from etl.store import migrate
from etl.store.schema import metadata


def test_upgrade_downgrade_upgrade_round_trip(scratch):
    migrate.upgrade(scratch)
    tables = set(inspect(scratch).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= tables
    migrate.downgrade(scratch, "base")
    assert migrate.current(scratch) == "(empty database: no revision)"
    leftover = set(inspect(scratch).get_table_names()) - {"alembic_version"}
    assert leftover == set()
    assert inspect(scratch).get_view_names() == []
    migrate.upgrade(scratch)
    assert migrate.drift(scratch) == []


def test_no_drift_between_metadata_and_migrations(engine):
    assert migrate.drift(engine) == []


def test_views_exist_after_upgrade(engine):
    views = set(inspect(engine).get_view_names())
    assert {"latest_balances", "account_equity", "portfolio_equity"} <= views


def test_upgrading_twice_is_a_no_op(engine):
    before = migrate.current(engine)
    migrate.upgrade(engine)
    assert migrate.current(engine) == before
