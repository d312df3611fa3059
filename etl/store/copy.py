"""Records -> PostgreSQL text `COPY` data, encoded once and cheaply.

Encoding in Python, not PostgreSQL, is what limits a bulk load (psycopg's binary COPY
of `Decimal`s runs at a fifth to a third of what the server ingests: bench/load.py), so
this module does as little per-value Python work as it can:

- A `Decimal`'s `str()` is already PostgreSQL numeric input (`12282.880026…`, `1E-8`):
  a row's numbers and texts are `"\\t".join(map(str, …))`, all in C. A `datetime`'s
  `str()` is timestamptz input but costs more than nine numbers, and a batch has few
  distinct times (one per response): each is formatted once per batch.
- `None` becomes `str(None)`: the COPY is told `NULL 'None'`. No number, time or JSON
  text can read "None"; a text field that does is escaped to `\\None`, which PostgreSQL
  reads back as the text "None" (the NULL marker is matched before backslashes are
  removed).
- Text fields are checked once per batch, on their distinct values: in practice no
  currency or account type holds a tab, newline, backslash or "None", and then no text
  field is escaped at all. A batch where one does takes the field-by-field path.
- The cyclic garbage collector is paused while a chunk is encoded: the loop allocates
  a tuple per row, and each collection it triggers walks every live record of the batch
  (measured: encoding takes twice as long with it running). Reference counting still
  frees everything; the collector resumes after each chunk.
- `extra` is JSON by orjson (exact: a Decimal goes in as its own digits through
  `orjson.Fragment`), about ten times faster than simplejson; what orjson refuses
  (integers beyond 64 bits) goes through `exactjson`. JSON never holds a raw tab or
  newline, only backslashes, which are doubled once over the whole payload.
- A chunk is built without the tail (the load's constants) and only then is the tail put
  before every newline: a raw newline only ever ends a line (texts are checked or escaped,
  JSON holds none), and the tailless text is what `digest` hashes, so two loads of the
  same rows at different times or runs hash alike (`etl.store.upsert`).
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any, Protocol

import orjson

from etl import exactjson
from etl.errors import NormalizeError

NULL = "None"  # the COPY's NULL marker: str(None)
COPY_OPTIONS = f"(NULL '{NULL}')"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_SPECIAL = ("\\", "\t", "\n", "\r")
CHUNK = 500  # rows per write (~165 KB): PostgreSQL parses one chunk while Python encodes the next


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
    plain: tuple[str, ...]  # str() is their COPY text (numbers; texts once checked)
    text: tuple[str, ...]  # the str fields among `plain`: checked, escaped if they need it
    times: tuple[str, ...]  # datetimes, formatted once per distinct value

    @staticmethod
    def of(record_type: type) -> Layout:
        own = [f for f in fields(record_type) if f.name not in ("account", "extra")]
        times = tuple(f.name for f in own if "datetime" in str(f.type))
        plain = tuple(f.name for f in own if f.name not in times)
        # Everything but numbers and times is text (str, or a Literal of str such as Side).
        text = tuple(f.name for f in own if f.name in plain and "Decimal" not in str(f.type))
        return Layout(record_type, plain, text, times)

    @property
    def columns(self) -> list[str]:
        """COPY columns, before the tail."""
        return ["account_id", *self.plain, *self.times, "extra"]


class _Stamps(dict[Any, str]):
    """datetime (or None) -> its COPY text, computed on first use."""

    def __missing__(self, key: Any) -> str:
        text = self[key] = NULL if key is None else str(key)
        return text


def _times_text(names: Sequence[str]) -> Callable[[Any], str]:
    stamps = _Stamps()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda record: stamps[one(record)]
    several = attrgetter(*names)
    return lambda record: "\t".join(map(stamps.__getitem__, several(record)))


@contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _texts_are_plain(records: Sequence[Any], names: Sequence[str]) -> bool:
    """True if no text field of the batch needs escaping (checked on distinct values)."""
    distinct: set[Any] = set()
    for name in names:
        distinct.update(map(attrgetter(name), records))
    distinct.discard(None)
    return not any(v == NULL or any(c in v for c in _SPECIAL) for v in distinct)


class Digest(Protocol):
    """What `lines` feeds: a hashlib object."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def new_digest(table: str, layout: Layout) -> Digest:
    """A digest for `lines` to feed, begun with the table and its columns: rows hashed
    under another layout (a column added, moved) never match.

    SHA-256, not BLAKE2b: OpenSSL's runs on the CPU's SHA instructions, measured 1.4 against
    3.2 ms for 5,000 rows, 1.65 MB (~14 against ~32 ms for a 50,000-row slot)."""
    started = hashlib.sha256()
    started.update("\t".join([table, *layout.columns]).encode() + b"\n")
    return started


def digest_text(digest: Digest) -> str:
    """The digest as stored: 128 bits in hex (two loads' rows colliding by chance: 2^-128)."""
    return digest.hexdigest()[:32]


def lines(
    records: Sequence[Any],
    layout: Layout,
    account_id: Mapping[str, int],
    tail: Sequence[Any],
    digest: Digest | None = None,
) -> Iterator[str]:
    """COPY text for `records`, in chunks; `account_id` maps each record's account to its id.
    `digest`, if given, is fed each chunk's text without the tail.

    Raises KeyError for a record whose account has no id, NormalizeError for a number
    that is NaN or infinite.
    """
    tail_text = "".join("\t" + field(v) for v in tail)
    values: Callable[[Any], tuple[Any, ...]] = attrgetter(*layout.plain)
    times = _times_text(layout.times)
    join, ids = "\t".join, account_id
    plain = _texts_are_plain(records, layout.text)
    for start in range(0, len(records), CHUNK):
        with _collector_paused():
            if plain:
                chunk = "".join(
                    [
                        f"{ids[r.account]}\t{join(map(str, values(r)))}\t{times(r)}\t{json_text(r.extra)}\n"
                        for r in records[start : start + CHUNK]
                    ]
                )
                # Only the JSON can hold a backslash here: double them all at once.
                chunk = chunk.replace("\\", "\\\\") if "\\" in chunk else chunk
            else:
                chunk = "".join(
                    [
                        f"{ids[r.account]}\t{join(map(field, values(r)))}\t{times(r)}\t{field(r.extra)}\n"
                        for r in records[start : start + CHUNK]
                    ]
                )
        if "NaN" in chunk or "Infinity" in chunk:  # a C-speed look; rarely more (a coin named NaN)
            _refuse_non_finite(records[start : start + CHUNK], layout)
        if digest is not None:
            digest.update(chunk.encode())
        # every raw newline ends a line: texts were checked or escaped, JSON holds none
        yield chunk.replace("\n", tail_text + "\n") if tail_text else chunk


def _refuse_non_finite(records: Sequence[Any], layout: Layout) -> None:
    """NUMERIC would store a NaN or an infinite Decimal, but neither is an amount: the
    normalizers refuse them, and so does the loader, whatever built the batch."""
    numbers = [name for name in layout.plain if name not in layout.text]
    for record in records:
        for name in numbers:
            value = getattr(record, name)
            if value is not None and not value.is_finite():
                raise NormalizeError(
                    f"{layout.record_type.__name__} of account {record.account!r}: {name} is {value}, "
                    "not a finite number"
                )
