"""Typed, named access to one JSON object of a venue payload (ccxt's `safe_*` idea, typed).

A normalizer wraps each object it reads in `Fields(obj, where)`, takes the mapped
fields with `.decimal()`, `.text()`, `.ms_time()`, and puts everything it did not map
into `extra` with `.rest()`. Every error names the venue, the field and the position
in the payload (`where`, e.g. `bittap data.positions[0]`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation, Rounded
from typing import Any

from etl.errors import NormalizeError

# Arithmetic on venue numbers (summing networks, contracts x size) must never round: the
# default context keeps 28 digits. Unbounded precision, and a trap if it ever did round.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Rounded])

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_decimal(value: Any, where: str) -> Decimal | None:
    """`""`/`null` -> None; a numeric string or JSON number -> exact Decimal; else an error.

    JSON numbers arrive as Decimal (bodies are parsed with `parse_float=Decimal`) or int;
    a float here would already have lost digits, so it is refused.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise NormalizeError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        # Decimal() alone would also take "1_000", "Infinity" and non-ASCII digits.
        if not _NUMBER.fullmatch(value.strip()):
            raise NormalizeError(f"{where}: expected a number, got {value!r}")
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise NormalizeError(f"{where}: expected a number, got {value!r}") from None
    else:
        raise NormalizeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if not result.is_finite():
        raise NormalizeError(f"{where}: expected a finite number, got {value!r}")
    return result


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of one or more decimals (no rounding at any number of digits)."""
    return functools.reduce(EXACT.add, values)


def ms_to_datetime(value: Any, where: str) -> datetime | None:
    """Epoch milliseconds (int or numeric string) -> aware UTC datetime."""
    number = parse_decimal(value, where)
    if number is None:
        return None
    try:
        return datetime.fromtimestamp(int(number) / 1000, tz=UTC).replace(
            microsecond=int(number % 1000) * 1000
        )
    except (OverflowError, ValueError, OSError):
        raise NormalizeError(f"{where}: not an epoch-milliseconds time: {value!r}") from None


class Fields:
    """One JSON object of a payload, read field by field; remembers what was read."""

    __slots__ = ("_obj", "_read", "where")

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, Mapping):
            raise NormalizeError(f"{where}: expected an object, got {type(obj).__name__}")
        self._obj = obj
        self._read: set[str] = set()
        self.where = where

    def _get(self, name: str, required: bool) -> Any:
        self._read.add(name)
        if name not in self._obj:
            if required:
                raise NormalizeError(f"{self.where}.{name}: missing")
            return None
        return self._obj[name]

    def raw(self, name: str, *, required: bool = False) -> Any:
        return self._get(name, required)

    def decimal(self, name: str, *, required: bool = False) -> Decimal | None:
        return parse_decimal(self._get(name, required), f"{self.where}.{name}")

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None or value == "":
            if required:
                raise NormalizeError(f"{self.where}.{name}: missing")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise NormalizeError(f"{self.where}.{name}: expected text, got {value!r}")
        return str(value)

    def ms_time(self, name: str) -> datetime | None:
        return ms_to_datetime(self._get(name, False), f"{self.where}.{name}")

    def list(self, name: str, *, required: bool = False) -> list[Any]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise NormalizeError(f"{self.where}.{name}: expected a list, got {type(value).__name__}")
        return value

    def rest(self, *skip: str) -> dict[str, Any]:
        """Every field not read (nor named in `skip`), as received: the record's `extra`."""
        done = self._read.union(skip)
        return {k: v for k, v in self._obj.items() if k not in done}
