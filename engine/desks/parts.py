"""Partial settlement, as the settlement queue reckons it: the largest part of what
remains of a DvP that its payers' balances cover, and what each leg pays in a part
(protocols.matching.part_of: the cash of a part by cash_through, so parts add up)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protocols import matching
from protocols.iso20022.model import OneSided, Part
from protocols.messages import SettlementLeg

Held = Mapping[tuple[str, str, str], int]  # (ledger, account, asset) -> available


def amounts(sides: Sequence[OneSided], legs: Sequence[SettlementLeg], part: Part) -> list[int]:
    """What each leg pays in `part` of the trade: the side that pays it, its share."""
    return [
        matching.part_of(one, part.from_units, part.to_units)
        for leg in legs
        for one in sides
        if one.gives_account == leg.from_account and one.gives_asset == leg.asset
    ]


def best(sides: Sequence[OneSided], legs: Sequence[SettlementLeg], settled: int, held: Held, least: int) -> Part | None:
    """The largest part after the `settled` units that `held` covers, where both sides
    allow settling in parts: at least `least` units, and short of all that remains."""
    if not all(one.partial for one in sides):
        return None
    seller, buyer = sides if sides[0].side == "deliver" else sides[::-1]
    covered = {leg.asset: held.get((leg.ledger, leg.from_account, leg.asset), 0) for leg in legs}
    assert seller.gives_asset is not None
    most = min(covered[seller.gives_asset], seller.gives_amount - settled - 1)
    cash = buyer.gives_asset

    def paid(count: int) -> int:
        return matching.part_of(buyer, settled, settled + count) if cash is not None else 0

    low, high = 0, most  # the largest count whose cash the buyer's balance covers (more costs more)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cash is None or paid(middle) <= covered[cash] else (low, middle - 1)
    if low < least or (cash is not None and paid(low) == 0):
        return None
    return Part(settled, settled + low)
