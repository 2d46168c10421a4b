"""A ledger's journal: append-only, hash-chained, signed. Pure functions shared by the
ledger that writes it and by anyone who checks it (a restarting ledger, an observer,
the auditor).

Entry n holds the hash of entry n-1 (`prev_hash`; the first holds GENESIS_HASH). An
entry's hash is the SHA-256 of its signed bytes, and the ledger signs those same bytes,
so changing any byte of any entry breaks the chain at that entry."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Iterable, Iterator

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from .canonical import decode
from .errors import Rejected
from .htlc import HeldLock, LockState
from .messages import Entry, Lock
from .signing import PrivateKey, Signed, from_wire, sign

GENESIS_HASH = "0" * 64


def entry_hash(signed: Signed) -> str:
    return hashlib.sha256(signed.data).hexdigest()


def make_entry(key: PrivateKey, ledger_id: str, seq: int, prev_hash: str, time_ms: int,
               kind: str, instruction: dict | None, effects: dict) -> tuple[Signed, str]:
    entry = Entry(ledger_id, seq, prev_hash, time_ms, kind, instruction, effects)
    signed = sign(entry, (ledger_id, key))
    return signed, entry_hash(signed)


class ChainBroken(Exception):
    """The journal is not what the ledger wrote; `seq` is the first bad entry."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"journal entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


@attrs.frozen
class Link:
    seq: int
    stored_hash: str
    raw: bytes


class ChainChecker:
    """Checks entries one after another: place, ledger, link, hash, signature.
    Following a journal from the middle, pass `prev_hash=None`: the first entry's
    own prev_hash is taken on trust of its signature."""

    def __init__(self, ledger_id: str, public_key: ec.EllipticCurvePublicKey, *, seq: int = 0,
                 prev_hash: str | None = GENESIS_HASH, signatures: bool = True) -> None:
        self.ledger_id = ledger_id
        self.public_key = public_key
        self.seq = seq
        self.prev_hash = prev_hash
        self.signatures = signatures

    def check(self, value: Any, stored_hash: str | None = None) -> tuple[Signed, str]:
        seq = self.seq
        try:
            signed = from_wire(value, allowed=(Entry,))
        except Rejected as error:
            raise ChainBroken(seq, f"does not decode: {error}") from None
        entry: Entry = signed.msg
        if entry.seq != seq:
            raise ChainBroken(seq, f"sequence {entry.seq} where {seq} was expected")
        if entry.ledger != self.ledger_id:
            raise ChainBroken(seq, f"written by ledger {entry.ledger!r}, not {self.ledger_id!r}")
        if self.prev_hash is not None and entry.prev_hash != self.prev_hash:
            raise ChainBroken(seq, "prev_hash does not match the hash of the entry before")
        actual = entry_hash(signed)
        if stored_hash is not None and actual != stored_hash:
            raise ChainBroken(seq, "content does not match its stored hash")
        if self.signatures:
            check_signature(signed, seq, self.ledger_id, self.public_key)
        self.seq, self.prev_hash = seq + 1, actual
        return signed, actual


def verify_chain(links: Iterable[Link], ledger_id: str, public_key: ec.EllipticCurvePublicKey,
                 *, signatures: str = "all") -> Iterator[tuple[Signed, str]]:
    """Yield each stored entry with its hash after checking it, raising ChainBroken at
    the first bad one. `signatures` is "all" or "last": every hash link is always
    checked; checking the last entry's signature alone already proves every earlier
    entry unchanged, as each entry's hash is in the next."""
    assert signatures in ("all", "last")
    checker = ChainChecker(ledger_id, public_key, signatures=signatures == "all")
    last = None
    for link in links:
        if link.seq != checker.seq:
            raise ChainBroken(checker.seq, f"is missing: the next stored entry is {link.seq}")
        try:
            value = decode(link.raw, bytes_max=len(link.raw))
        except Rejected as error:
            raise ChainBroken(link.seq, f"does not decode: {error}") from None
        signed, actual = checker.check(value, link.stored_hash)
        last = (signed, link.seq)
        yield signed, actual
    if last is not None and signatures == "last":
        check_signature(last[0], last[1], ledger_id, public_key)


def check_signature(signed: Signed, seq: int, ledger_id: str, public_key: ec.EllipticCurvePublicKey) -> None:
    if not signed.signed_by(ledger_id, public_key):
        raise ChainBroken(seq, "ledger signature does not verify")


@attrs.define
class Replay:
    """A ledger's state recomputed from its journal alone: accounts, assets with their
    supply, balances, and every lock with its terms and state."""

    balances: dict[tuple[str, str], list[int]] = attrs.field(factory=lambda: defaultdict(lambda: [0, 0]))
    supply: dict[str, list[int]] = attrs.field(factory=lambda: defaultdict(lambda: [0, 0]))
    assets: dict[str, tuple] = attrs.field(factory=dict)   # code -> (kind, issuer, minor_units, reference)
    locks: dict[str, HeldLock] = attrs.field(factory=dict)
    accounts: dict[str, str] = attrs.field(factory=dict)
    keys: dict[str, str] = attrs.field(factory=dict)       # party -> its key on this ledger, once rotated
    ids: set[str] | None = attrs.field(factory=set)        # instruction ids applied; None: not kept (a live follower)

    def apply(self, entry: Entry) -> None:
        """Raises ValueError for an entry that cannot follow the ones before."""
        effects: dict[str, Any] = entry.effects
        if self.ids is not None and entry.instruction is not None:
            instruction_id = entry.instruction.get("id")
            if instruction_id in self.ids:
                raise ValueError(f"instruction {instruction_id} is applied a second time")
            self.ids.add(instruction_id)
        for account, owner in effects.get("accounts", ()):
            self.accounts[account] = owner
        for party, key in effects.get("keys", ()):
            self.keys[party] = key
        for code, kind, issuer, minor_units, reference in effects.get("assets", ()):
            self.assets[code] = (kind, issuer, minor_units, reference)
            self.supply.setdefault(code, [0, 0])
        for account, asset, available_delta, locked_delta in effects.get("balances", ()):
            balance = self.balances[(account, asset)]
            balance[0] += available_delta
            balance[1] += locked_delta
        for asset, issued_delta, redeemed_delta in effects.get("supply", ()):
            self.supply[asset][0] += issued_delta
            self.supply[asset][1] += redeemed_delta
        if entry.kind == "lock" and entry.instruction is not None:
            lock: Lock = from_wire(entry.instruction, allowed=(Lock,)).msg
            self.locks[lock.id] = HeldLock(lock.id, lock.owner_account, lock.beneficiary_account, lock.asset,
                                           lock.amount, lock.hashlock, lock.expiry_ms, lock.abort_by)
        for lock_id, state in effects.get("locks", ()):
            if state != LockState.HELD.value:
                self.locks[lock_id] = self.locks[lock_id].to(LockState(state))

    def conservation_problems(self) -> list[str]:
        totals: dict[str, int] = defaultdict(int)
        problems = []
        for (account, asset), (available, locked) in self.balances.items():
            if available < 0 or locked < 0:
                problems.append(f"{account}/{asset} is negative: {available} available, {locked} locked")
            totals[asset] += available + locked
        for asset, (issued, redeemed) in self.supply.items():
            if totals[asset] != issued - redeemed:
                problems.append(f"{asset}: balances sum to {totals[asset]}, issued minus redeemed is {issued - redeemed}")
        return problems


@attrs.frozen
class Tables:
    """A ledger's state tables as stored, to hold against a replay of its journal."""

    balances: dict[tuple[str, str], tuple[int, int]]
    accounts: dict[str, str]
    assets: dict[str, tuple[tuple, list[int]]]   # code -> ((kind, issuer, minor_units, reference), [issued, redeemed])
    locks: dict[str, HeldLock]
    keys: dict[str, str]
    instruction_ids: set[str]                    # every instruction answered, applied or refused


def differences(replay: Replay, tables: Tables) -> list[str]:
    """Every row of the state tables against what the journal says it must be: what a
    ledger checks before it serves, and `lockstep audit` of a database file."""
    problems = []
    for key in tables.balances.keys() | replay.balances.keys():
        expected = tuple(replay.balances.get(key, (0, 0)))
        if tables.balances.get(key, (0, 0)) != expected:
            problems.append(f"balance {key[0]}/{key[1]} is {tables.balances.get(key)}, journal says {expected}")
    for account in tables.accounts.keys() | replay.accounts.keys():
        if tables.accounts.get(account) != replay.accounts.get(account):
            problems.append(f"account {account} is owned by {tables.accounts.get(account)}, "
                            f"journal says {replay.accounts.get(account)}")
    for code in tables.assets.keys() | replay.assets.keys():
        if tables.assets.get(code) != ((replay.assets[code], replay.supply.get(code)) if code in replay.assets else None):
            problems.append(f"asset {code} differs from the journal")
    if replay.ids is not None:
        unanswered = replay.ids - tables.instruction_ids
        if unanswered:  # its idempotency row gone, the same bytes would be applied again
            problems.append(f"instruction {min(unanswered)} is in the journal but not among the instructions answered")
    for party in tables.keys.keys() | replay.keys.keys():
        if tables.keys.get(party) != replay.keys.get(party):
            problems.append(f"the key of {party} is {tables.keys.get(party)}, journal says {replay.keys.get(party)}")
    for lock_id in tables.locks.keys() | replay.locks.keys():
        found, expected = tables.locks.get(lock_id), replay.locks.get(lock_id)
        if found is None or expected is None:
            problems.append(f"lock {lock_id} is {'missing' if found is None else 'not in the journal'}")
        elif found != expected:
            fields = [a.name for a in attrs.fields(HeldLock) if getattr(found, a.name) != getattr(expected, a.name)]
            problems += [f"lock {lock_id} {name} is {_short(getattr(found, name))}, "
                         f"journal says {_short(getattr(expected, name))}" for name in fields]
    return problems


def _short(value: Any) -> str:
    return value.value if isinstance(value, LockState) else value.hex() if isinstance(value, bytes) else repr(value)
