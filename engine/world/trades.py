"""Trades through the matching desk, for the settlement queue's chaos and benchmark runs:
each a DvP of bank-a's bonds against bank-b's EUR, sent as two one-sided sese.023
instructions, half of them allowing partial settlement; and the seller's bonds and the
buyer's cash put aside in accounts of their own beside theirs, so that trades wait in
the queue until they are handed back."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing

import attrs
import trio

from protocols.bus import BusTimeout, service_of_coordinator
from protocols.iso20022 import sese023
from protocols.iso20022.model import SESE_023, OneSided
from protocols.messages import SettlementInstruction, Transfer
from protocols.settlement import utc_date
from protocols.signing import sign

from .local import BOND, COORDINATOR, Local

# what is put aside: (ledger, the payer's account, its owner, asset, the ledger's operator)
ASIDE = (("csd", "a-sec", "bank-a", BOND, "csd-op"), ("cbdc-eur", "b-eur", "bank-b", "EUR", "ecb"))
KEPT = 1_000  # of each, left in the payer's account
FINAL = ("settled", "failed", "cancelled")
POLL_S = 0.05


@attrs.frozen
class Trade:
    reference: str  # the seller's instruction id
    units: int
    cash_minor: int


async def put_aside(local: Local, kept: int = KEPT) -> dict[tuple[str, str], int]:
    """All but `kept` of the seller's bonds and the buyer's cash moved beside them: how much."""
    aside = {}
    for ledger, account, owner, asset, operator in ASIDE:
        await local.open_accounts(ledger, operator, {f"{account}-aside": owner})
        amount = (await local.balances(ledger, account))[asset] - kept
        await local.instruct(
            Transfer, ledger, owner, from_account=account, to_account=f"{account}-aside", asset=asset, amount=amount
        )
        aside[(ledger, account)] = amount
    return aside


async def hand_back(local: Local, amounts: dict[tuple[str, str], int] | None = None) -> None:
    """Move these amounts back to each payer's account, or all that is left (None)."""
    for ledger, account, owner, asset, _ in ASIDE:
        left = (await local.balances(ledger, f"{account}-aside")).get(asset, 0)
        amount = left if amounts is None else min(left, amounts[(ledger, account)])
        if amount:
            await local.instruct(
                Transfer, ledger, owner, from_account=f"{account}-aside", to_account=account, asset=asset, amount=amount
            )


async def send(
    local: Local,
    chance: random.Random,
    reference: str,
    timeout_s: float,
    *,
    units: int | None = None,
    cash: int | None = None,
    back: bool = False,
) -> Trade:
    """A trade's two sides sent to the desk, each again until the desk answers (a
    restarted coordinator may not have heard it): bank-a sells to bank-b, or (`back`)
    bank-b to bank-a; drawn, unless given, how many bonds for how much."""
    today = utc_date(local.clock.now_ms())
    units, partial = units or chance.randint(1, 200), chance.random() < 0.5
    cash = cash or units * chance.randint(900, 1_100)
    seller, buyer = (("bank-b", "b"), ("bank-a", "a")) if back else (("bank-a", "a"), ("bank-b", "b"))
    (s, s_), (b, b_) = seller, buyer
    sides = (
        OneSided(SESE_023, f"{reference}-S", "dvp", "deliver", s, b, today, today, BOND, units,
                 f"{s_}-sec", "EUR", cash, f"{s_}-eur", partial=partial),
        OneSided(SESE_023, f"{reference}-B", "dvp", "receive", b, s, today, today, "EUR", cash,
                 f"{b_}-eur", BOND, units, f"{b_}-sec", partial=partial),
    )  # fmt: skip
    for one in sides:
        msg = SettlementInstruction(
            one.reference, COORDINATOR, one.party, local.clock.now_ms(), SESE_023, sese023.write(one).decode()
        )
        raw = sign(msg, (one.party, local.world.keys[one.party])).encode()
        while True:
            try:
                await local.bus.request(service_of_coordinator(COORDINATOR), raw, timeout_s=timeout_s)
                break
            except BusTimeout:
                continue
    return Trade(sides[0].reference, units, cash)


def states(local: Local) -> dict[str, str]:
    """Each trade's state as the desk's table holds it, by the seller's instruction id."""
    database = local.world.directory / f"{COORDINATOR}.db"
    with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT id, state FROM instructions WHERE id LIKE '%-S'").fetchall())


async def ended(local: Local, trade: Trade) -> str:
    """How the trade ended: settled, failed or cancelled."""
    while (state := states(local).get(trade.reference)) not in FINAL:
        await trio.sleep(POLL_S)
    assert state is not None
    return state
