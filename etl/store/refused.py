"""What PostgreSQL refuses of what a venue sent: said in one line, or kept in a form it accepts.

A statement refused because of the data (SQLSTATE classes 22, 23, 54: a currency of 3 kB
makes its index row too big, a number beyond NUMERIC's range, NaN in JSON, `\\u0000`, a
lone surrogate) is the source's fault (`etl.faults`). `describe` names what was refused
as precisely as the error allows: a COPY's error gives its table, line and often the
column, and the line is the record's position in the batch, so the row's key can be
named too. `storable` and `kept_as_text` turn any text into one PostgreSQL accepts, so
the run row and the raw body of a failed poll are always written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from etl import exactjson
from etl.records import Batch
from etl.store import partitions, upsert
from etl.store.schema import SNAPSHOT_TABLES

# The key of a raw body kept as text: {"etl_kept_as_text": why, "text": the body's text}
KEPT_AS_TEXT = "etl_kept_as_text"
_BATCH_FIELD = {
    "balance_snapshots": "balances",
    "account_snapshots": "account_rows",
    "position_snapshots": "positions",
}
_COPY_LINE = re.compile(r"COPY (\w+), line (\d+)(?:, column (\w+))?")
_SHOWN = 40  # characters of a refused value shown in a message


def describe(err: BaseException, batch: Batch | None = None) -> str:
    """One line: PostgreSQL's message (and detail), then the table, column and row refused."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip()
    message = text.splitlines()[0] if text else type(orig).__name__
    diag = getattr(orig, "diag", None)
    detail = getattr(diag, "message_detail", None)
    if detail:
        message += f" ({_short(detail.splitlines()[0], plain=True, shown=80)})"
    copy_line = _COPY_LINE.search(getattr(diag, "context", None) or "")
    if batch is None:
        return storable(message)
    if copy_line is None:  # refused before the server saw it (NUL, a lone surrogate), or no COPY
        table = getattr(diag, "table_name", None)
        where = _unstorable(batch) or (f"table {_parent(table)}" if table else None)
        return storable(f"{message}: {where}" if where else message)
    table, line, column = _parent(copy_line[1]), int(copy_line[2]), copy_line[3]
    records: Sequence[Any] = getattr(batch, _BATCH_FIELD.get(table, ""), ())
    if not 0 < line <= len(records):
        return storable(f"{message}: {table}{'.' + column if column else ''}")
    return storable(
        f"{message}: {_row(table, records[line - 1], column or _suspect(records[line - 1], table))}"
    )


def _row(table: str, record: Any, column: str) -> str:
    key = [name for name in upsert_key(table) if name != "account"]
    row = ", ".join(f"{name} {_short(getattr(record, name))}" for name in key)
    return f"{table}.{column} of account {_short(record.account)} ({row})"


def _unstorable(batch: Batch) -> str | None:
    """The first text of the batch PostgreSQL cannot take (NUL, a lone surrogate), named."""
    for ref in batch.accounts:
        for name in ("external_id", "exchange", "note"):
            value = getattr(ref, name)
            if isinstance(value, str) and storable(value) != value:
                return f"accounts.{name} of account {_short(ref.external_id)}"
    for table, field in _BATCH_FIELD.items():
        for record in getattr(batch, field):
            for name in upsert_key(table):
                value = getattr(record, name)
                if isinstance(value, str) and storable(value) != value:
                    return _row(table, record, name)
    return None


def upsert_key(table: str) -> list[str]:
    """The record fields of a snapshot table's key (account_id is the record's `account`)."""
    by_name = {t.name: t for t in SNAPSHOT_TABLES}
    names = upsert.key_columns(by_name[table])
    return ["account" if n == "account_id" else n for n in names if n != "snapshot_ts"]


def _parent(table: str | None) -> str:
    """The snapshot table behind a monthly partition or the loader's staging table."""
    name = (table or "?").removeprefix("stage_")
    child = partitions.CHILD_NAME.match(name)
    return child[1] if child else name


def _suspect(record: Any, table: str) -> str:
    """The field a COPY error without a column is about: a text holding NUL or a lone
    surrogate (invalid input), else the longest key text (an index row too big)."""
    texts = {name: v for name in upsert_key(table) if isinstance(v := getattr(record, name), str)}
    for name, value in texts.items():
        if storable(value) != value:
            return name
    return max(texts, key=lambda name: len(texts[name]), default="?")


def _short(value: Any, plain: bool = False, shown: int = _SHOWN) -> str:
    text = value if plain else repr(value)
    if len(text) <= shown:
        return text
    length = f" ({len(value)} chars)" if isinstance(value, str) else ""
    return f"{text[:shown]}…{length}"


def storable(text: str) -> str:
    """`text` as PostgreSQL text accepts it: NUL and lone surrogates written as escapes
    (`\\u0000`, `\\ud800`); any other text is returned unchanged."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def kept_as_text(text: str, reason: str) -> str:
    """A raw body jsonb refused, as JSON that it accepts: the body's text as a string
    (`storable`), marked with the reason, so it is still there to read or replay by hand."""
    return exactjson.dumps({KEPT_AS_TEXT: reason, "text": storable(text)})
