"""The batch envelope (protocol version 2): many messages travel in one, signed once.

    {"items": [message, ...], "sigs": {"<signer>": "<DER hex>"}, "type": "batch", "v": 2}

Each item is a version-1 message as it would travel alone, with any signatures of its
own; the envelope's signature is the signer's over the Merkle root of the items' digests
(batch.py). Opening an envelope gives each item the signer's share of that signature,
its inclusion path included, so that each item, stored or forwarded on its own, stays
checkable by anyone. An item that does not decode is refused on its own; the others
stand. A message sent alone is a batch of one in every respect but its framing.

A back office sends its coordinator many settlements in one request the same way, but
unsigned (`settlements`, below): each settlement's authority is its parties' own
signatures, which a batch signature may not stand in for, and the container adds none.

    {"items": [settlement, ...], "type": "settlements", "v": 2}"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

from . import canonical
from .batch import BATCH_SIZE_MAX, BatchSignature, leaf_hash, sign_digests, tree
from .errors import Code, Rejected
from .messages import IDENT_PATTERN, Body
from .signing import DOMAIN, SIGNATURE_HEX_MAX, PrivateKey, Signed, from_wire

B = TypeVar("B", bound=Body)

BATCH_VERSION = 2
BATCH_BYTES_MAX = 1 << 20  # the broker's packet limit
SETTLEMENTS_MAX = 1024  # to a request: the reply's statuses, steps and all, stay under BATCH_BYTES_MAX


def is_batch(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "batch"


def is_settlements(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "settlements"


def settlements(raws: Sequence[bytes]) -> bytes:
    """Settlements, each in its canonical encoding as it would travel alone, in one request."""
    assert 0 < len(raws) <= SETTLEMENTS_MAX, len(raws)
    return canonical.join(b'"items":[' + b",".join(raws) + b"]", b'"type":"settlements"', b'"v":2')


def open_settlements(value: dict, *, allowed: tuple[type[Body], ...]) -> list[Signed | Rejected]:
    """Each settlement of a request that carries many, decoded, or the reason it was
    refused; Rejected for a container that is itself wrong."""
    items = _framed(value, "settlements", ("items", "type", "v"), SETTLEMENTS_MAX, "settlements")
    return [_opened(item, allowed) for item in items]


def answers(reply: bytes, count: int, allowed: tuple[type[B], ...]) -> list[B]:
    """What a reply to `count` messages sent together answers them with, in their order:
    each item of its envelope, or (the request refused whole) its one answer for each. The
    signatures are parsed, not checked: whoever needs the sender's checks them."""
    value = canonical.decode(reply, bytes_max=BATCH_BYTES_MAX)
    if not is_batch(value):
        return [from_wire(value, allowed=allowed).msg] * count
    items = open_batch(value, allowed=allowed)[1]
    if len(items) != count or not all(isinstance(item, Signed) for item in items):
        raise Rejected(Code.MALFORMED, "items", f"{count} messages sent together, not answered one each")
    return [item.msg for item in items if isinstance(item, Signed)]


def seal(messages: Sequence[Signed], party: str, key: PrivateKey) -> bytes:
    """The envelope carrying these messages under one signature of `party`'s."""
    assert 0 < len(messages) <= BATCH_SIZE_MAX, len(messages)
    return enclose(messages, party, sign_digests([m.digest for m in messages], key.sign)[0].sig)


def enclose(messages: Sequence[Signed], party: str, sig: bytes) -> bytes:
    """The envelope of messages already signed as a batch by `party` (sign_batch's
    `sig`), each written without its share: the receiver computes the paths again."""
    assert all(party not in m.sigs for m in messages), "the batch signs for its signer"
    items = b",".join(m.encode() for m in messages)
    return canonical.join(
        b'"items":[' + items + b"]", b'"sigs":' + canonical.encode({party: sig.hex()}), b'"type":"batch"', b'"v":2'
    )


def open_batch(value: dict, *, allowed: tuple[type[Body], ...]) -> tuple[str, list[Signed | Rejected]]:
    """The signer and each item, decoded and given its share of the batch signature, or
    the reason it was refused. The signature is not checked here: whoever needs the
    signer's signature checks it, at the cost of one verification for the batch."""
    items = _framed(value, "a batch", ("items", "sigs", "type", "v"), BATCH_SIZE_MAX, "messages")
    sigs = value["sigs"]
    if not isinstance(sigs, dict) or len(sigs) != 1:
        raise Rejected(Code.MALFORMED, "sigs", "a batch carries its one signer's signature")
    ((party, sig),) = sigs.items()
    if not isinstance(sig, str) or len(sig) > SIGNATURE_HEX_MAX or len(sig) % 2:
        raise Rejected(Code.MALFORMED, f"sigs.{party}", "must be a DER signature in hex")
    try:
        der = bytes.fromhex(sig)
    except ValueError:
        raise Rejected(Code.MALFORMED, f"sigs.{party}", "must be a DER signature in hex") from None
    opened: list[Signed | Rejected] = [_item(item, party, allowed) for item in items]
    root, paths = tree([leaf_hash(_digest(o, item)) for o, item in zip(opened, items, strict=True)])
    return party, [
        o
        if isinstance(o, Rejected)
        else o.with_sig(party, BatchSignature(der, index, len(items), tuple(paths[index]), (o.digest, root)))
        for index, o in enumerate(opened)
    ]


def open_event(value: Any, *, allowed: tuple[type[Body], ...]) -> list[Signed | Rejected]:
    """The messages of an event: one alone, or each of a batch with its share of the
    batch signature; a message refused is its reason. Rejected for a broken envelope."""
    if is_batch(value):
        return open_batch(value, allowed=allowed)[1]
    try:
        return [from_wire(value, allowed=allowed)]
    except Rejected as error:
        return [error]


def item_id(item: Any) -> str:
    """An item's id for a refusal, when it has a usable one."""
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and IDENT_PATTERN.fullmatch(value) else "unknown"


def _framed(value: dict, name: str, members: tuple[str, ...], limit: int, noun: str) -> list:
    """The items of an envelope whose members, version and item count are as they must
    be; Rejected, naming what is not, otherwise."""
    if set(value) != set(members):
        raise Rejected(Code.MALFORMED, "$", f"{name} has exactly {', '.join(members[:-1])} and {members[-1]}")
    if type(value["v"]) is not int or value["v"] != BATCH_VERSION:
        raise Rejected(Code.UNSUPPORTED_VERSION, "v", f"{name} is version {BATCH_VERSION}")
    items = value["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= limit:
        raise Rejected(Code.MALFORMED, "items", f"must be a list of 1 to {limit} {noun}")
    return items


def _opened(item: Any, allowed: tuple[type[Body], ...]) -> Signed | Rejected:
    try:
        return from_wire(item, allowed=allowed)
    except Rejected as error:
        return error


def _item(item: Any, party: str, allowed: tuple[type[Body], ...]) -> Signed | Rejected:
    signed = _opened(item, allowed)
    if isinstance(signed, Signed) and party in signed.sigs:
        return Rejected(Code.MALFORMED, f"sigs.{party}", "the batch's signer signs its items through the batch")
    return signed


def _digest(opened: Signed | Rejected, item: Any) -> bytes:
    """What the signer hashed for this item: its signed bytes, refused or not."""
    if isinstance(opened, Signed):
        return opened.digest
    body = {k: v for k, v in item.items() if k != "sigs"} if isinstance(item, dict) else item
    return hashlib.sha256(DOMAIN + canonical.encode(body)).digest()
