"""The benchmark's world and workload: participants with accounts on every ledger, the
instruments and currencies they trade, and the settlements they send.

Cross-ledger and same-ledger runs trade the same things between the same participants:
a DvP moves bonds on `csd` against EUR on `cbdc-eur` (cross) or both on `unified`
(same); a PvP moves EUR on `cbdc-eur` against USD on `cbdc-usd` (cross) or both on
`unified` (same)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.world.layout import LedgerSpec, World, lay_out
from protocols.bus import BusTimeout
from protocols.bus.batcher import Batcher
from protocols.bus.client import BadReply, LedgerClient, raise_for
from protocols.bus.clock import ServiceClock
from protocols.identifiers import make_isin
from protocols.messages import CreateInstrument, Instruction, Issue, OpenAccount, Settlement, SettlementLeg, Transfer
from protocols.registry import Role
from protocols.settlement import coordinator_ids, route
from protocols.signing import sign, unsigned

Planned = tuple[str, type[Instruction], tuple[str, ...], dict[str, Any]]  # ledger, kind, signers, fields

COORDINATOR = "coordinator"
LEDGERS = [
    LedgerSpec("csd", "securities", "csd-op"),
    LedgerSpec("cbdc-eur", "cbdc", "ecb", (("EUR", "ecb"),)),
    LedgerSpec("cbdc-usd", "cbdc", "fed", (("USD", "fed"),)),
    LedgerSpec("unified", "unified", "csd-op", (("EUR", "ecb"), ("USD", "fed"))),
]
SCENARIOS = {  # (kind, path) -> the ledgers it touches
    ("dvp", "cross"): ("csd", "cbdc-eur"),
    ("dvp", "same"): ("unified",),
    ("pvp", "cross"): ("cbdc-eur", "cbdc-usd"),
    ("pvp", "same"): ("unified",),
}
BOND_UNITS = 10**9
CASH_MINOR = 10**15
IN_FLIGHT_SETUP = 1024  # instructions being set up at once: batches of up to SETUP_BATCH_MAX form
SETUP_BATCH_MAX = 256
RETRY_S = 0.05


@attrs.frozen
class Shape:
    participants: int = 20
    accounts_per_participant: int = 1
    isins: int = 2
    ballast: int = 0  # more accounts on each ledger, opened and never used: the flat-cost sweep
    coordinators: int = 1  # each its own process, owning the settlement ids routed to it

    def coordinator_ids(self) -> list[str]:
        return coordinator_ids(COORDINATOR, self.coordinators)

    def coordinator_of(self, settlement_id: str) -> str:
        return route(settlement_id, self.coordinator_ids())

    def isin_codes(self) -> list[str]:
        return [make_isin(f"XS9{index:08d}") for index in range(self.isins)]

    def participant_ids(self) -> list[str]:
        return [f"bank-{index:04d}" for index in range(self.participants)]


def lay_out_bench(
    directory: Path, shape: Shape, broker: str | None = None, databases: dict[str, str] | None = None
) -> World:
    parties: dict[str, tuple[Role, ...]] = {
        "csd-op": (Role.OPERATOR,),
        "treasury": (Role.PARTICIPANT,),
        "ecb": (Role.CENTRAL_BANK,),
        "fed": (Role.CENTRAL_BANK,),
    }
    parties.update({coordinator: (Role.COORDINATOR,) for coordinator in shape.coordinator_ids()})
    parties.update({bank: (Role.PARTICIPANT,) for bank in shape.participant_ids()})
    return lay_out(directory, LEDGERS, parties, broker=broker, databases=databases)


def account(participant: str, ledger: str, index: int) -> str:
    return f"{participant}.{ledger}.{index}"


class Workload:
    """Sets the world up and draws settlements from a seeded generator."""

    def __init__(self, world: World, bus, shape: Shape, seed: int) -> None:
        self.world = world
        self.bus = bus
        self.shape = shape
        self._random = random.Random(seed)
        self._clock = ServiceClock()
        self._count = 0
        self._clients = {
            spec.ledger_id: LedgerClient(bus, spec.ledger_id, world.registry[spec.ledger_id].public_key)
            for spec in LEDGERS
        }

    async def set_up(self) -> None:
        """Accounts for every participant on every ledger, bonds and cash for each."""
        instructions: list[Planned] = []
        for spec in LEDGERS:
            instructions.append(
                (spec.ledger_id, OpenAccount, (spec.operator,), {"account": "treasury", "owner": "treasury"})
            )
            for participant in self.shape.participant_ids():
                for index in range(self.shape.accounts_per_participant):
                    instructions.append(
                        (
                            spec.ledger_id,
                            OpenAccount,
                            (spec.operator,),
                            {"account": account(participant, spec.ledger_id, index), "owner": participant},
                        )
                    )
        await self._send_all(instructions)
        await self._send_all(
            (spec.ledger_id, OpenAccount, (spec.operator,), {"account": f"ballast.{index}", "owner": "treasury"})
            for index in range(self.shape.ballast)
            for spec in LEDGERS
        )
        instructions = []
        for ledger in ("csd", "unified"):
            for isin in self.shape.isin_codes():
                instructions.append(
                    (
                        ledger,
                        CreateInstrument,
                        ("csd-op",),
                        {
                            "isin": isin,
                            "issuer": "treasury",
                            "currency": "EUR",
                            "face_value_minor": 100_000,
                            "coupon_rate_bp": 300,
                            "maturity_date": "2035-12-31",
                        },
                    )
                )
        await self._send_all(instructions)
        holdings = [(ledger, isin) for ledger in ("csd", "unified") for isin in self.shape.isin_codes()]
        cash = [
            ("cbdc-eur", "EUR", "ecb"),
            ("cbdc-usd", "USD", "fed"),
            ("unified", "EUR", "ecb"),
            ("unified", "USD", "fed"),
        ]
        instructions = [
            (
                ledger,
                Issue,
                ("csd-op",),
                {"asset": isin, "account": "treasury", "amount": BOND_UNITS * self._accounts_count()},
            )
            for ledger, isin in holdings
        ]
        await self._send_all(instructions)
        instructions = []
        for participant in self.shape.participant_ids():
            for index in range(self.shape.accounts_per_participant):
                for ledger, isin in holdings:
                    instructions.append(
                        (
                            ledger,
                            Transfer,
                            ("treasury",),
                            {
                                "from_account": "treasury",
                                "to_account": account(participant, ledger, index),
                                "asset": isin,
                                "amount": BOND_UNITS,
                            },
                        )
                    )
                for ledger, currency, bank in cash:
                    instructions.append(
                        (
                            ledger,
                            Issue,
                            (bank,),
                            {"asset": currency, "account": account(participant, ledger, index), "amount": CASH_MINOR},
                        )
                    )
        await self._send_all(instructions)

    def _accounts_count(self) -> int:
        return self.shape.participants * self.shape.accounts_per_participant

    async def _send_all(self, instructions: Iterable[tuple]) -> None:
        """Send every instruction, IN_FLIGHT_SETUP at a time, drawn as needed (a million
        ballast accounts are never all in memory at once), through one batcher for each
        ledger and signer: whatever is waiting goes in one batch, signed once."""
        pending = iter(instructions)

        async with trio.open_nursery() as batchers:
            batcher_of: dict[tuple[str, str], Batcher] = {}

            def batcher(ledger: str, signer: str) -> Batcher:
                if (ledger, signer) not in batcher_of:
                    made = batcher_of[(ledger, signer)] = Batcher(
                        self._clients[ledger], signer, self.world.keys[signer], batch_size_max=SETUP_BATCH_MAX
                    )
                    batchers.start_soon(made.run)
                return batcher_of[(ledger, signer)]

            async def sender() -> None:
                for ledger, cls, (signer,), fields in pending:
                    self._count += 1
                    msg = cls(id=f"setup-{self._count}", ledger=ledger, ts_ms=self._clock.now_ms(), **fields)
                    while True:
                        try:
                            raise_for(await batcher(ledger, signer).submit(unsigned(msg)))
                            break
                        except (BusTimeout, BadReply):
                            await trio.sleep(RETRY_S)

            async with trio.open_nursery() as nursery:
                for _ in range(IN_FLIGHT_SETUP):
                    nursery.start_soon(sender)
            batchers.cancel_scope.cancel()

    def settlement(self, kind: str, path: str, run: str) -> bytes:
        """A fresh settlement between two random participants, signed by both."""
        buyer, seller = self._random.sample(self.shape.participant_ids(), 2)
        index = self._random.randrange(self.shape.accounts_per_participant)
        ledgers = SCENARIOS[(kind, path)]
        first, second = (ledgers[0], ledgers[-1])
        if kind == "dvp":
            cash_ledger, bond_ledger = (second, first) if path == "cross" else (first, first)
            isin = self._random.choice(self.shape.isin_codes())
            legs = (
                SettlementLeg(
                    cash_ledger,
                    account(buyer, cash_ledger, index),
                    account(seller, cash_ledger, index),
                    "EUR",
                    self._random.randint(100, 10_000),
                ),
                SettlementLeg(
                    bond_ledger,
                    account(seller, bond_ledger, index),
                    account(buyer, bond_ledger, index),
                    isin,
                    self._random.randint(1, 10),
                ),
            )
        else:
            legs = (
                SettlementLeg(
                    first,
                    account(buyer, first, index),
                    account(seller, first, index),
                    "EUR",
                    self._random.randint(100, 10_000),
                ),
                SettlementLeg(
                    second,
                    account(seller, second, index),
                    account(buyer, second, index),
                    "USD",
                    self._random.randint(100, 10_000),
                ),
            )
        self._count += 1
        now = self._clock.now_ms()
        settlement_id = f"{run}-{self._count}"
        coordinator = self.shape.coordinator_of(settlement_id)
        msg = Settlement(settlement_id, kind, now, coordinator, now + 3_600_000, (buyer, seller), legs)
        return sign(msg, (buyer, self.world.keys[buyer]), (seller, self.world.keys[seller])).encode()
