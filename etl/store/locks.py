"""Every advisory lock of the store: its key, what it guards, and the one order they are taken in.

PostgreSQL finds a deadlock only among sessions that are waiting. A lock held by an
*idle* session (a session-level lock kept between transactions while its owner works on
other connections) hides a cycle from it: both sides wait for good. Hence two rules:

1. Within a transaction, locks are taken in `ORDER` (an earlier one never after a
   later one); a transaction may skip any of them.
2. A session-level lock (`PRUNE`) is only ever tried (`pg_try_advisory_lock`), never
   waited for, and no other work uses its key: nobody can wait on the idle session.

Before this module, the partition lock and the prune lock shared key 4242002: a load
that held the rollup lock shared and asked for the partition lock waited for the idle
session of a prune, whose rollup close waited for that load (tests/store/test_locks.py).
"""

from __future__ import annotations

from datetime import datetime

MIGRATION = 4242001  # xact, exclusive: one migration at a time (etl.store.migrate)
PRUNE = 4242004  # session, try only: one replica prunes at a time (etl.store.retention)
# Per (source, slot): see `slot_key`. xact, exclusive: loads of one slot one at a time
# (etl.store.load.lock_slot), so a spooled copy sees the slot loaded and skips it.
ROLLUPS = 4242003  # xact: loads shared, a close or rebuild exclusive (etl.store.rollups)
PARTITIONS = 4242002  # xact, exclusive: creating a month's partitions (etl.store.partitions)

# The order within a transaction; `slot` stands for every `slot_key`.
ORDER = ("MIGRATION", "slot", "ROLLUPS", "PARTITIONS")


def slot_key(source: str, slot: datetime) -> str:
    """The text whose `hashtextextended(text, 0)` is the (source, slot) lock's key."""
    return f"{source}|{slot.isoformat()}"
