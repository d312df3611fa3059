"""Records -> PostgreSQL text `COPY` data, encoded once and cheaply.

Encoding in Python, not PostgreSQL, is what limits a bulk load (psycopg's binary COPY
of `Decimal`s runs at about a fifth of what the server ingests), so this module does as
little per-value Python work as it can:

- A `Decimal`'s `str()` is already PostgreSQL numeric input (`12282.880026…`, `1E-8`),
  and a `datetime`'s is timestamptz input: a row's plain fields are `"\\t".join(map(str, …))`,
  all in C.
- `None` becomes `str(None)`: the COPY is told `NULL 'None'`. No number, time or JSON
  text can read "None"; a text field that does is escaped to `\\None`, which PostgreSQL
  reads back as the text "None" (the NULL marker is matched before backslashes are
  removed).
- Text fields are checked once per batch, on their distinct values: in practice no
  currency or account type holds a tab, newline, backslash or "None", and then no text
  field is escaped at all. A batch where one does takes the field-by-field path.
- `extra` is JSON by orjson (exact: a Decimal goes in as its own digits through
  `orjson.Fragment`), about ten times faster than simplejson; what orjson refuses
  (integers beyond 64 bits) goes through `exactjson`. JSON never holds a raw tab or
  newline, only backslashes, which are doubled once over the whole payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import orjson

from etl import exactjson

NULL = "None"  # the COPY's NULL marker: str(None)
COPY_OPTIONS = f"(NULL '{NULL}')"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_SPECIAL = ("\\", "\t", "\n", "\r")


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


def json_text(value: Any) -> str:
    """Compact JSON with exact Decimals (not yet COPY-escaped)."""
    try:
        return orjson.dumps(value, default=_fragment).decode()
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
        return exactjson.dumps(value)


def escape_text(value: str) -> str:
    return "\\" + value if value == NULL else value.translate(_ESCAPES)


def field(value: Any) -> str:
    """One value as COPY text (the general path; the batch path below is the fast one)."""
    if value is None:
        return NULL
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict | list):
        return json_text(value).translate(_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal | int | datetime):
        return str(value)
    raise TypeError(f"cannot COPY a {type(value).__name__}")


@dataclass(frozen=True)
class Layout:
    """How one record type becomes COPY lines: the account's id first, then the record's
    own fields in order, `extra` as JSON, then a tail of per-batch constants."""

    record_type: type
    plain: tuple[str, ...]  # str() is their COPY text (numbers, times), after text checks
    text: tuple[str, ...]  # str fields: checked, escaped if they need it

    @staticmethod
    def of(record_type: type) -> Layout:
        own = [f for f in fields(record_type) if f.name not in ("account", "extra")]
        # Everything but numbers and times is text (str, or a Literal of str such as Side).
        text = tuple(f.name for f in own if not any(t in str(f.type) for t in ("Decimal", "datetime")))
        return Layout(record_type, tuple(f.name for f in own), text)

    @property
    def columns(self) -> list[str]:
        """COPY columns, before the tail."""
        return ["account_id", *self.plain, "extra"]


def _texts_are_plain(records: Sequence[Any], names: Sequence[str]) -> bool:
    """True if no text field of the batch needs escaping (checked on distinct values)."""
    distinct: set[Any] = set()
    for name in names:
        distinct.update(map(attrgetter(name), records))
    distinct.discard(None)
    return not any(v == NULL or any(c in v for c in _SPECIAL) for v in distinct)


def lines(
    records: Sequence[Any], layout: Layout, account_id: Mapping[str, int], tail: Sequence[Any]
) -> Iterator[str]:
    """COPY text for `records`, in chunks; `account_id` maps each record's account to its id.

    Raises KeyError for a record whose account has no id.
    """
    tail_text = "".join("\t" + field(v) for v in tail)
    values: Callable[[Any], tuple[Any, ...]] = attrgetter(*layout.plain)
    join, ids = "\t".join, account_id
    if _texts_are_plain(records, layout.text):
        for start in range(0, len(records), CHUNK):
            chunk = "".join(
                [
                    f"{ids[r.account]}\t{join(map(str, values(r)))}\t{json_text(r.extra)}{tail_text}\n"
                    for r in records[start : start + CHUNK]
                ]
            )
            # Only the JSON can hold a backslash here: double them all at once.
            yield chunk.replace("\\", "\\\\") if "\\" in chunk else chunk
    else:
        for start in range(0, len(records), CHUNK):
            yield "".join(
                [
                    f"{ids[r.account]}\t{join(map(field, values(r)))}\t{field(r.extra)}{tail_text}\n"
                    for r in records[start : start + CHUNK]
                ]
            )


CHUNK = 5_000  # rows per write: PostgreSQL parses one chunk while Python encodes the next


def encode(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows of plain values as COPY text, field by field (small loads, tests)."""
    return "".join("\t".join([field(v) for v in row]) + "\n" for row in rows).encode()
