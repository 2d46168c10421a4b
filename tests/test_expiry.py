"""Expiry on the ledger's own clock, through the real `LedgerService` on a `MemoryBus`:
a lock refunds itself at its expiry with nobody asking, the claim/refund boundary is
exact to the millisecond (claim while now < expiry, refund when now >= expiry), and the
list of expiring holds is soonest first. A `MockClock` that jumps whenever every task
waits makes hours of ledger time take no real time."""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager, suppress

import pytest
import trio
import trio.testing

from ledgers.config import LedgerConfig
from ledgers.ledger import Ledger
from ledgers.service import LedgerService
from ledgers.store import Store
from protocols.bus import entries_topic
from protocols.bus.client import LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.memory import MemoryBus
from protocols.canonical import decode
from protocols.errors import Code, Rejected
from protocols.htlc import hashlock_of
from protocols.messages import Claim, Issue, Lock, OpenAccount, QueryBalances, QueryLock, QueryLocks, Receipt, Refund
from protocols.signing import sign

SECRET = b"\x42" * 32
HOUR_MS = 3_600_000
REAL_SECONDS_MAX = 30  # a test here takes well under a second of real time


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class Running:
    """A ledger service on a memory bus and a client that signs as any party."""

    def __init__(
        self, world, service: LedgerService, client: LedgerClient, bus: MemoryBus, clock: ServiceClock
    ) -> None:
        self.world = world
        self.service = service
        self.client = client
        self.bus = bus
        self.clock = clock
        self.store = service.ledger.store
        self._ids = 0

    async def send(self, cls: type, *signers: str, **fields) -> Receipt:
        self._ids += 1
        fields.setdefault("id", f"i{self._ids}")
        msg = cls(ledger="unified", ts_ms=self.clock.now_ms(), **fields)
        return await self.client.submit(sign(msg, *((party, self.world.keys[party]) for party in signers)))

    async def query(self, cls: type, **fields):
        return await self.client.query(cls(id=self.client.next_query_id(), ledger="unified", **fields))

    async def lock(self, lock_id: str, amount: int, expiry_ms: int) -> Receipt:
        receipt = await self.send(
            Lock,
            "bank-a",
            id=lock_id,
            owner_account="a",
            beneficiary_account="b",
            asset="EUR",
            amount=amount,
            hashlock=hashlock_of(SECRET),
            expiry_ms=expiry_ms,
            abort_by=(),
        )
        assert receipt.applied, receipt
        return receipt

    async def sleep_until_ms(self, at_ms: int) -> None:
        """Wait until the ledger's clock reads exactly `at_ms`."""
        await trio.sleep_until(self.clock.trio_time_at(at_ms))
        assert self.clock.now_ms() == at_ms


@asynccontextmanager
async def real_time_limit(seconds: float):
    """Fail after `seconds` of real time. A MockClock that autojumps moves only when every
    task waits, so a service that spins without sleeping (say, waking again and again at
    an expiry it does not act on) would freeze mock time and hang the test: no trio
    deadline could fire. A real-time timer thread cancels the test instead."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:

        def cancel() -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

        timer = threading.Timer(seconds, cancel)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(
            f"took more than {seconds} s of real time: a task kept running without waiting, "
            f"so mock time stood still at {trio.current_time():.3f} s"
        )


@asynccontextmanager
async def running_ledger(world):
    bus = MemoryBus()
    clock = ServiceClock()
    config = LedgerConfig.load(world.ledger_configs["unified"])
    store = Store(config.database)
    ledger = Ledger(config, world.registry, world.keys["unified"], store, clock.now_ms())
    service = LedgerService(ledger, bus, clock)
    client = LedgerClient(bus, "unified", world.keys["unified"].public)
    try:
        async with real_time_limit(REAL_SECONDS_MAX), trio.open_nursery() as nursery:
            await nursery.start(service.run)
            running = Running(world, service, client, bus, clock)
            assert (await running.send(OpenAccount, "csd-op", account="a", owner="bank-a")).applied
            assert (await running.send(OpenAccount, "csd-op", account="b", owner="bank-b")).applied
            assert (await running.send(Issue, "ecb", asset="EUR", account="a", amount=100)).applied
            yield running
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_lock_refunds_itself_at_expiry_with_nobody_asking(world, autojump_clock):
    real_start = time.monotonic()
    async with running_ledger(world) as ledger:
        async with ledger.bus.subscribe(entries_topic("unified")) as entries:
            expiry_ms = ledger.clock.now_ms() + HOUR_MS
            placed = await ledger.lock("l1", 40, expiry_ms)
            assert ledger.store.balance("a", "EUR") == (60, 40)
            await trio.sleep(2 * HOUR_MS / 1000)
            # read the store itself: a query would run a batch, which refunds by itself
            assert ledger.store.balance("a", "EUR") == (100, 0)
            assert ledger.store.lock("l1").state.value == "refunded"
            published = [decode(entries.receive_nowait()) for _ in range(2)]
            with pytest.raises(trio.WouldBlock):
                entries.receive_nowait()
        assert [(entry["kind"], entry["seq"]) for entry in published] == [
            ("lock", placed.seq),
            ("expire", placed.seq + 1),
        ]
        expired = published[1]
        assert expired["time_ms"] == expiry_ms
        assert expired["instruction"] is None
        assert expired["effects"]["locks"] == [["l1", "refunded"]]
        assert sorted(expired["effects"]["balances"]) == [["a", "EUR", 40, -40]]
        assert expired["prev_hash"] == placed.entry_hash
        assert await ledger.query(QueryBalances, account="a") == {
            "account": "a",
            "owner": "bank-a",
            "balances": {"EUR": {"available": 100, "locked": 0}},
        }
        assert (await ledger.query(QueryLock, lock_id="l1"))["state"] == "refunded"
    assert time.monotonic() - real_start < 30  # two hours of ledger time


async def test_claim_one_ms_before_expiry_is_accepted(world, autojump_clock):
    async with running_ledger(world) as ledger:
        expiry_ms = ledger.clock.now_ms() + 10_000
        await ledger.lock("l1", 40, expiry_ms)
        await ledger.sleep_until_ms(expiry_ms - 1)
        receipt = await ledger.send(Claim, "bank-b", lock_id="l1", preimage=SECRET)
        assert receipt.applied, receipt
        assert receipt.time_ms == expiry_ms - 1
        assert ledger.store.balance("b", "EUR") == (40, 0)
        assert ledger.store.balance("a", "EUR") == (60, 0)
        await trio.sleep(60)
        assert ledger.store.lock("l1").state.value == "claimed"
        assert ledger.store.balance("b", "EUR") == (40, 0)


async def test_claim_at_the_exact_expiry_ms_is_refused_as_expired(world, autojump_clock):
    async with running_ledger(world) as ledger:
        expiry_ms = ledger.clock.now_ms() + 10_000
        await ledger.lock("l1", 40, expiry_ms)
        await ledger.sleep_until_ms(expiry_ms)
        receipt = await ledger.send(Claim, "bank-b", lock_id="l1", preimage=SECRET)
        assert receipt.time_ms == expiry_ms
        assert (receipt.status, receipt.code) == ("rejected", Code.LOCK_EXPIRED.value), receipt
        assert ledger.store.balance("b", "EUR") == (0, 0)
        assert ledger.store.balance("a", "EUR") == (100, 0)
        assert ledger.store.lock("l1").state.value == "refunded"


async def test_refund_one_ms_before_expiry_is_refused_and_the_lock_stays_held(world, autojump_clock):
    async with running_ledger(world) as ledger:
        expiry_ms = ledger.clock.now_ms() + 10_000
        await ledger.lock("l1", 40, expiry_ms)
        await ledger.sleep_until_ms(expiry_ms - 1)
        receipt = await ledger.send(Refund, "bank-a", lock_id="l1")
        assert receipt.time_ms == expiry_ms - 1
        assert (receipt.status, receipt.code) == ("rejected", Code.LOCK_NOT_EXPIRED.value), receipt
        assert ledger.store.lock("l1").state.value == "held"
        assert ledger.store.balance("a", "EUR") == (60, 40)


async def test_balance_asked_for_at_the_exact_expiry_ms_already_shows_the_refund(world, autojump_clock):
    async with running_ledger(world) as ledger:
        expiry_ms = ledger.clock.now_ms() + 10_000
        await ledger.lock("l1", 40, expiry_ms)
        await ledger.sleep_until_ms(expiry_ms - 1)
        assert (await ledger.query(QueryBalances, account="a"))["balances"]["EUR"] == {"available": 60, "locked": 40}
        await ledger.sleep_until_ms(expiry_ms)
        assert (await ledger.query(QueryBalances, account="a"))["balances"]["EUR"] == {"available": 100, "locked": 0}


async def test_query_locks_lists_expiring_holds_soonest_first(world, autojump_clock):
    async with running_ledger(world) as ledger:
        now_ms = ledger.clock.now_ms()
        for lock_id, after_ms in [
            ("late", 30_000),
            ("soon", 10_000),
            ("middle", 20_000),
            ("taken", 5_000),
            ("tie-b", 20_000),
            ("far", HOUR_MS),
        ]:
            await ledger.lock(lock_id, 5, now_ms + after_ms)
        assert (await ledger.send(Claim, "bank-b", lock_id="taken", preimage=SECRET)).applied

        def listed(locks):
            return [(lock["lock_id"], lock["expiry_ms"] - now_ms, lock["state"]) for lock in locks]

        everything = await ledger.query(QueryLocks, expiring_before_ms=now_ms + 2 * HOUR_MS, limit=100)
        assert listed(everything) == [
            ("soon", 10_000, "held"),
            ("middle", 20_000, "held"),
            ("tie-b", 20_000, "held"),
            ("late", 30_000, "held"),
            ("far", HOUR_MS, "held"),
        ]
        before_late = await ledger.query(QueryLocks, expiring_before_ms=now_ms + 30_000, limit=100)
        assert [lock["lock_id"] for lock in before_late] == ["soon", "middle", "tie-b"]
        first_two = await ledger.query(QueryLocks, expiring_before_ms=now_ms + 2 * HOUR_MS, limit=2)
        assert [lock["lock_id"] for lock in first_two] == ["soon", "middle"]
        await ledger.sleep_until_ms(now_ms + 20_000)
        remaining = await ledger.query(QueryLocks, expiring_before_ms=now_ms + 2 * HOUR_MS, limit=100)
        assert [lock["lock_id"] for lock in remaining] == ["late", "far"]
        with pytest.raises(Rejected) as refused:
            await ledger.query(QueryLocks, expiring_before_ms=now_ms, limit=0)
        assert refused.value.code is Code.INVALID_FIELD


async def test_service_refunds_many_locks_expiring_together_and_sleeps_until_the_next(world, autojump_clock):
    async with running_ledger(world) as ledger:
        now_ms = ledger.clock.now_ms()
        for n in range(10):
            await ledger.lock(f"l{n}", 1, now_ms + 1_000 * (1 + n % 2))
        batches = ledger.service.batches
        await ledger.sleep_until_ms(now_ms + 1_000)
        await trio.testing.wait_all_tasks_blocked()
        assert [lock.lock_id for lock in ledger.store.all_locks() if lock.state.value == "held"] == [
            "l1",
            "l3",
            "l5",
            "l7",
            "l9",
        ]
        await trio.sleep(5)
        assert ledger.store.balance("a", "EUR") == (100, 0)
        assert ledger.service.batches - batches == 2  # one wake per expiry time, no polling
