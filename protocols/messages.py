"""Every instruction, receipt, query and journal entry a ledger handles, as frozen attrs
types, with their strict mapping to and from wire dictionaries.

A message on the wire is its *body* (a JSON object whose `type` names the class) plus a
`sigs` object mapping each signing party to its signature over the body's canonical
bytes (see `protocols.signing`). Every body names its protocol version and the ledger it
is meant for, so a signature is worth nothing on another ledger or for another type.
Construction validates every field: a message that exists is well formed."""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from . import PROTOCOL_VERSION
from .canonical import INT_MAX, decode, member_path
from .errors import Code, Rejected
from .identifiers import IDENT_PATTERN, currency_problem, isin_problem
from .iso20022.model import FORMATS

DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
LEGS_MAX = 16
COUPON_FREQUENCIES = (0, 1, 2, 4, 12)  # payments a year; 0 is a zero-coupon bond
DAY_COUNTS = ("30/360", "ACT/360", "ACT/365", "ACT/ACT")
DOCUMENT_CHARS_MAX = 32 * 1024
LATER = {"left_out_at_default": True}  # a field added in a later release: absent means its default,
# so what was signed before it existed keeps its bytes
ABORT_BY_MAX = 4
LINKED_PAIRS_MAX = 8  # matched pairs settled together as one linked settlement
PATH_HOPS_MAX = 4  # intermediaries along one multi-hop payment: it moves on one more ledger than that
QUOTES_MAX = 64  # quotes in one intermediary's answer
MARGIN_MS_MAX = 3_600_000  # an intermediary's margin between its two locks' backstops
ATTEMPTS_MAX = 99_999  # a matched pair's tries: an attempt's settlement id stays within 48 characters
QUERY_LIMIT_MAX = 1000


# -- field kinds: a validator and a wire conversion for each ---------------------------


def _invalid(attribute: attrs.Attribute, reason: str) -> Rejected:
    return Rejected(Code.INVALID_FIELD, attribute.name, reason)


def _expect(attribute: attrs.Attribute, value: Any, kind: type, name: str) -> None:
    if type(value) is kind:
        return
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Rejected(Code.MALFORMED, attribute.name, f"expected {name}, got {type(value).__name__}")


def ident(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, str, "a string")
    if not IDENT_PATTERN.fullmatch(value):
        raise _invalid(attribute, "must be 1-64 characters of A-Z a-z 0-9 . _ : - starting alphanumeric")


def flag(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, bool, "true or false")


def attempt_number(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, int, "an integer")
    if not 0 <= value <= ATTEMPTS_MAX:
        raise _invalid(attribute, f"must be 0 to {ATTEMPTS_MAX}")


def amount(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, int, "an integer")
    if not 0 < value <= INT_MAX:
        raise _invalid(attribute, "must be a positive integer no larger than 2^63-1")


def time_ms(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, int, "an integer")
    if not 0 <= value <= INT_MAX:
        raise _invalid(attribute, "must be milliseconds since the epoch, 0 to 2^63-1")


def public_key(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A P-256 public key, as the lower-case hex of its compressed point: one spelling per key."""
    _expect(attribute, value, str, "a string")
    try:
        if len(value) != 66 or value != value.lower():
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(value))
    except ValueError:
        raise _invalid(attribute, "must be the 66 lower-case hex digits of a compressed P-256 point") from None


def count(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, int, "an integer")
    if not 0 <= value <= INT_MAX:
        raise _invalid(attribute, "must be an integer from 0 to 2^63-1")


def digest32(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, bytes, "32 bytes")
    if len(value) != 32:
        raise _invalid(attribute, f"must be 32 bytes (64 hex digits), got {len(value)} bytes")


def optional_digest32(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        digest32(instance, attribute, value)


def isin(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, str, "a string")
    problem = isin_problem(value)
    if problem:
        raise _invalid(attribute, problem)


def currency(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, str, "a string")
    problem = currency_problem(value)
    if problem:
        raise _invalid(attribute, problem)


def asset_code(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An asset is a currency (3 letters, ISO 4217) or an instrument (12, ISO 6166)."""
    _expect(attribute, value, str, "a string")
    problem = currency_problem(value) if len(value) == 3 else isin_problem(value)
    if problem:
        raise _invalid(attribute, problem)


def date(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, str, "a string")
    if not DATE_PATTERN.fullmatch(value):
        raise _invalid(attribute, "must be a date YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise _invalid(attribute, f"{value} is not a calendar date") from None


def one_of(*allowed: str):
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        _expect(attribute, value, str, "a string")
        if value not in allowed:
            raise _invalid(attribute, f"must be one of {', '.join(allowed)}")

    return check


def one_of_ints(*allowed: int):
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        _expect(attribute, value, int, "an integer")
        if value not in allowed:
            raise _invalid(attribute, f"must be one of {', '.join(map(str, allowed))}")

    return check


def text(limit_chars: int):
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        _expect(attribute, value, str, "a string")
        if not 0 < len(value) <= limit_chars:
            raise _invalid(attribute, f"must be 1 to {limit_chars} characters")

    return check


def idents(limit: int, *, at_least: int = 0):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        _expect(attribute, value, tuple, "a list")
        if not at_least <= len(value) <= limit:
            raise _invalid(attribute, f"must hold {at_least} to {limit} entries")
        for item in value:
            ident(instance, attribute, item)
        if len(set(value)) != len(value):
            raise _invalid(attribute, "must not repeat an entry")

    return check


def optional_object(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """`auth`: the counterparties' signed settlement that lets a coordinator place a
    lock (or a same-ledger settle) on their behalf; checked by the ledger's rules."""
    if value is not None and not isinstance(value, dict):
        raise Rejected(Code.MALFORMED, attribute.name, "expected an object or null")


def an_object(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, dict):
        raise Rejected(Code.MALFORMED, attribute.name, "expected an object")


def _hex32(field_name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise Rejected(Code.MALFORMED, field_name, f"expected 64 hex digits, got {type(value).__name__}")
    if len(value) != 64 or value.lower() != value:
        raise Rejected(Code.INVALID_FIELD, field_name, "must be 64 lowercase hex digits (32 bytes)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Rejected(Code.INVALID_FIELD, field_name, "must be 64 lowercase hex digits (32 bytes)") from None


# -- messages ------------------------------------------------------------------------

MESSAGE_TYPES: dict[str, type] = {}
T = TypeVar("T")


def message(type_name: str) -> Callable[[type[T]], type[T]]:
    """Register a frozen attrs class as the message with this `type`. Applied above
    `@attrs.frozen`, so that type checkers see the class attrs made."""

    def register(cls: type[T]) -> type[T]:
        assert attrs.has(cls) and type_name not in MESSAGE_TYPES, (cls, type_name)
        cls.TYPE = type_name  # type: ignore[attr-defined]  # T is any class; each message has TYPE
        MESSAGE_TYPES[type_name] = cls
        return cls  # type: ignore[return-value]  # attrs.has narrowed it to AttrsInstance; it is still T

    return register


@attrs.frozen
class Leg:
    """One movement inside a `Settle`: all legs of a settlement happen or none does."""

    from_account: str = attrs.field(validator=ident)
    to_account: str = attrs.field(validator=ident)
    asset: str = attrs.field(validator=asset_code)
    amount: int = attrs.field(validator=amount)


def legs(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if not 1 <= len(value) <= LEGS_MAX:
        raise _invalid(attribute, f"must hold 1 to {LEGS_MAX} legs")
    for leg in value:
        if not isinstance(leg, Leg):
            raise Rejected(Code.MALFORMED, attribute.name, "each leg must be an object")


class Body:
    """Fields every message body carries."""

    TYPE: ClassVar[str]


# Instructions change a ledger; each is signed by the parties whose assets it moves.


@attrs.frozen
class Instruction(Body):
    """What every instruction carries: its id (the idempotency key), the ledger it is
    meant for, and when it was signed (the freshness check)."""

    id: str = attrs.field(validator=ident)
    ledger: str = attrs.field(validator=ident)
    ts_ms: int = attrs.field(validator=time_ms)


@message("open_account")
@attrs.frozen
class OpenAccount(Instruction):
    """Open an account for a participant; by the ledger's operator or the owner itself."""

    account: str = attrs.field(validator=ident)
    owner: str = attrs.field(validator=ident)


@message("create_instrument")
@attrs.frozen
class CreateInstrument(Instruction):
    """Register a bond's reference data; by the securities ledger's operator only."""

    isin: str = attrs.field(validator=isin)
    issuer: str = attrs.field(validator=ident)
    currency: str = attrs.field(validator=currency)
    face_value_minor: int = attrs.field(validator=amount)
    coupon_rate_bp: int = attrs.field(validator=count)
    maturity_date: str = attrs.field(validator=date)
    coupon_frequency: int = attrs.field(default=1, validator=one_of_ints(*COUPON_FREQUENCIES), metadata=LATER)
    day_count: str = attrs.field(default="30/360", validator=one_of(*DAY_COUNTS), metadata=LATER)


@message("issue")
@attrs.frozen
class Issue(Instruction):
    """Create units of an asset: an instrument into its issuer's account (by the
    operator), or money into any account (by the currency's central bank)."""

    asset: str = attrs.field(validator=asset_code)
    account: str = attrs.field(validator=ident)
    amount: int = attrs.field(validator=amount)


@message("redeem")
@attrs.frozen
class Redeem(Instruction):
    """Destroy units of an asset held in the issuer's own account."""

    asset: str = attrs.field(validator=asset_code)
    account: str = attrs.field(validator=ident)
    amount: int = attrs.field(validator=amount)


@message("transfer")
@attrs.frozen
class Transfer(Instruction):
    from_account: str = attrs.field(validator=ident)
    to_account: str = attrs.field(validator=ident)
    asset: str = attrs.field(validator=asset_code)
    amount: int = attrs.field(validator=amount)


def backstop(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A decision lock's backstop: given with its `cancel_hashlock`, not before its expiry."""
    if value is None:
        if instance.cancel_hashlock is not None:
            raise _invalid(attribute, "a lock with a cancel_hashlock needs a backstop_ms")
        return
    time_ms(instance, attribute, value)
    if instance.cancel_hashlock is None:
        raise _invalid(attribute, "a backstop_ms needs a cancel_hashlock: without one, expiry_ms is the backstop")
    if value < instance.expiry_ms:
        raise _invalid(attribute, f"backstop {value} is before expiry {instance.expiry_ms}")
    if instance.abort_by:
        raise Rejected(
            Code.INVALID_FIELD,
            "abort_by",
            "a lock with a cancel_hashlock is ended early only by cancel: none aborts it",
        )


@message("lock")
@attrs.frozen
class Lock(Instruction):
    """Place a hashed lock; its id is the instruction id. Signed by the owner, or by a
    coordinator carrying the owner's signed settlement in `auth`.

    A time-lock refunds at `expiry_ms`; `abort_by` names the parties, besides the
    beneficiary, who may end it early (see htlc.abort). A decision lock also carries
    `cancel_hashlock` and `backstop_ms`: until the backstop it ends only by claim or by
    cancel, and `expiry_ms` is the time by which it is decided (htlc)."""

    owner_account: str = attrs.field(validator=ident)
    beneficiary_account: str = attrs.field(validator=ident)
    asset: str = attrs.field(validator=asset_code)
    amount: int = attrs.field(validator=amount)
    hashlock: bytes = attrs.field(validator=digest32)
    expiry_ms: int = attrs.field(validator=time_ms)
    abort_by: tuple[str, ...] = attrs.field(validator=idents(ABORT_BY_MAX))
    auth: dict | None = attrs.field(default=None, validator=optional_object)
    cancel_hashlock: bytes | None = attrs.field(default=None, validator=optional_digest32, metadata=LATER)
    backstop_ms: int | None = attrs.field(default=None, validator=backstop, metadata=LATER)

    @property
    def decides(self) -> bool:
        return self.cancel_hashlock is not None


@message("claim")
@attrs.frozen
class Claim(Instruction):
    """Complete a lock with its secret; anyone may send it, only the beneficiary gains.
    A coordinator's carries its `epoch` (see Fence); anyone else's leaves it out."""

    lock_id: str = attrs.field(validator=ident)
    preimage: bytes = attrs.field(validator=digest32)
    epoch: int = attrs.field(default=0, validator=count, metadata=LATER)


@message("cancel")
@attrs.frozen
class Cancel(Instruction):
    """End a decision lock with its abort preimage, which its coordinator reveals only
    once it has decided to abort; anyone may send it, only the owner gains."""

    lock_id: str = attrs.field(validator=ident)
    preimage: bytes = attrs.field(validator=digest32)
    epoch: int = attrs.field(default=0, validator=count, metadata=LATER)


@message("refund")
@attrs.frozen
class Refund(Instruction):
    """Return an expired lock to its owner; the ledger also does it by itself."""

    lock_id: str = attrs.field(validator=ident)


@message("abort")
@attrs.frozen
class Abort(Instruction):
    """Return a lock to its owner before expiry, by a party its terms allow."""

    lock_id: str = attrs.field(validator=ident)
    epoch: int = attrs.field(default=0, validator=count, metadata=LATER)


@message("settle")
@attrs.frozen
class Settle(Instruction):
    """Several movements applied as one: the same-ledger DvP and PvP."""

    legs: tuple[Leg, ...] = attrs.field(validator=legs)
    auth: dict | None = attrs.field(default=None, validator=optional_object)


@message("rotate_key")
@attrs.frozen
class RotateKey(Instruction):
    """Replace a party's public key on this ledger from this entry on; by the ledger's
    operator, who has checked who asks out of band. The old key stops working at once."""

    party: str = attrs.field(validator=ident)
    public_key: str = attrs.field(validator=public_key)


@message("fence")
@attrs.frozen
class Fence(Instruction):
    """Raise this ledger's fence for the coordinator that signs it to `epoch`. A
    coordinator instance draws a new epoch whenever it opens its journal (a restart, or
    a takeover by another process) and fences each ledger before it sends it anything
    else; from then on the ledger refuses, `fenced`, the claims, cancels and aborts of
    that coordinator signed at an earlier epoch: those of an instance since replaced."""

    epoch: int = attrs.field(validator=amount)


INSTRUCTIONS: tuple[type[Instruction], ...] = (
    OpenAccount,
    CreateInstrument,
    Issue,
    Redeem,
    Transfer,
    Lock,
    Claim,
    Cancel,
    Refund,
    Abort,
    Settle,
    RotateKey,
    Fence,
)


# Queries read a ledger; they are not signed and change nothing.


@attrs.frozen
class Query(Body):
    id: str = attrs.field(validator=ident)
    ledger: str = attrs.field(validator=ident)


@message("query_info")
@attrs.frozen
class QueryInfo(Query):
    """Who the ledger is: role, operator, assets with their supply, journal head."""


@message("query_balances")
@attrs.frozen
class QueryBalances(Query):
    account: str = attrs.field(validator=ident)


@message("query_lock")
@attrs.frozen
class QueryLock(Query):
    lock_id: str = attrs.field(validator=ident)


@message("query_locks")
@attrs.frozen
class QueryLocks(Query):
    """Held locks expiring before a time, soonest first: the list of expiring holds."""

    expiring_before_ms: int = attrs.field(validator=time_ms)
    limit: int = attrs.field(validator=count)


@message("query_journal")
@attrs.frozen
class QueryJournal(Query):
    from_seq: int = attrs.field(validator=count)
    limit: int = attrs.field(validator=count)


@message("query_receipt")
@attrs.frozen
class QueryReceipt(Query):
    """The receipt of an instruction already sent, by its id: how a client that lost
    a reply learns the outcome without sending the instruction again."""

    instruction_id: str = attrs.field(validator=ident)


def optional_ident(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An identifier, or "" for none: where a page starts (the first page)."""
    if value != "":
        ident(instance, attribute, value)


@message("query_holders")
@attrs.frozen
class QueryHolders(Query):
    """Every account holding some of an asset (available or locked), with its owner, by
    account id after `after_account`: the holders of record a paying agent pays."""

    asset: str = attrs.field(validator=asset_code)
    limit: int = attrs.field(validator=count)
    after_account: str = attrs.field(default="", validator=optional_ident)


@message("query_accounts")
@attrs.frozen
class QueryAccounts(Query):
    """A party's accounts on this ledger with their balances, by account id (at most
    QUERY_LIMIT_MAX): where a paying agent finds a holder's cash account."""

    owner: str = attrs.field(validator=ident)


QUERIES = (QueryInfo, QueryBalances, QueryLock, QueryLocks, QueryJournal, QueryReceipt, QueryHolders, QueryAccounts)


# Replies and records, signed by the ledger.


@message("receipt")
@attrs.frozen
class Receipt(Body):
    """The ledger's answer to an instruction. `status` is "applied" (with the journal
    position) or "rejected" (with code, field and reason)."""

    ledger: str = attrs.field(validator=ident)
    instruction_id: str = attrs.field(validator=ident)
    status: str = attrs.field(validator=one_of("applied", "rejected"))
    time_ms: int = attrs.field(validator=time_ms)
    seq: int | None = None
    entry_hash: str | None = None
    code: str | None = None
    field: str | None = None
    reason: str | None = None

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    def error(self) -> Rejected:
        assert not self.applied
        return Rejected(Code(self.code), self.field or "", self.reason or "")


@message("result")
@attrs.frozen
class Result(Body):
    """The ledger's answer to a query."""

    ledger: str = attrs.field(validator=ident)
    query_id: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    value: Any = None


@message("entry")
@attrs.frozen
class Entry(Body):
    """One journal entry: what the ledger applied, chained to the entry before it.
    `instruction` is the signed instruction as received (None for the ledger's own
    expiry refunds); `effects` lists every state change the entry made."""

    ledger: str = attrs.field(validator=ident)
    seq: int = attrs.field(validator=count)
    prev_hash: str = attrs.field()
    time_ms: int = attrs.field(validator=time_ms)
    kind: str = attrs.field(validator=ident)
    instruction: dict | None
    effects: dict


# Settlements, between counterparties and their coordinator.

SETTLEMENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")


def settlement_id(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Up to 48 characters and no colon: lock ids are built as `{id}:{leg}`."""
    _expect(attribute, value, str, "a string")
    if not SETTLEMENT_ID_PATTERN.fullmatch(value):
        raise _invalid(attribute, "must be 1-48 characters of A-Z a-z 0-9 . _ - starting alphanumeric")


@attrs.frozen
class SettlementLeg:
    """One leg of a settlement: an asset moving on one ledger."""

    ledger: str = attrs.field(validator=ident)
    from_account: str = attrs.field(validator=ident)
    to_account: str = attrs.field(validator=ident)
    asset: str = attrs.field(validator=asset_code)
    amount: int = attrs.field(validator=amount)

    def as_leg(self) -> Leg:
        return Leg(self.from_account, self.to_account, self.asset, self.amount)


def settlement_legs(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) != 2 or not all(isinstance(leg, SettlementLeg) for leg in value):
        raise Rejected(Code.MALFORMED, attribute.name, "a settlement has exactly two legs, each an object")
    first, second = value
    if (first.ledger, first.asset) == (second.ledger, second.asset):
        raise _invalid(attribute, "the two legs move the same asset on the same ledger")
    securities = [len(leg.asset) == 12 for leg in value]
    if instance.kind == "dvp" and sorted(securities) != [False, True]:
        raise _invalid(attribute, "a DvP moves one instrument (ISIN) against one currency")
    if instance.kind == "pvp" and any(securities):
        raise _invalid(attribute, "a PvP moves one currency against another")


@message("settlement")
@attrs.frozen
class Settlement(Body):
    """A DvP or PvP instruction, signed by both counterparties: `parties[i]` owns the
    account leg i is paid from. Leg 0 is claimed first; the two legs run in opposite
    directions (leg 0 pays parties[1], leg 1 pays parties[0])."""

    id: str = attrs.field(validator=settlement_id)
    kind: str = attrs.field(validator=one_of("dvp", "pvp"))
    ts_ms: int = attrs.field(validator=time_ms)
    coordinator: str = attrs.field(validator=ident)
    deadline_ms: int = attrs.field(validator=time_ms)
    parties: tuple[str, ...] = attrs.field(validator=idents(2, at_least=2))
    legs: tuple[SettlementLeg, ...] = attrs.field(validator=settlement_legs)
    not_before_ms: int = attrs.field(default=0, validator=time_ms, metadata=LATER)  # no leg moves earlier


@message("settlement_instruction")
@attrs.frozen
class SettlementInstruction(Body):
    """One counterparty's side of a trade as an ISO 20022 document (sese.023 for a DvP,
    pacs.009 for a PvP), signed by that party; the coordinator matches it with the other
    side's (protocols.matching), and the ledgers check both again before a leg moves."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    ts_ms: int = attrs.field(validator=time_ms)
    format: str = attrs.field(validator=one_of(*FORMATS))
    document: str = attrs.field(validator=text(DOCUMENT_CHARS_MAX))


def ledger_per_leg(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) not in (1, 2):
        raise _invalid(attribute, "must name the ledger of each leg: two, or one free of payment")
    for item in value:
        ident(_, attribute, item)


def leg_ledgers(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A settlement's ledger for each of its legs, in leg order: one may carry several."""
    _expect(attribute, value, tuple, "a list")
    if not 1 <= len(value) <= LEGS_MAX:
        raise _invalid(attribute, f"must name the ledger of each leg: 1 to {LEGS_MAX}")
    for item in value:
        ident(_, attribute, item)


def two_objects(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) != 2 or not all(isinstance(item, dict) for item in value):
        raise Rejected(Code.MALFORMED, attribute.name, "must hold the two signed instructions, each an object")


@message("matched")
@attrs.frozen
class Matched(Body):
    """Two matched instructions, as a coordinator's lock or settle carries them in `auth`;
    `ledgers` places each leg (the ledger carrying its asset; one leg free of payment),
    which each ledger checks for its own leg."""

    coordinator: str = attrs.field(validator=ident)
    ledgers: tuple[str, ...] = attrs.field(validator=ledger_per_leg)
    instructions: tuple[dict, ...] = attrs.field(validator=two_objects)
    # where a side gives a face amount: the instrument's denomination, from its reference
    # data, which its securities ledger checks
    face_currency: str | None = attrs.field(default=None, validator=attrs.validators.optional(currency), metadata=LATER)
    face_value_minor: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(amount), metadata=LATER
    )
    # the pair's try, once the settlement queue recycles it (protocols.matching.attempt_id)
    attempt: int = attrs.field(default=0, validator=attempt_number, metadata=LATER)
    # the day this try settles on, where the queue recycled the pair past its intended date
    settle_on: str | None = attrs.field(default=None, validator=attrs.validators.optional(date), metadata=LATER)
    # a partial try (protocols.matching.part_of): the instrument's units from `part_from`
    # up to `part_to` of the trade's, and the cash they come to; None: the whole
    part_from: int = attrs.field(default=0, validator=count, metadata=LATER)
    part_to: int | None = attrs.field(default=None, validator=attrs.validators.optional(amount), metadata=LATER)


def linked_pairs(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if not 2 <= len(value) <= LINKED_PAIRS_MAX or not all(isinstance(item, dict) for item in value):
        raise Rejected(
            Code.MALFORMED, attribute.name, f"must hold 2 to {LINKED_PAIRS_MAX} matched pairs, each an object"
        )


@message("linked")
@attrs.frozen
class Linked(Body):
    """Matched pairs that settle together or not at all (protocols.netting): linked by
    their parties (sese.023 Lnkgs, processing position WITH), or found by the settlement
    queue to fund one another. Each of `pairs` is a `matched` body of the same
    coordinator; their legs are netted, and each ledger locks the netted legs on it."""

    coordinator: str = attrs.field(validator=ident)
    pairs: tuple[dict, ...] = attrs.field(validator=linked_pairs)


@message("path_payment")
@attrs.frozen
class PathPayment(Body):
    """A payer's order to its coordinator: pay `amount` of `asset` into the payee's
    `to_account` on `to_ledger`, from `source_asset` in its own `from_account` on
    `from_ledger`, spending at most `source_max` there; intermediaries chosen by the
    coordinator from their quotes carry it between the ledgers (a multi-hop PvP, each
    hop its own lock, one secret for the whole path). Signed by the payer."""

    id: str = attrs.field(validator=settlement_id)
    coordinator: str = attrs.field(validator=ident)
    payer: str = attrs.field(validator=ident)
    ts_ms: int = attrs.field(validator=time_ms)
    from_ledger: str = attrs.field(validator=ident)
    from_account: str = attrs.field(validator=ident)
    source_asset: str = attrs.field(validator=currency)
    source_max: int = attrs.field(validator=amount)
    payee: str = attrs.field(validator=ident)
    to_ledger: str = attrs.field(validator=ident)
    to_account: str = attrs.field(validator=ident)
    asset: str = attrs.field(validator=currency)
    amount: int = attrs.field(validator=amount)
    deadline_ms: int = attrs.field(validator=time_ms)


@message("quote_request")
@attrs.frozen
class QuoteRequest(Body):
    """A coordinator asks an intermediary for its quotes to carry one payment (the
    payer's signed `path_payment`, as received)."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    payment: dict = attrs.field(validator=an_object)


def margin(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An intermediary's margin: at most an hour, so that a path's locks, each later than
    the next by a margin, stay within what every ledger allows (`lock_expiry_ms_max`)."""
    _expect(attribute, value, int, "an integer")
    if not 0 < value <= MARGIN_MS_MAX:
        raise _invalid(attribute, f"must be 1 to {MARGIN_MS_MAX} ms")


@message("quote")
@attrs.frozen
class Quote(Body):
    """An intermediary's price for one hop of one payment: it takes `takes_asset` into
    `takes_account` on `takes_ledger` and gives `gives_asset` from `gives_account` on
    `gives_ledger`, at most floor(taken x rate_num / rate_den) and no more than
    `gives_max`; its hop's incoming lock must outlive its outgoing one by `margin_ms`
    at least (its time to claim, once its outgoing lock is claimed); asked to accept
    by `valid_until_ms`."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    intermediary: str = attrs.field(validator=ident)
    payment: str = attrs.field(validator=settlement_id)  # the payment's settlement id, `p-…`
    takes_ledger: str = attrs.field(validator=ident)
    takes_account: str = attrs.field(validator=ident)
    takes_asset: str = attrs.field(validator=currency)
    gives_ledger: str = attrs.field(validator=ident)
    gives_account: str = attrs.field(validator=ident)
    gives_asset: str = attrs.field(validator=currency)
    rate_num: int = attrs.field(validator=amount)
    rate_den: int = attrs.field(validator=amount)
    gives_max: int = attrs.field(validator=amount)
    margin_ms: int = attrs.field(validator=margin)
    valid_until_ms: int = attrs.field(validator=time_ms)


def quote_bodies(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) > QUOTES_MAX or not all(isinstance(item, dict) for item in value):
        raise Rejected(Code.MALFORMED, attribute.name, f"must hold up to {QUOTES_MAX} quotes, each an object")


@message("quotes")
@attrs.frozen
class Quotes(Body):
    """An intermediary's answer to a `quote_request`: its quotes, each a `quote` body,
    signed once with the answer (none: it will not carry this payment)."""

    intermediary: str = attrs.field(validator=ident)
    payment: str = attrs.field(validator=settlement_id)
    time_ms: int = attrs.field(validator=time_ms)
    quotes: tuple[dict, ...] = attrs.field(validator=quote_bodies)


def hop_legs(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) != 2 or not all(isinstance(leg, SettlementLeg) for leg in value):
        raise Rejected(
            Code.MALFORMED, attribute.name, "a hop holds two legs, each an object: what it takes, what it gives"
        )
    takes, gives = value
    if takes.ledger == gives.ledger:
        raise _invalid(attribute, "an intermediary takes on one ledger and gives on another")


def two_times(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) != 2:
        raise Rejected(Code.MALFORMED, attribute.name, "must hold two times: the incoming lock's, the outgoing's")
    for item in value:
        time_ms(_, attribute, item)
    if value[0] <= value[1]:
        raise _invalid(attribute, "the incoming lock's backstop comes after the outgoing lock's")


@message("hop")
@attrs.frozen
class Hop(Body):
    """An intermediary's acceptance of its hop in one payment, as the coordinator chose
    the path: it is paid `legs[0]` and pays `legs[1]`, whose decision locks' backstops
    are `backstops_ms` (the incoming one later: its time to claim), decided by
    `decide_by_ms`. Carried in the path's `auth`; the ledgers hold each lock to it."""

    payment: str = attrs.field(validator=settlement_id)  # the payment's settlement id, `p-…`
    coordinator: str = attrs.field(validator=ident)
    intermediary: str = attrs.field(validator=ident)
    quote: str = attrs.field(validator=ident)
    legs: tuple[SettlementLeg, ...] = attrs.field(validator=hop_legs)
    backstops_ms: tuple[int, ...] = attrs.field(validator=two_times)
    decide_by_ms: int = attrs.field(validator=time_ms)


@message("hop_request")
@attrs.frozen
class HopRequest(Body):
    """A coordinator asks an intermediary to accept a `hop` (its body, unsigned) under
    one of its quotes (signed, as it answered)."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    quotes: dict = attrs.field(validator=an_object)
    hop: dict = attrs.field(validator=an_object)


@message("hop_refused")
@attrs.frozen
class HopRefused(Body):
    """An intermediary will not carry the hop asked of it, and why."""

    intermediary: str = attrs.field(validator=ident)
    payment: str = attrs.field(validator=settlement_id)
    time_ms: int = attrs.field(validator=time_ms)
    code: str = attrs.field(validator=ident)
    field: str = attrs.field(validator=text(200))
    reason: str = attrs.field(validator=text(1000))


def path_hops(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if not 1 <= len(value) <= PATH_HOPS_MAX or not all(isinstance(item, dict) for item in value):
        raise Rejected(Code.MALFORMED, attribute.name, f"must hold 1 to {PATH_HOPS_MAX} signed hops, each an object")


@message("path")
@attrs.frozen
class PaymentPath(Body):
    """A multi-hop payment as its locks carry it in `auth`: the payer's signed
    `path_payment` and each intermediary's signed `hop`, from the payer's side to the
    payee's. Legs run from the payee's back to the payer's (leg 0 pays the payee)."""

    coordinator: str = attrs.field(validator=ident)
    payment: dict = attrs.field(validator=an_object)
    hops: tuple[dict, ...] = attrs.field(validator=path_hops)


def path_legs(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    _expect(attribute, value, tuple, "a list")
    if len(value) > PATH_HOPS_MAX + 1 or not all(isinstance(leg, SettlementLeg) for leg in value):
        raise Rejected(Code.MALFORMED, attribute.name, f"must hold up to {PATH_HOPS_MAX + 1} legs, each an object")


@message("path_status")
@attrs.frozen
class PathStatus(Body):
    """The coordinator's answer to a `path_payment`: the settlement's phase, and the
    path it took, from the payer's leg to the payee's, each leg paid by `parties[i]` to
    `parties[i + 1]` (none if it was refused before any was chosen)."""

    coordinator: str = attrs.field(validator=ident)
    payment: str = attrs.field(validator=settlement_id)
    settlement_id: str = attrs.field(validator=settlement_id)
    phase: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    reason_code: str = ""
    reason: str = ""
    legs: tuple[SettlementLeg, ...] = attrs.field(default=(), validator=path_legs)
    parties: tuple[str, ...] = attrs.field(default=(), validator=idents(PATH_HOPS_MAX + 2))
    steps: tuple = ()  # as settlement_status's: [phase, time] each


@message("corporate_action")
@attrs.frozen
class CorporateAction(Body):
    """An issuer's mandate to a paying agent (a coordinator): pay a coupon of, or redeem,
    one instrument on a date, from the issuer's accounts. Signed by the issuer."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    issuer: str = attrs.field(validator=ident)
    kind: str = attrs.field(validator=one_of("coupon", "redemption"))
    isin: str = attrs.field(validator=isin)
    securities_ledger: str = attrs.field(validator=ident)
    cash_ledger: str = attrs.field(validator=ident)
    issuer_securities_account: str = attrs.field(validator=ident)
    issuer_cash_account: str = attrs.field(validator=ident)
    currency: str = attrs.field(validator=currency)
    payment_date: str = attrs.field(validator=date)
    deadline_ms: int = attrs.field(validator=time_ms)


@message("entitlement")
@attrs.frozen
class Entitlement(Body):
    """One holder's due under a corporate action, as the paying agent computed it from the
    holdings of record: carried in `auth` by the coupon's settle or the redemption's locks."""

    action: dict = attrs.field(validator=an_object)
    holder: str = attrs.field(validator=ident)
    holder_account: str = attrs.field(validator=ident)
    holder_cash_account: str = attrs.field(validator=ident)
    units: int = attrs.field(validator=amount)
    amount_minor: int = attrs.field(validator=amount)


@message("query_advices")
@attrs.frozen
class QueryAdvices(Body):
    """A party's status advices and confirmations, from a position on; answered only to
    that party (the broker ties a client's id to its login)."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    from_seq: int = attrs.field(validator=count)
    limit: int = attrs.field(validator=count)


@message("advices")
@attrs.frozen
class Advices(Body):
    """The coordinator's ISO 20022 documents for one party, oldest first. Each item:
    seq, instruction_id, settlement_id, status, format and the document itself."""

    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    items: tuple = ()


@message("hold_instruction")
@attrs.frozen
class HoldInstruction(Body):
    """A party holds its own settlement instruction (`hold`: it does not settle until
    released) or releases it; signed by that party. Idempotent by `id`."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    ts_ms: int = attrs.field(validator=time_ms)
    instruction_id: str = attrs.field(validator=ident)
    hold: bool = attrs.field(validator=flag)


@message("query_settlement_advices")
@attrs.frozen
class QuerySettlementAdvices(Body):
    """Every party's advices and confirmations of one matched settlement, for the
    supervisor: signed by `party`, which must hold the observer role."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    settlement_id: str = attrs.field(validator=ident)


@message("settlement_advices")
@attrs.frozen
class SettlementAdvices(Body):
    """The coordinator's ISO 20022 documents of one settlement, every party's, oldest
    first. Each item: party, seq, instruction_id, settlement_id, status, format, document."""

    coordinator: str = attrs.field(validator=ident)
    settlement_id: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    items: tuple = ()


@message("offset_queue")
@attrs.frozen
class OffsetQueue(Body):
    """Ask the settlement queue to look now for waiting trades that fund one another
    (liquidity saving), besides its interval; signed by `party`: the coordinator itself
    (its operator) or a party with the observer role (the supervisor)."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    party: str = attrs.field(validator=ident)
    ts_ms: int = attrs.field(validator=time_ms)


@message("offset_report")
@attrs.frozen
class OffsetReport(Body):
    """What that look released: each set of matched pairs settled together (by pair id),
    what they move gross and the liquidity they saved, per asset."""

    coordinator: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    sets: tuple = ()
    value: dict = attrs.field(factory=dict)
    saved: dict = attrs.field(factory=dict)


@message("query_corporate_action")
@attrs.frozen
class QueryCorporateAction(Body):
    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    action_id: str = attrs.field(validator=ident)


@message("corporate_action_status")
@attrs.frozen
class CorporateActionStatus(Body):
    """The paying agent's account of a corporate action: its state and every holder's
    entitlement (holder, holder_account, holder_cash_account, units, amount_minor, state
    due | paid | unpaid | excluded, reason_code, reason, settlement_id)."""

    coordinator: str = attrs.field(validator=ident)
    action_id: str = attrs.field(validator=ident)
    state: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    reason_code: str = ""
    reason: str = ""
    entitlements: tuple = ()


@message("repo")
@attrs.frozen
class Repo(Body):
    """A repurchase agreement: two settlements both parties signed, the start leg now and
    the reverse leg (its `not_before_ms` the term date) only if the start settled. Sent
    to the coordinator signed by either party."""

    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    start: dict = attrs.field(validator=an_object)
    reverse: dict = attrs.field(validator=an_object)


@message("query_repo")
@attrs.frozen
class QueryRepo(Body):
    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    repo_id: str = attrs.field(validator=ident)


@message("repo_status")
@attrs.frozen
class RepoStatus(Body):
    """The coordinator's account of a repo: its state and the phase of each leg."""

    coordinator: str = attrs.field(validator=ident)
    repo_id: str = attrs.field(validator=ident)
    state: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    start_phase: str = ""
    reverse_phase: str = ""
    reason_code: str = ""
    reason: str = ""


@message("decision")
@attrs.frozen
class SettlementDecision(Body):
    """A coordinator's decision on a cross-ledger settlement, published once it is on
    disk: `preimage` claims every leg (commit) or cancels every leg (abort); `ledgers`
    places each leg, whose lock is `{settlement_id}:{leg}`, placed no later than
    `expiry_ms`. Any watchtower may forward it to the ledgers (docs/PROTOCOL.md §17)."""

    coordinator: str = attrs.field(validator=ident)
    settlement_id: str = attrs.field(validator=settlement_id)
    outcome: str = attrs.field(validator=one_of("commit", "abort"))
    ledgers: tuple[str, ...] = attrs.field(validator=leg_ledgers)
    preimage: bytes = attrs.field(validator=digest32)
    expiry_ms: int = attrs.field(validator=time_ms)
    time_ms: int = attrs.field(validator=time_ms)  # last: the name shadows its validator below it


@message("query_settlement")
@attrs.frozen
class QuerySettlement(Body):
    id: str = attrs.field(validator=ident)
    coordinator: str = attrs.field(validator=ident)
    settlement_id: str = attrs.field(validator=settlement_id)


@message("settlement_status")
@attrs.frozen
class SettlementStatus(Body):
    """The coordinator's account of a settlement: its phase and the time of each step."""

    coordinator: str = attrs.field(validator=ident)
    settlement_id: str = attrs.field(validator=ident)
    phase: str = attrs.field(validator=ident)
    time_ms: int = attrs.field(validator=time_ms)
    reason_code: str = ""
    reason: str = ""
    steps: tuple = ()


# -- wire mapping ---------------------------------------------------------------------


def to_body(msg: Body) -> dict[str, Any]:
    """The wire dictionary of a message, with `v` and `type` first-class fields."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    cls: type = type(msg)
    for name, left_out_at, _, _ in _fields(cls):
        value = getattr(msg, name)
        if value is left_out_at or (left_out_at is not _KEPT and value == left_out_at):
            continue
        body[name] = value if type(value) in _AS_IS else _to_wire(value)
    return body


def _to_wire(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    if isinstance(value, (Leg, SettlementLeg)):
        return {a.name: getattr(value, a.name) for a in attrs.fields(type(value))}
    return value


_AS_IS = frozenset((str, int, bool, type(None), dict))  # what the wire holds as it is
_KEPT = object()  # a field written whatever its value


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool, Callable[[Any], Any] | None], ...]:
    """Each field of a message type, worked out once: its name, the default at which
    it is left out (or _KEPT), whether the wire must hold it, and how its wire value
    becomes the attribute's (None: as it is)."""
    return tuple(
        (
            a.name,
            a.default if a.metadata.get("left_out_at_default") else _KEPT,
            a.default is attrs.NOTHING,
            _reader(a),
        )
        for a in attrs.fields(cls)
    )


@functools.cache
def _names(cls: type) -> frozenset[str]:
    return frozenset(("v", "type", *(a.name for a in attrs.fields(cls))))


def _reader(attribute: attrs.Attribute) -> Callable[[Any], Any] | None:
    name = attribute.name
    if attribute.validator is digest32:
        return lambda value: _hex32(name, value)
    if attribute.validator is optional_digest32:
        return lambda value: None if value is None else _hex32(name, value)
    if attribute.validator in (legs, settlement_legs, hop_legs, path_legs):
        cls = Leg if attribute.validator is legs else SettlementLeg
        names = frozenset(a.name for a in attrs.fields(cls))

        def read_legs(value: Any) -> tuple:
            if not isinstance(value, list):
                raise Rejected(Code.MALFORMED, name, "expected a list of legs")
            return tuple([_leg(cls, names, index, item) for index, item in enumerate(value)])

        return read_legs
    if str(attribute.type).startswith("tuple"):
        return lambda value: tuple(value) if isinstance(value, list) else value
    return None


M = TypeVar("M", bound=Body)


@overload
def from_body(body: Any, *, allowed: tuple[type[M], ...]) -> M: ...
@overload
def from_body(body: Any, *, allowed: None = None) -> Body: ...
def from_body(body: Any, *, allowed: tuple[type[Body], ...] | None = None) -> Body:
    """The message a wire dictionary encodes, refusing anything not exactly right:
    unknown type or version, a missing or extra field, a wrong type or value."""
    if not isinstance(body, dict):
        raise Rejected(Code.MALFORMED, "$", "message must be a JSON object")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python
        raise Rejected(
            Code.UNSUPPORTED_VERSION,
            "v",
            f"version {version!r} is not supported; this ledger speaks {PROTOCOL_VERSION}",
        )
    type_name = body.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None or (allowed is not None and cls not in allowed):
        raise Rejected(Code.UNKNOWN_TYPE, "type", f"unknown message type {type_name!r}")
    if not body.keys() <= _names(cls):
        extra = sorted(body.keys() - _names(cls))
        raise Rejected(Code.MALFORMED, member_path("$", extra[0]), f"field not part of {type_name}")
    values = {}
    for name, _, required, read in _fields(cls):
        if name in body:
            value = body[name]
            values[name] = value if read is None else read(value)
        elif required:
            raise Rejected(Code.MALFORMED, name, f"required field of {type_name} is missing")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # a validator of attrs' own, never ours
        raise Rejected(Code.MALFORMED, "$", str(error)) from None


def _leg(cls: type, names: frozenset[str], index: int, value: Any) -> Any:
    """A leg, its refusals naming the field as the rules do: `legs[1].amount`."""
    if not isinstance(value, dict) or value.keys() != names:
        raise Rejected(Code.MALFORMED, f"legs[{index}]", f"each leg must be an object with exactly {sorted(names)}")
    try:
        return cls(**value)
    except Rejected as error:
        raise Rejected(error.code, f"legs[{index}].{error.field}", error.reason) from None


def readable_id(payload: bytes, keys: tuple[str, ...] = ("id",)) -> str:
    """The id of a message that could not be decoded as a whole, when one can be read
    under one of `keys`: what a refusal answers to. "unknown" otherwise."""
    try:
        value = decode(payload)
    except Rejected:
        return "unknown"
    if isinstance(value, dict):
        for key in keys:
            candidate = value.get(key)
            if isinstance(candidate, str) and IDENT_PATTERN.fullmatch(candidate):
                return candidate
    return "unknown"
