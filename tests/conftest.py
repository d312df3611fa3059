"""Shared fixtures: a real PostgreSQL, fresh per test session, and the simulators in-process.

The database is the embedded PostgreSQL 16 (pgserver, under the temp dir, one per user) unless
ETL_TEST_DATABASE_URL names a server; either way the session creates its own database
on it and drops it at the end, so concurrent test runs do not meet.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from etl.store import migrate
from etl.store.engine import embedded_url, make_engine, sqlalchemy_url
from etl.store.schema import metadata

FIXTURES = Path(__file__).resolve().parents[1] / "etl" / "sim" / "fixtures"


def _server_url() -> str:
    url = os.environ.get("ETL_TEST_DATABASE_URL")
    if url:
        return sqlalchemy_url(url)
    # One server per user: a server dir made by root (owned by pgserver's system user)
    # is not usable by anyone else. Runs by one user at once share it (pgserver joins a
    # running server; each session has its own database).
    return sqlalchemy_url(embedded_url(Path(tempfile.gettempdir()) / f"etl-test-pg-{os.getuid()}"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    server = make_url(_server_url())
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(server.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def scratch(database_url: str) -> Iterator[Engine]:
    """An empty database of its own, for migration tests: downgrading the session's
    database would break every other test."""
    url = make_url(database_url)
    name = f"etl_scratch_{uuid.uuid4().hex[:8]}"
    admin = make_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(url.set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def session_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(session_engine: Engine) -> Engine:
    """The session's database, emptied before each test."""
    tables = ", ".join(t.name for t in metadata.sorted_tables)
    with session_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    return session_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"engine", "session_engine", "database_url", "scratch"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
