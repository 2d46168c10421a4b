"""Our ECDSA P-256 signatures (protocols.signing, on `cryptography`/OpenSSL) agree with an
independent pure-Python implementation (the `ecdsa` package) in both directions, a
ledger accepts an instruction whose signer's key and signature were made by `ecdsa`,
a signature is bound to its ledger and its message type, and a key file is read as the
standards allow or refused naming the file and why."""

from __future__ import annotations

import hashlib
import re

import pytest
from ecdsa import BadSignatureError, NIST256p, SigningKey, VerifyingKey
from ecdsa.der import UnexpectedDER
from ecdsa.util import sigdecode_der, sigencode_der
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.world.layout import World, lay_out
from protocols.canonical import encode
from protocols.errors import Code
from protocols.failures import ExpectedFailure
from protocols.htlc import hashlock_of
from protocols.messages import Abort, Claim, Issue, Leg, Lock, OpenAccount, Redeem, Refund, Settle, Transfer, to_body
from protocols.registry import Party, Registry, Role
from protocols.signing import (
    DOMAIN,
    PrivateKey,
    Signed,
    from_wire,
    load_public_key,
    load_public_pem,
    sign,
    signing_bytes,
    verify,
)
from tests.harness import LEDGERS, PARTIES, T0, Harness

SECRET = bytes(range(32))


def ecdsa_verifies(key: PrivateKey, signature: bytes, data: bytes) -> bool:
    verifying_key = VerifyingKey.from_pem(key.public_pem())
    try:
        return verifying_key.verify(signature, data, hashfunc=hashlib.sha256, sigdecode=sigdecode_der)
    except (BadSignatureError, UnexpectedDER):
        return False


def ecdsa_sign(key: SigningKey, data: bytes) -> bytes:
    return key.sign(data, hashfunc=hashlib.sha256, sigencode=sigencode_der)


def public_of(key: SigningKey):
    return load_public_pem(key.verifying_key.to_pem().decode("ascii"))


def signed_by_ecdsa(msg, party: str, key: SigningKey) -> Signed:
    body = to_body(msg)
    return Signed(msg, {party: ecdsa_sign(key, signing_bytes(body))}, body)


def funded(h: Harness) -> Harness:
    """Accounts a (bank-a) and b (bank-b); a holds 1000 EUR."""
    assert h.send(OpenAccount, "csd-op", account="a", owner="bank-a").applied
    assert h.send(OpenAccount, "csd-op", account="b", owner="bank-b").applied
    assert h.send(Issue, "ecb", asset="EUR", account="a", amount=1000).applied
    return h


def example_messages(ledger: str) -> list:
    return [
        Transfer("t1", ledger, T0, "a", "b", "EUR", 250),
        Lock("l1", ledger, T0, "a", "b", "EUR", 10, hashlock_of(SECRET), T0 + 60_000, ("coordinator",)),
        Claim("c1", ledger, T0, "l1", SECRET),
        Settle("s1", ledger, T0, (Leg("a", "b", "EUR", 5), Leg("b", "a", "USD", 7))),
        OpenAccount("o1", ledger, T0, "acct-1", "bank-a"),
    ]


# -- our signatures verify with ecdsa, and ecdsa's with ours ---------------------------------


@pytest.mark.parametrize("msg", example_messages("unified"), ids=lambda m: m.TYPE)
def test_our_signature_over_a_message_verifies_with_the_ecdsa_package(msg):
    key = PrivateKey.generate()
    signed = sign(msg, ("bank-a", key))
    data = signing_bytes(signed.body)
    assert ecdsa_verifies(key, signed.sigs["bank-a"], data)
    assert not ecdsa_verifies(key, signed.sigs["bank-a"], data + b" ")


@pytest.mark.parametrize("msg", example_messages("unified"), ids=lambda m: m.TYPE)
def test_ecdsa_package_signature_over_a_message_verifies_with_ours(msg):
    key = SigningKey.generate(curve=NIST256p)
    data = signing_bytes(to_body(msg))
    assert verify(public_of(key), ecdsa_sign(key, data), data)
    deterministic = key.sign_deterministic(data, hashfunc=hashlib.sha256, sigencode=sigencode_der)
    assert verify(public_of(key), deterministic, data)
    assert not verify(public_of(key), ecdsa_sign(key, data), data[:-1])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_both_implementations_agree_on_any_canonical_body(body):
    ours = PrivateKey.generate()
    theirs = SigningKey.generate(curve=NIST256p)
    data = signing_bytes(body)
    assert ecdsa_verifies(ours, ours.sign(data), data)
    assert verify(public_of(theirs), ecdsa_sign(theirs, data), data)


def test_public_keys_cross_both_implementations_unchanged():
    ours = PrivateKey.generate()
    as_ecdsa = VerifyingKey.from_pem(ours.public_pem())
    numbers = ours.public.public_numbers()
    assert (as_ecdsa.pubkey.point.x(), as_ecdsa.pubkey.point.y()) == (numbers.x, numbers.y)
    theirs = SigningKey.generate(curve=NIST256p)
    back = public_of(theirs).public_numbers()
    assert (back.x, back.y) == (theirs.verifying_key.pubkey.point.x(), theirs.verifying_key.pubkey.point.y())


def test_signature_without_the_domain_prefix_does_not_verify():
    ours = PrivateKey.generate()
    theirs = SigningKey.generate(curve=NIST256p)
    body = to_body(example_messages("unified")[0])
    bare = encode(body)
    assert signing_bytes(body) == DOMAIN + bare
    assert not verify(ours.public, ours.sign(bare), signing_bytes(body))
    assert not verify(public_of(theirs), ecdsa_sign(theirs, bare), signing_bytes(body))


# -- a ledger accepts an ecdsa-made key and signature -----------------------------------------


@pytest.fixture
def ecdsa_world(tmp_path) -> tuple[World, SigningKey]:
    """The usual world plus a participant `ecdsa-bank` whose key only the ecdsa package knows."""
    world = lay_out(tmp_path, LEDGERS, PARTIES)
    key = SigningKey.generate(curve=NIST256p)
    parties = list(world.registry) + [Party("ecdsa-bank", frozenset({Role.PARTICIPANT}), public_of(key))]
    registry = Registry(parties)
    registry.save(world.registry_path)
    return World(world.directory, Registry.load(world.registry_path), world.keys, world.ledger_configs), key


def test_instructions_signed_by_the_ecdsa_package_are_applied_by_a_ledger(ecdsa_world):
    world, key = ecdsa_world
    h = funded(Harness(world, "unified"))
    opened = h.submit(
        signed_by_ecdsa(OpenAccount(h.next_id(), "unified", h.now_ms, "e", "ecdsa-bank"), "ecdsa-bank", key)
    )
    assert opened.applied, opened
    assert h.send(Issue, "ecb", asset="EUR", account="e", amount=500).applied
    moved = h.submit(
        signed_by_ecdsa(Transfer(h.next_id(), "unified", h.now_ms, "e", "a", "EUR", 200), "ecdsa-bank", key)
    )
    assert moved.applied, moved
    locked = h.submit(
        signed_by_ecdsa(
            Lock("lock-e", "unified", h.now_ms, "e", "b", "EUR", 50, hashlock_of(SECRET), h.now_ms + 10_000, ()),
            "ecdsa-bank",
            key,
        )
    )
    assert locked.applied, locked
    assert h.balance("e", "EUR") == (250, 50)
    assert h.balance("a", "EUR") == (1200, 0)


def test_ecdsa_signed_instruction_survives_the_wire_and_is_refused_when_altered(ecdsa_world):
    world, key = ecdsa_world
    h = funded(Harness(world, "unified"))
    assert h.send(OpenAccount, "csd-op", account="e", owner="ecdsa-bank").applied
    assert h.send(Issue, "ecb", asset="EUR", account="e", amount=500).applied
    signed = signed_by_ecdsa(Transfer(h.next_id(), "unified", h.now_ms, "e", "a", "EUR", 200), "ecdsa-bank", key)
    wire = signed.wire()
    altered = from_wire({**wire, "amount": 499})
    refused = h.submit(altered)
    assert (refused.status, refused.code) == ("rejected", Code.BAD_SIGNATURE.value)
    assert h.balance("e", "EUR") == (500, 0)
    assert h.submit(from_wire(wire)).applied


def test_ecdsa_signature_by_a_party_other_than_the_account_owner_is_not_authorised(ecdsa_world):
    world, key = ecdsa_world
    h = funded(Harness(world, "unified"))
    stolen = h.submit(
        signed_by_ecdsa(Transfer(h.next_id(), "unified", h.now_ms, "a", "b", "EUR", 1), "ecdsa-bank", key)
    )
    assert (stolen.code, stolen.field) == (Code.NOT_AUTHORISED.value, "sigs")
    assert h.balance("a", "EUR") == (1000, 0)


# -- domain separation: ledger and type are inside what is signed -----------------------------


def test_signature_made_for_one_ledger_is_refused_by_another(harness):
    h = funded(harness("unified"))
    for_eur_ledger = h.make(
        Transfer, "bank-a", ledger="cbdc-eur", from_account="a", to_account="b", asset="EUR", amount=100
    )
    as_sent = h.submit(for_eur_ledger)
    assert (as_sent.code, as_sent.field) == (Code.WRONG_LEDGER.value, "ledger")
    relabelled = from_wire({**for_eur_ledger.wire(), "ledger": "unified"})
    assert not verify(h.world.keys["bank-a"].public, relabelled.sigs["bank-a"], signing_bytes(relabelled.body))
    refused = h.submit(relabelled)
    assert refused.code == Code.BAD_SIGNATURE.value
    assert h.balance("a", "EUR") == (1000, 0)
    honest = h.send(Transfer, "bank-a", from_account="a", to_account="b", asset="EUR", amount=100)
    assert honest.applied and h.balance("a", "EUR") == (900, 0)


@pytest.mark.parametrize(
    ("signed_type", "sent_type"),
    [(Abort, Refund), (Refund, Abort), (Issue, Redeem), (Redeem, Issue)],
    ids=lambda cls: cls.TYPE,
)
def test_signature_over_one_message_type_does_not_verify_for_another_with_the_same_fields(
    harness, signed_type, sent_type
):
    h = funded(harness("unified"))
    if signed_type in (Abort, Refund):
        assert h.send(
            Lock,
            "bank-a",
            id="lk",
            owner_account="a",
            beneficiary_account="b",
            asset="EUR",
            amount=10,
            hashlock=hashlock_of(SECRET),
            expiry_ms=h.now_ms + 5_000,
            abort_by=(),
        ).applied
        fields = {"lock_id": "lk"}
        signer = "bank-b"
    else:
        assert h.send(OpenAccount, "csd-op", account="ecb-own", owner="ecb").applied
        assert h.send(Issue, "ecb", asset="EUR", account="ecb-own", amount=100).applied
        fields = {"asset": "EUR", "account": "ecb-own", "amount": 40}
        signer = "ecb"
    original = h.make(signed_type, signer, **fields)
    same_fields = sent_type(id=original.msg.id, ledger="unified", ts_ms=h.now_ms, **fields)
    assert to_body(same_fields) == {**original.body, "type": sent_type.TYPE}
    swapped = from_wire({**original.wire(), "type": sent_type.TYPE})
    assert type(swapped.msg) is sent_type
    assert not verify(h.world.keys[signer].public, swapped.sigs[signer], signing_bytes(swapped.body))
    before = (h.store.all_balances(), h.store.all_locks(), h.ledger.seq)
    refused = h.submit(swapped)
    assert refused.code == Code.BAD_SIGNATURE.value
    assert (h.store.all_balances(), h.store.all_locks(), h.ledger.seq) == before


def test_a_signed_message_encodes_to_the_canonical_json_of_its_wire_form():
    """Signed encodes its body once, in halves around `sigs`; the result must be
    exactly the canonical encoding of body plus sigs, for every kind of body."""
    from protocols.canonical import encode
    from protocols.messages import Claim, QueryInfo, Receipt, Transfer
    from protocols.signing import PrivateKey, sign, signing_bytes, unsigned

    key = PrivateKey.generate()
    messages = [
        Transfer("t1", "l", 1, "a", "b", "EUR", 5),
        Claim("c1", "l", 2, "lock", b"\x01" * 32),
        Receipt("l", "t1", "applied", 3, seq=1, entry_hash="00" * 32),
        QueryInfo("q", "l"),
    ]
    for msg in messages:
        for signed in (sign(msg, ("p", key), ("q", key)), unsigned(msg)):
            assert signed.encode() == encode(signed.wire())
            assert signed.data == signing_bytes(signed.body)


# -- key files: what the standards allow is read, the rest refused by name and file ------------


def _rsa_pem(private_format) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    )


def _key_pem(curve, private_format, encryption=None) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(curve).private_bytes(
        serialization.Encoding.PEM, private_format, encryption or serialization.NoEncryption()
    )


def _pem(label: str, der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _key_file(tmp_path, data: bytes, mode: int = 0o600):
    path = tmp_path / "key.pem"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_pkcs8_key_as_the_ecdsa_package_writes_it_without_its_public_key_is_read(tmp_path):
    """Version 1, no public key: RFC 5208/5958 and RFC 5915 make the public key optional."""
    theirs = SigningKey.generate(curve=NIST256p)
    ours = PrivateKey.load(_key_file(tmp_path, theirs.to_pem(format="pkcs8")))
    point = theirs.verifying_key.pubkey.point
    assert (ours.public.public_numbers().x, ours.public.public_numbers().y) == (point.x(), point.y())
    data = signing_bytes(to_body(example_messages("unified")[0]))
    assert theirs.verifying_key.verify(ours.sign(data), data, hashfunc=hashlib.sha256, sigdecode=sigdecode_der)


def test_sec1_pkcs8_with_its_public_key_openssl_ec_parameters_and_our_own_keys_are_read(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    theirs = SigningKey.generate(curve=NIST256p)
    curve_block = _pem("EC PARAMETERS", bytes.fromhex("06082a8648ce3d030107"))  # as openssl ecparam -genkey
    for data in (
        theirs.to_pem(),
        curve_block + theirs.to_pem(),
        _key_pem(ec.SECP256R1(), serialization.PrivateFormat.PKCS8),
        _key_pem(ec.SECP256R1(), serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        assert isinstance(PrivateKey.load(_key_file(tmp_path, data)), PrivateKey)
    saved = PrivateKey.generate()
    saved.save(tmp_path / "saved.pem")
    assert PrivateKey.load(tmp_path / "saved.pem").public_pem() == saved.public_pem()


def _refusals():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from ecdsa import NIST384p, SECP256k1

    ecdsa_key = SigningKey.generate(curve=NIST256p)
    other = SigningKey.generate(curve=NIST256p)
    wrong_public = ecdsa_key.to_der()[:-65] + other.verifying_key.to_string("uncompressed")
    pkcs8 = ecdsa_key.to_der(format="pkcs8")
    return [
        ("secp256k1", SigningKey.generate(curve=SECP256k1).to_pem(format="pkcs8"), "curve secp256k1"),
        ("p384-sec1", SigningKey.generate(curve=NIST384p).to_pem(), "curve P-384"),
        ("p384-pkcs8", _key_pem(ec.SECP384R1(), serialization.PrivateFormat.PKCS8), "curve P-384"),
        ("rsa-pkcs8", _rsa_pem(serialization.PrivateFormat.PKCS8), "an RSA key"),
        ("rsa-pkcs1", _rsa_pem(serialization.PrivateFormat.TraditionalOpenSSL), "an RSA key"),
        (
            "ed25519",
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "an Ed25519 key",
        ),
        (
            "encrypted-pkcs8",
            _key_pem(
                ec.SECP256R1(), serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
            ),
            "encrypted",
        ),
        (
            "encrypted-sec1",
            _key_pem(
                ec.SECP256R1(),
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
        ("public", ecdsa_key.verifying_key.to_pem(), "a public key, where a private key is needed"),
        ("not-pem", b"this is not a key\n", "not PEM"),
        ("der", ecdsa_key.to_der(), "not PEM"),
        ("two-keys", ecdsa_key.to_pem() + other.to_pem(), "one key per file"),
        ("truncated", _pem("PRIVATE KEY", pkcs8[:-10]), "not a valid PRIVATE KEY"),
        ("bad-base64", b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "not valid base64"),
        ("wrong-public", _pem("EC PRIVATE KEY", wrong_public), "the public key it carries is not its private key's"),
    ]


@pytest.mark.parametrize(("data", "reason"), [case[1:] for case in _refusals()], ids=[case[0] for case in _refusals()])
def test_a_key_file_that_cannot_serve_is_refused_naming_the_file_and_why(tmp_path, data, reason):
    path = _key_file(tmp_path, data)
    with pytest.raises(ExpectedFailure, match=re.escape(reason)) as refused:
        PrivateKey.load(path)
    assert refused.value.subject == f"private key {path}"


def test_a_missing_folder_or_shared_key_file_is_refused_naming_it(tmp_path):
    cases = [
        (tmp_path / "nowhere.pem", "no such file"),
        (tmp_path, "not a regular file"),
        (_key_file(tmp_path, SigningKey.generate(curve=NIST256p).to_pem(), mode=0o644), "readable by others"),
    ]
    for path, reason in cases:
        with pytest.raises(ExpectedFailure, match=reason) as refused:
            PrivateKey.load(path)
        assert refused.value.subject == f"private key {path}"


def test_a_public_key_file_must_be_a_p256_public_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from ecdsa import NIST384p

    theirs = SigningKey.generate(curve=NIST256p)
    rsa_public = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "new.pub.pem"
    path.write_bytes(theirs.verifying_key.to_pem())
    assert load_public_key(path).public_numbers().x == theirs.verifying_key.pubkey.point.x()
    for data, reason in (
        (theirs.to_pem(format="pkcs8"), "a private key, where a public key is needed"),
        (SigningKey.generate(curve=NIST384p).verifying_key.to_pem(), "curve P-384"),
        (rsa_public, "an RSA key"),
        (b"garbage", "not PEM"),
    ):
        path.write_bytes(data)
        with pytest.raises(ExpectedFailure, match=re.escape(reason)) as refused:
            load_public_key(path)
        assert refused.value.subject == f"public key {path}"
    with pytest.raises(ExpectedFailure, match="no such file"):
        load_public_key(tmp_path / "nowhere.pem")


def test_a_registry_with_a_bad_key_names_the_registry_the_party_and_the_key_file(tmp_path):
    registry = tmp_path / "registry.toml"
    (tmp_path / "a.pem").write_bytes(SigningKey.generate(curve=NIST256p).to_pem())
    cases = [
        (
            '[parties.a]\nroles = ["participant"]\npublic_key_file = "nowhere.pem"\n',
            f"party 'a': public_key_file {tmp_path / 'nowhere.pem'}: no such file",
        ),
        (
            '[parties.a]\nroles = ["participant"]\npublic_key_file = "a.pem"\n',
            f"party 'a': public_key_file {tmp_path / 'a.pem'}: a private key, where a public key is needed",
        ),
        ('[parties.a]\nroles = ["banker"]\npublic_key = ""\n', "party 'a': roles: required, a list of participant"),
        ('[parties.a]\nroles = ["participant"]\n', "party 'a': public_key or public_key_file: required"),
        ("[parties.a\n", "not valid TOML"),
    ]
    for text, reason in cases:
        registry.write_text(text)
        with pytest.raises(ExpectedFailure, match=re.escape(reason)) as refused:
            Registry.load(registry)
        assert refused.value.subject == f"registry {registry}"
    with pytest.raises(ExpectedFailure, match=re.escape(f"registry {tmp_path / 'none.toml'}: no such file")):
        Registry.load(tmp_path / "none.toml")


def test_a_registry_names_parties_by_bic_and_lei_and_refuses_a_name_given_twice(tmp_path):
    pem = SigningKey.generate(curve=NIST256p).get_verifying_key().to_pem().decode()
    registry = tmp_path / "registry.toml"

    def party(name: str, extra: str) -> str:
        return f'[parties.{name}]\nroles = ["participant"]\npublic_key = """{pem}"""\n{extra}\n'

    registry.write_text(party("a", 'bic = "BANKDEFF"\nlei = "529900T8BM49AURSDO55"') + party("b", ""))
    loaded = Registry.load(registry)
    assert loaded.identified_by("BIC/BANKDEFFXXX") == "a"  # an 8-character BIC is its main office's
    assert loaded.identified_by("LEI/529900T8BM49AURSDO55") == "a"
    assert loaded.identified_by("BIC/BANKDEFF") is None and loaded.identified_by("a") is None
    loaded.save(tmp_path / "saved.toml")
    assert Registry.load(tmp_path / "saved.toml").identified_by("LEI/529900T8BM49AURSDO55") == "a"
    cases = [
        (party("a", 'bic = "BANK"'), "party 'a': bic: 'BANK' is not a BIC"),
        (
            party("a", 'lei = "529900T8BM49AURSDO56"'),
            "party 'a': lei: '529900T8BM49AURSDO56' has wrong LEI check digits",
        ),
        (
            party("a", 'bic = "BANKDEFFXXX"') + party("b", 'bic = "BANKDEFF"'),
            "party 'b': BIC/BANKDEFFXXX already names 'a'",
        ),
    ]
    for text, reason in cases:
        registry.write_text(text)
        with pytest.raises(ExpectedFailure, match=re.escape(reason)):
            Registry.load(registry)
