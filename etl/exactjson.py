"""JSON in and out without ever passing a number through float.

Bodies are parsed with `parse_float=Decimal`, so `12282.88002680674743639045` stays
exact; jsonb columns are written with simplejson's `use_decimal`, which prints a
Decimal as the same digits.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import simplejson


def loads(text: str | bytes) -> Any:
    """Parse JSON; non-integer numbers become Decimal. Raises ValueError on bad JSON."""
    return json.loads(text, parse_float=Decimal)


def dumps(value: Any, *, allow_nan: bool = False, ascii: bool = False) -> str:
    """Compact JSON; raises ValueError on NaN or Infinity unless `allow_nan` (then written
    as those tokens, which are not JSON: for showing such a value, never for storing it).
    With ascii, every non-ASCII character is escaped: the text then encodes whatever the
    strings hold (a lone surrogate too), and reads back to the same value."""
    return simplejson.dumps(
        value, use_decimal=True, separators=(",", ":"), ensure_ascii=ascii, allow_nan=allow_nan
    )
