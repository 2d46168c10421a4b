"""Strict decoding: every way a message can be wrong is refused with its code and the
field it concerns, before any rule runs; what is accepted has one canonical encoding."""

import json

import pytest

from protocols import PROTOCOL_VERSION
from protocols.canonical import DEPTH_MAX, INT_MAX, MESSAGE_BYTES_MAX, decode, encode
from protocols.errors import Code, Rejected
from protocols.identifiers import make_isin
from protocols.messages import (
    INSTRUCTIONS,
    LEGS_MAX,
    QUERIES,
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Fence,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    QueryBalances,
    Receipt,
    Redeem,
    Refund,
    RotateKey,
    Settle,
    Transfer,
    from_body,
    to_body,
)
from protocols.signing import SIGNATURES_MAX, PrivateKey, decode_signed, sign
from tests.harness import T0

BOND = make_isin("XS000000001")
HASH = "ab" * 32
LEDGER_ALLOWED = INSTRUCTIONS + QUERIES


def refusal(call, *args, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as caught:
        call(*args, **kwargs)
    return caught.value


def assert_refused(error: Rejected, code: Code, field: str) -> None:
    assert (error.code, error.field) == (code, field), error


def transfer(**changes) -> dict:
    """A valid transfer body, with some fields changed (None removes a field)."""
    body = {
        "v": PROTOCOL_VERSION,
        "type": "transfer",
        "id": "t-1",
        "ledger": "unified",
        "ts_ms": T0,
        "from_account": "acc-a",
        "to_account": "acc-b",
        "asset": "EUR",
        "amount": 100,
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def lock(**changes) -> dict:
    body = {
        "v": PROTOCOL_VERSION,
        "type": "lock",
        "id": "l-1",
        "ledger": "unified",
        "ts_ms": T0,
        "owner_account": "acc-a",
        "beneficiary_account": "acc-b",
        "asset": "EUR",
        "amount": 100,
        "hashlock": HASH,
        "expiry_ms": T0 + 60_000,
        "abort_by": ["coordinator"],
    }
    body.update(changes)
    return body


def settle(*legs: dict) -> dict:
    return {"v": PROTOCOL_VERSION, "type": "settle", "id": "s-1", "ledger": "unified", "ts_ms": T0, "legs": list(legs)}


def leg(**changes) -> dict:
    return {"from_account": "acc-a", "to_account": "acc-b", "asset": "EUR", "amount": 100, **changes}


# -- canonical.decode: bytes to a JSON value -------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"hello", b"{'amount': 1}", b'{"a":1,}', b'{"a":01}', b'{"a":1} {"b":2}', b"\xef\xbb\xbf{}"]
)
def test_bytes_that_are_not_json_are_malformed(raw):
    assert_refused(refusal(decode, raw), Code.MALFORMED, "$")


@pytest.mark.parametrize("raw", [b'{"id":"\xff"}', b'{"id":"\xc3"}', b'{"id":"\xed\xa0\x80"}', b"\xc0\xaf"])
def test_bytes_that_are_not_utf8_are_malformed(raw):
    error = refusal(decode, raw)
    assert_refused(error, Code.MALFORMED, "$")
    assert "UTF-8" in error.reason


@pytest.mark.parametrize("number", ["1.5", "100.0", "1e2", "1E2", "-0.0", "1e400"])
def test_a_float_is_refused_naming_its_field(number):
    error = refusal(decode, b'{"id":"t-1","amount":' + number.encode() + b"}")
    assert_refused(error, Code.MALFORMED, "amount")
    assert number in error.reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_naming_their_field(constant):
    assert_refused(refusal(decode, b'{"amount":' + constant.encode() + b"}"), Code.MALFORMED, "amount")


def test_a_float_inside_a_leg_is_refused_with_the_legs_path():
    raw = encode(settle(leg(), leg(amount=777))).replace(b'"amount":777', b'"amount":7.5')
    assert_refused(refusal(decode, raw), Code.MALFORMED, "legs[1].amount")


def test_a_duplicate_key_is_refused_naming_the_key():
    assert_refused(refusal(decode, b'{"amount":1,"to_account":"b","amount":1000000}'), Code.MALFORMED, "amount")


def test_a_duplicate_key_in_a_nested_object_is_refused():
    raw = b'{"legs":[{"amount":1,"amount":2}]}'
    assert_refused(refusal(decode, raw), Code.MALFORMED, "amount")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_up_to_the_limit_is_accepted():
    assert decode(nested(DEPTH_MAX)) is not None


def test_nesting_beyond_the_limit_is_refused():
    error = refusal(decode, nested(DEPTH_MAX + 1))
    assert_refused(error, Code.MALFORMED, "$")
    assert "nested deeper" in error.reason


def test_nesting_deep_enough_to_exhaust_the_parser_is_refused_not_crashed():
    assert_refused(refusal(decode, b"[" * 50_000), Code.MALFORMED, "$")


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = {"id": "[" * 100 + '\\"{' * 20}
    assert decode(json.dumps(text).encode()) == text


def test_a_message_over_the_size_limit_is_too_large():
    raw = encode({"pad": "x" * MESSAGE_BYTES_MAX})
    error = refusal(decode, raw)
    assert_refused(error, Code.TOO_LARGE, "$")
    assert str(MESSAGE_BYTES_MAX) in error.reason


def test_a_message_exactly_at_the_size_limit_is_accepted():
    overhead = len(encode({"pad": ""}))
    raw = encode({"pad": "x" * (MESSAGE_BYTES_MAX - overhead)})
    assert len(raw) == MESSAGE_BYTES_MAX
    assert decode(raw) == {"pad": "x" * (MESSAGE_BYTES_MAX - overhead)}


def test_the_size_limit_is_checked_before_parsing():
    assert_refused(refusal(decode, b"{" * (MESSAGE_BYTES_MAX + 1)), Code.TOO_LARGE, "$")


@pytest.mark.parametrize("value", [INT_MAX, -INT_MAX - 1, 0])
def test_integers_in_the_signed_64_bit_range_are_accepted(value):
    assert decode(b'{"amount":%d}' % value) == {"amount": value}


@pytest.mark.parametrize("value", [INT_MAX + 1, -INT_MAX - 2, 10**30])
def test_integers_beyond_64_bits_are_refused_naming_their_field(value):
    assert_refused(refusal(decode, b'{"amount":%d}' % value), Code.INVALID_FIELD, "amount")


def test_an_integer_too_long_for_python_to_parse_is_refused_not_crashed():
    # Python's int() raises ValueError beyond 4300 digits; that must be a refusal.
    raw = b'{"amount":' + b"9" * 5000 + b"}"
    assert_refused(refusal(decode, raw), Code.INVALID_FIELD, "amount")


def test_an_integer_beyond_64_bits_inside_a_leg_is_refused_with_the_legs_path():
    raw = encode(settle(leg(), leg(amount=INT_MAX))).replace(b"%d" % INT_MAX, b"%d" % (INT_MAX + 1))
    assert_refused(refusal(decode, raw), Code.INVALID_FIELD, "legs[1].amount")


def test_a_lone_surrogate_in_a_string_is_refused():
    assert_refused(refusal(decode, b'{"id":"a\\ud800"}'), Code.MALFORMED, "id")


def test_a_lone_surrogate_in_a_field_name_is_refused():
    assert_refused(refusal(decode, b'{"\\udc00":1}'), Code.MALFORMED, "$")


def test_a_surrogate_pair_escape_is_one_character():
    assert decode(b'{"id":"\\ud83d\\ude00"}') == {"id": "\U0001f600"}


# -- canonical.encode: one byte string per value ------------------------------------------


def test_encoding_does_not_depend_on_key_order():
    forward = transfer()
    backward = dict(reversed(list(forward.items())))
    assert list(forward) != list(backward)
    assert encode(forward) == encode(backward)


def test_encoding_has_sorted_keys_no_whitespace_and_raw_utf8():
    assert encode({"b": [1, {"d": True, "c": None}], "a": "é"}) == '{"a":"é","b":[1,{"c":null,"d":true}]}'.encode()


def test_decoding_then_encoding_gives_the_canonical_bytes_whatever_the_input_layout():
    pretty = json.dumps(transfer(), indent=4, ensure_ascii=True).encode()
    assert encode(decode(pretty)) == encode(transfer())


def test_decode_inverts_encode():
    value = {"id": "x", "n": [INT_MAX, -INT_MAX - 1, 0], "s": "ü\U0001f600", "t": True, "z": None}
    assert decode(encode(value)) == value


# -- messages.from_body: a JSON object to a message --------------------------------------------


def test_a_body_that_is_not_an_object_is_malformed():
    assert_refused(refusal(from_body, [transfer()]), Code.MALFORMED, "$")


@pytest.mark.parametrize("version", [0, 2, "1", True, None, 1.0, [1]])
def test_a_version_other_than_the_integer_1_is_unsupported(version):
    body = transfer(v=version) if version is not None else transfer(v=None)
    assert_refused(refusal(from_body, body), Code.UNSUPPORTED_VERSION, "v")


@pytest.mark.parametrize("type_name", ["mint", "Transfer", "", None, 7, ["transfer"]])
def test_an_unknown_type_is_refused(type_name):
    body = transfer(type=type_name) if type_name is not None else transfer(type=None)
    assert_refused(refusal(from_body, body), Code.UNKNOWN_TYPE, "type")


@pytest.mark.parametrize("type_name", ["receipt", "result", "entry"])
def test_a_ledgers_own_message_types_are_unknown_to_a_ledger(type_name):
    assert_refused(refusal(from_body, transfer(type=type_name), allowed=LEDGER_ALLOWED), Code.UNKNOWN_TYPE, "type")


@pytest.mark.parametrize("field", ["id", "ledger", "ts_ms", "from_account", "to_account", "asset", "amount"])
def test_a_missing_field_is_refused_naming_it(field):
    body = transfer()
    del body[field]
    assert_refused(refusal(from_body, body), Code.MALFORMED, field)


@pytest.mark.parametrize("extra", [{"memo": "hi"}, {"sigs": {}}, {"amount_minor": 1}, {"Amount": 100}])
def test_an_extra_field_is_refused_naming_it(extra):
    (field,) = extra
    assert_refused(refusal(from_body, {**transfer(), **extra}), Code.MALFORMED, field)


@pytest.mark.parametrize("value", ["100", True, False, None, [100], {"minor": 100}, b"100"])
def test_an_amount_that_is_not_an_integer_is_malformed(value):
    error = refusal(from_body, {**transfer(), "amount": value})
    assert_refused(error, Code.MALFORMED, "amount")


@pytest.mark.parametrize("value", [0, -1, -INT_MAX - 1, INT_MAX + 1])
def test_an_amount_outside_1_to_2_63_minus_1_is_an_invalid_field(value):
    assert_refused(refusal(from_body, transfer(amount=value)), Code.INVALID_FIELD, "amount")


def test_the_largest_amount_is_accepted():
    assert from_body(transfer(amount=INT_MAX)).amount == INT_MAX


@pytest.mark.parametrize("ts_ms", [-1, INT_MAX + 1])
def test_a_time_outside_the_epoch_range_is_an_invalid_field(ts_ms):
    assert_refused(refusal(from_body, transfer(ts_ms=ts_ms)), Code.INVALID_FIELD, "ts_ms")


@pytest.mark.parametrize("value", ["", "-starts-with-dash", "has space", "x" * 65, "ünïcode", "a/b"])
def test_an_identifier_of_the_wrong_form_is_an_invalid_field(value):
    assert_refused(refusal(from_body, transfer(from_account=value)), Code.INVALID_FIELD, "from_account")


def test_an_identifier_of_64_characters_is_accepted():
    assert from_body(transfer(id="x" * 64)).id == "x" * 64


@pytest.mark.parametrize("hashlock", ["ab" * 31, "ab" * 33, "ab" * 32 + "a", ""])
def test_a_hashlock_of_the_wrong_length_is_an_invalid_field(hashlock):
    assert_refused(refusal(from_body, lock(hashlock=hashlock)), Code.INVALID_FIELD, "hashlock")


def test_an_uppercase_hashlock_is_an_invalid_field():
    assert_refused(refusal(from_body, lock(hashlock="AB" * 32)), Code.INVALID_FIELD, "hashlock")


@pytest.mark.parametrize("hashlock", ["zz" * 32, "0x" + "ab" * 31, " " + "a" * 63, "ab" * 31 + "a "])
def test_a_hashlock_that_is_not_hex_is_an_invalid_field(hashlock):
    assert_refused(refusal(from_body, lock(hashlock=hashlock)), Code.INVALID_FIELD, "hashlock")


@pytest.mark.parametrize("hashlock", [123, None, ["ab"] * 32])
def test_a_hashlock_that_is_not_a_string_is_malformed(hashlock):
    assert_refused(refusal(from_body, lock(hashlock=hashlock)), Code.MALFORMED, "hashlock")


def test_a_hashlock_decodes_to_its_32_bytes():
    assert from_body(lock()).hashlock == bytes.fromhex(HASH)


def test_a_claims_preimage_must_be_64_lowercase_hex_digits():
    claim = {
        "v": PROTOCOL_VERSION,
        "type": "claim",
        "id": "c-1",
        "ledger": "unified",
        "ts_ms": T0,
        "lock_id": "l-1",
        "preimage": "CD" * 32,
    }
    assert_refused(refusal(from_body, claim), Code.INVALID_FIELD, "preimage")
    assert from_body({**claim, "preimage": "cd" * 32}).preimage == b"\xcd" * 32


@pytest.mark.parametrize("code", ["XYZ", "eur", "EU", "EURO", "XAU", "XXX"])
def test_an_asset_that_is_neither_iso_4217_nor_an_isin_is_an_invalid_field(code):
    error = refusal(from_body, transfer(asset=code))
    assert_refused(error, Code.INVALID_FIELD, "asset")


def test_an_instruments_currency_must_be_iso_4217():
    body = {
        "v": PROTOCOL_VERSION,
        "type": "create_instrument",
        "id": "c-1",
        "ledger": "csd",
        "ts_ms": T0,
        "isin": BOND,
        "issuer": "treasury",
        "currency": "ABC",
        "face_value_minor": 100_000,
        "coupon_rate_bp": 250,
        "maturity_date": "2030-06-15",
    }
    assert_refused(refusal(from_body, body), Code.INVALID_FIELD, "currency")
    wrong_digit = BOND[:11] + str((int(BOND[11]) + 1) % 10)
    error = refusal(from_body, {**body, "currency": "EUR", "isin": wrong_digit})
    assert_refused(error, Code.INVALID_FIELD, "isin")
    assert "check digit" in error.reason
    assert_refused(
        refusal(from_body, {**body, "currency": "EUR", "maturity_date": "15/06/2030"}),
        Code.INVALID_FIELD,
        "maturity_date",
    )


def test_an_isin_asset_with_a_wrong_check_digit_is_an_invalid_field():
    wrong_digit = BOND[:11] + str((int(BOND[11]) + 1) % 10)
    assert_refused(refusal(from_body, transfer(asset=wrong_digit)), Code.INVALID_FIELD, "asset")
    assert from_body(transfer(asset=BOND)).asset == BOND


def test_settlement_legs_must_be_a_list_of_1_to_16():
    assert_refused(refusal(from_body, settle()), Code.INVALID_FIELD, "legs")
    assert_refused(refusal(from_body, settle(*[leg()] * (LEGS_MAX + 1))), Code.INVALID_FIELD, "legs")
    assert len(from_body(settle(*[leg()] * LEGS_MAX)).legs) == LEGS_MAX
    assert_refused(refusal(from_body, {**settle(), "legs": leg()}), Code.MALFORMED, "legs")


def test_a_leg_with_a_missing_or_extra_field_is_refused_naming_the_leg():
    short = leg()
    del short["asset"]
    assert_refused(refusal(from_body, settle(leg(), short)), Code.MALFORMED, "legs[1]")
    assert_refused(refusal(from_body, settle(leg(memo="x"))), Code.MALFORMED, "legs[0]")
    assert_refused(refusal(from_body, settle("acc-a")), Code.MALFORMED, "legs[0]")


@pytest.mark.parametrize(
    "changes, code, field",
    [
        ({"amount": 0}, Code.INVALID_FIELD, "legs[1].amount"),
        ({"amount": "100"}, Code.MALFORMED, "legs[1].amount"),
        ({"asset": "XYZ"}, Code.INVALID_FIELD, "legs[1].asset"),
        ({"to_account": ""}, Code.INVALID_FIELD, "legs[1].to_account"),
    ],
)
def test_a_bad_value_inside_a_leg_is_refused_with_the_legs_path(changes, code, field):
    assert_refused(refusal(from_body, settle(leg(), leg(**changes))), code, field)


@pytest.mark.parametrize(
    "abort_by, code",
    [
        (["coordinator", "coordinator"], Code.INVALID_FIELD),
        (["p1", "p2", "p3", "p4", "p5"], Code.INVALID_FIELD),
        ([""], Code.INVALID_FIELD),
        ("coordinator", Code.MALFORMED),
        ([7], Code.MALFORMED),
    ],
)
def test_abort_by_must_be_up_to_4_distinct_parties(abort_by, code):
    assert_refused(refusal(from_body, lock(abort_by=abort_by)), code, "abort_by")


def test_abort_by_may_be_empty():
    assert from_body(lock(abort_by=[])).abort_by == ()


INSTRUCTION_EXAMPLES = [
    OpenAccount("o-1", "unified", T0, "acc-a", "bank-a"),
    CreateInstrument("c-1", "csd", T0, BOND, "treasury", "EUR", 100_000, 0, "2030-06-15"),
    Issue("i-1", "unified", T0, "EUR", "acc-a", 1),
    Redeem("r-1", "unified", T0, BOND, "acc-t", INT_MAX),
    Transfer("t-1", "unified", T0, "acc-a", "acc-b", "USD", 5),
    Lock("l-1", "unified", T0, "acc-a", "acc-b", "EUR", 5, b"\x00" * 32, T0 + 1, ("coordinator",)),
    Lock("l-2", "unified", T0, "acc-a", "acc-b", "EUR", 5, b"\x00" * 32, T0 + 1, (), None, b"\x01" * 32, T0 + 2),
    Claim("c-2", "unified", T0, "l-1", b"\xff" * 32),
    Cancel("x-1", "unified", T0, "l-2", b"\xfe" * 32),
    Refund("r-2", "unified", T0, "l-1"),
    Abort("a-1", "unified", T0, "l-1"),
    Abort("a-2", "unified", T0, "l-1", epoch=3),
    Claim("c-3", "unified", T0, "l-1", b"\xff" * 32, epoch=1),
    Fence("f-1", "unified", T0, 7),
    Settle("s-1", "unified", T0, (Leg("acc-a", "acc-b", "EUR", 1), Leg("acc-b", "acc-a", BOND, 2))),
    RotateKey(
        "k-1", "unified", T0, "bank-a", "03" + "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    ),
]


def test_every_instruction_type_has_an_example():
    assert {type(msg) for msg in INSTRUCTION_EXAMPLES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("msg", INSTRUCTION_EXAMPLES, ids=lambda msg: msg.TYPE)
def test_every_instruction_survives_the_wire_unchanged(msg):
    raw = encode(to_body(msg))
    assert from_body(decode(raw), allowed=LEDGER_ALLOWED) == msg
    assert encode(to_body(from_body(decode(raw)))) == raw


# -- signing.decode_signed: the envelope --------------------------------------------------

KEY = PrivateKey.generate()


def envelope(sigs) -> bytes:
    return encode({**transfer(), "sigs": sigs})


def test_a_signed_message_decodes_to_its_message_and_signatures():
    signed = sign(from_body(transfer()), ("bank-a", KEY))
    again = decode_signed(signed.encode(), allowed=LEDGER_ALLOWED)
    assert again.msg == signed.msg
    assert again.sigs == signed.sigs
    assert again.digest == signed.digest


def test_a_message_without_sigs_decodes_with_no_signatures():
    assert decode_signed(encode(transfer())).sigs == {}


@pytest.mark.parametrize(
    "sigs",
    [
        ["3045"],
        "3045",
        7,
        {f"party-{n}": "3045" for n in range(SIGNATURES_MAX + 1)},
    ],
)
def test_signatures_must_be_an_object_of_at_most_8_signatures(sigs):
    assert_refused(refusal(decode_signed, envelope(sigs)), Code.MALFORMED, "sigs")


@pytest.mark.parametrize("sig", [3045, None, "304", "zz", "ab" * 81, []])
def test_a_signature_is_der_in_hex_or_a_batch_signature(sig):
    assert_refused(refusal(decode_signed, envelope({"bank-a": sig})), Code.MALFORMED, "sigs.bank-a")


BATCH_SIG = {"count": 3, "index": 2, "path": ["ab" * 32, "cd" * 32], "sig": "3045"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": 1}, "sigs.bank-a"),
        ({"count": 0}, "sigs.bank-a.count"),
        ({"count": 4097}, "sigs.bank-a.count"),
        ({"count": True}, "sigs.bank-a.count"),
        ({"index": 3}, "sigs.bank-a.index"),
        ({"index": -1}, "sigs.bank-a.index"),
        ({"path": "abab"}, "sigs.bank-a.path"),
        ({"path": ["ab" * 32] * 13}, "sigs.bank-a.path"),
        ({"path": ["ab" * 31]}, "sigs.bank-a.path"),
        ({"path": ["zz" * 32]}, "sigs.bank-a.path"),
        ({"sig": "ab" * 81}, "sigs.bank-a.sig"),
        ({"sig": 3045}, "sigs.bank-a.sig"),
    ],
)
def test_a_batch_signature_names_the_member_it_refuses(change, field):
    assert decode_signed(envelope({"bank-a": BATCH_SIG})).sigs["bank-a"].count == 3
    assert_refused(refusal(decode_signed, envelope({"bank-a": {**BATCH_SIG, **change}})), Code.MALFORMED, field)


def test_the_body_is_checked_before_the_signatures():
    raw = encode({**transfer(amount=0), "sigs": "not an object"})
    assert_refused(refusal(decode_signed, raw), Code.INVALID_FIELD, "amount")


def test_decode_signed_applies_the_canonical_decoding_rules():
    assert_refused(
        refusal(decode_signed, envelope({}).replace(b'"amount":100', b'"amount":100.0')), Code.MALFORMED, "amount"
    )
    assert_refused(
        refusal(decode_signed, envelope({}).replace(b'"amount":100', b'"amount":100,"amount":1')),
        Code.MALFORMED,
        "amount",
    )
    assert_refused(refusal(decode_signed, b"[]"), Code.MALFORMED, "$")
    assert_refused(refusal(decode_signed, envelope({"x": "a" * (MESSAGE_BYTES_MAX)})), Code.TOO_LARGE, "$")


def test_a_query_is_decoded_like_an_instruction():
    body = {"v": PROTOCOL_VERSION, "type": "query_balances", "id": "q-1", "ledger": "unified", "account": "acc-a"}
    assert decode_signed(encode(body), allowed=LEDGER_ALLOWED).msg == QueryBalances("q-1", "unified", "acc-a")
    assert_refused(refusal(decode_signed, encode({**body, "limit": 5})), Code.MALFORMED, "limit")


# -- the ledger answers what it cannot decode, and keeps serving ---------------------------


def ledger_transfer(**changes) -> bytes:
    return encode(transfer(ledger="unified", **changes))


@pytest.mark.parametrize(
    "payload, code, field",
    [
        pytest.param(b"\xff\xfe", Code.MALFORMED, "$", id="not-utf8"),
        pytest.param(ledger_transfer().replace(b'"amount":100', b'"amount":1e2'), Code.MALFORMED, "amount", id="float"),
        pytest.param(
            ledger_transfer().replace(b'"amount":100', b'"amount":' + b"1" * 5000),
            Code.INVALID_FIELD,
            "amount",
            id="5000-digit-integer",
        ),
        pytest.param(
            ledger_transfer().replace(b'"amount":100', b'"amount":100,"\\ud800":1'),
            Code.MALFORMED,
            "$",
            id="lone-surrogate-field-name",
        ),
        pytest.param(
            ledger_transfer().replace(b'"amount":100', b'"amount":100,"amount":1'),
            Code.MALFORMED,
            "amount",
            id="duplicate-key",
        ),
        pytest.param(ledger_transfer(v=2), Code.UNSUPPORTED_VERSION, "v", id="version-2"),
        pytest.param(ledger_transfer(type="mint"), Code.UNKNOWN_TYPE, "type", id="unknown-type"),
        pytest.param(ledger_transfer(type="receipt"), Code.UNKNOWN_TYPE, "type", id="receipt-as-instruction"),
        pytest.param(b"[" * 20_000, Code.MALFORMED, "$", id="deep-nesting"),
        pytest.param(
            encode({**transfer(ledger="unified"), "pad": "x" * MESSAGE_BYTES_MAX}), Code.TOO_LARGE, "$", id="too-large"
        ),
    ],
)
def test_the_ledger_refuses_an_undecodable_message_and_serves_the_next(harness, payload, code, field):
    h = harness("unified")
    seq = h.ledger.seq
    good = h.make(OpenAccount, "bank-a", account="acc-a", owner="bank-a").encode()
    (refused, applied), _ = h.ledger.process([payload, good], h.now_ms)
    receipt = decode_signed(refused).msg
    assert isinstance(receipt, Receipt)
    assert (receipt.status, receipt.code, receipt.field) == ("rejected", code.value, field)
    assert decode_signed(applied).msg.status == "applied"
    assert h.ledger.seq == seq + 1


def test_a_refusal_names_the_instruction_id_when_it_can_be_read(harness):
    h = harness("unified")
    receipt = h.raw(encode(transfer(ledger="unified", amount=0, id="mine-7")))
    assert (receipt.instruction_id, receipt.code, receipt.field) == ("mine-7", "invalid_field", "amount")
    assert h.raw(b"not json").instruction_id == "unknown"
    assert h.raw(encode(transfer(id="bad id!"))).instruction_id == "unknown"
