"""A batch signature (protocols.batch): one ECDSA signature over a Merkle root, each
message checkable on its own with its inclusion path. The tree is RFC 9162's, checked
against the RFC's recursive definition written out here; the root's signature verifies
with the independent `ecdsa` package and one it makes verifies with us; a message cannot
be moved to another place, another batch or another signer."""

from __future__ import annotations

import hashlib

import pytest
from ecdsa import NIST256p, SigningKey
from hypothesis import given
from hypothesis import strategies as st

from protocols import canonical
from protocols.batch import BATCH_DOMAIN, BatchSignature, leaf_hash, root_from_path, sign_digests, tree, verify_batch
from protocols.envelope import open_batch, seal
from protocols.messages import Transfer
from protocols.signing import PrivateKey, Signed, decode_signed, sign_batch, unsigned
from tests.test_signatures import ecdsa_sign, ecdsa_verifies, public_of

KEY = PrivateKey.generate()
OTHER = PrivateKey.generate()


def digests(n: int) -> list[bytes]:
    return [hashlib.sha256(b"message %d" % i).digest() for i in range(n)]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, as written: MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1, as written: PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return rfc_path(m, leaves[:k]) + [mth(leaves[k:])]
    return rfc_path(m - k, leaves[k:]) + [mth(leaves[:k])]


@given(st.integers(1, 70))
def test_the_tree_and_its_paths_are_rfc_9162s(n):
    leaves = [leaf_hash(d) for d in digests(n)]
    root, paths = tree(leaves)
    assert root == mth(leaves)
    for index, leaf in enumerate(leaves):
        assert paths[index] == rfc_path(index, leaves)
        assert root_from_path(leaf, index, n, paths[index]) == root


@given(st.integers(2, 40), st.data())
def test_a_path_proves_one_place_only(n, data):
    leaves = [leaf_hash(d) for d in digests(n)]
    root, paths = tree(leaves)
    index = data.draw(st.integers(0, n - 1))
    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    assert root_from_path(leaves[index], other, n, paths[index]) != root
    assert root_from_path(leaves[other], index, n, paths[index]) != root
    assert root_from_path(leaves[index], index, n, [*paths[index], leaves[0]]) is None  # longer than the tree
    if paths[index]:
        assert root_from_path(leaves[index], index, n, paths[index][:-1]) != root


def test_each_message_verifies_on_its_own_and_nowhere_else():
    ds = digests(5)
    proofs = sign_digests(ds, KEY.sign)
    assert len({p.sig for p in proofs}) == 1  # one signature for the batch
    assert all(verify_batch(KEY.public, proof, d) for proof, d in zip(proofs, ds, strict=True))
    assert not verify_batch(OTHER.public, proofs[0], ds[0])  # another signer's key
    assert not verify_batch(KEY.public, proofs[0], ds[1])  # another message in its place
    other_batch = sign_digests([ds[0], ds[4], ds[2]], KEY.sign)
    assert not verify_batch(KEY.public, other_batch[1], ds[1])  # a place in another batch
    assert not verify_batch(KEY.public, BatchSignature(proofs[0].sig, 0, 5, ()), ds[0])  # path cut


def test_the_root_signature_agrees_with_the_ecdsa_package_both_ways():
    ds = digests(6)
    root = mth([leaf_hash(d) for d in ds])
    proofs = sign_digests(ds, KEY.sign)
    assert ecdsa_verifies(KEY, proofs[0].sig, BATCH_DOMAIN + root)
    theirs = SigningKey.generate(curve=NIST256p)
    made_by_ecdsa = sign_digests(ds, lambda data: ecdsa_sign(theirs, data))
    assert all(verify_batch(public_of(theirs), p, d) for p, d in zip(made_by_ecdsa, ds, strict=True))


def test_a_batch_signed_message_round_trips_the_wire_and_verifies():
    messages = [unsigned(Transfer(f"t-{i}", "csd", 1, "a", "b", "EUR", 10)) for i in range(3)]
    signed = sign_batch(messages, "bank-a", KEY)
    for original in signed:
        again = decode_signed(original.encode())
        assert again.sigs == original.sigs and again.digest == original.digest
        assert again.signed_by("bank-a", KEY.public)
        assert not again.signed_by("bank-a", OTHER.public)
    tampered = decode_signed(signed[0].encode().replace(b'"amount":10', b'"amount":11'))
    assert not tampered.signed_by("bank-a", KEY.public)


def test_an_opened_envelope_knows_its_root_for_each_item_and_for_nothing_else():
    """Opening an envelope builds the whole tree, so each item's proof carries the root
    (not worked out again from its path when it is checked); the root holds for that
    item's digest only: a proof moved onto another message is checked by its path, and
    fails."""
    messages = [unsigned(Transfer(f"t-{i}", "csd", 1, "a", "b", "EUR", 10)) for i in range(5)]
    _signer, opened = open_batch(canonical.decode(seal(messages, "bank-a", KEY)), allowed=(Transfer,))
    proofs = [item.sigs["bank-a"] for item in opened if isinstance(item, Signed)]
    assert [proof.known for proof in proofs if isinstance(proof, BatchSignature)] == [
        (message.digest, mth([leaf_hash(m.digest) for m in messages])) for message in messages
    ]
    assert all(verify_batch(KEY.public, proof, m.digest) for proof, m in zip(proofs, messages, strict=True))
    assert not any(verify_batch(KEY.public, proofs[0], m.digest) for m in messages[1:])
    assert not verify_batch(OTHER.public, proofs[0], messages[0].digest)


@pytest.mark.parametrize("n", [1, 2, 3, 64, 4096])
def test_a_path_is_at_most_log2_of_the_batch_long(n):
    proofs = sign_digests(digests(n), KEY.sign)
    assert max(len(p.path) for p in proofs) == (n - 1).bit_length()
