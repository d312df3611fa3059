"""balance ETL: poll crypto trading accounts, load exact, idempotent snapshots into PostgreSQL."""

__version__ = "0.1.0"
