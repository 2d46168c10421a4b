"""A settlement's life as a state machine, and the timing plan of its locks.

    cross ledger:
    PENDING ─> LOCKING ─> LOCKED ─> CLAIMING ───────────> SETTLED
                  │          │      (commit) ├──────────> ONE_LEGGED   a leg refunded at its backstop
                  │          │               └──────────> ROLLED_BACK  every leg refunded at its backstop
                  └──────────┴────> ROLLING_BACK ───────> FAILED       a lock was refused
                                    (abort)  ├──────────> ROLLED_BACK  no answer in time
                                             └──────────> ONE_LEGGED   a leg found claimed: two decisions
    same ledger:
    PENDING ─> SETTLED | FAILED                  one atomic settle instruction

The decision is the commit point. Each cross-ledger settlement is decided once: entering
CLAIMING is the commit, entering ROLLING_BACK the abort, and either is durable before
anything it allows is revealed: the claim secret only in CLAIMING, the cancellation
preimage only in ROLLING_BACK. No transition leads from one to the other, and the
coordinator's journal refuses to record a second decision. Its locks are decision locks
(protocols.htlc): until their backstop they end only by one of the two preimages, so
no clock can settle one leg and refund the other; only an outage that outlasts the
backstop (hours) can, and then it is reported.

Timing: both locks carry the same `expiry_ms`, the time by which the coordinator
decides (no ledger places a lock after it); leg 0's backstop is `backstop_ms` after the
start and leg 1's a margin Δ later, so that even at the backstop a claim of leg 0 made
at the last moment still completes leg 1 (the classic HTLC rule, kept for the fallback).
Δ covers the worst time to get a claim applied plus the largest clock skew between two
ledgers (docs/PROTOCOL.md §17, "Timing")."""

from __future__ import annotations

import datetime
import enum
import zlib
from collections.abc import Sequence

import attrs


class Phase(enum.Enum):
    PENDING = "pending"
    LOCKING = "locking"
    LOCKED = "locked"
    CLAIMING = "claiming"
    SETTLED = "settled"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ONE_LEGGED = "one_legged"


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.LOCKING, Phase.FAILED, Phase.SETTLED}),  # SETTLED: same ledger
    Phase.LOCKING: frozenset({Phase.LOCKED, Phase.ROLLING_BACK}),
    Phase.LOCKED: frozenset({Phase.CLAIMING, Phase.ROLLING_BACK}),
    Phase.CLAIMING: frozenset({Phase.SETTLED, Phase.ONE_LEGGED, Phase.ROLLED_BACK}),  # the last two: backstop
    Phase.ROLLING_BACK: frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.ONE_LEGGED}),
    Phase.SETTLED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ONE_LEGGED: frozenset(),
}


class Decision(enum.Enum):
    """What a cross-ledger settlement was decided to do, once: the phase entered decides."""

    NONE = ""
    COMMIT = "commit"
    ABORT = "abort"


DECIDED_BY: dict[Phase, Decision] = {Phase.CLAIMING: Decision.COMMIT, Phase.ROLLING_BACK: Decision.ABORT}

FINAL = frozenset(phase for phase, following in NEXT.items() if not following)


def check_transition(current: Phase, following: Phase) -> None:
    assert following in NEXT[current], f"settlement phase {current.name} -> {following.name} is not a transition"


def decided(current: Decision, following: Phase) -> Decision:
    """The decision once `following` is entered; a second, other decision is a bug."""
    decision = DECIDED_BY.get(following, Decision.NONE)
    if decision is Decision.NONE:
        return current
    assert current in (Decision.NONE, decision), f"decided {current.value}, now {decision.value}: decided twice"
    return decision


def utc_date(time_ms: int) -> str:
    """The calendar date (UTC) at a time: dates in settlements and instruments are UTC days."""
    return datetime.datetime.fromtimestamp(time_ms / 1000, datetime.UTC).date().isoformat()


def coordinator_ids(first: str, count: int) -> list[str]:
    """The ids of `count` coordinators that share the settlement-id space: `first`, then
    `first-1`, `first-2`, ..."""
    return [first] + [f"{first}-{index}" for index in range(1, count)]


def route(settlement_id: str, coordinators: Sequence[str]) -> str:
    """The one coordinator of a settlement when several share the work: a stable hash
    of its id (CRC-32) picks it, so the coordinators own disjoint parts of the id space
    and a settlement sent again goes where it went first (docs/SCALING.md)."""
    return coordinators[zlib.crc32(settlement_id.encode()) % len(coordinators)]


def lock_id(settlement_id: str, leg: int) -> str:
    return f"{settlement_id}:{leg}"


def settle_id(settlement_id: str) -> str:
    return f"{settlement_id}:settle"


def _backstop_after_every_claim(instance: Timing, attribute: attrs.Attribute, value: int) -> None:
    """Leg 0's backstop must leave a claim its full time after the last moment to decide."""
    least = instance.decide_ms + instance.margin_ms
    if value < least:
        raise ValueError(f"backstop_ms must be at least lock_wait + 2 × skew + claim_deadline = {least} ms")


@attrs.frozen
class Timing:
    """How long each step may take, in ms. The defaults suit one machine or a LAN:
    a request answered in well under a second, clocks kept within a second by NTP; and
    a backstop of four hours, the legal fallback a settlement's parties then fall back on."""

    lock_wait_ms: int = 2_000  # both locks confirmed within this, or abort
    claim_deadline_ms: int = 4_000  # the longest we allow to get one claim applied
    clock_skew_ms_max: int = 1_000  # the largest disagreement between two ledgers' clocks
    backstop_ms: int = attrs.field(default=4 * 3_600_000, validator=_backstop_after_every_claim)

    @property
    def margin_ms(self) -> int:
        """Δ: the time leg 1 outlives leg 0 (time-locks: their expiries; decision locks: their backstops)."""
        return self.claim_deadline_ms + self.clock_skew_ms_max

    @property
    def decide_ms(self) -> int:
        """From the start to the locks' `expiry_ms`: the lock wait, and the skew so that
        a ledger whose clock runs ahead still places a lock sent within it."""
        return self.lock_wait_ms + self.clock_skew_ms_max

    def expiry(self, now_ms: int) -> int:
        """Both locks' `expiry_ms`: decided by then; no ledger places either later."""
        return now_ms + self.decide_ms

    def backstops(self, now_ms: int, legs: int = 2) -> tuple[int, ...]:
        """Leg 0's backstop, and every other leg's Δ later: leg 0 is claimed first."""
        first = now_ms + self.backstop_ms
        return (first,) + (first + self.margin_ms,) * (legs - 1)

    def total_ms(self) -> int:
        """From start to the decision: what the settlement deadline must leave."""
        return self.decide_ms

    def may_commit(self, now_ms: int, expiry_ms: int, first_backstop_ms: int) -> bool:
        """Commit only before the time promised to decide by, and while a claim of leg 0
        can still land before its backstop, whatever the skew."""
        return now_ms < expiry_ms and now_ms + self.margin_ms <= first_backstop_ms
