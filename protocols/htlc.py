"""The hashed time-lock as a pure state machine.

A lock is HELD until exactly one of: CLAIMED (the secret arrived while now < expiry),
REFUNDED (now >= expiry; by anyone's request or by the ledger itself) or ABORTED (before
expiry, by a party the lock's terms allow). Time is split with no gap and no overlap:
at `expiry_ms` itself a claim is refused and a refund allowed.

Who may abort early, and why that is safe: the beneficiary may always give up its own
claim, which harms nobody else; the parties in `abort_by` were named by the owner when
it placed the lock, so their abort is the owner's own consent. A coordinator named there
holds the secret and aborts only while it has not released it, so no claim can race the
abort on any other ledger. The owner alone may not abort: that would let it take back an
asset after its counterparty had claimed the other leg."""

from __future__ import annotations

import enum
import hashlib

import attrs

from .errors import Code, Rejected


class LockState(enum.Enum):
    HELD = "held"
    CLAIMED = "claimed"
    REFUNDED = "refunded"
    ABORTED = "aborted"


NEXT: dict[LockState, frozenset[LockState]] = {
    LockState.HELD: frozenset({LockState.CLAIMED, LockState.REFUNDED, LockState.ABORTED}),
    LockState.CLAIMED: frozenset(),
    LockState.REFUNDED: frozenset(),
    LockState.ABORTED: frozenset(),
}


@attrs.frozen
class HeldLock:
    """A lock as a ledger stores it."""

    lock_id: str
    owner_account: str
    beneficiary_account: str
    asset: str
    amount: int
    hashlock: bytes
    expiry_ms: int
    abort_by: tuple[str, ...]
    state: LockState = LockState.HELD

    def to(self, state: LockState) -> HeldLock:
        assert state in NEXT[self.state], f"lock {self.lock_id}: {self.state.name} -> {state.name} is not a transition"
        return attrs.evolve(self, state=state)


def hashlock_of(preimage: bytes) -> bytes:
    return hashlib.sha256(preimage).digest()


def _held(lock: HeldLock) -> None:
    if lock.state is not LockState.HELD:
        raise Rejected(Code.LOCK_NOT_HELD, "lock_id", f"lock {lock.lock_id} is {lock.state.value}")


def claim(lock: HeldLock, preimage: bytes, now_ms: int) -> HeldLock:
    """Complete a lock with its secret; the asset goes to the beneficiary."""
    _held(lock)
    if now_ms >= lock.expiry_ms:
        raise Rejected(Code.LOCK_EXPIRED, "lock_id", f"claim at {now_ms} is at or after expiry {lock.expiry_ms}")
    if hashlock_of(preimage) != lock.hashlock:
        raise Rejected(Code.WRONG_PREIMAGE, "preimage", "SHA-256 of the preimage does not match the hashlock")
    return lock.to(LockState.CLAIMED)


def refund(lock: HeldLock, now_ms: int) -> HeldLock:
    """Return an expired lock to its owner."""
    _held(lock)
    if now_ms < lock.expiry_ms:
        raise Rejected(Code.LOCK_NOT_EXPIRED, "lock_id", f"refund at {now_ms} is before expiry {lock.expiry_ms}")
    return lock.to(LockState.REFUNDED)


def abort(lock: HeldLock, party: str, beneficiary_owner: str, now_ms: int) -> HeldLock:
    """End a lock early in the owner's favour, by a party its terms allow."""
    _held(lock)
    if now_ms >= lock.expiry_ms:
        raise Rejected(Code.LOCK_EXPIRED, "lock_id", "lock has expired: it is refunded, not aborted")
    if party != beneficiary_owner and party not in lock.abort_by:
        raise Rejected(Code.NOT_AUTHORISED, "sigs", f"{party!r} is neither the beneficiary nor named in abort_by")
    return lock.to(LockState.ABORTED)
