"""Canonical JSON: the one byte string a value encodes to, on every machine.

Objects have their keys sorted, no whitespace is written, strings are UTF-8, and the
only numbers are integers within the signed 64-bit range. Signatures are made over
these bytes, so decoding is strict: anything that could encode two ways is refused."""

from __future__ import annotations

import json
from typing import Any

from .errors import Code, Rejected

INT_MAX = 2**63 - 1
DEPTH_MAX = 8
MESSAGE_BYTES_MAX = 64 * 1024

_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            allow_nan=False)


def encode(value: Any) -> bytes:
    """The canonical bytes of a JSON value built from dict, list, str, int, bool, None."""
    return _encoder.encode(value).encode("utf-8")


def _refuse_float(text: str) -> Any:
    raise Rejected(Code.MALFORMED, "$", f"number {text!r} is not an integer; amounts and times are integers")


def _refuse_constant(text: str) -> Any:
    raise Rejected(Code.MALFORMED, "$", f"{text} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Rejected(Code.MALFORMED, key, "field appears more than once")
            seen.add(key)
    return result


_decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_refuse_float,
                            parse_constant=_refuse_constant)


def decode(raw: bytes, *, bytes_max: int = MESSAGE_BYTES_MAX) -> Any:
    """Parse untrusted bytes; refuse oversized, non-UTF-8, non-JSON, floats, duplicate
    keys, nesting deeper than DEPTH_MAX and integers beyond 64 bits."""
    if len(raw) > bytes_max:
        raise Rejected(Code.TOO_LARGE, "$", f"message is {len(raw)} bytes, limit is {bytes_max}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(Code.MALFORMED, "$", f"not UTF-8 at byte {error.start}") from None
    if _nesting(text) > DEPTH_MAX:
        raise Rejected(Code.MALFORMED, "$", f"nested deeper than {DEPTH_MAX} levels")
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as error:
        raise Rejected(Code.MALFORMED, "$", f"not JSON: {error.msg} at char {error.pos}") from None
    except RecursionError:
        raise Rejected(Code.MALFORMED, "$", f"nested deeper than {DEPTH_MAX} levels") from None
    _check_ints(value, "$")
    return value


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings, counted before parsing so that a
    hostile message cannot make the parser recurse."""
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
            if depth > deepest:
                deepest = depth
                if deepest > DEPTH_MAX:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def _check_ints(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise Rejected(Code.INVALID_FIELD, path, "integer outside the signed 64-bit range")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_ints(item, key)
    elif isinstance(value, list):
        for item in value:
            _check_ints(item, path)
