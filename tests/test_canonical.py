"""The canonical encoder (orjson) against the standard library's encoder configured as
the canonical form is defined (sorted keys, compact separators, UTF-8 unescaped): the
same bytes for every value a message can hold, the awkward strings included."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from protocols import canonical

REFERENCE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
AWKWARD = ['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f", "é", "\u2028", "\u2029", "😀", "/", "</"]

strings = st.one_of(st.text(st.characters(blacklist_categories=("Cs",))), st.sampled_from(AWKWARD))
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_the_canonical_bytes_are_the_reference_encoders(value):
    assert canonical.encode(value) == REFERENCE.encode(value).encode("utf-8")


@given(st.dictionaries(strings, values, max_size=6), strings)
def test_an_object_joined_from_its_halves_is_its_encoding(obj, key):
    before, after = canonical.halves(obj, key)
    assert canonical.join(before, after) == canonical.encode({k: v for k, v in obj.items() if k != key})
