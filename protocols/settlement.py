"""A settlement's life as a state machine, and the timing plan of its locks.

    cross ledger:
    PENDING ─> LOCKING ─> LOCKED ─> CLAIMING ─> SETTLED
                  │          │         ├──────> ONE_LEGGED   leg 1 lost after leg 0 was paid:
                  │          │         │                     only if an outage outlasts Δ
                  └──────────┴─────────┴──────> ROLLING_BACK ─> FAILED       a lock was refused
                                                              └> ROLLED_BACK  no answer in time
    same ledger:
    PENDING ─> SETTLED | FAILED                  one atomic settle instruction

The secret leaves the coordinator only in CLAIMING, entered durably after both locks
are confirmed (LOCKED). Before CLAIMING a settlement can always roll back, since no one
but the coordinator can claim; after it, the coordinator (or a watchtower) must finish.

Timing: leg 0 is claimed first and expires first, at `expiry_ms[0]`; leg 1 expires a
safety margin Δ later. Δ covers the worst time to get a claim applied (the claim
deadline) plus the largest clock skew between two ledgers, so that a secret revealed
on leg 0 at the last moment still completes leg 1 (docs/PROTOCOL.md §17, "Timing and the
safety margin Δ")."""

from __future__ import annotations

import datetime
import enum

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
    Phase.CLAIMING: frozenset({Phase.SETTLED, Phase.ONE_LEGGED, Phase.ROLLING_BACK}),  # back: leg 0 unclaimable
    Phase.ROLLING_BACK: frozenset({Phase.FAILED, Phase.ROLLED_BACK}),
    Phase.SETTLED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ONE_LEGGED: frozenset(),
}

FINAL = frozenset(phase for phase, following in NEXT.items() if not following)


def check_transition(current: Phase, following: Phase) -> None:
    assert following in NEXT[current], f"settlement phase {current.name} -> {following.name} is not a transition"


def utc_date(time_ms: int) -> str:
    """The calendar date (UTC) at a time: dates in settlements and instruments are UTC days."""
    return datetime.datetime.fromtimestamp(time_ms / 1000, datetime.UTC).date().isoformat()


def lock_id(settlement_id: str, leg: int) -> str:
    return f"{settlement_id}:{leg}"


def settle_id(settlement_id: str) -> str:
    return f"{settlement_id}:settle"


@attrs.frozen
class Timing:
    """How long each step may take, in ms. The defaults suit one machine or a LAN:
    a request answered in well under a second, clocks kept within a second by NTP."""

    lock_wait_ms: int = 2_000  # both locks confirmed within this, or roll back
    claim_deadline_ms: int = 4_000  # the longest we allow to get one claim applied
    clock_skew_ms_max: int = 1_000  # the largest disagreement between two ledgers' clocks

    @property
    def margin_ms(self) -> int:
        """Δ: the time leg 1 outlives leg 0."""
        return self.claim_deadline_ms + self.clock_skew_ms_max

    def expiries(self, now_ms: int) -> tuple[int, int]:
        """Leg 0 must outlive the locking phase, one full claim and the skew;
        leg 1 outlives leg 0 by Δ."""
        first = now_ms + self.lock_wait_ms + self.claim_deadline_ms + self.clock_skew_ms_max
        return first, first + self.margin_ms

    def total_ms(self) -> int:
        """From start to the later expiry: what the settlement deadline must leave."""
        _first, second = self.expiries(0)
        return second

    def may_release_secret(self, now_ms: int, first_expiry_ms: int) -> bool:
        """The first claim can still land before leg 0 expires, whatever the skew."""
        return now_ms + self.claim_deadline_ms + self.clock_skew_ms_max <= first_expiry_ms
