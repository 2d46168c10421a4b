"""The watchtower as its own OS process (`lockstep watchtower`) over a real Mosquitto,
run by a bank (`--party bank-a`), with the ledgers as processes too. The test acts as
the coordinator by hand, with its key: it places both decision locks of a signed DvP
exactly as engine/coordinator/core.py does, then reveals a decision and "dies". The
watchtower must forward it: claim leg 1 with the secret from leg 0's claim, cancel leg 1
with the preimage from leg 0's cancel, and claim both legs from a published decision no
ledger has seen. Checked on the ledgers: lock states, journals and balances."""

from __future__ import annotations

import secrets

import pytest
import trio

from engine.world.local import Local, dvp_legs, standard_world
from protocols.bus import decisions_topic
from protocols.bus.client import LedgerClient, raise_for
from protocols.bus.mqtt import MqttBus
from protocols.envelope import seal
from protocols.htlc import hashlock_of
from protocols.messages import Cancel, Claim, Lock, QueryJournal, QueryLock, Settlement, SettlementDecision
from protocols.settlement import Timing, lock_id
from protocols.signing import decode_signed, sign, unsigned
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a watchtower and ledgers as processes

LEGS = dvp_legs("csd", "a-sec", "b-sec", 10, "cbdc-eur", "EUR", "b-eur", "a-eur", 1_000)  # leg 0 cash, leg 1 bond
PARTIES = ("bank-b", "bank-a")  # bank-b pays leg 0, bank-a delivers leg 1
TIMING = Timing()  # the standard world's coordinator.toml sets no [timing]
GRACE_S = TIMING.claim_deadline_ms // 2 / 1000  # the watchtower's grace period (engine/daemon.py)
ACCOUNTS = (("cbdc-eur", "b-eur"), ("cbdc-eur", "a-eur"), ("csd", "a-sec"), ("csd", "b-sec"))
WATCHER = "bank-a"


class HandCoordinator:
    """The coordinator's side of one settlement, done by hand with its key."""

    def __init__(self, local: Local) -> None:
        self.local = local
        self.key = local.world.keys["coordinator"]

    def client(self, ledger: str) -> LedgerClient:
        return self.local.client(ledger)

    def signed(self, msg):
        return sign(msg, ("coordinator", self.key))

    async def lock_both(self) -> tuple[str, bytes, bytes]:
        """Both decision locks of a fresh DvP, built as the core (engine/coordinator/core.py `_lock`) builds them;
        their settlement id, claim secret and cancellation secret."""
        signed_settlement = decode_signed(self.local.settlement("dvp", LEGS, PARTIES), allowed=(Settlement,))
        settlement: Settlement = signed_settlement.msg
        secret, cancel_secret = secrets.token_bytes(32), secrets.token_bytes(32)
        now = self.local.clock.now_ms()
        backstops = TIMING.backstops(now)
        for index, leg in enumerate(settlement.legs):
            lock = Lock(
                lock_id(settlement.id, index),
                leg.ledger,
                now,
                leg.from_account,
                leg.to_account,
                leg.asset,
                leg.amount,
                hashlock_of(secret),
                TIMING.expiry(now),
                (),
                auth=signed_settlement.wire(),
                cancel_hashlock=hashlock_of(cancel_secret),
                backstop_ms=backstops[index],
            )
            raise_for(await self.client(leg.ledger).submit(self.signed(lock)))
        return settlement.id, secret, cancel_secret

    async def end(self, settlement_id: str, leg: int, kind: type, preimage: bytes) -> None:
        """A claim or cancel of one leg, with its preimage."""
        ledger = LEGS[leg].ledger
        target = lock_id(settlement_id, leg)
        now = self.local.clock.now_ms()
        raise_for(
            await self.client(ledger).submit(
                self.signed(kind(f"{target}:c{secrets.token_hex(3)}", ledger, now, target, preimage))
            )
        )

    async def publish(self, settlement_id: str, outcome: str, preimage: bytes) -> None:
        """The decision, as the core announces it (`_announce`) and its shell publishes it."""
        await self.publish_all([(settlement_id, outcome, preimage)])

    async def publish_all(self, decided: list[tuple[str, str, bytes]]) -> None:
        """Decisions taken in one step: one event, or one batch envelope signed once."""
        now = self.local.clock.now_ms()
        decisions = [
            SettlementDecision(
                "coordinator",
                settlement_id,
                outcome,
                tuple(leg.ledger for leg in LEGS),
                preimage,
                TIMING.expiry(now),
                now,
            )
            for settlement_id, outcome, preimage in decided
        ]
        key = self.local.world.keys["coordinator"]
        event = seal([unsigned(d) for d in decisions], "coordinator", key) if len(decisions) > 1 else None
        await self.local.bus.publish(decisions_topic("coordinator"), event or self.signed(decisions[0]).encode())

    async def state(self, settlement_id: str, leg: int) -> str:
        ledger = LEGS[leg].ledger
        client = self.client(ledger)
        return (await client.query(QueryLock(client.next_query_id(), ledger, lock_id(settlement_id, leg))))["state"]

    async def until_state(self, settlement_id: str, leg: int, state: str, timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            while await self.state(settlement_id, leg) != state:
                await trio.sleep(0.05)


async def balances(local: Local) -> dict[tuple[str, str], dict[str, int]]:
    return {(ledger, account): await local.balances(ledger, account) for ledger, account in ACCOUNTS}


def moved_by(before, legs_times: int) -> dict[tuple[str, str], dict[str, int]]:
    """`before` with every leg of LEGS applied `legs_times` over."""
    expected = {key: dict(assets) for key, assets in before.items()}
    for leg in LEGS:
        payer, payee = expected[(leg.ledger, leg.from_account)], expected[(leg.ledger, leg.to_account)]
        payer[leg.asset] = payer.get(leg.asset, 0) - leg.amount * legs_times
        payee[leg.asset] = payee.get(leg.asset, 0) + leg.amount * legs_times
    return expected


async def ends(local: Local, ledger: str, target: str) -> list[dict]:
    """The `claim` and `cancel` entries of a lock in a ledger's journal."""
    client = local.client(ledger)
    entries: list[dict] = []
    while True:
        page = await client.query(QueryJournal(client.next_query_id(), ledger, len(entries), 200))
        entries += page["entries"]
        if not page["entries"] or len(entries) >= page["head"]:
            break
    return [
        entry for entry in entries if entry["kind"] in ("claim", "cancel") and entry["instruction"]["lock_id"] == target
    ]


async def logged(process: ServiceProcess, text: str, timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        while text not in process.log_path.read_text(errors="replace"):
            assert process.process.poll() is None, f"{process.party} exited: {process.log_path.read_text()[-2000:]}"
            await trio.sleep(0.05)


class Services:
    """The two ledger processes and the watchtower process, run by a bank with its own
    key, started ready and funded."""

    def __init__(self, tmp_path, broker) -> None:
        self.world = standard_world(tmp_path, broker=broker.url)
        self.ledgers = [ServiceProcess(self.world, "ledger", ledger, broker.url) for ledger in ("csd", "cbdc-eur")]
        key = self.world.key_path(WATCHER)
        self.watchtower = ServiceProcess(
            self.world, "watchtower", "coordinator", broker.url, ("--party", WATCHER, "--key", str(key))
        )

    @property
    def processes(self) -> list[ServiceProcess]:
        return self.ledgers + [self.watchtower]

    async def start(self, bus, nursery) -> Local:
        for process in self.ledgers:
            process.start()
        for process in self.ledgers:
            await process.ready(bus)
        local = Local(self.world, bus, nursery)
        await local.fund_standard(ledgers=("csd", "cbdc-eur"))
        self.watchtower.start()
        await logged(self.watchtower, f"watchtower {WATCHER} watching")
        return local

    def stop(self) -> dict[str, int]:
        return {process.log_path.name: process.stop() for process in self.processes}


async def forwarded(services: Services, local: Local, settlement_id: str, leg: int, kind: str) -> None:
    """Leg `leg` was ended by one claim or cancel, the watchtower's, signed by the bank."""
    (entry,) = await ends(local, LEGS[leg].ledger, lock_id(settlement_id, leg))
    assert entry["kind"] == kind and entry["instruction"]["id"].startswith(f"{lock_id(settlement_id, leg)}:w")
    assert set(entry["instruction"]["sigs"]) == {WATCHER}
    state = "claimed" if kind == "claim" else "cancelled"
    await logged(services.watchtower, f"settlement {settlement_id}: the watchtower {state} leg {leg}", 5)


@pytest.mark.parametrize("decision", ["commit", "abort"])
async def test_watchtower_process_forwards_leg_0s_end_to_leg_1_after_the_coordinator_dies(tmp_path, broker, decision):
    services = Services(tmp_path, broker)
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            with trio.fail_after(60):
                local = await services.start(bus, nursery)
                coordinator = HandCoordinator(local)
                before = await balances(local)
                settlement_id, secret, cancel_secret = await coordinator.lock_both()
                assert [await coordinator.state(settlement_id, leg) for leg in (0, 1)] == ["held", "held"]

                if decision == "commit":
                    await coordinator.end(settlement_id, 0, Claim, secret)  # ... and the coordinator dies here
                else:
                    await coordinator.end(settlement_id, 0, Cancel, cancel_secret)
                ended_leg_0_at = trio.current_time()
                state = "claimed" if decision == "commit" else "cancelled"
                await coordinator.until_state(settlement_id, 1, state, timeout_s=GRACE_S + 5)
                assert trio.current_time() - ended_leg_0_at >= GRACE_S * 0.9  # it let the coordinator have its grace

                assert await balances(local) == (moved_by(before, 1) if decision == "commit" else before)
                await forwarded(services, local, settlement_id, 1, "claim" if decision == "commit" else "cancel")
            nursery.cancel_scope.cancel()
    finally:
        codes = services.stop()
    assert set(codes.values()) == {0}, codes


async def test_watchtower_process_acts_on_each_decision_of_a_batch_event(tmp_path, broker):
    """Two settlements decided in one step, published as one envelope signed once: the
    watchtower claims both legs of the committed one and cancels both of the aborted."""
    services = Services(tmp_path, broker)
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            with trio.fail_after(60):
                local = await services.start(bus, nursery)
                coordinator = HandCoordinator(local)
                committed, secret, _ = await coordinator.lock_both()
                aborted, _, cancel_secret = await coordinator.lock_both()
                await coordinator.publish_all([(committed, "commit", secret), (aborted, "abort", cancel_secret)])
                for leg in (0, 1):
                    await coordinator.until_state(committed, leg, "claimed", timeout_s=GRACE_S + 5)
                    await coordinator.until_state(aborted, leg, "cancelled", timeout_s=GRACE_S + 5)
            nursery.cancel_scope.cancel()
    finally:
        codes = services.stop()
    assert set(codes.values()) == {0}, codes


async def test_watchtower_process_claims_both_legs_from_a_published_decision_no_ledger_has_seen(tmp_path, broker):
    """The coordinator commits, publishes its decision and dies before claiming anything:
    the watchtower claims leg 0, then leg 1. A second settlement, decided but never
    published, is left alone: nothing public reveals its decision."""
    services = Services(tmp_path, broker)
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            with trio.fail_after(60):
                local = await services.start(bus, nursery)
                coordinator = HandCoordinator(local)
                before = await balances(local)
                unpublished, _, _ = await coordinator.lock_both()
                settlement_id, secret, _ = await coordinator.lock_both()
                await coordinator.publish(settlement_id, "commit", secret)
                for leg in (0, 1):
                    await coordinator.until_state(settlement_id, leg, "claimed", timeout_s=GRACE_S + 5)
                    await forwarded(services, local, settlement_id, leg, "claim")
                assert await balances(local) == moved_by(before, 1)
                assert [await coordinator.state(unpublished, leg) for leg in (0, 1)] == ["held", "held"]
            nursery.cancel_scope.cancel()
    finally:
        codes = services.stop()
    assert set(codes.values()) == {0}, codes
