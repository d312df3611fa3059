"""JSON in and out without ever passing a number through float, and only JSON we can keep.

Bodies are parsed with `parse_float=Decimal`, so `12282.88002680674743639045` stays
exact; jsonb columns are written with simplejson's `use_decimal`, which prints a
Decimal as the same digits.

`loads` refuses, as a `JsonError` naming the JSON path, what would load wrongly or not
at all: a duplicate key (the last copy would silently win), `NaN`/`Infinity`, a number
PostgreSQL's NUMERIC cannot hold, `\\u0000` or a lone surrogate in a string or key (jsonb
and text refuse them), invalid UTF-8, and nesting or integers too large to parse. The
fast path costs one Python call per object (the duplicate check); strings are walked
only when the text has a `\\u0000` or a surrogate escape, the one way these get in.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import simplejson

# PostgreSQL NUMERIC holds up to 131072 digits before the point and 16383 after it
# (measured: '1e131071' loads, '1e131072' and '1e-16384' are "value overflows numeric format").
NUMERIC_MAX_ADJUSTED = 131071
NUMERIC_MAX_SCALE = 16383
_NUL_OR_SURROGATE = re.compile("[\x00\ud800-\udfff]")
# In strictly decoded text a NUL or a surrogate can only be spelled as an escape; a body
# with one is walked (`é` as `\u00e9` is not: venues that escape all non-ASCII stay fast).
_NUL_OR_SURROGATE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


class JsonError(ValueError):
    """A body we refuse: `str(err)` is one line, `path` where ($.data.assets[0].coin), or None."""

    def __init__(self, problem: str, path: str | None = None):
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path


class _Refused(Exception):
    """Raised inside the fast parse; the diagnostic parse then finds the path."""


def loads(data: str | bytes) -> Any:
    """Parse JSON; non-integer numbers become Decimal. Raises JsonError (a ValueError)."""
    text = data if isinstance(data, str) else _decoded(data)
    try:
        value = json.loads(text, parse_float=_number, parse_constant=_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as err:
        raise JsonError(f"is not JSON ({err})") from None
    except (_Refused, ValueError, RecursionError):  # ValueError: an integer over Python's digit limit
        raise _diagnosis(text) from None
    if _NUL_OR_SURROGATE_ESCAPE.search(text):
        problem = _first_problem(_diagnostic_parse(text))
        if problem is not None:
            raise problem
    return value


def loads_own(text: str) -> Any:
    """Parse JSON this program wrote itself (the spool): numbers exact, none of `loads`'s
    checks on what a venue may send, so what `dumps(..., ascii=True)` wrote reads back
    the same (a lone surrogate a poll held included)."""
    return json.loads(text, parse_float=Decimal)


def dumps(value: Any, *, allow_nan: bool = False, ascii: bool = False) -> str:
    """Compact JSON; raises ValueError on NaN or Infinity unless `allow_nan` (then written
    as those tokens, which are not JSON: for showing such a value, never for storing it).
    With ascii, every non-ASCII character is escaped: the text then encodes whatever the
    strings hold (a lone surrogate too), and reads back to the same value."""
    return simplejson.dumps(
        value, use_decimal=True, separators=(",", ":"), ensure_ascii=ascii, allow_nan=allow_nan
    )


def _decoded(data: bytes) -> str:
    """The text of a body, strictly: json's own bytes path would let encoded surrogates through."""
    try:
        return data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as err:
        raise JsonError(f"is not valid {err.encoding.upper()} (byte {err.start})") from None


def _storable(number: Decimal) -> bool:
    exponent = number.as_tuple().exponent
    return number.adjusted() <= NUMERIC_MAX_ADJUSTED and -int(exponent) <= NUMERIC_MAX_SCALE


def _number(literal: str) -> Decimal:
    try:
        number = Decimal(literal)
    except InvalidOperation:  # an exponent beyond Decimal's own range
        raise _Refused from None
    # Without an exponent only a literal longer than the scale limit can be out of range.
    if ("e" in literal or "E" in literal or len(literal) > NUMERIC_MAX_SCALE) and not _storable(number):
        raise _Refused
    return number


def _constant(literal: str) -> Any:
    raise _Refused


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    return obj


class _Bad:
    """A refused value in the diagnostic parse, with why."""

    def __init__(self, problem: str):
        self.problem = problem


class _Pairs(list[tuple[str, Any]]):
    """An object in the diagnostic parse, duplicates kept."""


def _diagnostic_number(literal: str) -> Any:
    try:
        number = Decimal(literal)
    except InvalidOperation:
        return _Bad(f"number {_short(literal)} is beyond any decimal PostgreSQL can hold")
    return number if _storable(number) else _Bad(f"number {_short(literal)} does not fit PostgreSQL NUMERIC")


def _diagnostic_int(literal: str) -> Any:
    digits = len(literal.lstrip("-"))
    if digits > sys.get_int_max_str_digits():
        return _Bad(f"integer of {digits} digits (more than {sys.get_int_max_str_digits()})")
    return int(literal)


def _diagnostic_parse(text: str) -> Any:
    return json.loads(
        text,
        parse_float=_diagnostic_number,
        parse_int=_diagnostic_int,
        parse_constant=lambda literal: _Bad(f"{literal} is not a number PostgreSQL can store"),
        object_pairs_hook=_Pairs,
    )


def _diagnosis(text: str) -> JsonError:
    try:
        tree = _diagnostic_parse(text)
    except RecursionError:
        return JsonError(f"nested {_depth(text)} levels deep, too deep to parse", "$")
    return _first_problem(tree) or JsonError("refused by the parser")


def _first_problem(tree: Any) -> JsonError | None:
    """The first refused value, duplicate key, NUL or lone surrogate, in document order."""
    stack: list[tuple[str, Any]] = [("$", tree)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Bad):
            return JsonError(value.problem, path)
        if isinstance(value, str):
            if (bad := _unstorable(value)) is not None:
                return JsonError(f"string {_quoted(value)} holds {bad}", path)
        elif isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if (bad := _unstorable(key)) is not None:
                    return JsonError(f"key {_quoted(key)} holds {bad}", path)
                if key in seen:
                    return JsonError(f"duplicate key {_quoted(key)}", path)
                seen.add(key)
            stack.extend((f"{path}.{_quoted(k, bare=True)}", v) for k, v in reversed(value))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _unstorable(text: str) -> str | None:
    """What in a string PostgreSQL would refuse (jsonb and text take no NUL, UTF-8 no surrogate)."""
    found = _NUL_OR_SURROGATE.search(text)
    if found is None:
        return None
    return "a NUL (\\u0000)" if found.group() == "\x00" else "a lone surrogate"


def _quoted(text: str, *, bare: bool = False) -> str:
    """A key or string for a message: ASCII, NUL and surrogates escaped, never more than 40 chars."""
    shown = json.dumps(_short(text, 40), ensure_ascii=True)
    return shown[1:-1] if bare and shown[1:-1].isidentifier() else shown


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects, outside strings (only on the error path)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
