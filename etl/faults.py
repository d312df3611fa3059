"""One failure taxonomy, used everywhere: what went wrong, decided once, where it is known.

Every failure of a (source, slot) falls into exactly one `Fault`. The retry policy, the
run status written to `ingestion_runs`, and the metric label all read the fault, never a
tuple of exception types repeated at call sites:

| fault             | example                                          | retry                  | run status | metric label      |
| ----------------- | ------------------------------------------------ | ---------------------- | ---------- | ----------------- |
| SOURCE_DATA       | NaN, duplicate JSON key, a value PostgreSQL refuses | never                  | error      | `source_data`     |
| VENUE_TRANSIENT   | timeout, connection reset, 5xx, 429               | within the slot's deadline | error  | `venue_transient` |
| VENUE_TERMINAL    | bad signature, 4xx, an error envelope, a 3xx       | never                  | error      | `venue_terminal`  |
| DATABASE_DOWN     | connection refused, server shutting down, disk full on the server | later, from the spool | (spooled) | `database_down` |
| BUG               | an exception our code did not expect              | never                  | error      | `bug`             |

A statement PostgreSQL refuses because of the data (SQLSTATE classes 22, 23, 54) is the
source's fault, never an outage: spooling it would put a poisoned entry in front of
every other source's.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from etl.errors import EtlError, Fault, StoreError

__all__ = ["Fault", "classify", "sqlstate"]


# SQLSTATE classes (the first two characters) where PostgreSQL refused *this data*.
_DATA_CLASSES = {"22", "23", "54"}  # data exception, integrity violation, program limit exceeded
# Classes where the server could not do the work now: retry later from the spool.
_DOWN_CLASSES = {"08", "53", "57", "58", "40"}  # connection, resources, operator, system, rollback


def sqlstate(err: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, also when SQLAlchemy wraps it."""
    orig = getattr(err, "orig", None) or err
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def classify(err: BaseException) -> Fault:
    """The one place an exception becomes a fault."""
    if isinstance(err, EtlError) and err.fault is not None:
        return err.fault
    if isinstance(err, TimeoutError):
        return Fault.DATABASE_DOWN  # a database call that did not answer in time
    state = sqlstate(err)
    if state is not None:
        if state[:2] in _DATA_CLASSES:
            return Fault.SOURCE_DATA
        if state[:2] in _DOWN_CLASSES:
            return Fault.DATABASE_DOWN
        return Fault.BUG
    if isinstance(err, StoreError):
        return Fault.DATABASE_DOWN if err.transient else Fault.BUG
    if isinstance(err, OperationalError | psycopg.OperationalError | psycopg.InterfaceError):
        return Fault.DATABASE_DOWN  # no SQLSTATE: the connection itself failed
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return Fault.DATABASE_DOWN
    if isinstance(err, psycopg.DataError | psycopg.IntegrityError):
        return Fault.SOURCE_DATA
    if isinstance(err, UnicodeEncodeError):
        return Fault.SOURCE_DATA  # a text no encoding can send (a lone surrogate from a JSON escape)
    if isinstance(err, EtlError):
        return Fault.VENUE_TRANSIENT if err.transient else Fault.VENUE_TERMINAL
    if isinstance(err, SQLAlchemyError | psycopg.Error):
        return Fault.BUG
    return Fault.BUG
