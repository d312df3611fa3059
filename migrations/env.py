"""Alembic environment: runs on the connection etl hands over, or finds the database itself."""

from __future__ import annotations

from alembic import context

from etl.store.migrate import include_object
from etl.store.schema import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from etl.config import load_settings
        from etl.store.engine import engine_for

        with engine_for(load_settings(secrets=False)).begin() as connection:
            _migrate(connection)
    else:
        _migrate(connection)


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
