"""Canonical JSON: the one byte string a value encodes to, on every machine.

Objects have their keys sorted, no whitespace is written, strings are UTF-8, and the
only numbers are integers within the signed 64-bit range. Signatures are made over
these bytes, so decoding is strict: anything that could encode two ways is refused."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import orjson

from .errors import Code, Rejected

INT_MAX = 2**63 - 1
INT_CHARS_MAX = len(str(-INT_MAX - 1))  # 20: "-9223372036854775808"
DEPTH_MAX = 12  # our deepest message, a journal page holding a settlement's lock, nests 8
MESSAGE_BYTES_MAX = 64 * 1024


_reference = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """The canonical bytes of a JSON value built from dict, list, str, int, bool, None:
    keys sorted by code point (as their UTF-8 bytes sort), no whitespace, UTF-8
    unescaped but for `"`, `\\` and the control characters, exactly as the standard
    library's encoder writes them with sort_keys, ensure_ascii=False and compact
    separators (`_reference`). orjson writes them seven times faster; an integer beyond
    64 bits, which only a hostile message holds, it leaves to the reference
    (tests/test_canonical.py holds the two against each other)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _reference.encode(value).encode("utf-8")


def halves(obj: dict[str, Any], key: str) -> tuple[bytes, bytes]:
    """The canonical bytes of an object's members that sort before `key` and after it,
    each without braces, so that the object can be joined with or without a member
    under `key` (a message with and without its signatures) after one encoding."""
    before = encode({k: v for k, v in obj.items() if k < key})[1:-1]
    after = encode({k: v for k, v in obj.items() if k > key})[1:-1]
    return before, after


def join(*parts: bytes) -> bytes:
    """The canonical bytes of the object whose member texts these are."""
    return b"{" + b",".join(part for part in parts if part) + b"}"


class _Refused:
    """A number or string this encoding does not allow, left in the parsed value by the
    parser's hooks so that the walk after parsing can refuse it naming its field."""

    __slots__ = ("code", "reason")

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason


_parse = threading.local()  # .suspects: what the hooks refused during this thread's current parse


def _refused(code: Code, reason: str) -> _Refused:
    refused = _Refused(code, reason)
    _parse.suspects.append(refused)
    return refused


def member_path(path: str, key: str) -> str:
    """How a refusal names member `key` of the value at `path` ("$" is the message):
    `amount`, `legs[1].amount`; a key that is empty or could be read as a path is
    quoted, `[""]`, `a["x.y"]`, so that the field named is never empty nor another."""
    plain = key and not any(mark in key for mark in '.[]"')
    if path == "$":
        return key if plain else f"[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if plain else f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _refuse_float(text: str) -> _Refused:
    return _refused(Code.MALFORMED, f"number {text!r} is not an integer; amounts and times are integers")


def _refuse_constant(text: str) -> _Refused:
    return _refused(Code.MALFORMED, f"{text} is not valid JSON")


def _parse_int(text: str) -> int | _Refused:
    # Python refuses int() of more than 4300 digits with a ValueError, and is slow well
    # before that; no integer in the 64-bit range is longer than INT_CHARS_MAX.
    if len(text) > INT_CHARS_MAX:
        return _refused(Code.INVALID_FIELD, "integer outside the signed 64-bit range")
    value = int(text)
    if not -INT_MAX - 1 <= value <= INT_MAX:
        return _refused(Code.INVALID_FIELD, "integer outside the signed 64-bit range")
    return value


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (which a \\ud800 escape can produce):
    it has no UTF-8 encoding, so it could be neither signed nor echoed in a refusal."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A lone surrogate in a key, as in a value, can only come of an escape in the
    text: `_check_values` refuses it when the scan for those escapes finds one."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Rejected(Code.MALFORMED, member_path("$", key), "field appears more than once")
            seen.add(key)
    return result


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_float=_refuse_float, parse_int=_parse_int, parse_constant=_refuse_constant
)


def decode(raw: bytes, *, bytes_max: int = MESSAGE_BYTES_MAX) -> Any:
    """Parse untrusted bytes; refuse oversized, non-UTF-8, non-JSON, floats, duplicate
    keys, nesting deeper than DEPTH_MAX, integers beyond 64 bits and lone surrogates.

    The common case costs one C-speed parse: the walk that names the field of a
    refused value runs only when the parser's hooks or a scan for surrogate escapes
    found something to refuse."""
    if len(raw) > bytes_max:
        raise Rejected(Code.TOO_LARGE, "$", f"message is {len(raw)} bytes, limit is {bytes_max}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(Code.MALFORMED, "$", f"not UTF-8 at byte {error.start}") from None
    _parse.suspects = []
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as error:
        raise Rejected(Code.MALFORMED, "$", f"not JSON: {error.msg} at char {error.pos}") from None
    except RecursionError:
        raise Rejected(Code.MALFORMED, "$", f"nested deeper than {DEPTH_MAX} levels") from None
    if isinstance(value, (dict, list)) and _nesting(value, text) > DEPTH_MAX:
        raise Rejected(Code.MALFORMED, "$", f"nested deeper than {DEPTH_MAX} levels")
    escaped = "\\u" in text and _SURROGATE_ESCAPE.search(text)
    if escaped:
        _check_keys(value)
    if _parse.suspects or escaped:
        _check_values(value, "$")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _nesting(value: Any, text: str) -> int:
    """How deeply the parsed value nests (1 for a flat object). The parser itself
    cannot be made to recurse without bound (it stops at Python's recursion limit);
    this enforces our tighter limit. Counting brackets first skips the walk for the
    common message, which has fewer brackets in all than the limit."""
    if text.count("[") + text.count("{") <= DEPTH_MAX:
        return 0
    deepest = 0
    level: list[Any] = [value]
    while level and deepest <= DEPTH_MAX:
        deepest += 1
        level = [
            item
            for container in level
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, (dict, list))
        ]
    return deepest


def _check_keys(value: Any) -> None:
    """Refuse the whole message if a field name anywhere holds a lone surrogate: such a
    name cannot be named in a refusal."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_unicode(key):
                raise Rejected(Code.MALFORMED, "$", "a field name holds a lone surrogate; strings must be Unicode")
            _check_keys(item)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item)


def _check_values(value: Any, path: str) -> None:
    """Refuse what the parser's hooks marked, integers beyond 64 bits and strings that are
    not Unicode, naming the field by its path (`amount`, `legs[1].amount`)."""
    if isinstance(value, _Refused):
        raise Rejected(value.code, path, value.reason)
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise Rejected(Code.INVALID_FIELD, path, "integer outside the signed 64-bit range")
    elif isinstance(value, str):
        if not _is_unicode(value):
            raise Rejected(Code.MALFORMED, path, "holds a lone surrogate; strings must be Unicode")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(item, member_path(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, f"{path}[{index}]")
