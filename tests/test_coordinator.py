"""The coordinator in one process on the in-memory bus, with a mock clock: every path,
every timeout, a crash after every step, outages far longer than Δ, the backstop, the
watchtowers, and unreliable replies. Outcomes are checked against the ledgers' real
balances and lock states."""

from __future__ import annotations

from unittest.mock import ANY

import attrs
import pytest
import trio
import trio.testing

from engine.coordinator.metrics import CoordinatorMetrics
from engine.watchtower import Watchtower
from engine.world.local import Local, dvp_legs, standard_world
from protocols import canonical
from protocols.bus.clock import ServiceClock
from protocols.bus.faults import Faults, FaultyBus, except_fences
from protocols.bus.memory import MemoryBus
from protocols.envelope import is_batch
from protocols.errors import Code, Rejected
from protocols.messages import QueryLock, QueryLocks, SettlementLeg
from protocols.settlement import Decision, Phase, Timing, lock_id
from protocols.signing import decode_signed

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)  # Δ = 2.5 s, backstop 4 h
SHORT_BACKSTOP = attrs.evolve(TIMING, backstop_ms=120_000)  # where a test waits out a backstop: fewer retries
HOUR_S = 3_600
CROSS_DVP = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
CROSS_PVP = (
    SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 50_000),
    SettlementLeg("cbdc-multi", "a-usd", "b-usd", "USD", 54_000),
)
SAME_DVP = dvp_legs("unified", "a", "b", 100, "unified", "EUR", "b", "a", 99_000)
SAME_PVP = (SettlementLeg("unified", "b", "a", "EUR", 50_000), SettlementLeg("unified", "a", "b", "USD", 54_000))
PARTIES = ("bank-b", "bank-a")  # bank-b pays leg 0, bank-a pays leg 1


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class World:
    """The standard world running in this test's nursery."""

    def __init__(self, local: Local) -> None:
        self.local = local

    async def balances(self, legs) -> dict[tuple[str, str], dict[str, int]]:
        """Balances of every account the legs touch, by (ledger, account)."""
        return {
            (leg.ledger, account): await self.local.balances(leg.ledger, account)
            for leg in legs
            for account in (leg.from_account, leg.to_account)
        }

    async def lock_state(self, ledger: str, lock: str) -> str | None:
        client = self.local.client(ledger)
        try:
            return (await client.query(QueryLock(client.next_query_id(), ledger, lock)))["state"]
        except Exception:
            return None

    async def submit_many(self, coordinator, legs, count: int, *, apart_s: float = 0.0) -> list:
        """`count` new settlements of these legs submitted at once (or `apart_s` apart),
        their records in the order they ended."""
        records = []

        async def one() -> None:
            records.append(await coordinator.submit(self.local.settlement("dvp", legs, PARTIES)))

        async with trio.open_nursery() as many:
            for _ in range(count):
                many.start_soon(one)
                await trio.sleep(apart_s)
        return records

    async def held_locks(self) -> list:
        held = []
        for ledger in self.local.services:
            client = self.local.client(ledger)
            held += await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 100))
        return held


async def start(nursery, tmp_path, bus=None, *, ledgers=("csd", "cbdc-eur", "cbdc-multi", "unified")) -> World:
    world = standard_world(tmp_path)
    local = Local(world, bus or MemoryBus(), nursery)
    for ledger in ledgers:
        await local.start_ledger(ledger)
    await local.fund_standard()
    return World(local)


def moved(before, after, legs, times: int = 1) -> bool:
    """Every leg moved exactly its amount, `times` over, and nothing else moved."""
    expected = {key: dict(assets) for key, assets in before.items()}
    for leg in legs:
        payer, payee = expected[(leg.ledger, leg.from_account)], expected[(leg.ledger, leg.to_account)]
        payer[leg.asset] = payer.get(leg.asset, 0) - leg.amount * times
        payee[leg.asset] = payee.get(leg.asset, 0) + leg.amount * times
    return _nonzero(expected) == _nonzero(after)


def unchanged(before, after) -> bool:
    return _nonzero(before) == _nonzero(after)


def _nonzero(balances):
    return {key: {asset: amount for asset, amount in assets.items() if amount} for key, assets in balances.items()}


@pytest.mark.parametrize(
    "legs, kind",
    [(CROSS_DVP, "dvp"), (CROSS_PVP, "pvp"), (SAME_DVP, "dvp"), (SAME_PVP, "pvp")],
    ids=["cross-dvp", "cross-pvp", "same-dvp", "same-pvp"],
)
async def test_settlement_settles_both_legs(tmp_path, autojump_clock, legs, kind):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        before = await w.balances(legs)
        record = await coordinator.submit(w.local.settlement(kind, legs, PARTIES))
        assert record.phase is Phase.SETTLED, record
        assert moved(before, await w.balances(legs), legs)
        assert await w.held_locks() == []
        expected_steps = (
            ["pending", "settled"]
            if legs[0].ledger == legs[1].ledger
            else ["pending", "locking", "locked", "claiming", "settled"]
        )
        assert [phase for phase, _ in record.steps] == expected_steps
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", [0, 1])
async def test_lock_refused_on_either_leg_fails_and_releases_the_other(tmp_path, autojump_clock, leg):
    legs = tuple(attrs.evolve(one, amount=10**15) if index == leg else one for index, one in enumerate(CROSS_DVP))
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        before = await w.balances(legs)
        record = await coordinator.submit(w.local.settlement("dvp", legs, PARTIES))
        assert record.phase is Phase.FAILED
        assert record.reason_code == "insufficient_funds" and legs[leg].ledger in record.reason
        assert unchanged(before, await w.balances(legs))
        assert await w.held_locks() == []
        other = 1 - leg
        assert await w.lock_state(legs[other].ledger, lock_id(record.settlement_id, other)) == "cancelled"
        assert record.decision is Decision.ABORT
        nursery.cancel_scope.cancel()


async def test_unknown_account_fails_with_the_ledgers_reason(tmp_path, autojump_clock):
    legs = (SettlementLeg("cbdc-eur", "nobody", "a-eur", "EUR", 5), CROSS_DVP[1])
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        record = await coordinator.submit(w.local.settlement("dvp", legs, PARTIES))
        assert (record.phase, record.reason_code) == (Phase.FAILED, "unknown_account")
        assert await w.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_lock_not_confirmed_in_time_rolls_back_once_the_silent_ledger_answers(tmp_path, autojump_clock):
    """cbdc-multi is down: its lock is never confirmed, the settlement is aborted and the
    EUR lock cancelled at once; it ends only when cbdc-multi can say its lock is absent
    (it might have been placed just before the ledger went down)."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        before = await w.balances(CROSS_PVP[:1])
        w.local.stop_ledger("cbdc-multi")
        start_ms = coordinator.clock.now_ms()

        down_s = 300  # far past the lock wait: long enough to tell waiting from giving up, in few retries

        async def restart_later() -> None:
            await trio.sleep(down_s)
            await w.local.start_ledger("cbdc-multi")

        nursery.start_soon(restart_later)
        record = await coordinator.submit(w.local.settlement("pvp", CROSS_PVP, PARTIES))
        assert (record.phase, record.reason_code, record.decision) == (Phase.ROLLED_BACK, "timeout", Decision.ABORT)
        steps = dict(record.steps)
        assert steps["rolling_back"] - start_ms >= TIMING.lock_wait_ms  # it waited the full lock wait
        assert steps["rolled_back"] - start_ms >= down_s * 1000  # and until cbdc-multi answered
        assert unchanged(before, await w.balances(CROSS_PVP[:1]))
        assert await w.lock_state("cbdc-eur", lock_id(record.settlement_id, 0)) == "cancelled"
        assert await w.lock_state("cbdc-multi", lock_id(record.settlement_id, 1)) is None  # never placed
        nursery.cancel_scope.cancel()


async def test_a_new_settlement_and_its_locks_are_one_row_of_the_journal(tmp_path, autojump_clock):
    """Accepted and locked in one step, a settlement is journaled as one transition
    holding both steps and its secrets, not as a row for each: a row per settlement per
    step. Its record read back is the same either way."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        w.local.stop_ledger("cbdc-multi")  # the settlement stays locking: its rows are not compacted yet
        locking = trio.Event()
        coordinator.on_phase = lambda record: record.phase is Phase.LOCKING and locking.set()
        settlement = w.local.settlement("pvp", CROSS_PVP, PARTIES)
        nursery.start_soon(coordinator.submit, settlement)
        await locking.wait()
        settlement_id = decode_signed(settlement).msg.id
        rows = coordinator.journal._reader.execute(
            "SELECT changes, length(secret) FROM transitions WHERE settlement_id = ?", (settlement_id,)
        ).fetchall()
        assert [(canonical.decode(changes.encode())["steps"], drew) for changes, drew in rows] == [
            ([["pending", ANY], ["locking", ANY]], 32)
        ]
        record = coordinator.journal.get(settlement_id)
        assert record is not None and [phase for phase, _ in record.steps] == ["pending", "locking"]
        assert record.instruction == settlement and len(record.sent) == 2
        nursery.cancel_scope.cancel()


async def test_a_settled_settlements_wake_ups_cost_no_step(tmp_path, autojump_clock):
    """The time-outs a settlement set while it was driven (its lock wait, its claims'
    deadlines) come due long after it settled: they are dropped, not fed to the core as
    steps that would change nothing."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert record.phase is Phase.SETTLED
        steps = coordinator.steps
        await trio.sleep(60)  # past every deadline it set: its lock wait's, its claims'
        assert coordinator.steps == steps
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert record.phase is Phase.SETTLED and coordinator.steps > steps  # still driving
        nursery.cancel_scope.cancel()


def silence(bus: MemoryBus, ledger: str, seed: int) -> tuple[FaultyBus, dict[str, bool]]:
    """A bus on which every request to `ledger` is lost while `switch["on"]`."""
    switch = {"on": False}
    faulty = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=seed,
        applies=lambda service, payload: switch["on"] and service == f"ledger/{ledger}",
    )
    return faulty, switch


def cut_off_from(coordinator, switch: dict[str, bool], nursery, until_ms) -> None:
    """From the commit on, `switch` on until the coordinator's clock reads `until_ms(record)`."""

    async def end_outage_at(at_ms: int) -> None:
        await trio.sleep_until(coordinator.clock.trio_time_at(at_ms))
        switch["on"] = False

    def outage(record) -> None:
        if record.phase is Phase.CLAIMING and record.claimed == 0:
            switch["on"] = True
            nursery.start_soon(end_outage_at, until_ms(record))

    coordinator.on_phase = outage


async def test_a_new_settlement_past_the_intake_bound_is_refused_busy_and_recorded_nowhere(tmp_path, autojump_clock):
    """Two settlements in flight (csd silent) fill an intake of two: a third, new, is
    refused `busy` and not journaled; one of the two sent again is still answered once
    final; once they end, the third sent again is accepted and settles."""
    bus = MemoryBus()
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        faulty, switch = silence(bus, "csd", seed=1)
        switch["on"] = True
        coordinator, _ = await w.local.start_coordinator(TIMING, watchtower=False, bus=faulty, intake_max=2)
        metrics = CoordinatorMetrics(coordinator).registry
        held = [w.local.settlement("dvp", CROSS_DVP, PARTIES) for _ in range(2)]
        third = w.local.settlement("dvp", SAME_DVP, PARTIES)
        records = []

        async def submit(raw: bytes) -> None:
            records.append(await coordinator.submit(raw))

        for raw in held:
            nursery.start_soon(submit, raw)
        await trio.sleep(0.1)
        assert coordinator.in_flight == 2
        with pytest.raises(Rejected) as refused:
            await coordinator.submit(third)
        assert (refused.value.code, refused.value.field) == (Code.BUSY, "$")
        assert coordinator.journal.get(decode_signed(third).msg.id) is None
        assert metrics.get_sample_value("lockstep_coordinator_busy_total") == 1
        assert metrics.get_sample_value("lockstep_coordinator_intake_settlements") == 2
        switch["on"] = False  # csd answers again: the two end
        again = await coordinator.submit(held[0])  # known: answered once final, never busy
        assert again.final
        while len(records) < 2:
            await trio.sleep(0.1)
        assert all(r.final for r in records) and coordinator.in_flight == 0
        assert (await coordinator.submit(third)).phase is Phase.SETTLED
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", [0, 1])
async def test_a_ledger_cut_off_for_an_hour_after_the_commit_still_settles_both_legs(tmp_path, autojump_clock, leg):
    """Either ledger unreachable from the commit on for an hour, far past the time to
    decide and hundreds of Δ: the locks cannot time out, so both legs settle when it
    answers again."""
    bus = MemoryBus()
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        faulty, switch = silence(bus, CROSS_DVP[leg].ledger, seed=1)
        coordinator, _ = await w.local.start_coordinator(TIMING, watchtower=False, bus=faulty)
        cut_off_from(coordinator, switch, nursery, lambda record: record.steps[-1][1] + HOUR_S * 1000)
        before = await w.balances(CROSS_DVP)
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert record.phase is Phase.SETTLED, record
        assert [p for p, _ in record.steps] == ["pending", "locking", "locked", "claiming", "settled"]
        assert dict(record.steps)["settled"] - dict(record.steps)["claiming"] >= HOUR_S * 1000
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        assert await w.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_leg_1_cut_off_past_its_backstop_is_reported_one_legged(tmp_path, autojump_clock):
    """The one way left to lose atomicity: leg 0 claimed, then leg 1's ledger out of
    everyone's reach until leg 1's backstop, when its ledger refunds it by itself."""
    bus = MemoryBus()
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        faulty, switch = silence(bus, "csd", seed=2)
        coordinator, _ = await w.local.start_coordinator(SHORT_BACKSTOP, watchtower=False, bus=faulty)
        cut_off_from(coordinator, switch, nursery, lambda record: record.backstop_ms[1] + 1_000)
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert (record.phase, record.decision) == (Phase.ONE_LEGGED, Decision.COMMIT), record
        assert record.reason == "leg 0 claimed but leg 1 is refunded"
        assert await w.lock_state("cbdc-eur", lock_id(record.settlement_id, 0)) == "claimed"
        assert await w.lock_state("csd", lock_id(record.settlement_id, 1)) == "refunded"
        nursery.cancel_scope.cancel()


async def test_leg_0_cut_off_past_its_backstop_leaves_leg_1_unclaimed_and_both_refunded(tmp_path, autojump_clock):
    """Committed, but leg 0's ledger unreachable until leg 0's backstop: the claim secret
    never reached anyone, so leg 1 is not claimed either; both backstops refund."""
    bus = MemoryBus()
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        faulty, switch = silence(bus, "cbdc-eur", seed=3)
        coordinator, _ = await w.local.start_coordinator(SHORT_BACKSTOP, watchtower=False, bus=faulty)
        cut_off_from(coordinator, switch, nursery, lambda record: record.backstop_ms[0] + 1)
        before = await w.balances(CROSS_DVP)
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert (record.phase, record.reason_code) == (Phase.ROLLED_BACK, "lock_expired"), record
        assert [p for p, _ in record.steps] == ["pending", "locking", "locked", "claiming", "rolled_back"]
        assert unchanged(before, await w.balances(CROSS_DVP))
        for index, leg in enumerate(CROSS_DVP):
            assert await w.lock_state(leg.ledger, lock_id(record.settlement_id, index)) == "refunded"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.LOCKING, Phase.LOCKED, Phase.CLAIMING])
async def test_coordinator_crash_after_each_step_resumes_to_settled(tmp_path, autojump_clock, phase):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False)

        def crash(record):
            if record.phase is phase:
                scope.cancel()

        coordinator.on_phase = crash
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        before = await w.balances(CROSS_DVP)
        nursery.start_soon(w.local.send_settlement, raw)
        await wait_cancelled(scope)
        settlement_id = decode_signed(raw).msg.id
        restarted, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        record = await restarted.wait(settlement_id)
        assert record.phase is Phase.SETTLED, record
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        assert await w.held_locks() == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "down_s, end",
    [(TIMING.total_ms() / 1000 + 1, "cancelled"), (TIMING.backstop_ms / 1000 + 10, "refunded")],
    ids=["past-the-time-to-decide", "past-the-backstop"],
)
async def test_coordinator_down_before_deciding_past_the_time_to_decide_aborts(tmp_path, autojump_clock, down_s, end):
    """Killed with both locks placed and nothing decided (neither receipt heard);
    restarted too late to commit, it aborts: the locks are cancelled, or, past their
    backstop, found refunded."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        deaf = FaultyBus(w.local.bus, Faults(drop_reply=1.0), seed=3, applies=except_fences)
        coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False, bus=deaf)
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        before = await w.balances(CROSS_DVP)
        nursery.start_soon(w.local.send_settlement, raw)
        locks = [(leg.ledger, lock_id(decode_signed(raw).msg.id, index)) for index, leg in enumerate(CROSS_DVP)]
        while [await w.lock_state(*lock) for lock in locks] != ["held", "held"]:
            await trio.sleep(0.001)
        assert coordinator.phases() == {Phase.LOCKING: 1}
        scope.cancel()
        await wait_cancelled(scope)
        await trio.sleep(down_s)
        restarted, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        record = await restarted.wait(decode_signed(raw).msg.id)
        assert (record.phase, record.decision) == (Phase.ROLLED_BACK, Decision.ABORT)
        assert unchanged(before, await w.balances(CROSS_DVP))
        for index, leg in enumerate(CROSS_DVP):
            assert await w.lock_state(leg.ledger, lock_id(record.settlement_id, index)) == end
        nursery.cancel_scope.cancel()


async def test_coordinator_down_for_an_hour_after_committing_settles_both_legs_when_back(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False)
        coordinator.on_phase = lambda record: record.phase is Phase.CLAIMING and scope.cancel()
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        before = await w.balances(CROSS_DVP)
        nursery.start_soon(w.local.send_settlement, raw)
        await wait_cancelled(scope)
        await trio.sleep(HOUR_S)
        restarted, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        record = await restarted.wait(decode_signed(raw).msg.id)
        assert record.phase is Phase.SETTLED, record
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        nursery.cancel_scope.cancel()


async def test_restarted_after_leg_0_was_claimed_it_claims_leg_1_though_leg_0s_ledger_is_down(tmp_path, autojump_clock):
    """Leg 0's claim is journaled: a coordinator killed after it claims leg 1 at once on
    restart, without waiting for leg 0's ledger (which is down) to confirm it again."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False)
        coordinator.on_phase = lambda record: record.claimed == 1 and scope.cancel()
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        nursery.start_soon(w.local.send_settlement, raw)
        await wait_cancelled(scope)
        w.local.stop_ledger("cbdc-eur")
        restarted, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        with trio.fail_after(TIMING.claim_deadline_ms / 1000):
            record = await restarted.wait(decode_signed(raw).msg.id)
        assert record.phase is Phase.SETTLED, record
        assert await w.lock_state("csd", lock_id(record.settlement_id, 1)) == "claimed"
        nursery.cancel_scope.cancel()


async def test_watchtower_completes_a_settlement_whose_coordinator_died_after_the_first_claim(tmp_path, autojump_clock):
    """The coordinator never reaches leg 1 (its claims to csd are lost, then it dies);
    a watchtower of its own sees leg 0's claim and the secret in it, and claims leg 1."""
    bus = MemoryBus()
    claims_to_csd_lost = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=2,
        applies=lambda service, payload: service == "ledger/csd" and b'"claim"' in payload,
    )
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        w.local.bus = claims_to_csd_lost
        _coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False)
        w.local.bus = bus
        world = w.local.world
        watchtower = Watchtower(
            "coordinator",
            world.keys["coordinator"],
            world.registry,
            bus,
            ["csd", "cbdc-eur"],
            ServiceClock(),
            grace_ms=500,
        )
        await nursery.start(watchtower.run)
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        settlement_id = decode_signed(raw).msg.id
        before = await w.balances(CROSS_DVP)
        nursery.start_soon(w.local.send_settlement, raw)
        with trio.fail_after(30):
            while await w.lock_state("cbdc-eur", lock_id(settlement_id, 0)) != "claimed":
                await trio.sleep(0.01)
        scope.cancel()  # the coordinator dies between its claims
        with trio.fail_after(TIMING.margin_ms / 1000):
            while await w.lock_state("csd", lock_id(settlement_id, 1)) != "claimed":
                await trio.sleep(0.05)
        assert watchtower.forwarded == 1
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        nursery.cancel_scope.cancel()


async def watchtower_of(w: World, party: str, grace_ms: int = 500) -> Watchtower:
    """A watchtower of its own, run by `party`, following every ledger and the coordinator's decisions."""
    world = w.local.world
    return Watchtower(
        party,
        world.keys[party],
        world.registry,
        w.local.bus,
        ["csd", "cbdc-eur", "cbdc-multi"],
        ServiceClock(),
        grace_ms=grace_ms,
        coordinators=("coordinator",),
    )


@pytest.mark.parametrize("outcome", ["commit", "abort"])
async def test_a_watchtower_forwards_a_decision_no_ledger_has_seen_yet(tmp_path, autojump_clock, outcome):
    """The coordinator decides and publishes, but none of its claims or cancels reaches a
    ledger, and it dies: a watchtower run by a bank forwards the published decision to
    every leg (a commit in order: leg 1 after leg 0)."""
    bus = MemoryBus()
    legs = CROSS_DVP if outcome == "commit" else (CROSS_DVP[0], attrs.evolve(CROSS_DVP[1], ledger="cbdc-multi"))
    unheard = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=4,
        applies=lambda service, payload: b'"type":"claim"' in payload or b'"type":"cancel"' in payload,
    )
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        watchtower = await watchtower_of(w, "bank-a")
        await nursery.start(watchtower.run)
        _coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False, bus=unheard)
        raw = w.local.settlement("dvp", legs, PARTIES)  # for an abort, leg 1 names a ledger without the bond
        settlement_id = decode_signed(raw).msg.id
        before = await w.balances(legs if outcome == "commit" else legs[:1])
        nursery.start_soon(w.local.send_settlement, raw)
        with trio.fail_after(30):
            while settlement_id not in watchtower._watches:
                await trio.sleep(0.001)
        scope.cancel()  # the decision is out: the coordinator dies
        with trio.fail_after(30):
            while await w.held_locks():
                await trio.sleep(0.05)
        if outcome == "commit":
            assert moved(before, await w.balances(legs), legs)
            assert watchtower.forwarded == 2
            for index, leg in enumerate(legs):
                assert await w.lock_state(leg.ledger, lock_id(settlement_id, index)) == "claimed"
        else:
            assert unchanged(before, await w.balances(legs[:1]))
            assert watchtower.forwarded == 1
            assert await w.lock_state("cbdc-eur", lock_id(settlement_id, 0)) == "cancelled"
        nursery.cancel_scope.cancel()


async def test_lost_duplicate_and_reordered_messages_are_harmless(tmp_path, autojump_clock):
    bus = MemoryBus()
    unreliable = FaultyBus(
        bus,
        Faults(drop_request=0.1, drop_reply=0.1, duplicate=0.2, delay=0.3, delay_s_max=0.05),
        seed=7,
        applies=lambda service, payload: service.startswith("ledger/"),
    )
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        w.local.bus = unreliable
        coordinator, _ = await w.local.start_coordinator(TIMING)
        w.local.bus = bus
        before = await w.balances(CROSS_DVP)
        records = await w.submit_many(coordinator, CROSS_DVP, 20)
        assert sum(unreliable.injected.values()) >= 10
        settled = [r for r in records if r.phase is Phase.SETTLED]
        assert all(r.phase in (Phase.SETTLED, Phase.ROLLED_BACK) for r in records), [r.phase for r in records]
        assert len(settled) >= 15
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP, times=len(settled))
        assert await w.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_same_settlement_submitted_twice_runs_once(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        before = await w.balances(CROSS_DVP)
        first, second = await coordinator.submit(raw), await coordinator.submit(raw)
        assert first == second and first.phase is Phase.SETTLED
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        nursery.cancel_scope.cancel()


async def wait_cancelled(scope: trio.CancelScope) -> None:
    with trio.fail_after(30):
        while not scope.cancel_called:
            await trio.sleep(0.001)
    await trio.sleep(0.01)


async def test_leg_0_claimed_with_its_reply_lost_is_never_rolled_back(tmp_path, autojump_clock):
    """Leg 0's claim is applied but every answer from its ledger is lost until after
    leg 0's expiry (yet before leg 1's). The coordinator cannot tell whether leg 0 was
    claimed, so it must wait to learn it, then claim leg 1: never abort leg 1."""
    bus = MemoryBus()
    silenced = {"on": False}
    deaf = FaultyBus(
        bus,
        Faults(drop_reply=1.0),
        seed=3,
        applies=lambda service, payload: (
            silenced["on"] and service == "ledger/cbdc-eur" and except_fences(service, payload)
        ),
    )
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        w.local.bus = deaf
        coordinator, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        w.local.bus = bus

        def deafen(record):
            if record.phase is Phase.CLAIMING:
                silenced["on"] = True
                nursery.start_soon(hear_again_at, record.expiry_ms[0] + TIMING.clock_skew_ms_max + 500)

        async def hear_again_at(at_ms: int) -> None:
            await trio.sleep_until(coordinator.clock.trio_time_at(at_ms))
            silenced["on"] = False

        coordinator.on_phase = deafen
        before = await w.balances(CROSS_DVP)
        record = await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))
        assert record.phase is Phase.SETTLED, record
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        nursery.cancel_scope.cancel()


async def test_two_copies_of_a_new_settlement_arriving_together_run_once(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
        before = await w.balances(CROSS_DVP)
        records = []

        async def send() -> None:
            records.append(await coordinator.submit(raw))

        async with trio.open_nursery() as both:
            both.start_soon(send)
            both.start_soon(send)
        assert [r.phase for r in records] == [Phase.SETTLED, Phase.SETTLED]
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP)
        nursery.cancel_scope.cancel()


async def test_a_settlement_naming_the_coordinator_as_a_party_is_refused(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        with pytest.raises(Rejected) as refusal:
            await coordinator.submit(w.local.settlement("dvp", CROSS_DVP, ("coordinator", "bank-a")))
        assert (refusal.value.code, refusal.value.field) == (Code.NOT_AUTHORISED, "parties")
        nursery.cancel_scope.cancel()


class _SlowReceive:
    """The journal writer's side of its channel, each receipt late by `delay_s`: commits
    slow enough that many steps are worked out while one is on its way to the disk."""

    def __init__(self, receive, delay_s: float) -> None:
        self._receive = receive
        self._delay_s = delay_s

    async def receive(self):
        item = await self._receive.receive()
        await trio.sleep(self._delay_s)
        return item

    def receive_nowait(self):
        return self._receive.receive_nowait()


class _ClaimWitness(MemoryBus):
    """The in-memory bus, noting for every claim that leaves the decision the coordinator's
    journal held on disk for its settlement at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.journal = None
        self.decisions: list[Decision | None] = []

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        value = canonical.decode(payload, bytes_max=len(payload))
        for item in value["items"] if is_batch(value) else [value]:
            if item.get("type") == "claim" and self.journal is not None:
                record = self.journal.get(item["lock_id"].rsplit(":", 1)[0])
                self.decisions.append(None if record is None else record.decision)
        return await super().request(service, payload, timeout_s=timeout_s)


async def test_no_claim_leaves_before_its_decision_is_on_disk_however_slow_the_disk(tmp_path, autojump_clock):
    """The shell works out the next step while a commit is on its way; what a step sends
    still waits for every gating commit before it, so a claim (which reveals the secret)
    never leaves ahead of the decision it acts on, with many settlements interleaved."""
    bus = _ClaimWitness()
    legs = dvp_legs("csd", "a-sec", "b-sec", 1, "cbdc-eur", "EUR", "b-eur", "a-eur", 100)
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path, bus)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        coordinator.journal._receive = _SlowReceive(coordinator.journal._receive, 0.05)
        bus.journal = coordinator.journal
        before = await w.balances(legs)
        records = await w.submit_many(coordinator, legs, 24, apart_s=0.003)
        assert [r.phase for r in records] == [Phase.SETTLED] * 24
        assert moved(before, await w.balances(legs), legs, times=24)
        assert bus.decisions == [Decision.COMMIT] * 48
        nursery.cancel_scope.cancel()
