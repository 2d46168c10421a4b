"""The watchtower as its own OS process (`lockstep watchtower`) over a real Mosquitto,
with the ledgers as processes too. The test acts as the coordinator by hand, with its
key: it places both locks of a signed DvP exactly as engine/coordinator.py does, claims
leg 0 and then "dies". The watchtower must claim leg 1 from the secret in leg 0's claim;
and must leave leg 1 alone when leg 0 was aborted instead. Checked on the ledgers: lock
states, journals and balances."""

from __future__ import annotations

import secrets

import pytest
import trio

from engine.local import Local, dvp_legs, standard_world
from protocols.bus.client import LedgerClient, raise_for
from protocols.bus.mqtt import MqttBus
from protocols.htlc import hashlock_of
from protocols.messages import Abort, Claim, Lock, QueryJournal, QueryLock, Settlement
from protocols.settlement import Timing, lock_id
from protocols.signing import decode_signed, sign
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a watchtower, coordinator and ledgers as processes

LEGS = dvp_legs("csd", "a-sec", "b-sec", 10, "cbdc-eur", "EUR", "b-eur", "a-eur", 1_000)  # leg 0 cash, leg 1 bond
PARTIES = ("bank-b", "bank-a")  # bank-b pays leg 0, bank-a delivers leg 1
TIMING = Timing()  # the standard world's coordinator.toml sets no [timing]
GRACE_S = TIMING.claim_deadline_ms // 2 / 1000  # the watchtower's grace period (engine/daemon.py)
ACCOUNTS = (("cbdc-eur", "b-eur"), ("cbdc-eur", "a-eur"), ("csd", "a-sec"), ("csd", "b-sec"))


class HandCoordinator:
    """The coordinator's side of one settlement, done by hand with its key."""

    def __init__(self, local: Local) -> None:
        self.local = local
        self.key = local.world.keys["coordinator"]

    def client(self, ledger: str) -> LedgerClient:
        return self.local.client(ledger)

    def signed(self, msg):
        return sign(msg, ("coordinator", self.key))

    async def lock_both(self) -> tuple[str, bytes]:
        """Both locks of a fresh DvP, built as Coordinator._lock builds them; their ids and the secret."""
        signed_settlement = decode_signed(self.local.settlement("dvp", LEGS, PARTIES), allowed=(Settlement,))
        settlement: Settlement = signed_settlement.msg
        secret = secrets.token_bytes(32)
        now = self.local.clock.now_ms()
        expiries = TIMING.expiries(now)
        assert expiries[1] <= settlement.deadline_ms
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
                expiries[index],
                ("coordinator",),
                auth=signed_settlement.wire(),
            )
            raise_for(await self.client(leg.ledger).submit(self.signed(lock)))
        return settlement.id, secret

    async def claim(self, settlement_id: str, leg: int, secret: bytes) -> None:
        ledger = LEGS[leg].ledger
        target = lock_id(settlement_id, leg)
        raise_for(
            await self.client(ledger).submit(
                self.signed(
                    Claim(f"{target}:c{secrets.token_hex(3)}", ledger, self.local.clock.now_ms(), target, secret)
                )
            )
        )

    async def abort(self, settlement_id: str, leg: int) -> None:
        ledger = LEGS[leg].ledger
        target = lock_id(settlement_id, leg)
        raise_for(
            await self.client(ledger).submit(
                self.signed(Abort(f"{target}:a{secrets.token_hex(3)}", ledger, self.local.clock.now_ms(), target))
            )
        )

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


async def claim_entries(local: Local, ledger: str, target: str) -> list[dict]:
    """The `claim` entries of a lock in a ledger's journal."""
    client = local.client(ledger)
    entries: list[dict] = []
    while True:
        page = await client.query(QueryJournal(client.next_query_id(), ledger, len(entries), 200))
        entries += page["entries"]
        if not page["entries"] or len(entries) >= page["head"]:
            break
    return [entry for entry in entries if entry["kind"] == "claim" and entry["instruction"]["lock_id"] == target]


async def logged(process: ServiceProcess, text: str, timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        while text not in process.log_path.read_text(errors="replace"):
            assert process.process.poll() is None, f"{process.party} exited: {process.log_path.read_text()[-2000:]}"
            await trio.sleep(0.05)


class Services:
    """The two ledger processes and the watchtower process, started ready and funded."""

    def __init__(self, tmp_path, broker) -> None:
        self.world = standard_world(tmp_path, broker=broker.url)
        self.ledgers = [ServiceProcess(self.world, "ledger", ledger, broker.url) for ledger in ("csd", "cbdc-eur")]
        self.watchtower = ServiceProcess(self.world, "watchtower", "coordinator", broker.url)

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
        await logged(self.watchtower, "watchtower watching")
        return local

    def stop(self) -> dict[str, int]:
        return {process.log_path.name: process.stop() for process in self.processes}


async def test_watchtower_process_claims_leg_1_after_the_coordinator_dies_having_claimed_leg_0(tmp_path, broker):
    services = Services(tmp_path, broker)
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            with trio.fail_after(60):
                local = await services.start(bus, nursery)
                coordinator = HandCoordinator(local)
                before = await balances(local)
                settlement_id, secret = await coordinator.lock_both()
                assert [await coordinator.state(settlement_id, leg) for leg in (0, 1)] == ["held", "held"]

                await coordinator.claim(settlement_id, 0, secret)  # ... and the coordinator dies here
                claimed_leg_0_at = trio.current_time()
                await coordinator.until_state(settlement_id, 1, "claimed", timeout_s=GRACE_S + 5)
                assert trio.current_time() - claimed_leg_0_at >= GRACE_S * 0.9  # it let the coordinator have its grace

                assert await balances(local) == moved_by(before, 1)
                claims = await claim_entries(local, "csd", lock_id(settlement_id, 1))
                assert len(claims) == 1
                assert claims[0]["instruction"]["id"].startswith(f"{lock_id(settlement_id, 1)}:w")  # the watchtower's
                assert "coordinator" in claims[0]["instruction"]["sigs"]
                await logged(services.watchtower, f"settlement {settlement_id}: coordinator silent after leg 0", 5)
            nursery.cancel_scope.cancel()
    finally:
        codes = services.stop()
    assert set(codes.values()) == {0}, codes


async def test_watchtower_process_leaves_leg_1_held_when_leg_0_was_aborted(tmp_path, broker):
    """Leg 0 aborted by the coordinator: the settlement rolled back, and the watchtower
    must not touch leg 1, which stays held until the coordinator aborts it too. A second
    settlement, claimed on leg 0 after that abort, shows the watchtower was watching: it
    finishes that one, and only that one."""
    services = Services(tmp_path, broker)
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            with trio.fail_after(60):
                local = await services.start(bus, nursery)
                coordinator = HandCoordinator(local)
                before = await balances(local)
                rolled_back, _ = await coordinator.lock_both()
                await coordinator.abort(rolled_back, 0)
                aborted_at = trio.current_time()
                assert await coordinator.state(rolled_back, 0) == "aborted"

                finished, secret = await coordinator.lock_both()
                await coordinator.claim(finished, 0, secret)
                await coordinator.until_state(finished, 1, "claimed", timeout_s=GRACE_S + 5)
                await trio.sleep(max(0.0, aborted_at + GRACE_S + 1 - trio.current_time()))

                assert await coordinator.state(rolled_back, 1) == "held"
                assert await claim_entries(local, "csd", lock_id(rolled_back, 1)) == []
                await coordinator.abort(rolled_back, 1)
                assert await coordinator.state(rolled_back, 1) == "aborted"
                assert await balances(local) == moved_by(before, 1)  # the finished settlement alone
            nursery.cancel_scope.cancel()
    finally:
        codes = services.stop()
    assert set(codes.values()) == {0}, codes
