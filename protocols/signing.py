"""ECDSA P-256 with SHA-256 over canonical bytes, and the signed-message envelope.

The signed bytes are `DOMAIN + canonical(body)`. The body carries the protocol version,
the message type and the ledger it is meant for, so one signature cannot be replayed as
another version, another type or on another ledger. Signatures are DER, sent as hex,
and deterministic (RFC 6979): the same key and bytes give the same signature, so a
worked example can be reproduced and no signature depends on a random generator."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import canonical
from .canonical import decode, encode
from .errors import Code, Rejected
from .messages import Body, from_body, to_body

DOMAIN = b"lockstep/1\x00"
SIGNATURES_MAX = 8
SIGNATURE_HEX_MAX = 160  # a DER P-256 signature is at most 72 bytes
_ECDSA = ec.ECDSA(hashes.SHA256())
_ECDSA_RFC6979 = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def signing_bytes(body: Mapping[str, Any]) -> bytes:
    return DOMAIN + encode(body)


class PrivateKey:
    """A party's signing key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        assert isinstance(key.curve, ec.SECP256R1)
        self._key = key
        self.public = key.public_key()

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrivateKey:
        """Load a PEM key file, refusing one that others may read."""
        mode = Path(path).stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path}: private key is readable by others (mode {stat.filemode(mode)}); chmod 600 it")
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return cls(key)

    def save(self, path: str | os.PathLike) -> None:
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)

    def public_pem(self) -> str:
        return public_pem(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _ECDSA_RFC6979)


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_pem(pem: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 public key")
    return key


def public_point(key: ec.EllipticCurvePublicKey) -> str:
    """The key as RotateKey carries it: the hex of its compressed point."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint).hex()


def load_public_point(hex_point: str) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(hex_point))


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, _ECDSA)
    except InvalidSignature:
        return False
    return True


@attrs.frozen
class Signed:
    """A message and the signatures over its body, keyed by signing party. The body is
    encoded once, in two halves around where `sigs` sorts, for both the signed bytes
    and the wire."""

    msg: Body
    sigs: Mapping[str, bytes]
    body: dict = attrs.field(eq=False, repr=False)
    _halves: tuple[str, str] = attrs.field(default=("", ""), eq=False, repr=False)
    data: bytes = attrs.field(default=b"", eq=False, repr=False)  # the signed bytes

    def __attrs_post_init__(self) -> None:
        if not self.data:
            halves = canonical.halves(self.body, "sigs")
            object.__setattr__(self, "_halves", halves)
            object.__setattr__(self, "data", DOMAIN + canonical.join(*halves))

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed bytes: what idempotency compares."""
        return hashlib.sha256(self.data).digest()

    def signed_by(self, party: str, key: ec.EllipticCurvePublicKey) -> bool:
        sig = self.sigs.get(party)
        return sig is not None and verify(key, sig, self.data)

    def wire(self) -> dict[str, Any]:
        return {**self.body, "sigs": {party: sig.hex() for party, sig in self.sigs.items()}}

    def encode(self) -> bytes:
        before, after = self._halves
        sigs = '"sigs":' + encode({party: sig.hex() for party, sig in self.sigs.items()}).decode()
        return canonical.join(before, sigs, after)


def sign(msg: Body, *signers: tuple[str, PrivateKey]) -> Signed:
    unsigned_ = Signed(msg, {}, to_body(msg))
    return Signed(msg, {party: key.sign(unsigned_.data) for party, key in signers}, unsigned_.body,
                  unsigned_._halves, unsigned_.data)


def unsigned(msg: Body) -> Signed:
    return Signed(msg, {}, to_body(msg))


def decode_signed(raw: bytes, *, allowed: tuple[type, ...] | None = None) -> Signed:
    """Parse a wire message strictly; signatures are parsed here, verified by the
    receiver, which alone knows whose signatures the message needs."""
    value = decode(raw)
    return from_wire(value, allowed=allowed)


def from_wire(value: Any, *, allowed: tuple[type, ...] | None = None) -> Signed:
    if not isinstance(value, dict):
        raise Rejected(Code.MALFORMED, "$", "message must be a JSON object")
    body = dict(value)
    sigs = body.pop("sigs", {})
    msg = from_body(body, allowed=allowed)
    if not isinstance(sigs, dict) or len(sigs) > SIGNATURES_MAX:
        raise Rejected(Code.MALFORMED, "sigs", f"must be an object of at most {SIGNATURES_MAX} party: signature pairs")
    parsed = {}
    for party, sig in sigs.items():
        if not isinstance(sig, str) or len(sig) > SIGNATURE_HEX_MAX or len(sig) % 2:
            raise Rejected(Code.MALFORMED, "sigs", f"signature of {party!r} must be DER in hex")
        try:
            parsed[party] = bytes.fromhex(sig)
        except ValueError:
            raise Rejected(Code.MALFORMED, "sigs", f"signature of {party!r} must be DER in hex") from None
    return Signed(msg, parsed, body)
