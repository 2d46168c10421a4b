"""Many messages under one signature: a Merkle tree over their digests, its root signed
once, and each message carrying its inclusion path so that it stays checkable on its own.

The tree is RFC 9162's (Certificate Transparency v2): a leaf is SHA-256(0x00 || the
message's digest), an inner node SHA-256(0x01 || left || right), and a tree of n leaves
splits at the largest power of two below n. The signer signs `BATCH_DOMAIN + root`; a
message's proof is that signature, its index, the batch's size and the hashes on its
path. Whoever holds one message and its proof can recompute the root and check the
signature with any ECDSA P-256 implementation, knowing nothing of the rest of the batch.

Checking a batch costs one signature verification: a root already verified under a key
is remembered (`ROOTS_VERIFIED_MAX` of them), so the batch's other messages cost only
their path's hashes."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

BATCH_DOMAIN = b"lockstep/batch/1\x00"
BATCH_SIZE_MAX = 4096  # messages under one signature; a path is at most 12 hashes
PATH_LENGTH_MAX = 12
ROOTS_VERIFIED_MAX = 4096
HASH_BYTES = 32


@attrs.frozen
class BatchSignature:
    """A message's share of a batch signature: the signature over the batch's root, where
    the message sits in the batch, and the sibling hashes from its leaf to the root."""

    sig: bytes
    index: int
    count: int
    path: tuple[bytes, ...]
    # (the message's digest, the root) when whoever made the proof built the whole tree
    # (signing, or opening an envelope): its root is then known, not worked out again
    known: tuple[bytes, bytes] | None = attrs.field(default=None, eq=False, repr=False)

    def root(self, digest: bytes) -> bytes | None:
        """The root this proof gives for a message of this digest; None if the proof's
        shape is impossible (an index outside the batch, a path too short or too long)."""
        if self.known is not None and self.known[0] == digest:
            return self.known[1]
        return root_from_path(leaf_hash(digest), self.index, self.count, self.path)


def leaf_hash(digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + digest).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over these leaf hashes and each leaf's inclusion path (RFC 9162 §2.1)."""
    assert leaves, "a batch holds at least one message"
    if len(leaves) == 1:
        return leaves[0], [[]]
    split = 1 << (len(leaves) - 1).bit_length() - 1  # the largest power of two below n
    left, left_paths = tree(leaves[:split])
    right, right_paths = tree(leaves[split:])
    for path in left_paths:  # each path is its own list, made below: extended in place
        path.append(right)
    for path in right_paths:
        path.append(left)
    return _node(left, right), left_paths + right_paths


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root a leaf's inclusion path leads to, or None."""
    if not 0 <= index < count or len(path) > PATH_LENGTH_MAX:
        return None
    at, last, node = index, count - 1, leaf
    for sibling in path:
        if last == 0:
            return None  # the path is longer than the tree is deep
        if at & 1 or at == last:
            node = _node(sibling, node)
            while not at & 1 and at:
                at, last = at >> 1, last >> 1
        else:
            node = _node(node, sibling)
        at, last = at >> 1, last >> 1
    return node if last == 0 else None


def sign_digests(digests: Sequence[bytes], sign: Callable[[bytes], bytes]) -> list[BatchSignature]:
    """Sign a batch once: each message's BatchSignature, in the order of `digests`.
    `sign` takes the bytes to sign and returns a DER signature (PrivateKey.sign)."""
    assert 0 < len(digests) <= BATCH_SIZE_MAX, len(digests)
    root, paths = tree([leaf_hash(d) for d in digests])
    sig = sign(BATCH_DOMAIN + root)
    return [
        BatchSignature(sig, index, len(digests), tuple(path), (digest, root))
        for index, (digest, path) in enumerate(zip(digests, paths, strict=True))
    ]


def verify_batch(key: ec.EllipticCurvePublicKey, proof: BatchSignature, digest: bytes) -> bool:
    """The message of this digest is in a batch whose root `key` signed."""
    root = proof.root(digest)
    if root is None:
        return False
    return _root_signed(_point(key), proof.sig, root)


_POINTS: dict[int, tuple[ec.EllipticCurvePublicKey, bytes]] = {}
POINTS_KEPT_MAX = 1024


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    """A key's compressed point, the cache's name for it, worked out once per key object
    (a key is not hashable; it is kept beside its point, so its id names no other)."""
    known = _POINTS.get(id(key))
    if known is None:
        if len(_POINTS) >= POINTS_KEPT_MAX:
            _POINTS.clear()
        point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        known = _POINTS[id(key)] = (key, point)
    return known[1]


@functools.lru_cache(maxsize=ROOTS_VERIFIED_MAX)
def _root_signed(point: bytes, sig: bytes, root: bytes) -> bool:
    try:
        _key(point).verify(sig, BATCH_DOMAIN + root, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _key(point: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
