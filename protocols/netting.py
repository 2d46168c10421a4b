"""Settlements that settle together, netted: the legs that move the same asset on the
same ledger are replaced by legs in which each account only pays or only is paid, its
net, and which leave every account where they all would.

A linked settlement (protocols.authority, `linked`) moves every leg of its pairs or
none. Moved together, only each account's net position matters: A pays B and B pays C
come to A paying C, and A pays B, B pays C, C pays A come to nothing. So each ledger
locks the netted legs, which each payer can fund out of what it holds now, where the
gross legs one by one could not be: that is what lets a queue release a gridlock
without new liquidity.

The netting is canonical: every party that nets the same legs gets the same legs in
the same order (ledger, then asset, then accounts by name), so a lock names its leg by
index and every ledger, the coordinator and the auditor agree on which it is."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from .messages import SettlementLeg

Position = tuple[str, str, str]  # (ledger, account, asset)


def positions(legs: Iterable[SettlementLeg]) -> dict[Position, int]:
    """What the legs do to each account: positive received, negative paid; none nets to 0."""
    net: dict[Position, int] = defaultdict(int)
    for leg in legs:
        net[(leg.ledger, leg.from_account, leg.asset)] -= leg.amount
        net[(leg.ledger, leg.to_account, leg.asset)] += leg.amount
    return {position: amount for position, amount in net.items() if amount}


def net(legs: Iterable[SettlementLeg]) -> tuple[SettlementLeg, ...]:
    """The netted legs: per ledger and asset, the payers (by account) pay the payees (by
    account) in turn, each leg as much as both still owe and are owed."""
    by_book: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for (ledger, account, asset), amount in positions(legs).items():
        by_book[(ledger, asset)][account] = amount
    netted = []
    for (ledger, asset), book in sorted(by_book.items()):
        payers = sorted((account, -amount) for account, amount in book.items() if amount < 0)
        payees = sorted((account, amount) for account, amount in book.items() if amount > 0)
        i = j = 0
        owed, due = payers[0][1], payees[0][1]
        while True:
            moved = min(owed, due)
            netted.append(SettlementLeg(ledger, payers[i][0], payees[j][0], asset, moved))
            owed, due = owed - moved, due - moved
            if not owed:
                i += 1
                owed = payers[i][1] if i < len(payers) else 0
            if not due:
                j += 1
                due = payees[j][1] if j < len(payees) else 0
            if not owed or not due:
                assert not owed and not due, f"{asset} on {ledger} does not net to zero"
                break
    return tuple(netted)


def outflows(legs: Iterable[SettlementLeg]) -> dict[Position, int]:
    """What each account pays out, net, where it pays: what it must hold for the legs
    to settle together."""
    return {position: -amount for position, amount in positions(legs).items() if amount < 0}


def shortfalls(legs: Iterable[SettlementLeg], held: Mapping[Position, int]) -> dict[Position, int]:
    """How much each paying account lacks, net, for the legs to settle together."""
    return {
        position: amount - held.get(position, 0)
        for position, amount in outflows(legs).items()
        if amount > held.get(position, 0)
    }
