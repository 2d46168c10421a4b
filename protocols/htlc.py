"""The hashed time-lock as a pure state machine.

A lock is HELD until exactly one of: CLAIMED (the secret arrived before the lock's
refund time), CANCELLED (the cancellation preimage arrived before it), REFUNDED (at or
after it; by anyone's request or by the ledger itself) or ABORTED (a lock without a
cancellation hashlock only: before expiry, by a party its terms allow). Time is split
with no gap and no overlap: at the refund time itself a claim is refused and a refund
allowed.

Two kinds of lock. A *time-lock* (no `cancel_hashlock`) is the classic HTLC: it refunds
at `expiry_ms`, so whether a settlement completes on both legs depends on a claim
reaching the second ledger before that expiry. A *decision lock* carries a second
hashlock, whose preimage a coordinator reveals only once it has durably decided to
abort, and a backstop: until `backstop_ms` it leaves only by claim (the commit preimage)
or by cancel (the abort preimage), so no clock decides between the two; `expiry_ms` is
then only the time by which the coordinator promised to decide (no lock is placed after
it), and the backstop is the last-resort refund, hours later.

Who may abort a time-lock early, and why that is safe: the beneficiary may always give
up its own claim, which harms nobody else; the parties in `abort_by` were named by the
owner when it placed the lock, so their abort is the owner's own consent. The owner
alone may not abort: that would let it take back an asset after its counterparty had
claimed the other leg. A decision lock is never aborted: one-sided release is what it
exists to rule out."""

from __future__ import annotations

import enum
import hashlib

import attrs

from .errors import Code, Rejected
from .messages import Lock


class LockState(enum.Enum):
    HELD = "held"
    CLAIMED = "claimed"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    ABORTED = "aborted"


NEXT: dict[LockState, frozenset[LockState]] = {
    LockState.HELD: frozenset({LockState.CLAIMED, LockState.CANCELLED, LockState.REFUNDED, LockState.ABORTED}),
    LockState.CLAIMED: frozenset(),
    LockState.CANCELLED: frozenset(),
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
    cancel_hashlock: bytes | None = None  # a decision lock's; None: a time-lock
    backstop_ms: int | None = None  # a decision lock's refund time

    def __attrs_post_init__(self) -> None:
        assert (self.cancel_hashlock is None) == (self.backstop_ms is None), (
            f"lock {self.lock_id}: half a decision lock"
        )

    @property
    def decides(self) -> bool:
        """A decision lock: ended early only by its commit or abort preimage."""
        return self.cancel_hashlock is not None

    @property
    def refund_at_ms(self) -> int:
        """When the ledger refunds it by itself: its backstop, or a time-lock's expiry."""
        return self.expiry_ms if self.backstop_ms is None else self.backstop_ms

    def to(self, state: LockState) -> HeldLock:
        assert state in NEXT[self.state], f"lock {self.lock_id}: {self.state.name} -> {state.name} is not a transition"
        return attrs.evolve(self, state=state)


def placed(lock: Lock) -> HeldLock:
    """The lock a `lock` instruction places: what the ledger stores and a replay rebuilds."""
    return HeldLock(
        lock.id,
        lock.owner_account,
        lock.beneficiary_account,
        lock.asset,
        lock.amount,
        lock.hashlock,
        lock.expiry_ms,
        lock.abort_by,
        cancel_hashlock=lock.cancel_hashlock,
        backstop_ms=lock.backstop_ms,
    )


def hashlock_of(preimage: bytes) -> bytes:
    return hashlib.sha256(preimage).digest()


def _held(lock: HeldLock) -> None:
    if lock.state is not LockState.HELD:
        raise Rejected(Code.LOCK_NOT_HELD, "lock_id", f"lock {lock.lock_id} is {lock.state.value}")


def _before_refund(lock: HeldLock, action: str, now_ms: int) -> None:
    if now_ms >= lock.refund_at_ms:
        when = "backstop" if lock.decides else "expiry"
        raise Rejected(Code.LOCK_EXPIRED, "lock_id", f"{action} at {now_ms} is at or after {when} {lock.refund_at_ms}")


def claim(lock: HeldLock, preimage: bytes, now_ms: int) -> HeldLock:
    """Complete a lock with its secret; the asset goes to the beneficiary."""
    _held(lock)
    _before_refund(lock, "claim", now_ms)
    if hashlock_of(preimage) != lock.hashlock:
        raise Rejected(Code.WRONG_PREIMAGE, "preimage", "SHA-256 of the preimage does not match the hashlock")
    return lock.to(LockState.CLAIMED)


def cancel(lock: HeldLock, preimage: bytes, now_ms: int) -> HeldLock:
    """End a decision lock with its abort preimage; the asset returns to its owner."""
    _held(lock)
    if not lock.decides:
        raise Rejected(
            Code.NOT_AUTHORISED, "lock_id", f"lock {lock.lock_id} has no cancel_hashlock: nothing cancels it"
        )
    _before_refund(lock, "cancel", now_ms)
    if hashlock_of(preimage) != lock.cancel_hashlock:
        raise Rejected(Code.WRONG_PREIMAGE, "preimage", "SHA-256 of the preimage does not match the cancel_hashlock")
    return lock.to(LockState.CANCELLED)


def refund(lock: HeldLock, now_ms: int) -> HeldLock:
    """Return a lock to its owner at or after its refund time."""
    _held(lock)
    if now_ms < lock.refund_at_ms:
        when = "backstop" if lock.decides else "expiry"
        raise Rejected(Code.LOCK_NOT_EXPIRED, "lock_id", f"refund at {now_ms} is before {when} {lock.refund_at_ms}")
    return lock.to(LockState.REFUNDED)


def abort(lock: HeldLock, party: str, beneficiary_owner: str, now_ms: int) -> HeldLock:
    """End a time-lock early in the owner's favour, by a party its terms allow."""
    _held(lock)
    if lock.decides:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "lock_id",
            f"lock {lock.lock_id} leaves before its backstop only by claim or by cancel: none may abort it",
        )
    if now_ms >= lock.expiry_ms:
        raise Rejected(Code.LOCK_EXPIRED, "lock_id", "lock has expired: it is refunded, not aborted")
    if party != beneficiary_owner and party not in lock.abort_by:
        raise Rejected(Code.NOT_AUTHORISED, "sigs", f"{party!r} is neither the beneficiary nor named in abort_by")
    return lock.to(LockState.ABORTED)
