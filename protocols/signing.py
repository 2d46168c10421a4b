"""ECDSA P-256 with SHA-256 over canonical bytes, and the signed-message envelope.

The signed bytes are `DOMAIN + canonical(body)`. The body carries the protocol version,
the message type and the ledger it is meant for, so one signature cannot be replayed as
another version, another type or on another ledger. Signatures are DER, sent as hex,
and deterministic (RFC 6979): the same key and bytes give the same signature, so a
worked example can be reproduced and no signature depends on a random generator."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import canonical
from .batch import BATCH_SIZE_MAX, HASH_BYTES, PATH_LENGTH_MAX, BatchSignature, sign_digests, verify_batch
from .canonical import decode, encode
from .errors import Code, Rejected
from .failures import ExpectedFailure, file_reason
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
        """Load a P-256 private key file (PEM: PKCS#8 or SEC1), refusing one that others
        may read; an ExpectedFailure names the file and why it cannot serve."""
        subject = f"private key {path}"
        try:
            mode = Path(path).stat().st_mode
            data = Path(path).read_bytes() if stat.S_ISREG(mode) else b""
        except OSError as error:
            raise ExpectedFailure(subject, file_reason(error)) from None
        if not stat.S_ISREG(mode):
            raise ExpectedFailure(subject, "not a regular file")
        try:  # first what it is, so that a public key given here is not told to be mode 600
            key = _private_key_of(data)
        except ValueError as error:
            raise ExpectedFailure(subject, str(error)) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ExpectedFailure(subject, f"readable by others (mode {stat.filemode(mode)}); chmod 600 it")
        return cls(key)

    def save(self, path: str | os.PathLike) -> None:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)

    def public_pem(self) -> str:
        return public_pem(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _ECDSA_RFC6979)


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_pem(pem: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key (PEM SubjectPublicKeyInfo); ValueError says why not."""
    label, der = _pem_block(pem.encode("utf-8", "replace"), wanted="public")
    if label != "PUBLIC KEY":
        raise ValueError(_NOT_PUBLIC.get(label, f"a PEM {label}, not a PUBLIC KEY"))
    try:
        info = _sequence(der, "SubjectPublicKeyInfo")
        _check_algorithm(_fields(info[0] if info else (0, b""), "algorithm"))
    except _Malformed as error:
        raise ValueError(f"not a valid PUBLIC KEY: {error}") from None
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a valid PUBLIC KEY: its point is not on P-256") from None
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _check_algorithm let only P-256 through
    return key


def load_public_key(path: str | os.PathLike) -> ec.EllipticCurvePublicKey:
    """A P-256 public key file (PEM); an ExpectedFailure names the file and why not."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except OSError as error:
        raise ExpectedFailure(f"public key {path}", file_reason(error)) from None
    try:
        return load_public_pem(text)
    except ValueError as error:
        raise ExpectedFailure(f"public key {path}", str(error)) from None


# -- reading key files: PEM armour, then the DER of PKCS#8 (RFC 5208, 5958) or SEC1 (RFC 5915) ---
# Read here rather than by `cryptography`, which refuses a PKCS#8 key of version 1 without its
# optional public key (as the `ecdsa` package writes them) and says only "Invalid key".

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_PRIVATE_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY")
_ENCRYPTED = (
    "encrypted with a passphrase: Lockstep reads unencrypted keys (kept mode 600); "
    "decrypt it with openssl pkey -in FILE -out NEW"
)
_NOT_PRIVATE = {  # PEM labels that are not a usable private key, and why
    "ENCRYPTED PRIVATE KEY": _ENCRYPTED,
    "RSA PRIVATE KEY": "an RSA key: Lockstep uses ECDSA P-256",
    "DSA PRIVATE KEY": "a DSA key: Lockstep uses ECDSA P-256",
    "OPENSSH PRIVATE KEY": "an OpenSSH key: convert it to PKCS#8 with ssh-keygen -p -m PKCS8 -f FILE",
    "PUBLIC KEY": "a public key, where a private key is needed",
    "CERTIFICATE": "a certificate, where a private key is needed",
}
_NOT_PUBLIC = {
    "PRIVATE KEY": "a private key, where a public key is needed (give its public key; keep this one secret)",
    "EC PRIVATE KEY": "a private key, where a public key is needed (give its public key; keep this one secret)",
    "ENCRYPTED PRIVATE KEY": "a private key, where a public key is needed",
    "RSA PUBLIC KEY": "an RSA key: Lockstep uses ECDSA P-256",
    "CERTIFICATE": "a certificate: give its public key (openssl x509 -pubkey -noout -in FILE)",
}
_ALGORITHMS = {  # algorithm identifiers of keys that are not EC, by OID
    "1.2.840.113549.1.1.1": "an RSA key",
    "1.2.840.113549.1.1.10": "an RSA-PSS key",
    "1.2.840.10040.4.1": "a DSA key",
    "1.3.101.110": "an X25519 key",
    "1.3.101.111": "an X448 key",
    "1.3.101.112": "an Ed25519 key",
    "1.3.101.113": "an Ed448 key",
}
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_P256 = "1.2.840.10045.3.1.7"
_CURVES = {
    "1.2.840.10045.3.1.1": "P-192",
    "1.3.132.0.33": "P-224",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
    "1.3.132.0.10": "secp256k1",
    "1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
}
_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x30, 0x02, 0x03, 0x04, 0x06
P256_SCALAR_BYTES = 32


def _pem_block(data: bytes, *, wanted: str) -> tuple[str, bytes]:
    """The one key block of a PEM file (EC PARAMETERS blocks, as openssl ecparam
    writes them, are skipped): its label and DER bytes."""
    blocks = [(label.decode(), body) for label, body in _PEM.findall(data) if label != b"EC PARAMETERS"]
    if not blocks:
        raise ValueError(f"not PEM: no -----BEGIN ...----- block (a {wanted} key file is PEM text)")
    if len(blocks) > 1:
        raise ValueError(f"{len(blocks)} PEM blocks ({', '.join(label for label, _ in blocks)}): one key per file")
    label, body = blocks[0]
    if any(line.startswith(b"Proc-Type:") for line in body.splitlines()) and b"ENCRYPTED" in body:
        raise ValueError(_ENCRYPTED)
    text = b"".join(line for line in body.splitlines() if b":" not in line)  # RFC 1421 headers have one
    try:
        return label, base64.b64decode(b"".join(text.split()), validate=True)
    except ValueError:
        raise ValueError(f"its {label} block is not valid base64") from None


def _private_key_of(data: bytes) -> ec.EllipticCurvePrivateKey:
    label, der = _pem_block(data, wanted="private")
    if label not in _PRIVATE_LABELS:
        raise ValueError(_NOT_PRIVATE.get(label, f"a PEM {label}, not a PRIVATE KEY"))
    try:
        if label == "PRIVATE KEY":
            return _pkcs8(der)
        return _sec1(der, None)
    except _Malformed as error:
        raise ValueError(f"not a valid {label}: {error}") from None


class _Malformed(ValueError):
    """The DER does not have the structure its standard defines."""


def _pkcs8(der: bytes) -> ec.EllipticCurvePrivateKey:
    """PrivateKeyInfo (RFC 5208), or OneAsymmetricKey (RFC 5958: version 1 may add the
    public key): version, algorithm (id-ecPublicKey with the named curve), ECPrivateKey."""
    fields = _sequence(der, "PrivateKeyInfo")
    if len(fields) < 3:
        raise _Malformed("PrivateKeyInfo needs version, algorithm and privateKey")
    version = _integer(fields[0], "version")
    if version not in (0, 1):
        raise _Malformed(f"version {version} (RFC 5958 defines 0 and 1)")
    _check_algorithm(_fields(fields[1], "privateKeyAlgorithm"))
    public = None
    for tag, value in fields[3:]:
        if tag == 0x81:  # [1] publicKey (RFC 5958), a BIT STRING
            if version != 1:
                raise _Malformed("a public key in a version 0 PrivateKeyInfo")
            public = _bits(value, "publicKey")
        elif tag != 0xA0:  # [0] attributes: nothing we use
            raise _Malformed(f"unexpected field of tag {tag:#04x}")
    return _sec1(_expect(fields[2], _OCTET_STRING, "privateKey"), public)


def _sec1(der: bytes, public: bytes | None) -> ec.EllipticCurvePrivateKey:
    """ECPrivateKey (RFC 5915): version 1, the private scalar, then optionally the curve
    [0] and the public key [1], which must agree with the scalar."""
    fields = _sequence(der, "ECPrivateKey")
    if len(fields) < 2 or _integer(fields[0], "ECPrivateKey.version") != 1:
        raise _Malformed("ECPrivateKey needs version 1 and the private key")
    scalar = _expect(fields[1], _OCTET_STRING, "ECPrivateKey.privateKey")
    publics = [public] if public is not None else []
    for tag, value in fields[2:]:
        if tag == 0xA0:  # [0] parameters: the named curve
            _check_curve(_element(value, "parameters"))
        elif tag == 0xA1:  # [1] publicKey
            publics.append(_bits(_expect(_element(value, "publicKey"), _BIT_STRING, "publicKey"), "publicKey"))
        else:
            raise _Malformed(f"unexpected field of tag {tag:#04x}")
    if len(scalar) != P256_SCALAR_BYTES:
        raise _Malformed(f"a {len(scalar)}-byte private key; P-256's is {P256_SCALAR_BYTES} bytes")
    try:
        key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except ValueError:
        raise ValueError("its private value is outside the range of P-256") from None
    point = key.public_key()
    forms = {
        point.public_bytes(serialization.Encoding.X962, form)
        for form in (serialization.PublicFormat.UncompressedPoint, serialization.PublicFormat.CompressedPoint)
    }
    if any(given not in forms for given in publics):
        raise ValueError("the public key it carries is not its private key's")
    return key


def _check_algorithm(algorithm: list[tuple[int, bytes]]) -> None:
    """An AlgorithmIdentifier: id-ecPublicKey on the named curve P-256, or the reason not."""
    oid = _oid(algorithm[0] if algorithm else (0, b""), "algorithm")
    if oid != _EC_PUBLIC_KEY:
        raise ValueError(f"{_ALGORITHMS.get(oid, f'a key of algorithm {oid}')}: Lockstep uses ECDSA P-256")
    if len(algorithm) != 2:
        raise _Malformed("id-ecPublicKey needs its curve as the algorithm's parameters")
    _check_curve(algorithm[1])


def _check_curve(parameters: tuple[int, bytes]) -> None:
    if parameters[0] == _SEQUENCE:
        raise ValueError("explicit curve parameters: Lockstep reads keys on the named curve P-256 only")
    oid = _oid(parameters, "namedCurve")
    if oid != _P256:
        raise ValueError(f"an EC key on curve {_CURVES.get(oid, oid)}: Lockstep uses P-256 (secp256r1, prime256v1)")


def _element(der: bytes, name: str) -> tuple[int, bytes]:
    """The single DER element `der` holds, as (tag, contents)."""
    elements = _elements(der, name)
    if len(elements) != 1:
        raise _Malformed(f"{name} must be one element")
    return elements[0]


def _sequence(der: bytes, name: str) -> list[tuple[int, bytes]]:
    """The elements of the one SEQUENCE `der` encodes."""
    return _fields(_element(der, name), name)


def _fields(element: tuple[int, bytes], name: str) -> list[tuple[int, bytes]]:
    """The elements of a SEQUENCE."""
    return _elements(_expect(element, _SEQUENCE, name), name)


def _elements(der: bytes, name: str) -> list[tuple[int, bytes]]:
    """Each (tag, contents) in `der`, in order; single-byte tags, definite lengths."""
    elements, at = [], 0
    while at < len(der):
        if at + 2 > len(der):
            raise _Malformed(f"{name} is truncated")
        tag, length, at = der[at], der[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 3 or at + count > len(der):
                raise _Malformed(f"{name} has a bad length")
            length, at = int.from_bytes(der[at : at + count], "big"), at + count
        if at + length > len(der):
            raise _Malformed(f"{name} is truncated")
        elements.append((tag, der[at : at + length]))
        at += length
    return elements


def _expect(element: tuple[int, bytes], tag: int, name: str) -> bytes:
    if element[0] != tag:
        raise _Malformed(f"{name} has tag {element[0]:#04x}, not {tag:#04x}")
    return element[1]


def _integer(element: tuple[int, bytes], name: str) -> int:
    value = _expect(element, _INTEGER, name)
    if not value:
        raise _Malformed(f"{name} is empty")
    return int.from_bytes(value, "big", signed=True)


def _bits(value: bytes, name: str) -> bytes:
    if not value or value[0] != 0:
        raise _Malformed(f"{name} is not a whole number of bytes")
    return value[1:]


def _oid(element: tuple[int, bytes], name: str) -> str:
    value = _expect(element, _OID, name)
    if not value or value[-1] & 0x80:
        raise _Malformed(f"{name} is not a valid object identifier")
    arcs, arc = [], 0
    for byte in value:
        arc = arc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(n) for n in (first, arcs[0] - 40 * first, *arcs[1:]))


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


Signature = bytes | BatchSignature  # one message's own, or its share of a batch's


def verify_signature(key: ec.EllipticCurvePublicKey, sig: Signature, signed: Signed) -> bool:
    if isinstance(sig, BatchSignature):
        return verify_batch(key, sig, signed.digest)
    return verify(key, sig, signed.data)


def _sig_wire(sig: Signature) -> Any:
    if isinstance(sig, BatchSignature):
        return {"count": sig.count, "index": sig.index, "path": [h.hex() for h in sig.path], "sig": sig.sig.hex()}
    return sig.hex()


M = TypeVar("M", bound=Body, covariant=True)
N = TypeVar("N", bound=Body)


@attrs.frozen
class Signed(Generic[M]):
    """A message and the signatures over its body, keyed by signing party. The body is
    encoded once, in two halves around where `sigs` sorts, for both the signed bytes
    and the wire."""

    msg: M
    sigs: Mapping[str, Signature]
    body: dict = attrs.field(eq=False, repr=False)
    _halves: tuple[bytes, bytes] = attrs.field(default=(b"", b""), eq=False, repr=False)
    data: bytes = attrs.field(default=b"", eq=False, repr=False)  # the signed bytes
    _digest: bytes = attrs.field(default=b"", init=False, eq=False, repr=False)  # worked out when first asked

    def __attrs_post_init__(self) -> None:
        if not self.data:
            halves = canonical.halves(self.body, "sigs")
            object.__setattr__(self, "_halves", halves)
            object.__setattr__(self, "data", DOMAIN + canonical.join(*halves))

    @property
    def body_bytes(self) -> bytes:
        """The canonical bytes of the body alone: the signed bytes without their domain."""
        return self.data[len(DOMAIN) :]

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed bytes: what idempotency compares, and a batch's leaf."""
        if not self._digest:
            object.__setattr__(self, "_digest", hashlib.sha256(self.data).digest())
        return self._digest

    def signed_by(self, party: str, key: ec.EllipticCurvePublicKey) -> bool:
        sig = self.sigs.get(party)
        return sig is not None and verify_signature(key, sig, self)

    def with_sig(self, party: str, sig: Signature) -> Signed[M]:
        return Signed(self.msg, {**self.sigs, party: sig}, self.body, self._halves, self.data)

    def wire(self) -> dict[str, Any]:
        return {**self.body, "sigs": {party: _sig_wire(sig) for party, sig in self.sigs.items()}}

    def encode(self) -> bytes:
        before, after = self._halves
        sigs = b'"sigs":' + encode({party: _sig_wire(sig) for party, sig in self.sigs.items()})
        return canonical.join(before, sigs, after)


def sign(msg: N, *signers: tuple[str, PrivateKey]) -> Signed[N]:
    unsigned_ = Signed(msg, {}, to_body(msg))
    return Signed(
        msg,
        {party: key.sign(unsigned_.data) for party, key in signers},
        unsigned_.body,
        unsigned_._halves,
        unsigned_.data,
    )


def unsigned(msg: N) -> Signed[N]:
    return Signed(msg, {}, to_body(msg))


def sign_batch(messages: list[Signed[N]], party: str, key: PrivateKey) -> list[Signed[N]]:
    """Add `party`'s signature to every message of a batch at the cost of one (batch.py)."""
    proofs = sign_digests([m.digest for m in messages], key.sign)
    return [m.with_sig(party, proof) for m, proof in zip(messages, proofs, strict=True)]


@overload
def decode_signed(raw: bytes, *, allowed: tuple[type[N], ...]) -> Signed[N]: ...
@overload
def decode_signed(raw: bytes, *, allowed: None = None) -> Signed[Body]: ...
def decode_signed(raw: bytes, *, allowed: tuple[type[Body], ...] | None = None) -> Signed[Body]:
    """Parse a wire message strictly; signatures are parsed here, verified by the
    receiver, which alone knows whose signatures the message needs."""
    value = decode(raw)
    return from_wire(value, allowed=allowed)


@overload
def from_wire(value: Any, *, allowed: tuple[type[N], ...]) -> Signed[N]: ...
@overload
def from_wire(value: Any, *, allowed: None = None) -> Signed[Body]: ...
def from_wire(value: Any, *, allowed: tuple[type[Body], ...] | None = None) -> Signed[Body]:
    if not isinstance(value, dict):
        raise Rejected(Code.MALFORMED, "$", "message must be a JSON object")
    body = dict(value)
    sigs = body.pop("sigs", {})
    msg = from_body(body, allowed=allowed)
    if not isinstance(sigs, dict) or len(sigs) > SIGNATURES_MAX:
        raise Rejected(Code.MALFORMED, "sigs", f"must be an object of at most {SIGNATURES_MAX} party: signature pairs")
    parsed = {party: _sig_of(party, sig) for party, sig in sigs.items()}
    return Signed(msg, parsed, body)


def _sig_of(party: str, sig: Any) -> Signature:
    """A signature as the wire carries it: DER in hex, or a batch signature's share."""
    if isinstance(sig, dict):
        return _batch_sig_of(party, sig)
    return _hex(sig, SIGNATURE_HEX_MAX, f"sigs.{party}", "a DER signature in hex, or a batch signature")


def _batch_sig_of(party: str, sig: dict) -> BatchSignature:
    field = f"sigs.{party}"
    if set(sig) != {"count", "index", "path", "sig"}:
        raise Rejected(Code.MALFORMED, field, "a batch signature has exactly count, index, path and sig")
    count, index, path = sig["count"], sig["index"], sig["path"]
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= BATCH_SIZE_MAX:
        raise Rejected(Code.MALFORMED, f"{field}.count", f"must be an integer from 1 to {BATCH_SIZE_MAX}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise Rejected(Code.MALFORMED, f"{field}.index", "must be an integer from 0 to count - 1")
    if not isinstance(path, list) or len(path) > PATH_LENGTH_MAX:
        raise Rejected(Code.MALFORMED, f"{field}.path", f"must be a list of at most {PATH_LENGTH_MAX} hashes")
    hashes_ = tuple(_hex(h, 2 * HASH_BYTES, f"{field}.path", "SHA-256 hashes in hex") for h in path)
    if any(len(h) != HASH_BYTES for h in hashes_):
        raise Rejected(Code.MALFORMED, f"{field}.path", "SHA-256 hashes in hex")
    der = _hex(sig["sig"], SIGNATURE_HEX_MAX, f"{field}.sig", "a DER signature in hex")
    return BatchSignature(der, index, count, hashes_)


def _hex(value: Any, chars_max: int, field: str, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > chars_max or len(value) % 2:
        raise Rejected(Code.MALFORMED, field, f"must be {what}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Rejected(Code.MALFORMED, field, f"must be {what}") from None
