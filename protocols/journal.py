"""A ledger's journal: append-only, hash-chained, signed. Pure functions shared by the
ledger that writes it and by anyone who checks it (a restarting ledger, an observer,
the auditor).

Entry n holds the hash of entry n-1 (`prev_hash`; the first holds GENESIS_HASH). An
entry's hash is the SHA-256 of its signed bytes, and the ledger signs those same bytes,
so changing any byte of any entry breaks the chain at that entry."""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from .canonical import decode, encode
from .errors import Rejected
from .htlc import HeldLock, LockState, placed
from .messages import Entry, Lock
from .money import format_amount, format_balance
from .signing import PrivateKey, Signed, from_wire, sign, verify

GENESIS_HASH = "0" * 64


def entry_hash(signed: Signed) -> str:
    return hashlib.sha256(signed.data).hexdigest()


def make_entry(
    key: PrivateKey,
    ledger_id: str,
    seq: int,
    prev_hash: str,
    time_ms: int,
    kind: str,
    instruction: dict | None,
    effects: dict,
) -> tuple[Signed, str]:
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

    def __init__(
        self,
        ledger_id: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        seq: int = 0,
        prev_hash: str | None = GENESIS_HASH,
        signatures: bool = True,
    ) -> None:
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


def verify_chain(
    links: Iterable[Link],
    ledger_id: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    signatures: str = "all",
    seq: int = 0,
    prev_hash: str | None = GENESIS_HASH,
) -> Iterator[tuple[Signed, str]]:
    """Yield each stored entry with its hash after checking it, raising ChainBroken at
    the first bad one. `signatures` is "all" or "last": every hash link is always
    checked; checking the last entry's signature alone already proves every earlier
    entry unchanged, as each entry's hash is in the next. `seq` and `prev_hash` start
    the check mid-journal, as ChainChecker's do (a restart from its checkpoint)."""
    assert signatures in ("all", "last")
    checker = ChainChecker(ledger_id, public_key, seq=seq, prev_hash=prev_hash, signatures=signatures == "all")
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
    supply, balances, and every lock with its terms and state.

    Started at a checkpoint (`earlier_locks={}`) it holds what the entries after it did:
    balance and supply changes, the accounts, assets and locks they made, and in
    `earlier_locks` the state each lock placed before the checkpoint went to."""

    balances: dict[tuple[str, str], list[int]] = attrs.field(factory=lambda: defaultdict(lambda: [0, 0]))
    supply: dict[str, list[int]] = attrs.field(factory=lambda: defaultdict(lambda: [0, 0]))
    assets: dict[str, tuple] = attrs.field(factory=dict)  # code -> (kind, issuer, minor_units, reference)
    locks: dict[str, HeldLock] = attrs.field(factory=dict)
    accounts: dict[str, str] = attrs.field(factory=dict)
    keys: dict[str, str] = attrs.field(factory=dict)  # party -> its key on this ledger, once rotated
    applied: dict[str, int] | None = attrs.field(factory=dict)  # instruction id -> the entry that applied it;
    # None: not kept (a live follower)
    earlier_locks: dict[str, LockState] | None = None  # None: replayed from entry 0, every lock placed in it
    fences: dict[str, int] = attrs.field(factory=dict)  # coordinator -> the highest epoch its entries carry

    def apply(self, entry: Entry) -> None:
        """Raises ValueError for an entry that cannot follow the ones before."""
        effects: dict[str, Any] = entry.effects
        if self.applied is not None and entry.instruction is not None:
            instruction_id = entry.instruction["id"]  # every instruction has one
            if instruction_id in self.applied:
                raise ValueError(f"instruction {instruction_id} is applied a second time")
            self.applied[instruction_id] = entry.seq
        if entry.instruction is not None and entry.instruction.get("epoch"):
            self._fence(entry)
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
            self.locks[lock.id] = placed(lock)
        for lock_id, state in effects.get("locks", ()):
            if state == LockState.HELD.value:
                continue
            if lock_id in self.locks or self.earlier_locks is None:
                self.locks[lock_id] = self.locks[lock_id].to(LockState(state))
            elif lock_id in self.earlier_locks:
                raise ValueError(f"lock {lock_id} leaves the held state a second time")
            else:
                self.earlier_locks[lock_id] = LockState(state)

    def _fence(self, entry: Entry) -> None:
        """A ledger fences each coordinator: the epochs of its entries never go down."""
        assert entry.instruction is not None
        coordinator, epoch = min(entry.instruction["sigs"]), entry.instruction["epoch"]
        if epoch < self.fences.get(coordinator, 0):
            raise ValueError(
                f"{coordinator} acts at epoch {epoch} after epoch {self.fences[coordinator]}: its fence went down"
            )
        self.fences[coordinator] = epoch

    def conservation_problems(self) -> list[str]:
        totals: dict[str, int] = defaultdict(int)
        problems = []
        for (account, asset), (available, locked) in self.balances.items():
            if available < 0 or locked < 0:
                problems.append(f"{account}/{asset} is negative: {format_balance(asset, available, locked)}")
            totals[asset] += available + locked
        for asset, (issued, redeemed) in self.supply.items():
            if totals[asset] != issued - redeemed:
                problems.append(
                    f"{asset}: balances sum to {format_amount(asset, totals[asset])}, "
                    f"issued minus redeemed is {format_amount(asset, issued - redeemed)}"
                )
        return problems


@attrs.frozen
class Tables:
    """A ledger's state tables as stored, to hold against a replay of its journal."""

    balances: dict[tuple[str, str], tuple[int, int]]
    accounts: dict[str, str]
    assets: dict[str, tuple[tuple, list[int]]]  # code -> ((kind, issuer, minor_units, reference), [issued, redeemed])
    locks: dict[str, HeldLock]
    keys: dict[str, str]
    instruction_ids: set[str]  # every instruction answered, applied or refused
    applied: dict[str, int] = attrs.field(factory=dict)  # the ledger's own reading: id -> the entry that applied it

    def conservation_problems(self) -> list[str]:
        """A replay's invariants, held on the rows as stored: no negative balance, and
        every asset's balances summing to issued minus redeemed."""
        replay = Replay(
            balances={key: list(value) for key, value in self.balances.items()},
            supply={code: list(supply) for code, (_, supply) in self.assets.items()},
        )
        return replay.conservation_problems()


def differences(replay: Replay, tables: Tables) -> list[str]:
    """Every row of the state tables against what the journal says it must be: what a
    ledger checks before it serves, and `lockstep audit` of a database file."""
    problems = []
    for key in tables.balances.keys() | replay.balances.keys():
        expected = tuple(replay.balances.get(key, (0, 0)))
        if tables.balances.get(key, (0, 0)) != expected:
            found = tables.balances.get(key)
            shown = format_balance(key[1], *found) if found is not None else "absent"
            problems.append(f"balance {key[0]}/{key[1]} is {shown}, journal says {format_balance(key[1], *expected)}")
    for account in tables.accounts.keys() | replay.accounts.keys():
        problems += _account_problems(account, tables.accounts.get(account), replay.accounts.get(account))
    for code in tables.assets.keys() | replay.assets.keys():
        made = (replay.assets[code], replay.supply.get(code)) if code in replay.assets else None
        problems += _asset_problems(code, tables.assets.get(code), made)
    if replay.applied is not None:
        problems += _unanswered(replay.applied.keys(), tables)
    problems += _key_problems(tables.keys, replay.keys)
    for lock_id in tables.locks.keys() | replay.locks.keys():
        problems += _lock_problems(lock_id, tables.locks.get(lock_id), replay.locks.get(lock_id))
    return problems


def _account_problems(account: str, found: str | None, expected: str | None) -> list[str]:
    return [] if found == expected else [f"account {account} is owned by {found}, journal says {expected}"]


def _asset_problems(code: str, found: tuple | None, expected: tuple | None) -> list[str]:
    return [] if found == expected else [f"asset {code} differs from the journal"]


def _unanswered(ids: AbstractSet[str], tables: Tables) -> list[str]:
    """Its idempotency row gone, the same bytes would be applied again."""
    unanswered = ids - tables.instruction_ids
    if not unanswered:
        return []
    return [f"instruction {min(unanswered)} is in the journal but not among the instructions answered"]


def applied_problems(found: Mapping[str, int | None], expected: dict[str, int]) -> list[str]:
    """Idempotency rows marked applied (`found`, id -> entry) against the journal: a row
    marked refused, or applied by another entry, would leave the state digest, and so
    a later start, blind to its deletion."""
    return [
        f"instruction {instruction_id} is answered as applied by entry {found.get(instruction_id)}, "
        f"journal says {expected.get(instruction_id)}"
        for instruction_id in sorted(found.keys() | expected.keys())
        if found.get(instruction_id) != expected.get(instruction_id)
    ]


def _key_problems(found: dict[str, str], expected: dict[str, str]) -> list[str]:
    return [
        f"the key of {party} is {found.get(party)}, journal says {expected.get(party)}"
        for party in found.keys() | expected.keys()
        if found.get(party) != expected.get(party)
    ]


def _lock_problems(lock_id: str, found: HeldLock | None, expected: HeldLock | None) -> list[str]:
    if found is None or expected is None:
        return [f"lock {lock_id} is {'missing' if found is None else 'not in the journal'}"]
    fields = [a.name for a in attrs.fields(HeldLock) if getattr(found, a.name) != getattr(expected, a.name)]
    return [f"lock {lock_id} {name} is {_short(found, name)}, journal says {_short(expected, name)}" for name in fields]


def _short(lock: HeldLock, name: str) -> str:
    value = getattr(lock, name)
    if name == "amount":
        return format_amount(lock.asset, value)
    return value.value if isinstance(value, LockState) else value.hex() if isinstance(value, bytes) else repr(value)


# -- checkpoints: the start-up check without re-reading the whole journal -------------------------

CHECKPOINT_DOMAIN = b"lockstep/checkpoint/1\x00"  # not DOMAIN: a checkpoint's signature is no message's
ROW_HASH_BYTES = 512
_ROW_HASH_MODULUS = 1 << (8 * ROW_HASH_BYTES)
ROW_HASHES_KEPT = 4096  # about 2.5 MB


def _row_hash(row: list[Any]) -> int:
    return _hash_of(encode(row))


@functools.lru_cache(maxsize=ROW_HASHES_KEPT)
def _hash_of(row_bytes: bytes) -> int:
    """A row's hash, kept for the rows written last: most writes replace a row that was
    itself written a moment ago (a balance locked, then moved), so its old hash is here."""
    return int.from_bytes(hashlib.shake_256(row_bytes).digest(ROW_HASH_BYTES), "big")


@attrs.define
class StateDigest:
    """An order-independent hash of the state rows: the sum of each row's hash (AdHash),
    so that a write updates it in O(1) and a start digests the tables in one pass. Each
    row hash is 4096 bits: a sum mod 2**256 falls to Wagner's generalised birthday attack
    (some 2**15 rows made up to sum to any target, in about 2**31 hashes)."""

    value: int = 0

    def replace(self, old: list[Any] | None, new: list[Any] | None) -> None:
        """One row changed from `old` to `new` (None: no row)."""
        if old is not None:
            self.value -= _row_hash(old)
        if new is not None:
            self.value += _row_hash(new)
        self.value %= _ROW_HASH_MODULUS

    def hexdigest(self) -> str:
        return hashlib.sha256(self.value.to_bytes(ROW_HASH_BYTES, "big")).hexdigest()


def balance_row(account: str, asset: str, available: int, locked: int) -> list[Any] | None:
    """None for (0, 0): no balance row and a zero one are the same state."""
    return None if available == locked == 0 else ["balance", account, asset, available, locked]


def account_row(account: str, owner: str) -> list[Any]:
    return ["account", account, owner]


def asset_row(code: str, terms: tuple, supply: list[int] | tuple[int, int]) -> list[Any]:
    kind, issuer, minor_units, reference = terms
    issued, redeemed = supply
    return ["asset", code, kind, issuer, minor_units, reference, issued, redeemed]


def lock_row(lock: HeldLock) -> list[Any]:
    """A decision lock's row ends with its cancel hashlock and backstop; a time-lock's
    has neither, so the digests checkpoints signed before decision locks existed hold."""
    row = [
        "lock",
        lock.lock_id,
        lock.owner_account,
        lock.beneficiary_account,
        lock.asset,
        lock.amount,
        lock.hashlock.hex(),
        lock.expiry_ms,
        list(lock.abort_by),
        lock.state.value,
    ]
    if lock.cancel_hashlock is not None:
        row += [lock.cancel_hashlock.hex(), lock.backstop_ms]
    return row


def instruction_row(instruction_id: str, seq: int) -> list[Any]:
    """The idempotency row of an applied instruction (a refusal's is in no digest: it is
    never journaled, so no start could account for it)."""
    return ["instruction", instruction_id, seq]


def state_digest(tables: Tables) -> StateDigest:
    """The digest of every balance, account, asset and lock row and every applied
    instruction's idempotency row (not the keys: a checkpoint holds them)."""
    digest = StateDigest()
    for (account, asset), (available, locked) in tables.balances.items():
        digest.replace(None, balance_row(account, asset, available, locked))
    for account, owner in tables.accounts.items():
        digest.replace(None, account_row(account, owner))
    for code, (terms, supply) in tables.assets.items():
        digest.replace(None, asset_row(code, terms, supply))
    for lock in tables.locks.values():
        digest.replace(None, lock_row(lock))
    for instruction_id, seq in tables.applied.items():
        digest.replace(None, instruction_row(instruction_id, seq))
    return digest


@attrs.frozen
class Checkpoint:
    """A ledger's signed word that after entry `seq`, whose hash is `entry_hash`, its state
    tables digested to `state_digest` and the rotated keys were `keys`: a start checks the
    journal from there on, not from entry 0."""

    seq: int
    entry_hash: str
    state_digest: str
    keys: dict[str, str]
    signature: bytes = b""

    def signed_bytes(self, ledger_id: str) -> bytes:
        return CHECKPOINT_DOMAIN + encode(
            {
                "v": 1,
                "type": "checkpoint",
                "ledger": ledger_id,
                "seq": self.seq,
                "entry_hash": self.entry_hash,
                "state_digest": self.state_digest,
                "keys": self.keys,
            }
        )

    def signed(self, ledger_id: str, key: PrivateKey) -> Checkpoint:
        return attrs.evolve(self, signature=key.sign(self.signed_bytes(ledger_id)))

    def signed_by(self, ledger_id: str, public_key: ec.EllipticCurvePublicKey) -> bool:
        return verify(public_key, self.signature, self.signed_bytes(ledger_id))


def differences_since(checkpoint: Checkpoint, since: Replay, tables: Tables, digest: StateDigest) -> list[str]:
    """The state tables against a checkpoint and a replay of the entries after it
    (`since`, started with `earlier_locks={}`), in O(rows they touched): what those
    entries made, row for row; the keys against the checkpoint's and the rotations
    since; every other row through the digest, by rewinding the tables to the
    checkpoint. `digest` is the tables' own (`state_digest(tables)`)."""
    assert since.earlier_locks is not None and since.applied is not None, "a replay from entry 0, not from a checkpoint"
    problems = []
    for account, owner in since.accounts.items():
        problems += _account_problems(account, tables.accounts.get(account), owner)
    for code, terms in since.assets.items():
        problems += _asset_problems(code, tables.assets.get(code), (terms, since.supply[code]))
    for lock_id, lock in since.locks.items():
        problems += _lock_problems(lock_id, tables.locks.get(lock_id), lock)
    for lock_id, state in since.earlier_locks.items():
        found = tables.locks.get(lock_id)
        problems += _lock_problems(lock_id, found, None if found is None else attrs.evolve(found, state=state))
    problems += _unanswered(since.applied.keys(), tables) + applied_problems(
        {instruction_id: tables.applied.get(instruction_id) for instruction_id in since.applied}, since.applied
    )
    problems += _key_problems(tables.keys, {**checkpoint.keys, **since.keys})
    if rewound(since, tables, digest).hexdigest() != checkpoint.state_digest:
        problems.append(f"the state tables, rewound to entry {checkpoint.seq}, do not match its checkpoint")
    return problems


def rewound(since: Replay, tables: Tables, digest: StateDigest) -> StateDigest:
    """The digest the tables had at the checkpoint, if every row the entries since did
    not touch is unchanged: each touched row swapped for what it was then (a balance
    or supply less what moved since; no row for what was made since, instructions
    applied included; a lock that changed state since was held)."""
    assert since.earlier_locks is not None and since.applied is not None, "a replay since a checkpoint keeps both"
    then = StateDigest(digest.value)
    for (account, asset), (available_delta, locked_delta) in since.balances.items():
        available, locked = tables.balances.get((account, asset), (0, 0))
        then.replace(
            balance_row(account, asset, available, locked),
            balance_row(account, asset, available - available_delta, locked - locked_delta),
        )
    for account in since.accounts.keys() & tables.accounts.keys():
        then.replace(account_row(account, tables.accounts[account]), None)
    for code in since.supply.keys() & tables.assets.keys():
        terms, (issued, redeemed) = tables.assets[code]
        issued_delta, redeemed_delta = since.supply[code]
        made = code in since.assets
        before = None if made else asset_row(code, terms, (issued - issued_delta, redeemed - redeemed_delta))
        then.replace(asset_row(code, terms, (issued, redeemed)), before)
    for lock_id in since.locks.keys() & tables.locks.keys():
        then.replace(lock_row(tables.locks[lock_id]), None)
    for lock_id in since.earlier_locks.keys() & tables.locks.keys():
        lock = tables.locks[lock_id]
        then.replace(lock_row(lock), lock_row(attrs.evolve(lock, state=LockState.HELD)))
    for instruction_id in since.applied.keys() & tables.applied.keys():
        then.replace(instruction_row(instruction_id, tables.applied[instruction_id]), None)
    return then
