"""Liquidity saving: the waiting settlements that fund one another, found.

A queue can hold trades none of which settles alone, though together they would: A
pays B, B pays C, C pays A, and none holds what it pays. Settled together, as one
linked settlement (protocols.netting), each pays only its net. `search` picks, out of
the waiting trades, the most (then the most cash) whose net effect each payer can
fund from what it holds, and splits them into independent sets: trades that share no
account, each set fundable on its own, so each settles as its own linked settlement.

Up to EXACT_MAX trades the search is exact: a branch and bound over every subset.
Beyond, it is the greedy deselection RTGS systems run (Bech and Soramäki's gridlock
resolution): take every trade, and while an account is short, drop from what it pays
the least urgent, newest trade; then add back, most urgent first, what now fits, and
search the few left out exactly beside what was kept. Pure: the desk reads the
balances and settles the sets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

from protocols import netting
from protocols.identifiers import CURRENCIES
from protocols.messages import LEGS_MAX, LINKED_PAIRS_MAX, SettlementLeg
from protocols.netting import Position

EXACT_MAX = 12  # trades searched exactly; above, greedily
CUT_WINDOW = 10  # the most urgent trades of a set too large for one linked settlement, searched for the next cut


@attrs.frozen
class Candidate:
    """A waiting trade: its legs, and how urgent it is (lower priority first, then older)."""

    id: str
    legs: tuple[SettlementLeg, ...]
    priority: int = 4
    since_ms: int = 0

    @property
    def cash(self) -> int:
        """Its cash, in minor units, whatever the currency: what breaks a tie in count."""
        return sum(leg.amount for leg in self.legs if leg.asset in CURRENCIES)

    @property
    def urgency(self) -> tuple[int, int, str]:
        return (self.priority, self.since_ms, self.id)


@attrs.frozen
class Released:
    """One run's result: the sets to settle, and what they come to."""

    sets: tuple[tuple[Candidate, ...], ...]

    @property
    def count(self) -> int:
        return sum(len(each) for each in self.sets)

    def value(self) -> dict[str, int]:
        """What the released trades move, gross, per asset."""
        moved: dict[str, int] = defaultdict(int)
        for candidate in (c for each in self.sets for c in each):
            for leg in candidate.legs:
                moved[leg.asset] += leg.amount
        return dict(moved)

    def saved(self) -> dict[str, int]:
        """Liquidity saved, per asset: what the trades would take out of their payers
        one by one, less what they take netted."""
        saved = self.value()
        for each in self.sets:
            for (_, _, asset), amount in netting.outflows(leg for c in each for leg in c.legs).items():
                saved[asset] -= amount
        return saved


def fundable(candidates: Iterable[Candidate], held: Mapping[Position, int]) -> bool:
    return not netting.shortfalls((leg for c in candidates for leg in c.legs), held)


def search(candidates: Sequence[Candidate], held: Mapping[Position, int]) -> Released:
    """The sets of waiting trades to settle together, each fundable by its payers: the
    trades chosen, in sets that share no account, and each set too large for one linked
    settlement cut into sets that each fund themselves from what is left."""
    chosen = _exact(candidates, held) if len(candidates) <= EXACT_MAX else _greedy(candidates, held)
    sets: list[tuple[Candidate, ...]] = []
    left = dict(held)
    for each in components(chosen):
        sets += [each] if _settleable(each) else _cut(each, left)
    return Released(tuple(sets))


def _cut(chosen: Sequence[Candidate], held: dict[Position, int]) -> list[tuple[Candidate, ...]]:
    """Sets of at most LINKED_PAIRS_MAX trades out of `chosen`, most urgent first, each
    funded by what its payers hold less what the sets before it take (they settle apart,
    so none may count on another's proceeds); a trade no such set takes stays waiting."""
    remaining = sorted(chosen, key=lambda c: c.urgency)
    sets = []
    while len(remaining) >= 2:
        window = remaining[:CUT_WINDOW]
        best = _exact(window, held, most=LINKED_PAIRS_MAX)
        if len(best) < 2 or not _settleable(tuple(best)):
            remaining.remove(window[0])  # it waits for the next look
            continue
        for position, amount in netting.outflows(leg for c in best for leg in c.legs).items():
            held[position] = held.get(position, 0) - amount
        taken = {c.id for c in best}
        remaining = [c for c in remaining if c.id not in taken]
        sets.append(tuple(sorted(best, key=lambda c: c.id)))
    return sets


def components(candidates: Iterable[Candidate]) -> list[tuple[Candidate, ...]]:
    """The trades in sets that share no account: each set's net is its accounts' own."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    chosen = list(candidates)
    for candidate in chosen:
        accounts = [(leg.ledger, account) for leg in candidate.legs for account in (leg.from_account, leg.to_account)]
        for account in accounts[1:]:
            parent[root(account)] = root(accounts[0])
    grouped: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for candidate in chosen:
        grouped[root((candidate.legs[0].ledger, candidate.legs[0].from_account))].append(candidate)
    return sorted((tuple(sorted(group, key=lambda c: c.id)) for group in grouped.values()), key=lambda g: g[0].id)


def _settleable(each: tuple[Candidate, ...]) -> bool:
    """A set one linked settlement can carry: a trade alone settles as itself."""
    return 2 <= len(each) <= LINKED_PAIRS_MAX and len(netting.net(leg for c in each for leg in c.legs)) <= LEGS_MAX


def _score(candidates: Iterable[Candidate]) -> tuple[int, int]:
    chosen = list(candidates)
    return len(chosen), sum(c.cash for c in chosen)


def _exact(candidates: Sequence[Candidate], held: Mapping[Position, int], most: int | None = None) -> list[Candidate]:
    """The most trades (at most `most`), then the most cash, that can settle together:
    depth first over taking or leaving each trade, a branch cut once it cannot beat the
    best found."""
    most = len(candidates) if most is None else most
    ordered = sorted(candidates, key=lambda c: c.urgency)
    best: list[Candidate] = []
    best_score = (0, 0)
    remaining_cash = [sum(c.cash for c in ordered[i:]) for i in range(len(ordered) + 1)]

    def visit(index: int, taken: list[Candidate], cash: int) -> None:
        nonlocal best, best_score
        left = min(len(ordered) - index, most - len(taken))
        if left < 0 or (len(taken) + left, cash + remaining_cash[index]) <= best_score:
            return
        if index == len(ordered):
            if fundable(taken, held):
                best, best_score = list(taken), (len(taken), cash)
            return
        taken.append(ordered[index])
        visit(index + 1, taken, cash + ordered[index].cash)
        taken.pop()
        visit(index + 1, taken, cash)

    visit(0, [], 0)
    return best


def _greedy(candidates: Sequence[Candidate], held: Mapping[Position, int]) -> list[Candidate]:
    """Deselect from the account most short the least urgent trade it pays, until none
    is short; then add back, most urgent first, each dropped trade that fits, again
    until none does; then, if few enough are left out, the best set of them that fits
    beside what was kept (a ring of trades none of which fits alone)."""
    chosen = {c.id: c for c in candidates}
    net: dict[Position, int] = defaultdict(int)
    paying: dict[Position, set[str]] = defaultdict(set)
    for candidate in candidates:
        for position, amount in netting.positions(candidate.legs).items():
            net[position] += amount
            if amount < 0:
                paying[position].add(candidate.id)
    dropped: list[Candidate] = []
    while True:
        short = {p: -amount - held.get(p, 0) for p, amount in net.items() if -amount > held.get(p, 0)}
        if not short:
            break
        position = max(short, key=lambda p: (short[p], p))
        victim = max((chosen[i] for i in paying[position] if i in chosen), key=lambda c: c.urgency)
        del chosen[victim.id]
        dropped.append(victim)
        for each, amount in netting.positions(victim.legs).items():
            net[each] -= amount
    dropped.sort(key=lambda c: c.urgency)
    added = True
    while added:
        added = False
        for candidate in list(dropped):
            if fundable([*chosen.values(), candidate], held):
                chosen[candidate.id] = candidate
                dropped.remove(candidate)
                added = True
    if dropped and len(dropped) <= EXACT_MAX:
        beside = dict(held)  # what each account holds once the kept trades have settled
        for position, amount in netting.positions(leg for c in chosen.values() for leg in c.legs).items():
            beside[position] = beside.get(position, 0) + amount
        chosen.update((c.id, c) for c in _exact(dropped, beside))
    return list(chosen.values())
