"""A whole Lockstep world in one process, for the demo, the tests and the benchmark:
every ledger a `LedgerService` and the coordinator a `Coordinator`, each with its own
store and clock, meeting only on the bus they are given. (This module, like the CLI,
may import both ledgers and engine: it is what starts them.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from ledgers.config import LedgerConfig
from ledgers.ledger import Ledger
from ledgers.service import LedgerService
from ledgers.store import Store
from protocols.bus import Bus, BusTimeout, service_of_coordinator
from protocols.bus.client import LedgerClient, raise_for
from protocols.bus.clock import ServiceClock
from protocols.envelope import answers, settlements
from protocols.identifiers import make_isin
from protocols.messages import (
    CreateInstrument,
    Instruction,
    Issue,
    OpenAccount,
    QueryBalances,
    Settlement,
    SettlementLeg,
    SettlementStatus,
    Transfer,
    readable_id,
)
from protocols.registry import Role
from protocols.settlement import Timing, coordinator_ids, route
from protocols.signing import sign

from ..coordinator import INTAKE_MAX, Coordinator, Desk
from ..coordinator.journal import Journal
from .layout import LedgerSpec, World, lay_out

COORDINATOR = "coordinator"
BOND = make_isin("XS270000001")

PARTIES: dict[str, tuple[Role, ...]] = {
    "csd-op": (Role.OPERATOR,),
    "ecb": (Role.CENTRAL_BANK,),
    "fed": (Role.CENTRAL_BANK,),
    "snb": (Role.CENTRAL_BANK,),
    "treasury": (Role.PARTICIPANT,),
    "bank-a": (Role.PARTICIPANT,),
    "bank-b": (Role.PARTICIPANT,),
    "supervisor": (Role.OBSERVER,),  # sees through: every party's advices, for the console
    COORDINATOR: (Role.COORDINATOR,),
}
LEDGERS = [
    LedgerSpec("csd", "securities", "csd-op"),
    LedgerSpec("cbdc-eur", "cbdc", "ecb", (("EUR", "ecb"),)),
    LedgerSpec("cbdc-multi", "cbdc", "fed", (("USD", "fed"), ("CHF", "snb"))),
    LedgerSpec("unified", "unified", "csd-op", (("EUR", "ecb"), ("USD", "fed"))),
]


NAMES = {
    "bank-a": ("BANKDEFFXXX", "529900T8BM49AURSDO55"),
    "bank-b": ("BANKGB2LXXX", "5493001KJTIIGC8Y1R12"),
}  # BIC, LEI
PLACES = {BOND: "csd", "EUR": "cbdc-eur", "USD": "cbdc-multi", "CHF": "cbdc-multi"}  # where matched trades settle


def standard_world(
    directory: str | Path,
    broker: str | None = None,
    coordinators: int = 1,
    databases: dict[str, str] | None = None,
) -> World:
    """The demo's world: a CSD, a one-currency and a multi-currency CBDC ledger, a
    unified ledger, three central banks, an issuer, two banks and a coordinator (or
    `coordinators` of them, sharing the settlement ids: `coordinator`, `coordinator-1`, ...).
    `databases`: a ledger's or coordinator's database elsewhere than its file (lay_out)."""
    parties = {**PARTIES, **{c: (Role.COORDINATOR,) for c in coordinator_ids(COORDINATOR, coordinators)}}
    return lay_out(directory, LEDGERS, parties, broker=broker, places=PLACES, names=NAMES, databases=databases)


@attrs.define
class Local:
    """Start services of `world` on `bus` inside a nursery; talk to them as parties."""

    world: World
    bus: Bus
    nursery: trio.Nursery
    services: dict[str, LedgerService] = attrs.field(factory=dict)
    coordinator: Coordinator | None = None
    offload: bool = False  # commit in worker threads (real clocks only; see LedgerService)
    clock: ServiceClock = attrs.field(factory=ServiceClock)  # the parties' own clock
    coordinators: tuple[str, ...] = (COORDINATOR,)  # settlements are routed among them by id
    _ledger_scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)
    _stopped: dict[str, trio.Event] = attrs.field(
        factory=dict
    )  # set once a ledger (or the coordinator) has fully stopped
    _ids: int = 0

    async def start_ledger(self, ledger_id: str, *, skew_ms: int = 0) -> LedgerService:
        """`skew_ms` sets the ledger's clock that far off the others'. A ledger stopped a
        moment ago is first let finish stopping: one database, one ledger at a time."""
        previous = self._stopped.get(ledger_id)
        if previous is not None:
            await previous.wait()
        config = LedgerConfig.load(self.world.ledger_configs[ledger_id])
        clock = ServiceClock(skew_ms)
        ledger = Ledger(config, self.world.registry, self.world.keys[ledger_id], Store(config.database), clock.now_ms())
        service = LedgerService(ledger, self.bus, clock, offload=self.offload)
        scope = trio.CancelScope()

        stopped = self._stopped[ledger_id] = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await service.run(task_status=task_status)
            finally:
                ledger.store.close()
                stopped.set()

        await self.nursery.start(run)
        self.services[ledger_id] = service
        self._ledger_scopes[ledger_id] = scope
        return service

    def stop_ledger(self, ledger_id: str) -> None:
        """Stop a ledger as if its process died; start_ledger brings it back."""
        del self.services[ledger_id]
        self._ledger_scopes.pop(ledger_id).cancel()

    async def start_coordinator(
        self,
        timing: Timing = Timing(),
        *,
        watchtower: bool = True,
        bus: Bus | None = None,
        desks: tuple[Callable[[Coordinator], Desk], ...] = (),
        skew_ms: int = 0,
        intake_max: int = INTAKE_MAX,
    ) -> tuple[Coordinator, trio.CancelScope]:
        """Start the coordinator under its own cancel scope, so a test can kill it; on
        `bus` if given (a faulty one, say), else on the world's; with a desk made by each
        of `desks`; its clock `skew_ms` off. One killed a moment ago is first let finish
        stopping, as a killed process writes nothing after its death: a journal write it
        had begun lands, or not, before the next coordinator reads the journal."""
        previous = self._stopped.get(COORDINATOR)
        if previous is not None:
            await previous.wait()
        journal = Journal(self.world.directory / f"{COORDINATOR}.db", offload=self.offload)
        ledgers = (party for party in self.world.ledger_configs if self.world.registry.has_role(party, Role.LEDGER))
        watched = tuple(ledgers) if watchtower else ()  # down ones too: they come back
        coordinator = Coordinator(
            COORDINATOR,
            self.world.keys[COORDINATOR],
            self.world.registry,
            bus or self.bus,
            journal,
            ServiceClock(skew_ms),
            timing,
            watched,
            intake_max=intake_max,
        )
        for make_desk in desks:
            coordinator.add_desk(make_desk(coordinator))
        scope = trio.CancelScope()
        stopped = self._stopped[COORDINATOR] = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await coordinator.run(task_status=task_status)
            finally:
                journal.close()
                stopped.set()

        await self.nursery.start(run)
        self.coordinator = coordinator
        return coordinator, scope

    async def send_settlement(self, raw: bytes, timeout_s: float = 60) -> bytes | None:
        """Send a settlement to the coordinator over the bus as a back office would;
        its signed status once final, or None if the coordinator went away first."""
        try:
            coordinator = route(readable_id(raw), self.coordinators)
            return await self.bus.request(service_of_coordinator(coordinator), raw, timeout_s=timeout_s)
        except BusTimeout:
            return None

    async def send_settlements(self, raws: list[bytes], timeout_s: float = 60) -> list[SettlementStatus] | None:
        """Send settlements that name one coordinator to it together, in one request
        (protocol section 17): their statuses, in order, once every one is final, or None
        if the coordinator went away first."""
        try:
            coordinator = route(readable_id(raws[0]), self.coordinators)
            reply = await self.bus.request(service_of_coordinator(coordinator), settlements(raws), timeout_s=timeout_s)
        except BusTimeout:
            return None
        return answers(reply, len(raws), (SettlementStatus,))

    def client(self, ledger_id: str) -> LedgerClient:
        return LedgerClient(self.bus, ledger_id, self.world.registry[ledger_id].public_key)

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    async def instruct(self, cls: type[Instruction], ledger_id: str, *signers: str, **fields) -> None:
        """Send an instruction signed by `signers`; raise if the ledger refuses it."""
        msg = cls(id=self.next_id(cls.TYPE), ledger=ledger_id, ts_ms=self.clock.now_ms(), **fields)
        raise_for(await self.client(ledger_id).submit(sign(msg, *((p, self.world.keys[p]) for p in signers))))

    async def open_accounts(self, ledger_id: str, operator: str, accounts: dict[str, str]) -> None:
        for account, owner in accounts.items():
            await self.instruct(OpenAccount, ledger_id, operator, account=account, owner=owner)

    async def balances(self, ledger_id: str, account: str) -> dict[str, int]:
        """Available plus locked, by asset."""
        client = self.client(ledger_id)
        value = await client.query(QueryBalances(client.next_query_id(), ledger_id, account))
        return {asset: b["available"] + b["locked"] for asset, b in value["balances"].items()}

    async def fund_standard(
        self,
        bond_units: int = 1_000_000,
        cash_minor: int = 10**12,
        ledgers: tuple[str, ...] = ("csd", "cbdc-eur", "cbdc-multi", "unified"),
    ) -> None:
        """Accounts and money for the standard world (on the ledgers named): bank-a
        holds bonds and USD, bank-b holds EUR; both hold accounts everywhere."""
        if "csd" in ledgers:
            await self.open_accounts("csd", "csd-op", {"treasury": "treasury", "a-sec": "bank-a", "b-sec": "bank-b"})
            await self._issue_bond("csd", bond_units, "a-sec")
        if "cbdc-eur" in ledgers:
            await self.open_accounts("cbdc-eur", "ecb", {"a-eur": "bank-a", "b-eur": "bank-b"})
            await self.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="b-eur", amount=cash_minor)
        if "cbdc-multi" in ledgers:
            await self.open_accounts("cbdc-multi", "fed", {"a-usd": "bank-a", "b-usd": "bank-b"})
            await self.instruct(Issue, "cbdc-multi", "fed", asset="USD", account="a-usd", amount=cash_minor)
        if "unified" in ledgers:
            await self.open_accounts("unified", "csd-op", {"treasury": "treasury", "a": "bank-a", "b": "bank-b"})
            await self._issue_bond("unified", bond_units, "a")
            await self.instruct(Issue, "unified", "ecb", asset="EUR", account="b", amount=cash_minor)
            await self.instruct(Issue, "unified", "fed", asset="USD", account="a", amount=cash_minor)

    async def _issue_bond(self, ledger_id: str, units: int, holder_account: str) -> None:
        """The treasury's bond, issued by the depository; half of it sold to a holder."""
        await self.instruct(
            CreateInstrument,
            ledger_id,
            "csd-op",
            isin=BOND,
            issuer="treasury",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=275,
            maturity_date="2031-06-30",
        )
        await self.instruct(Issue, ledger_id, "csd-op", asset=BOND, account="treasury", amount=units)
        await self.instruct(
            Transfer,
            ledger_id,
            "treasury",
            from_account="treasury",
            to_account=holder_account,
            asset=BOND,
            amount=units // 2,
        )

    def settlement(
        self,
        kind: str,
        legs: tuple[SettlementLeg, SettlementLeg],
        parties: tuple[str, str],
        *,
        settlement_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> bytes:
        """A settlement signed by both parties, as their back offices would send it."""
        now = self.clock.now_ms()
        settlement_id = settlement_id or self.next_id(kind)
        coordinator = route(settlement_id, self.coordinators)
        msg = Settlement(settlement_id, kind, now, coordinator, deadline_ms or now + 60_000, parties, legs)
        return sign(msg, *((p, self.world.keys[p]) for p in parties)).encode()


def dvp_legs(
    securities_ledger: str,
    seller_sec: str,
    buyer_sec: str,
    quantity: int,
    cash_ledger: str,
    currency: str,
    buyer_cash: str,
    seller_cash: str,
    amount: int,
    isin: str = BOND,
) -> tuple[SettlementLeg, SettlementLeg]:
    """Leg 0 is the cash (buyer pays seller), leg 1 the bond (seller delivers)."""
    return (
        SettlementLeg(cash_ledger, buyer_cash, seller_cash, currency, amount),
        SettlementLeg(securities_ledger, seller_sec, buyer_sec, isin, quantity),
    )
