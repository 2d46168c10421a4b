"""Hostile input: every service survives malformed, oversized, deeply nested, wrongly
typed and huge-integer messages, invalid UTF-8 and floods. Each gets a clear, signed
refusal where a reply is possible, nothing changes, and the service keeps serving.

1. The ledger engine (`Ledger.process`), fuzzed with hypothesis on a populated ledger.
2. The coordinator's request handler (`Coordinator._answer`), fuzzed the same way, with
   settlements alone and sent together.
3. A ledger process behind a real Mosquitto, flooded by one client while another works,
   and sent packets over and just under the broker's 1 MiB limit.

What the fuzzers found is kept below as explicit examples (`@example`) and plain tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from engine.coordinator import Coordinator
from engine.coordinator.journal import Journal
from protocols import PROTOCOL_VERSION
from protocols.bus import BusTimeout, Request, service_of_ledger
from protocols.bus.client import LedgerClient
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import CLIENT_WAITING_MAX, MqttBus, reply_topic, request_topic
from protocols.canonical import DEPTH_MAX, INT_MAX, MESSAGE_BYTES_MAX, decode, encode, member_path
from protocols.envelope import BATCH_BYTES_MAX, is_batch, open_batch, settlements
from protocols.errors import Code
from protocols.messages import (
    IDENT_PATTERN,
    MESSAGE_TYPES,
    QUERIES,
    Claim,
    CreateInstrument,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    QueryBalances,
    QueryJournal,
    QueryLocks,
    QueryReceipt,
    QuerySettlement,
    Receipt,
    Result,
    Settle,
    Settlement,
    SettlementLeg,
    SettlementStatus,
    Transfer,
)
from protocols.settlement import Timing
from protocols.signing import Signed, from_wire, sign, signing_bytes, unsigned
from tests.harness import BOND, T0, Harness
from tests.processes import ServiceProcess

CODES = {code.value for code in Code}
SECRET = bytes(range(32))
HASHLOCK = hashlib.sha256(SECRET).digest()
SCALE = float(os.environ.get("LOCKSTEP_FUZZ_SCALE", "1"))  # more examples for a longer hunt


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max(1, int(max_examples * SCALE)), deadline=None, suppress_health_check=list(HealthCheck)
    )


# == values of every JSON kind, hostile ones first =====================================

# An integer literal of 5000 digits: Python's json cannot write it (int -> str stops at
# 4300 digits), so it goes on the wire as a placeholder string replaced in the bytes.
HUGE = "\u0000huge-integer\u0000"
HUGE_LITERAL = b"9" * 5000
OVERSIZED = "x" * (MESSAGE_BYTES_MAX + 10)  # a string that alone makes a message too large

surrogate_text = st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),  # unbounded: beyond 64 bits too
    st.sampled_from([2**63, -(2**63) - 1, 10**19, 10**30, -1, 0, 1, 2**53 + 1, HUGE]),
    st.floats(),  # NaN and infinities included
    st.sampled_from([1.0, 0.0, -0.0, 100.0, 1e300]),
    st.text(max_size=20),
    surrogate_text,
    st.text(min_size=65, max_size=200),
    st.just(OVERSIZED),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | surrogate_text, inner, max_size=4)
    ),
    max_leaves=8,
)


def nested(depth: int, leaf=0, as_object: bool = False):
    value = leaf
    for _ in range(depth):
        value = {"a": value} if as_object else [value]
    return value


deep_values = st.builds(nested, st.integers(2, 40), st.just(0), st.booleans())
any_value = st.one_of(json_values, deep_values)


oversized_bytes = st.tuples(
    st.binary(min_size=1, max_size=16), st.integers(MESSAGE_BYTES_MAX + 1, 2 * MESSAGE_BYTES_MAX)
).map(lambda drawn: (drawn[0] * (drawn[1] // len(drawn[0]) + 1))[: drawn[1]])


def has_surrogate(text: str) -> bool:
    """A lone surrogate as the receiver reads it: on the wire as escapes, a high
    surrogate followed by a low one is one character (U+10000 and up)."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.loads(json.dumps(text)))


def decoder_must_refuse(value) -> bool:
    """Whether the decoder itself (not the message rules) must refuse this value
    wherever it appears: a float, an integer beyond 64 bits, a lone surrogate."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, float) or value == HUGE:
        return True
    if isinstance(value, int):
        return not -INT_MAX - 1 <= value <= INT_MAX
    if isinstance(value, str):
        return has_surrogate(value)
    if isinstance(value, list):
        return any(decoder_must_refuse(item) for item in value)
    return any(has_surrogate(key) or decoder_must_refuse(item) for key, item in value.items())


def key_has_surrogate(value) -> bool:
    if isinstance(value, list):
        return any(key_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(has_surrogate(key) or key_has_surrogate(item) for key, item in value.items())
    return False


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def wire_bytes(value, style: str) -> bytes:
    """Any JSON-ish value as bytes: "ascii" escapes everything (a lone surrogate becomes
    a \\ud800 escape), "utf8" writes characters raw (a lone surrogate becomes bytes that
    are not UTF-8), "pretty" adds whitespace, which the wire allows."""
    if style == "utf8":
        raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    else:
        raw = json.dumps(value, ensure_ascii=True, indent=2 if style == "pretty" else None).encode()
    return raw.replace(json.dumps(HUGE).encode(), HUGE_LITERAL)


# == the ledger engine ==================================================================

ACCOUNTS = {"acc-a": "bank-a", "acc-b": "bank-b", "acc-t": "treasury", "acc-ecb": "ecb"}


def applied(receipt) -> None:
    assert isinstance(receipt, Receipt) and receipt.status == "applied", receipt


def populated(h: Harness) -> Harness:
    """acc-a: plenty of EUR and a held lock; acc-b: bonds and USD."""
    for account, owner in ACCOUNTS.items():
        applied(h.send(OpenAccount, "csd-op", id=f"setup-open-{account}", account=account, owner=owner))
    applied(
        h.send(
            CreateInstrument,
            "csd-op",
            id="setup-bond",
            isin=BOND,
            issuer="treasury",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=250,
            maturity_date="2030-06-15",
        )
    )
    applied(h.send(Issue, "csd-op", id="setup-issue-bond", asset=BOND, account="acc-t", amount=1_000_000))
    applied(
        h.send(
            Transfer,
            "treasury",
            id="setup-sell-bond",
            from_account="acc-t",
            to_account="acc-b",
            asset=BOND,
            amount=400_000,
        )
    )
    applied(h.send(Issue, "ecb", id="setup-issue-eur", asset="EUR", account="acc-a", amount=10**15))
    applied(h.send(Issue, "fed", id="setup-issue-usd", asset="USD", account="acc-b", amount=10**15))
    applied(
        h.send(
            Lock,
            "bank-a",
            id="setup-lock",
            owner_account="acc-a",
            beneficiary_account="acc-b",
            asset="EUR",
            amount=500,
            hashlock=HASHLOCK,
            expiry_ms=T0 + 86_400_000,
            abort_by=("coordinator",),
        )
    )
    return h


@pytest.fixture
def ledger(harness) -> Harness:
    return populated(harness("unified"))


def snapshot(h: Harness) -> dict:
    """Everything a message may change: balances, accounts, assets and supply, locks,
    keys, the instructions answered, the journal's height and head."""
    tables = h.store.tables()
    return {
        "balances": dict(tables.balances),
        "accounts": dict(tables.accounts),
        "assets": tables.assets,
        "locks": tables.locks,
        "keys": dict(tables.keys),
        "instructions": set(tables.instruction_ids),
        "seq": h.ledger.seq,
        "head": h.ledger.prev_hash,
        "journal": len(h.store.journal()),
    }


def verified(h: Harness, reply: bytes) -> Receipt | Result:
    """A reply must be a canonical message signed by the ledger's registered key."""
    signed = from_wire(decode(reply, bytes_max=1 << 22), allowed=(Receipt, Result))
    assert encode(signed.wire()) == reply, "the ledger's reply is not canonical"
    assert signed.signed_by(h.ledger_id, h.world.registry[h.ledger_id].public_key), "reply not signed by the ledger"
    assert set(signed.sigs) == {h.ledger_id}
    assert signed.msg.ledger == h.ledger_id
    return signed.msg


def assert_refusal(h: Harness, receipt, *, instruction_id: str | None = None) -> Receipt:
    assert isinstance(receipt, Receipt), receipt
    assert receipt.status == "rejected", receipt
    assert receipt.code in CODES, receipt
    assert receipt.field, receipt
    assert receipt.reason, receipt
    assert (receipt.seq, receipt.entry_hash) == (None, None), receipt
    assert receipt.time_ms == h.now_ms
    assert receipt.instruction_id == "unknown" or IDENT_PATTERN.fullmatch(receipt.instruction_id)
    if instruction_id is not None:
        assert receipt.instruction_id == instruction_id, receipt
    return receipt


class Follow:
    """A valid transfer of 2 EUR from acc-a to acc-b, sent in the same batch right after
    the hostile message: it must be applied, and be the only change. Not the 1 EUR of
    the fuzzed transfer: that one, its id changed to "follow-1" and not re-signed, would
    otherwise be the very body already applied, and answered its receipt as a repeat."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.n = 0

    def next(self):
        self.n += 1
        return self.h.make(
            Transfer, "bank-a", id=f"follow-{self.n}", from_account="acc-a", to_account="acc-b", asset="EUR", amount=2
        )

    def expect(self, before: dict, follow_id: str) -> dict:
        expected = {
            **before,
            "balances": dict(before["balances"]),
            "instructions": before["instructions"] | {follow_id},
            "seq": before["seq"] + 1,
            "journal": before["journal"] + 1,
        }
        for account, change in (("acc-a", -2), ("acc-b", +2)):
            available, locked = expected["balances"].get((account, "EUR"), (0, 0))
            expected["balances"][(account, "EUR")] = (available + change, locked)
        del expected["head"]
        return expected


def refused_then_serves(h: Harness, follow: Follow, payload: bytes, *, instruction_id: str | None = None) -> Receipt:
    """Send the hostile payload and a valid transfer in one batch: the first is refused
    with a signed receipt, the second applied, and nothing else changes."""
    before = snapshot(h)
    good = follow.next()
    replies, entries = h.ledger.process([payload, good.encode()], h.now_ms)
    assert len(replies) == 2 and len(entries) == 1
    receipt = assert_refusal(h, verified(h, replies[0]), instruction_id=instruction_id)
    after_good = verified(h, replies[1])
    applied(after_good)
    assert after_good.seq == before["seq"]
    after = snapshot(h)
    del after["head"]
    assert after == follow.expect(before, good.msg.id), receipt
    return receipt


# -- 1a. arbitrary bytes, invalid UTF-8, deep nesting, oversized ----------------------------


@pytest.mark.slow
def test_fuzz_arbitrary_bytes_are_refused_and_change_nothing(ledger):
    h, follow = ledger, Follow(ledger)

    @fuzz(250)
    @given(payload=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode), oversized_bytes))
    @example(payload=b"")
    @example(payload=b"\xef\xbb\xbf{}")
    @example(payload=b"null")
    @example(payload=b'"\\ud800"')
    @example(payload=b"9" * 5000)
    @example(payload=b"1e999999")
    def check(payload):
        receipt = refused_then_serves(h, follow, payload)
        if len(payload) > MESSAGE_BYTES_MAX:
            assert (receipt.code, receipt.field) == ("too_large", "$")

    check()


INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xf0\x9f\x98",
    b"\x80",
    b"\xc3\x28",
]


def test_fuzz_invalid_utf8_anywhere_in_a_signed_instruction_is_malformed(ledger):
    h, follow = ledger, Follow(ledger)
    counter = iter(range(10**9))

    @fuzz(150)
    @given(
        position=st.integers(0, 10**6),
        bad=st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=4).filter(lambda b: not _is_utf8(b)),
    )
    def check(position, bad):
        payload = h.make(
            Transfer,
            "bank-a",
            id=f"u8-{next(counter)}",
            from_account="acc-a",
            to_account="acc-b",
            asset="EUR",
            amount=1,
        ).encode()
        at = position % (len(payload) + 1)
        receipt = refused_then_serves(h, follow, payload[:at] + bad + payload[at:], instruction_id="unknown")
        assert (receipt.code, receipt.field) == ("malformed", "$"), receipt
        assert "UTF-8" in receipt.reason

    check()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_fuzz_deep_nesting_is_malformed_or_too_large(ledger):
    h, follow = ledger, Follow(ledger)

    @fuzz(60)
    @given(
        levels=st.integers(DEPTH_MAX + 1, 70_000),
        opener=st.sampled_from([b"[", b'{"a":', b'[{"a":']),
        closed=st.booleans(),
        inside=st.booleans(),
    )
    @example(levels=DEPTH_MAX + 1, opener=b"[", closed=True, inside=False)
    @example(levels=100_000, opener=b"[", closed=False, inside=False)
    @example(levels=30_000, opener=b'{"a":', closed=True, inside=True)
    def check(levels, opener, closed, inside):
        body = opener * levels + (
            b"0" + (b"]" if opener == b"[" else b"}" if opener == b'{"a":' else b"}]") * levels if closed else b""
        )
        payload = b'{"v":1,"type":"transfer","id":"deep","amount":' + body + b"}" if inside else body
        receipt = refused_then_serves(h, follow, payload, instruction_id="unknown")
        expected = "too_large" if len(payload) > MESSAGE_BYTES_MAX else "malformed"
        assert (receipt.code, receipt.field) == (expected, "$"), receipt

    check()


def test_a_signed_instruction_padded_with_whitespace_to_exactly_the_limit_is_applied_and_one_byte_more_is_too_large(
    ledger,
):
    h, follow = ledger, Follow(ledger)
    signed = h.make(Transfer, "bank-a", id="padded", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1)
    raw = signed.encode()
    too_large = raw[:-1] + b" " * (MESSAGE_BYTES_MAX + 1 - len(raw)) + b"}"
    receipt = refused_then_serves(h, follow, too_large, instruction_id="unknown")
    assert (receipt.code, receipt.field) == ("too_large", "$")
    at_limit = raw[:-1] + b" " * (MESSAGE_BYTES_MAX - len(raw)) + b"}"
    assert len(at_limit) == MESSAGE_BYTES_MAX
    applied(h.raw(at_limit))


# -- 1b. arbitrary JSON values, and objects shaped like messages ------------------------------

FIELD_NAMES = sorted(
    {
        "v",
        "type",
        "sigs",
        "id",
        "ledger",
        "ts_ms",
        "from_account",
        "to_account",
        "asset",
        "amount",
        "owner_account",
        "beneficiary_account",
        "hashlock",
        "expiry_ms",
        "abort_by",
        "auth",
        "lock_id",
        "preimage",
        "legs",
        "account",
        "owner",
        "isin",
        "issuer",
        "currency",
        "face_value_minor",
        "coupon_rate_bp",
        "maturity_date",
        "party",
        "public_key",
        "from_seq",
        "limit",
        "expiring_before_ms",
        "instruction_id",
    }
)

shaped = st.fixed_dictionaries(
    {"v": st.just(PROTOCOL_VERSION) | any_value, "type": st.sampled_from(sorted(MESSAGE_TYPES)) | any_value},
    optional={
        "id": st.text(max_size=10) | any_value,
        "ledger": st.just("unified") | any_value,
        "sigs": st.dictionaries(
            st.sampled_from(["bank-a", "ecb", "nobody"]) | st.text(max_size=5),
            st.text("0123456789abcdef", max_size=170) | any_value,
            max_size=10,
        )
        | any_value,
    },
).flatmap(
    lambda base: st.dictionaries(st.sampled_from(FIELD_NAMES), any_value, max_size=8).map(
        lambda extra: {**extra, **base}
    )
)


@pytest.mark.slow
def test_fuzz_arbitrary_json_is_refused_and_changes_nothing(ledger):
    h, follow = ledger, Follow(ledger)

    @fuzz(300)
    @given(value=any_value | shaped, style=st.sampled_from(["ascii", "utf8", "pretty"]))
    @example(value={"v": 1, "type": "transfer", "amount": {"a": [1.5]}}, style="ascii")
    @example(value={"v": 1, "type": "transfer", "": None}, style="ascii")  # found: a refusal naming field ""
    @example(
        value={"v": 1, "type": "query_journal", "id": "q", "ledger": "unified", "from_seq": 0, "limit": 10**30},
        style="ascii",
    )
    @example(value={"v": True, "type": "transfer"}, style="ascii")
    @example(value={"v": 1, "type": "receipt", "id": "x"}, style="ascii")
    @example(
        value={
            "v": 1,
            "type": "query_balances",
            "id": "q",
            "ledger": "unified",
            "account": "acc-a",
            "sigs": {"\ud800": "00"},
        },
        style="ascii",
    )
    @example(
        value={
            "v": 1,
            "type": "query_balances",
            "id": "q",
            "ledger": "unified",
            "account": "acc-a",
            "sigs": {"x": "00"},
            "pad": OVERSIZED,
        },
        style="ascii",
    )
    def check(value, style):
        payload = wire_bytes(value, style)
        before = snapshot(h)
        (reply,), entries = h.ledger.process([payload], h.now_ms)
        answer = verified(h, reply)
        if isinstance(answer, Result):  # a well-formed query, drawn by chance: answered, changes nothing
            assert isinstance(value, dict) and value.get("type") in {cls.TYPE for cls in QUERIES}
        else:
            assert_refusal(h, answer)
            if len(payload) > MESSAGE_BYTES_MAX:
                assert (answer.code, answer.field) == ("too_large", "$")
        assert entries == [] and snapshot(h) == before
        applied(h.submit(follow.next()))

    check()


# -- 1c. valid messages with one field replaced, removed or added ------------------------------

KINDS = {
    "v": "v",
    "type": "type",
    "sigs": "sigs",
    "auth": "auth",
    "abort_by": "idents",
    "legs": "legs",
    **{name: "int" for name in ("ts_ms", "amount", "expiry_ms", "from_seq", "limit", "expiring_before_ms")},
    **{
        name: "str"
        for name in (
            "id",
            "ledger",
            "from_account",
            "to_account",
            "asset",
            "owner_account",
            "beneficiary_account",
            "hashlock",
            "lock_id",
            "preimage",
            "account",
            "owner",
            "instruction_id",
            "kind",
            "coordinator",
            "settlement_id",
        )
    },
    "deadline_ms": "int",
    "not_before_ms": "int",
    "parties": "parties",
}
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LEG_FIELDS = {"from_account": "str", "to_account": "str", "asset": "str", "amount": "int", "ledger": "str"}


def surely_invalid(kind: str, value, *, query: bool = False, leg_names: frozenset = frozenset()) -> bool:
    """Whether `value` breaks the rule of a field of this kind whatever else is true:
    the wrong JSON type, a negative time or amount, a string no identifier, asset or hex
    field allows. (What this says is invalid the decoder must refuse naming the field.)"""
    if decoder_must_refuse(value):
        return True
    if kind == "v":
        return not (type(value) is int and value == PROTOCOL_VERSION)
    if kind == "type":
        return not (isinstance(value, str) and value in MESSAGE_TYPES)
    if kind == "int":
        return type(value) is not int or value < 0
    if kind == "str":
        return not isinstance(value, str) or not _SAFE.fullmatch(value)
    if kind == "auth":
        return value is not None and not isinstance(value, dict)
    if kind in ("idents", "parties"):
        if not isinstance(value, list) or len(value) > 4 or (kind == "parties" and len(value) != 2):
            return True
        return any(surely_invalid("str", item) for item in value) or len(set(map(str, value))) != len(value)
    if kind == "legs":
        if not isinstance(value, list) or not 1 <= len(value) <= 16:
            return True
        return any(
            not isinstance(leg, dict)
            or set(leg) != leg_names
            or any(surely_invalid(LEG_FIELDS[name], item) for name, item in leg.items())
            for leg in value
        )
    if kind == "sigs":
        if not query:
            return True  # no drawn value is a valid signature
        return (
            not isinstance(value, dict)
            or len(value) > 8
            or any(
                not isinstance(sig, str) or len(sig) > 160 or len(sig) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", sig)
                for sig in value.values()
            )
        )
    raise AssertionError(kind)


def names_field(field: str, path: str) -> bool:
    """The refusal names the member at `path`, or one inside it; a member whose name is
    empty or could be read as a path is named quoted (canonical.member_path)."""
    return any(
        field == name or field.startswith(name + ".") or field.startswith(name + "[")
        for name in (path, member_path("$", path))
    )


def ledger_bases(h: Harness, n: int) -> dict[str, tuple]:
    """Each kind of message, valid, under a fresh id: (a maker of the signed message, its signers)."""

    def make(cls, *signers, **fields):
        return (lambda: h.make(cls, *signers, id=f"m{n}", **fields)), signers

    def query(msg):
        return (lambda: unsigned(msg)), ()

    return {
        "transfer": make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1),
        "lock": make(
            Lock,
            "bank-a",
            owner_account="acc-a",
            beneficiary_account="acc-b",
            asset="EUR",
            amount=1,
            hashlock=HASHLOCK,
            expiry_ms=T0 + 60_000,
            abort_by=("coordinator",),
        ),
        "claim": make(Claim, "bank-b", lock_id="setup-lock", preimage=bytes(32)),
        "issue": make(Issue, "ecb", asset="EUR", account="acc-a", amount=1),
        "open_account": make(OpenAccount, "csd-op", account=f"new-{n}", owner="bank-a"),
        "settle": make(
            Settle, "bank-a", "bank-b", legs=(Leg("acc-a", "acc-b", "EUR", 1), Leg("acc-b", "acc-a", BOND, 1))
        ),
        "query_balances": query(QueryBalances(f"m{n}", h.ledger_id, "acc-a")),
        "query_journal": query(QueryJournal(f"m{n}", h.ledger_id, 0, 3)),
        "query_locks": query(QueryLocks(f"m{n}", h.ledger_id, T0 + 10**9, 5)),
    }


class Mutation(NamedTuple):
    payload: bytes
    path: str  # the field changed, as a refusal names it
    invalid: bool  # the change breaks that field's rule whatever else is true
    whole: str | None  # the code when the decoder must refuse the message as a whole ("$")
    read_id: str  # the id a refusal of an invalid change answers to
    must_refuse: bool  # invalid, or changed under its old signatures


class Plan(NamedTuple):
    """One change to one valid message, as drawn: plain values, so that a change the
    fuzzer found can be replayed as an explicit `@example(plan=Plan(...))`."""

    message: str  # a key of the bases
    path: str  # the field replaced or removed, or where one is added ("legs[0]." adds in the leg)
    op: str  # "replace", "remove" or "add"
    value: object = None
    name: str = ""  # the member added
    resign: bool = False
    style: str = "ascii"


def field_paths(wire: dict) -> list[str]:
    return sorted(wire) + (["legs[0]." + name for name in sorted(wire["legs"][0])] if "legs" in wire else [])


# Values a field of each kind may well allow, so that a good share of the changes passes
# the decoder and is judged by the rules (applied, or refused and recorded or not): with
# any JSON value alone, 5 draws in 700 reached the rules, and whether the run met a
# recorded refusal was a matter of luck.
_NAMES = [
    "acc-a",
    "acc-b",
    "acc-t",
    "acc-ecb",
    "new-0",
    "EUR",
    "USD",
    "CHF",
    BOND,
    "setup-lock",
    "setup-bond",
    "bank-a",
    "bank-b",
    "ecb",
    "treasury",
    "coordinator",
    "nobody",
    "unified",
    "csd",
    "m0",
    "follow-1",
]
_HEX = [SECRET.hex(), HASHLOCK.hex(), "00" * 32, "ab"]
plausible = {
    "int": st.integers(0, 1_000)
    | st.sampled_from([0, 1, T0 - 1, T0, T0 + 1, T0 + 60_000, T0 + 86_400_000, T0 + 10**9, 10**15, 2**63 - 1]),
    "str": st.sampled_from(_NAMES + _HEX) | st.from_regex(_SAFE, fullmatch=True),
    "idents": st.lists(st.sampled_from(_NAMES), max_size=5),
    "parties": st.lists(st.sampled_from(_NAMES), min_size=2, max_size=2),
}


@st.composite
def plans(draw, wires: dict[str, dict]) -> Plan:
    """One message of `wires` with one field replaced by any JSON value (or one its kind
    may allow), removed, or one unknown field added; to be re-signed by its signers when
    that is possible."""
    message = draw(st.sampled_from(sorted(wires)), label="message")
    wire = wires[message]
    path = draw(st.sampled_from(field_paths(wire)), label="field")
    op = draw(st.sampled_from(["replace", "replace", "replace", "remove", "add"]), label="op")
    in_leg = path.startswith("legs[0].")
    target, name = (wire["legs"][0], path.split(".", 1)[1]) if in_leg else (wire, path)
    added, value = "", None
    if op == "add":
        added = draw((st.text(max_size=12) | surrogate_text).filter(lambda new: new not in target), label="new field")
        value = draw(any_value, label="value")
    elif op == "replace":
        kind = LEG_FIELDS[name] if in_leg else KINDS[name]
        value = draw(
            st.one_of(any_value, any_value, plausible[kind]) if kind in plausible else any_value, label="value"
        )
    resign = draw(st.booleans(), label="re-signed")
    style = draw(st.sampled_from(["ascii", "utf8", "pretty"]), label="style")
    return Plan(message, path, op, value, added, resign, style)


def mutate(plan: Plan, bases: dict[str, tuple], leg_names: frozenset, keys: dict) -> Mutation:
    """The message of `plan`, changed as it says; re-signed by its signers when the plan
    says so and that is possible (not a change of `sigs`, not a value that cannot be signed)."""
    make, signers = bases[plan.message]
    query = not signers
    new = json.loads(json.dumps(make().wire()))
    in_leg = plan.path.startswith("legs[0].")
    target, name = (new["legs"][0], plan.path.split(".", 1)[1]) if in_leg else (new, plan.path)
    path = plan.path
    if plan.op == "add":
        path = json.loads(json.dumps(plan.name)) if not in_leg else "legs[0]"  # as the receiver reads it
        target[plan.name] = plan.value
        invalid = True
    elif plan.op == "remove":
        del target[name]
        if in_leg:
            path = "legs[0]"
        invalid = name not in ("auth", "sigs") or (name == "sigs" and not query)
    else:
        assume(json.dumps(plan.value, sort_keys=True) != json.dumps(target[name], sort_keys=True))
        target[name] = plan.value
        invalid = surely_invalid(
            LEG_FIELDS[name] if in_leg else KINDS[name], plan.value, query=query, leg_names=leg_names
        )
    resign = bool(signers) and path != "sigs" and plan.resign
    if resign:
        try:
            data = signing_bytes({k: v for k, v in new.items() if k != "sigs"})
        except (ValueError, UnicodeEncodeError):  # NaN, infinity, lone surrogates: cannot be signed
            resign = False
        else:
            new["sigs"] = {party: keys[party].sign(data).hex() for party in signers}
    payload = wire_bytes(new, plan.style)
    whole = (
        "too_large"
        if len(payload) > MESSAGE_BYTES_MAX
        else "malformed"
        if depth(new) > DEPTH_MAX or key_has_surrogate(new) or not _is_utf8(payload)
        else None
    )
    readable = whole is None and not decoder_must_refuse(new) and isinstance(new.get("id"), str)
    read_id = new["id"] if readable and IDENT_PATTERN.fullmatch(new["id"]) else "unknown"
    return Mutation(payload, path, invalid, whole, read_id, invalid or (bool(signers) and not resign))


# What section 13 of PROTOCOL.md says of recording a refusal the rules give (fields not in
# `auth.`): these codes always are, these never; invalid_field and unknown_signer are
# recorded only when the rules raise them, on the fields named there.
RECORDED = {
    "unknown_account",
    "account_exists",
    "unknown_asset",
    "asset_exists",
    "insufficient_funds",
    "unknown_lock",
    "lock_exists",
    "lock_not_held",
    "lock_expired",
    "lock_not_expired",
    "wrong_preimage",
    "expiry_out_of_range",
}
NOT_RECORDED = {
    "malformed",
    "unknown_type",
    "unsupported_version",
    "too_large",
    "wrong_ledger",
    "bad_signature",
    "missing_signature",
    "not_authorised",
    "stale",
    "id_reused",
    "not_yet",
}
QUERY_TYPES = {cls.TYPE for cls in QUERIES}
RECORDED_INVALID_FIELDS = re.compile(r"amount|to_account|legs\[\d+\]\.to_account|beneficiary_account|abort_by")


def sent_again(h: Harness, payload: bytes, answer: Receipt) -> tuple[bytes, Receipt]:
    """The same bytes sent again, and query_receipt of the refused id."""
    (again,), entries = h.ledger.process([payload], h.now_ms)
    assert entries == []
    stored = h.raw(unsigned(QueryReceipt("qr", h.ledger_id, answer.instruction_id)).encode())
    assert isinstance(stored, Receipt), stored
    return again, stored


def assert_recorded_as_documented(
    h: Harness,
    answer: Receipt,
    reply: bytes,
    *,
    query: bool,
    known_ids: set,
    new_ids: set,
    again: bytes,
    stored: Receipt,
) -> None:
    """A refused instruction changes nothing but, for the refusals section 12 lists as
    recorded, its id's row: then the same id is answered with that first receipt for
    ever (a retry, a query_receipt); otherwise the id stays free. Queries are never
    recorded."""
    assert new_ids <= {answer.instruction_id}, (new_ids, answer)
    recorded = bool(new_ids)
    if query or answer.field.startswith("auth.") or answer.code in NOT_RECORDED:
        assert not recorded, answer
    elif answer.code in RECORDED:
        assert recorded, answer
    elif recorded:
        assert answer.code in ("invalid_field", "unknown_signer") and answer.field != "sigs", answer
        if answer.code == "invalid_field":
            assert RECORDED_INVALID_FIELDS.fullmatch(answer.field), answer
    if recorded:
        assert again == reply, "a recorded refusal was not answered with its first receipt"
        assert stored == answer, stored
    else:
        repeated = verified(h, again)
        assert (repeated.code, repeated.field) == (answer.code, answer.field), repeated
        if answer.instruction_id in known_ids:  # answered id_reused: the id keeps its first receipt
            assert stored.instruction_id == answer.instruction_id and stored.code != "unknown_instruction", stored
        else:
            assert stored.code == "unknown_instruction", stored


@pytest.mark.slow
def test_fuzz_one_field_of_a_valid_message_replaced_removed_or_added(ledger):
    """Any JSON value in any one field of each kind of message (re-signed by its signers
    when it can be, or with its old signatures): a value the field never allows is refused
    naming that field (or "$" when the message as a whole is undecodable), with nothing
    changed; one that happens to be valid is judged by the rules as usual, and a refusal
    recorded or not as PROTOCOL.md section 13 says."""
    h, follow = ledger, Follow(ledger)
    counter = iter(range(10**9))
    leg_names = frozenset({"from_account", "to_account", "asset", "amount"})
    wires = {message: make().wire() for message, (make, _) in ledger_bases(h, 0).items()}

    @fuzz(700)
    @given(plan=plans(wires))
    # found: a lock re-signed with expiry 0 is refused and, as documented, recorded
    @example(plan=Plan("lock", "expiry_ms", "replace", 0, resign=True))
    @example(plan=Plan("transfer", "amount", "replace", 10**15 + 1, resign=True))  # recorded
    @example(plan=Plan("issue", "asset", "replace", "USD", resign=True))  # not_authorised: not recorded
    @example(plan=Plan("open_account", "owner", "replace", "nobody", resign=True))  # unknown_signer, recorded
    @example(plan=Plan("transfer", "ts_ms", "replace", T0 - 10**9, resign=True))  # stale: not recorded
    def check(plan):
        change = mutate(plan, ledger_bases(h, next(counter)), leg_names, h.world.keys)
        event(
            f"{'invalid' if change.invalid else 'maybe valid'}, "
            f"{'must be refused' if change.must_refuse else 'the rules decide'}"
        )
        if change.must_refuse:
            receipt = refused_then_serves(
                h, follow, change.payload, instruction_id=change.read_id if change.invalid else None
            )
            event(f"refused: {receipt.code}")
            if change.whole:
                assert (receipt.code, receipt.field) == (change.whole, "$"), receipt
            elif change.invalid:
                assert names_field(receipt.field, change.path), (change.path, receipt)
            return
        before = snapshot(h)
        (reply,), entries = h.ledger.process([change.payload], h.now_ms)
        answer = verified(h, reply)
        event(f"judged: {getattr(answer, 'code', None) or getattr(answer, 'status', 'result')}")
        if isinstance(answer, Result) or answer.status == "rejected":
            assert entries == []
            again = sent_again(h, change.payload, answer) if isinstance(answer, Receipt) else None
            after = snapshot(h)
            new_ids = after["instructions"] - before["instructions"]
            if again is None:
                assert new_ids == set(), "a query recorded an id"
            else:
                assert_refusal(h, answer)
                again_reply, stored = again
                assert_recorded_as_documented(
                    h,
                    answer,
                    reply,
                    query=json.loads(change.payload).get("type") in QUERY_TYPES,
                    known_ids=before["instructions"],
                    new_ids=new_ids,
                    again=again_reply,
                    stored=stored,
                )
            after["instructions"] -= new_ids
            assert after == before, answer
        elif answer.instruction_id in before["instructions"]:  # the very instruction applied before
            assert h.ledger.seq == before["seq"] and entries == []
        else:
            assert h.ledger.seq == before["seq"] + 1 and len(entries) == 1
        applied(h.submit(follow.next()))

    check()


# == 2. the coordinator's request handler ===================================================


class WallClock:
    """The coordinator's clock outside a trio run (ServiceClock needs one)."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@pytest.fixture
def coordinator(world, tmp_path):
    journal = Journal(tmp_path / "coordinator.db")
    yield Coordinator(
        "coordinator", world.keys["coordinator"], world.registry, MemoryBus(), journal, WallClock(), Timing()
    )
    journal.close()


def answer(coordinator: Coordinator, payload: bytes, client: str = "fuzz") -> bytes:
    """`_answer` of one request, in a trio run of its own; its one reply."""
    replies: list[bytes] = []

    async def reply(raw: bytes) -> None:
        replies.append(raw)

    async def run() -> None:
        with trio.fail_after(10):
            await coordinator._answer(Request(payload, reply, client))

    trio.run(run)
    assert len(replies) == 1
    return replies[0]


def assert_status_refusal(
    world,
    coordinator: Coordinator,
    reply: bytes,
    *,
    settlement_id: str | None = None,
    path: str | None = None,
    whole: str | None = None,
) -> SettlementStatus:
    signed = from_wire(decode(reply, bytes_max=1 << 22), allowed=(SettlementStatus,))
    assert encode(signed.wire()) == reply
    assert set(signed.sigs) == {"coordinator"}
    assert signed.signed_by("coordinator", world.registry["coordinator"].public_key)
    status = signed.msg
    assert status.coordinator == "coordinator"
    assert status.phase == "rejected", status
    assert status.reason_code in CODES, status
    field, _, reason = status.reason.partition(": ")
    assert field and reason, status
    assert status.steps == ()
    if settlement_id is not None:
        assert status.settlement_id == settlement_id, status
    if whole is not None:
        assert (status.reason_code, field) == (whole, "$"), status
    elif path is not None:
        assert names_field(field, path), (path, status)
    assert coordinator.journal.all() == [], "a refused request was journaled"
    assert coordinator.in_flight == 0 and coordinator._driven == {} and coordinator._requests == {}
    assert coordinator._events == []
    return status


@pytest.mark.slow
def test_fuzz_the_coordinator_refuses_garbage_with_a_signed_status_and_journals_nothing(world, coordinator):
    @fuzz(200)
    @given(
        payload=st.one_of(
            st.binary(max_size=200),
            any_value.map(lambda v: wire_bytes(v, "ascii")),
            shaped.map(lambda v: wire_bytes(v, "ascii")),
            oversized_bytes,
        )
    )
    @example(payload=b"\xed\xa0\x80")
    @example(payload=b'{"":1.5}')  # found: a refusal naming field ""
    @example(payload=b"[" * 60_000)
    @example(
        payload=encode(
            {"v": 1, "type": "query_settlement", "id": "q", "coordinator": "coordinator", "settlement_id": "nope"}
        )
    )
    @example(payload=encode({"v": 1, "type": "transfer", "id": "t"}))
    def check(payload):
        assert_status_refusal(world, coordinator, answer(coordinator, payload))

    check()


def settlement_bases(world, n: int) -> dict[str, tuple]:
    """A DvP signed by both parties, and a query: (a maker of the message, its signers)."""
    now = WallClock().now_ms()
    legs = (
        SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 99_000),
        SettlementLeg("csd", "a-sec", "b-sec", BOND, 100),
    )
    settlement = Settlement(f"s{n}", "dvp", now, "coordinator", now + 60_000, ("bank-b", "bank-a"), legs)
    parties = ("bank-b", "bank-a")
    return {
        "settlement": (lambda: sign(settlement, *((p, world.keys[p]) for p in parties)), parties),
        "query_settlement": (lambda: unsigned(QuerySettlement(f"q{n}", "coordinator", f"s{n}")), ()),
    }


@pytest.mark.slow
def test_fuzz_one_field_of_a_settlement_or_query_made_invalid_is_refused_naming_it(world, coordinator):
    counter = iter(range(10**9))
    leg_names = frozenset({"ledger", "from_account", "to_account", "asset", "amount"})

    wires = {message: make().wire() for message, (make, _) in settlement_bases(world, 0).items()}

    @fuzz(250)
    @given(plan=plans(wires))
    def check(plan):
        change = mutate(plan, settlement_bases(world, next(counter)), leg_names, world.keys)
        assume(change.must_refuse)  # one that could be valid would be driven: not this test
        reply = answer(coordinator, change.payload)
        assert_status_refusal(
            world, coordinator, reply, path=change.path if change.invalid else None, whole=change.whole
        )

    check()


@pytest.mark.slow
def test_fuzz_settlements_sent_together_each_refused_on_its_own_naming_its_field(world, coordinator):
    """One to four settlements, each with one field changed so that it must be refused,
    sent together: one envelope of statuses comes back, signed once, each status
    refusing its own settlement (naming the field an invalid change broke), and nothing
    is journaled. A change the decoder refuses refuses the whole request, in one status
    alone, as it would a settlement alone."""
    counter = iter(range(10**9))
    leg_names = frozenset({"ledger", "from_account", "to_account", "asset", "amount"})
    wires = {"settlement": settlement_bases(world, 0)["settlement"][0]().wire()}
    key = world.registry["coordinator"].public_key

    @fuzz(100)
    @given(drawn=st.lists(plans(wires), min_size=1, max_size=4))
    def check(drawn):
        changes = [mutate(plan, settlement_bases(world, next(counter)), leg_names, world.keys) for plan in drawn]
        assume(all(change.must_refuse and change.whole is None for change in changes))
        reply = answer(coordinator, settlements([change.payload for change in changes]))
        value = decode(reply, bytes_max=BATCH_BYTES_MAX)
        if not is_batch(value):
            event("refused whole")
            status = assert_status_refusal(world, coordinator, reply, settlement_id="unknown")
            # what the decoder refused in one of them, or nesting the container's two levels took past the limit
            assert status.reason.startswith(("items[", "$: nested deeper")), status
            return
        event("each refused on its own")
        signer, items = open_batch(value, allowed=(SettlementStatus,))
        assert signer == "coordinator" and len(items) == len(changes)
        for item, change in zip(items, changes, strict=True):
            assert isinstance(item, Signed) and item.signed_by("coordinator", key)
            status = item.msg
            assert status.phase == "rejected" and status.reason_code in CODES and status.steps == (), status
            assert status.settlement_id == change.read_id, (status, change.read_id)
            if change.invalid:
                assert names_field(status.reason.partition(": ")[0], change.path), (change.path, status)
        assert coordinator.journal.all() == [], "a refused settlement was journaled"
        assert coordinator.in_flight == 0 and coordinator._driven == {} and coordinator._requests == {}

    check()


def test_the_coordinator_serves_a_real_settlement_query_after_hostile_ones(world, coordinator):
    for payload in (b"\xff", b"[" * 70_000, b"{}", encode({"v": 1, "type": "settlement"})):
        assert_status_refusal(world, coordinator, answer(coordinator, payload), settlement_id="unknown")
    query = unsigned(QuerySettlement("q-1", "coordinator", "s-404")).encode()
    status = assert_status_refusal(world, coordinator, answer(coordinator, query), settlement_id="s-404")
    assert status.reason_code == "invalid_field" and status.reason.startswith("settlement_id: ")


# == what the fuzzers found, kept =========================================================
#
# A refusal must name the field it concerns. When that field's name is the empty string
# (an unknown member "", a duplicate "", a float or huge integer under "", a lone
# surrogate under ""), the refusal names "" : no field at all, as a client reads it.
# canonical._check_values and _unique_keys and messages.from_body name the raw key.


def _signed_transfer_with(h: Harness, extra: bytes) -> bytes:
    raw = h.make(
        Transfer, "bank-a", id="t-empty", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1
    ).encode()
    return raw[:-1] + b"," + extra + b"}"


@pytest.mark.parametrize(
    "extra",
    [b'"":null', b'"":1.5', b'"":' + b"9" * 30, b'"":"\\ud800"', b'"":1,"":2'],
    ids=["unknown-member", "float", "huge-integer", "lone-surrogate", "duplicate"],
)
def test_a_refusal_about_a_member_named_by_the_empty_string_still_names_a_field(ledger, extra):
    receipt = refused_then_serves(ledger, Follow(ledger), _signed_transfer_with(ledger, extra))
    assert receipt.code in ("malformed", "invalid_field")


def test_the_coordinators_refusal_about_a_member_named_by_the_empty_string_still_names_a_field(world, coordinator):
    settlement = settlement_bases(world, 0)["settlement"][0]().encode()
    assert_status_refusal(world, coordinator, answer(coordinator, settlement[:-1] + b',"":null}'))


# canonical.decode keeps what its parser hooks refused in a module-global list
# (`_suspects`), cleared at the start of every decode. Two threads decoding at once (the
# demo and the benchmark run every ledger in one process with offload=True, each batch
# in a worker thread) clear each other's list: a float then passes the decoder as a
# `_Refused` object. Inside `auth`, which any object passes, it reaches the signed
# envelope, whose encoding raises TypeError out of Ledger.process: the ledger stops.


@pytest.mark.slow
def test_two_ledgers_decoding_in_two_threads_at_once_refuse_a_float_every_time(world):
    victim, other = Harness(world, "unified"), Harness(world, "cbdc-eur")
    body = {
        "v": 1,
        "type": "lock",
        "id": "l-race",
        "ledger": "unified",
        "ts_ms": T0,
        "owner_account": "acc-a",
        "beneficiary_account": "acc-b",
        "asset": "EUR",
        "amount": 1,
        "hashlock": "ab" * 32,
        "expiry_ms": T0 + 60_000,
        "abort_by": [],
        "auth": {"x": 1.5},
    }
    payload = encode({**body, "sigs": {"bank-a": world.keys["bank-a"].sign(signing_bytes(body)).hex()}})
    benign = [b'{"a":1}', unsigned(QueryBalances("q", "cbdc-eur", "nobody")).encode()]
    outcomes: set = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def refuse() -> None:
        try:
            while not stop.is_set():
                (reply,), _ = victim.ledger.process([payload], T0)
                receipt = verified(victim, reply)
                outcomes.add((receipt.code, receipt.field))
        except BaseException as error:  # what would stop the ledger
            errors.append(error)
            stop.set()

    def decode_others() -> None:
        while not stop.is_set():
            other.ledger.process(benign, T0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=refuse), threading.Thread(target=decode_others)]
        for thread in threads:
            thread.start()
        stop.wait(2.0)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [], f"Ledger.process raised {errors[0]!r}"
    assert outcomes == {("malformed", "auth.x")}


# == 3. a ledger process behind a real Mosquitto ============================================


def memory(pid: int, field: str = "VmRSS") -> int:
    """Bytes of a process's resident memory now (VmRSS) or at its peak (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


MIB = 1 << 20


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _text(s: str) -> bytes:
    return len(s.encode()).to_bytes(2, "big") + s.encode()


class RawMqtt:
    """A bare MQTT 3.1.1 client on one TCP connection, for what a well-behaved client
    never does: a burst of thousands of requests in one write, a packet over the
    broker's limit. It counts the broker's acknowledgements and the replies (received
    at QoS 0, so it owes the broker nothing), and notices when the broker hangs up."""

    def __init__(self, stream: trio.SocketStream, client_id: str) -> None:
        self.stream = stream
        self.client_id = client_id
        self.connack = trio.Event()
        self.suback = trio.Event()
        self.closed = trio.Event()
        self.acked = 0
        self.replies: list[bytes] = []
        self.last_reply = 0.0
        self._packet_ids = 0

    @classmethod
    async def connect(cls, nursery: trio.Nursery, broker, client_id: str) -> RawMqtt:
        self = cls(await trio.open_tcp_stream("127.0.0.1", broker.port), client_id)
        nursery.start_soon(self._read)
        connect = _text("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _text(client_id)  # clean session
        await self.stream.send_all(_packet(0x10, connect))
        with trio.fail_after(10):
            await self.connack.wait()
        await self.subscribe(reply_topic(client_id))
        return self

    async def subscribe(self, topic: str) -> None:
        self.suback = trio.Event()
        await self.stream.send_all(_packet(0x82, (1).to_bytes(2, "big") + _text(topic) + b"\x00"))
        with trio.fail_after(10):
            await self.suback.wait()

    def request(self, service: str, correlation: str, payload: bytes) -> bytes:
        """The PUBLISH packet (QoS 1) of one request, to be sent with others in one write."""
        self._packet_ids = self._packet_ids % 65535 + 1
        return _packet(
            0x32,
            _text(request_topic(service, self.client_id, correlation)) + self._packet_ids.to_bytes(2, "big") + payload,
        )

    async def _read(self) -> None:
        buffer = bytearray()
        try:
            while data := await self.stream.receive_some(1 << 20):
                buffer += data
                at = 0
                while len(buffer) - at >= 2:
                    size, shift, i = 0, 0, at + 1
                    while True:
                        if i >= len(buffer):
                            break
                        size |= (buffer[i] & 0x7F) << shift
                        shift += 7
                        i += 1
                        if not buffer[i - 1] & 0x80:
                            break
                    if (i >= len(buffer) and buffer[i - 1] & 0x80) or len(buffer) < i + size:
                        break
                    self._handle(buffer[at] >> 4, buffer[at] & 0x0F, bytes(buffer[i : i + size]))
                    at = i + size
                del buffer[:at]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.closed.set()

    def _handle(self, kind: int, flags: int, body: bytes) -> None:
        if kind == 2:
            assert body[1] == 0, f"the broker refused the connection: {body[1]}"
            self.connack.set()
        elif kind == 9:
            self.suback.set()
        elif kind == 4:
            self.acked += 1
        elif kind == 3:
            topic_length = int.from_bytes(body[:2], "big")
            self.replies.append(body[2 + topic_length + (2 if (flags >> 1) & 3 else 0) :])
            self.last_reply = trio.current_time()

    async def quiet(self, seconds: float, deadline_s: float = 120) -> None:
        """Wait until no reply has come for `seconds`."""
        self.last_reply = trio.current_time()
        with trio.fail_after(deadline_s):
            while trio.current_time() - self.last_reply < seconds:
                await trio.sleep(0.05)


class Worker:
    """A second client doing normal work while another floods: transfers of 1 EUR from
    a to b, each timed from its first send to its receipt."""

    LEDGER = "cbdc-eur"

    def __init__(self, world, bus) -> None:
        self.world = world
        self.client = LedgerClient(bus, self.LEDGER, world.registry[self.LEDGER].public_key, timeout_s=30, attempts=1)
        self.latencies: list[float] = []
        self.unanswered = 0
        self.sent = 0

    def signed(self, cls, signer: str, ts_ms: int | None = None, **fields):
        ts_ms = time.time_ns() // 1_000_000 if ts_ms is None else ts_ms
        return sign(cls(ledger=self.LEDGER, ts_ms=ts_ms, **fields), (signer, self.world.keys[signer]))

    async def fund(self) -> None:
        for signed in (
            self.signed(OpenAccount, "ecb", id="open-a", account="a", owner="bank-a"),
            self.signed(OpenAccount, "ecb", id="open-b", account="b", owner="bank-b"),
            self.signed(Issue, "ecb", id="mint", asset="EUR", account="a", amount=10**12),
        ):
            applied(await self.client.submit(signed))

    async def transfer(self) -> None:
        self.sent += 1
        signed = self.signed(
            Transfer, "bank-a", id=f"w{self.sent}", from_account="a", to_account="b", asset="EUR", amount=1
        )
        started = trio.current_time()
        try:
            applied(await self.client.submit(signed))
        except BusTimeout:
            self.unanswered += 1
        else:
            self.latencies.append(trio.current_time() - started)

    async def run(self, stop: trio.Event, concurrency: int = 4) -> None:
        async def one() -> None:
            while not stop.is_set():
                await self.transfer()

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(one)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    async def check_exactly_once(self) -> None:
        """Every transfer answered was applied once, none more: b holds one EUR per transfer."""
        value = await self.client.query(QueryBalances(self.client.next_query_id(), self.LEDGER, "b"))
        assert value["balances"]["EUR"] == {"available": len(self.latencies), "locked": 0}


async def sample_peak(pid: int, peak: list[int], stop: trio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], memory(pid))
        await trio.sleep(0.05)


def no_traceback(process: ServiceProcess) -> None:
    log = process.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


FLOOD_REQUESTS = 20_000


async def flood(world, broker, payloads: list[bytes], count: int, replies_at_least: int) -> dict:
    """Start a ledger process, fund it, then: one client publishes `count` requests
    (cycling through `payloads`) in one burst while a second does transfers, until the
    flooder has `replies_at_least` replies and then none for a while. Returns what each
    saw and the ledger's memory."""
    service = service_of_ledger(Worker.LEDGER)
    process = ServiceProcess(world, "ledger", Worker.LEDGER, broker.url).start()
    try:
        async with MqttBus.connect(broker.url, client_id="worker") as bus:
            await process.ready(bus)
            worker = Worker(world, bus)
            await worker.fund()
            for _ in range(100):  # warm up: the ledger's memory settles
                await worker.transfer()
            pid = process.process.pid
            before = memory(pid)
            peak = [before]
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                flooder = await RawMqtt.connect(nursery, broker, "flooder")
                burst = b"".join(flooder.request(service, f"{n:x}", payloads[n % len(payloads)]) for n in range(count))
                nursery.start_soon(sample_peak, pid, peak, stop)
                nursery.start_soon(worker.run, stop)
                await trio.sleep(0.1)
                started = trio.current_time()
                await flooder.stream.send_all(burst)
                del burst
                with trio.fail_after(60):
                    while flooder.acked < count or len(flooder.replies) < replies_at_least:
                        await trio.sleep(0.05)
                await flooder.quiet(1.5)
                drained_s = trio.current_time() - started
                stop.set()
                await flooder.stream.aclose()
            assert process.running, process.log_path.read_text()[-3000:]
            peak[0] = max(peak[0], memory(pid, "VmHWM"))
            await worker.transfer()  # and afterwards it still serves
            await worker.check_exactly_once()
            no_traceback(process)
            return {"worker": worker, "flooder": flooder, "before": before, "peak": peak[0], "drained_s": drained_s}
    finally:
        assert process.stop() == 0, process.log_path.read_text()[-3000:]


def flood_payloads(world) -> list[bytes]:
    """Garbage and valid-but-refused requests, each under 4 KiB: stale and wrongly
    signed transfers (the ledger verifies their signatures, and records neither),
    invalid UTF-8, nesting deep enough to exhaust the parser, floats, huge integers."""

    def transfer(n: int, signer: str, ts_ms: int) -> bytes:
        body = Transfer(f"flood-{n}", Worker.LEDGER, ts_ms, "a", "b", "EUR", 1)
        return sign(body, (signer, world.keys[signer])).encode()

    stale_ms = time.time_ns() // 1_000_000 - 3_600_000
    return [
        *(transfer(n, "bank-a", stale_ms) for n in range(8)),  # stale
        *(transfer(n, "bank-b", time.time_ns() // 1_000_000 + 10**9) for n in range(4)),  # not the owner's
        b"\xff\xfe garbage",
        b'{"id":"\xed\xa0\x80"}',
        b"[" * 3000,
        b"{}",
        b"",
        b'{"v":1,"type":"transfer","id":"f","amount":1.5}',
        b'{"v":1,"type":"transfer","amount":' + b"9" * 3000 + b"}",
        encode({"v": 1, "type": "query_journal", "id": "q", "ledger": Worker.LEDGER, "from_seq": 0, "limit": 10**6}),
    ]


@pytest.mark.slow
async def test_a_flood_from_one_client_neither_starves_another_nor_grows_the_ledgers_memory(world, broker):
    seen = await flood(world, broker, flood_payloads(world), FLOOD_REQUESTS, CLIENT_WAITING_MAX)
    worker, flooder = seen["worker"], seen["flooder"]
    # the broker took the whole burst; the ledger answered at least its share, each with a refusal
    assert flooder.acked == FLOOD_REQUESTS
    assert CLIENT_WAITING_MAX <= len(flooder.replies) <= FLOOD_REQUESTS
    key = world.registry[Worker.LEDGER].public_key
    for reply in flooder.replies[:: max(1, len(flooder.replies) // 200)]:
        signed = from_wire(decode(reply), allowed=(Receipt,))
        assert signed.signed_by(Worker.LEDGER, key)
        assert signed.msg.status == "rejected" and signed.msg.code in CODES and signed.msg.field
    assert all(b'"status":"rejected"' in reply for reply in flooder.replies)
    # the other client: every request answered, none waited long
    assert worker.unanswered == 0
    assert len(worker.latencies) >= 100
    assert worker.percentile(0.99) < 5.0, (worker.percentile(0.99), seen["drained_s"])
    assert max(worker.latencies) < 10.0, (max(worker.latencies), seen["drained_s"])
    # memory: bounded by the per-client share, not by the flood
    assert seen["peak"] - seen["before"] < 48 * MIB, (seen["before"] / MIB, seen["peak"] / MIB)


@pytest.mark.slow
async def test_a_flood_of_large_requests_from_one_client_does_not_grow_the_ledgers_memory(world, broker):
    """Requests of 60 KB (under the 64 KiB limit: parsed, then refused) and of 1 000 000
    bytes (over it, under the broker's 1 MiB packet limit: refused unread). The waiting
    requests must be bounded in bytes, not only in number."""
    under = b'{"v":1,"type":"transfer","id":"big","pad":"' + b"x" * 60_000 + b'"}'
    over = b'{"pad":"' + b"x" * 1_000_000 + b'"}'
    seen = await flood(world, broker, [under] * 15 + [over], 1_600, 1)
    worker = seen["worker"]
    assert seen["flooder"].acked == 1_600
    assert worker.unanswered == 0 and len(worker.latencies) >= 100
    assert seen["peak"] - seen["before"] < 64 * MIB, (
        f"ledger memory grew from {seen['before'] / MIB:.0f} MiB to {seen['peak'] / MIB:.0f} MiB "
        f"under a flood of {1_500 * len(under) // MIB + 100 * len(over) // MIB} MiB"
    )


async def test_a_packet_over_the_brokers_limit_costs_its_sender_the_connection_and_one_under_it_is_refused(
    world, broker
):
    service = service_of_ledger(Worker.LEDGER)
    process = ServiceProcess(world, "ledger", Worker.LEDGER, broker.url).start()
    try:
        async with MqttBus.connect(broker.url, client_id="worker") as bus, trio.open_nursery() as nursery:
            await process.ready(bus)
            worker = Worker(world, bus)
            await worker.fund()
            before = memory(process.process.pid)
            # over max_packet_size (1 MiB): Mosquitto hangs up on the sender; nothing reaches the ledger
            watcher = await RawMqtt.connect(nursery, broker, "watcher")
            await watcher.subscribe(reply_topic("too-big"))  # where the ledger would answer it
            big = await RawMqtt.connect(nursery, broker, "too-big")
            with contextlib.suppress(trio.BrokenResourceError):  # the broker hung up before it had read it all
                await big.stream.send_all(big.request(service, "1", b'{"pad":"' + b"x" * (1 << 20) + b'"}'))
            with trio.fail_after(10):
                await big.closed.wait()
            assert big.acked == 0 and big.replies == []
            # just under it: the broker passes it on, the ledger refuses it by its own limit
            near = b'{"v":1,"type":"transfer","id":"near","pad":"' + b"x" * (1_040_000) + b'"}'
            assert 1_000_000 < len(near) < (1 << 20) - 1_000
            refusal = await worker.client.submit_raw(near)
            assert isinstance(refusal, Receipt)
            assert (refusal.status, refusal.code, refusal.field, refusal.instruction_id) == (
                "rejected",
                "too_large",
                "$",
                "unknown",
            )
            assert watcher.replies == [], "the ledger answered a packet the broker should have dropped"
            # the ledger keeps serving everyone else
            for _ in range(20):
                await worker.transfer()
            assert worker.unanswered == 0
            await worker.check_exactly_once()
            assert process.running
            assert memory(process.process.pid) - before < 32 * MIB
            no_traceback(process)
            nursery.cancel_scope.cancel()  # the watcher's connection
    finally:
        assert process.stop() == 0, process.log_path.read_text()[-3000:]
