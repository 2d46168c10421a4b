"""A repurchase agreement as two linked DvPs, pure: the link between the start and the
reverse leg, and the repo's states.

    PENDING ─> OPEN ─> CLOSED              the start settled, then the reverse at its term
       │         └──> REVERSE_FAILED       the reverse was refused and rolled back: reported
       └──> START_FAILED                   the reverse is cancelled and never sent

The reverse returns exactly what the start delivered, so a coordinator holding both
signed settlements can do no more with the link than the parties signed for: run the
reverse only after the start settled, not before its term."""

from __future__ import annotations

import enum

from .errors import Code, Rejected
from .messages import Settlement, SettlementLeg
from .money import format_amount


class RepoState(enum.Enum):
    PENDING = "pending"  # journaled; the start leg is being settled
    OPEN = "open"  # the start settled; the reverse waits for its term
    CLOSED = "closed"  # both legs settled
    START_FAILED = "start_failed"  # the start did not settle; the reverse is cancelled
    REVERSE_FAILED = "reverse_failed"  # the reverse did not settle; its locks were released


NEXT: dict[RepoState, frozenset[RepoState]] = {
    RepoState.PENDING: frozenset({RepoState.OPEN, RepoState.START_FAILED}),
    RepoState.OPEN: frozenset({RepoState.CLOSED, RepoState.REVERSE_FAILED}),
    RepoState.CLOSED: frozenset(),
    RepoState.START_FAILED: frozenset(),
    RepoState.REVERSE_FAILED: frozenset(),
}

FINAL = frozenset(state for state, following in NEXT.items() if not following)


def check_transition(current: RepoState, following: RepoState) -> None:
    assert following in NEXT[current], f"repo state {current.name} -> {following.name} is not a transition"


def _split(settlement: Settlement) -> tuple[SettlementLeg, SettlementLeg]:
    """(the securities leg, the cash leg) of a DvP."""
    first, second = settlement.legs
    return (first, second) if len(first.asset) == 12 else (second, first)


def check_link(start: Settlement, reverse: Settlement, coordinator: str) -> None:
    """The reverse undoes the start: the same two parties, the same units of the same
    instrument back the other way, at least the cash lent back in the same currency, and
    not before the start's deadline has passed (so the start's outcome is known)."""
    for field, settlement in (("start", start), ("reverse", reverse)):
        if settlement.kind != "dvp":
            raise Rejected(Code.INVALID_FIELD, f"{field}.kind", "each leg of a repo is a DvP")
        if settlement.coordinator != coordinator:
            raise Rejected(Code.WRONG_LEDGER, f"{field}.coordinator", f"this is coordinator {coordinator!r}")
    if start.id == reverse.id:
        raise Rejected(Code.INVALID_FIELD, "reverse.id", "the reverse is another settlement than the start")
    if set(start.parties) != set(reverse.parties):
        raise Rejected(Code.NOT_AUTHORISED, "reverse.parties", f"the reverse is between {sorted(start.parties)}")
    securities, cash = _split(start)
    back, repaid = _split(reverse)
    if (back.ledger, back.asset, back.amount, back.from_account, back.to_account) != (
        securities.ledger,
        securities.asset,
        securities.amount,
        securities.to_account,
        securities.from_account,
    ):
        raise Rejected(
            Code.INVALID_FIELD,
            "reverse.legs",
            f"the reverse returns {format_amount(securities.asset, securities.amount)} "
            f"on {securities.ledger} from {securities.to_account} to {securities.from_account}",
        )
    if (repaid.ledger, repaid.asset, repaid.from_account, repaid.to_account) != (
        cash.ledger,
        cash.asset,
        cash.to_account,
        cash.from_account,
    ):
        raise Rejected(
            Code.INVALID_FIELD,
            "reverse.legs",
            f"the reverse repays {cash.asset} on {cash.ledger} from {cash.to_account} to {cash.from_account}",
        )
    if repaid.amount < cash.amount:
        raise Rejected(
            Code.INVALID_FIELD,
            "reverse.legs",
            f"the reverse repays {format_amount(repaid.asset, repaid.amount)}, less than the "
            f"{format_amount(cash.asset, cash.amount)} lent",
        )
    if reverse.not_before_ms <= start.deadline_ms:
        raise Rejected(
            Code.INVALID_FIELD,
            "reverse.not_before_ms",
            f"the term must come after the start's deadline {start.deadline_ms}",
        )
