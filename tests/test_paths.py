"""Multi-hop payments through intermediaries (protocols.paths, engine/desks/paths.py),
in one process on the memory bus with a mock clock: the path chosen from quotes, each
hop accepted by its intermediary's signature, one secret for the whole path, and the
staggered backstops that let every intermediary collect."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from engine.audit.journals import audit, read_over_bus
from engine.desks.paths import PathDesk
from engine.watchtower import Watchtower
from engine.world import paths as world
from engine.world.local import COORDINATOR, Local
from protocols.bus import service_of_coordinator
from protocols.bus.clock import ServiceClock
from protocols.bus.memory import MemoryBus
from protocols.messages import PathPayment, PathStatus
from protocols.paths import PATH_PREFIX, path_id
from protocols.settlement import Phase, Timing
from protocols.signing import decode_signed
from tests import test_coordinator

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
MARGIN_MS = 10_000


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def start(nursery, tmp_path, timing: Timing = TIMING) -> tuple[Local, trio.CancelScope]:
    """The path world, funded, its market makers quoting, and the coordinator with its
    path desk (and the scope that kills it)."""
    local = Local(world.path_world(tmp_path), MemoryBus(), nursery)
    for spec in world.LEDGERS:
        await local.start_ledger(spec.ledger_id)
    await world.fund(local)
    await world.start_intermediaries(local, nursery, MARGIN_MS)
    _, scope = await local.start_coordinator(timing, desks=(PathDesk,))
    return local, scope


async def audited(local: Local) -> None:
    """The auditor's reading of every ledger's journal: clean, nothing one-legged."""
    journals = await read_over_bus(local.bus, local.world.registry, [spec.ledger_id for spec in world.LEDGERS])
    report = audit(journals, grace_ms=60_000)
    assert report.clean, report.text()


async def pay(local: Local, payment_id: str, amount: int = 100_000, source_max: int = 110_000) -> PathStatus:
    """The payer's order sent to the coordinator; the settlement's status once final."""
    raw = world.payment(local, payment_id, amount, source_max, local.clock.now_ms() + 60_000)
    reply = await local.bus.request(service_of_coordinator(COORDINATOR), raw, timeout_s=600)
    return decode_signed(reply, allowed=(PathStatus,)).msg


def settlement_of(local: Local, payment_id: str):
    """The coordinator's record of the payer's payment."""
    order = decode_signed(world.payment(local, payment_id, 1, 1, 0), allowed=(PathPayment,)).msg
    return local.coordinator.journal.get(path_id(order))


async def test_a_payment_from_eur_to_chf_goes_the_cheapest_way_through_two_market_makers(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path)
        before = await world.positions(local)
        status = await pay(local, "pay-1")
        assert status.phase == "settled", status
        after = await world.positions(local)
        assert changes(before, after) == FULL
        await audited(local)
        nursery.cancel_scope.cancel()


FULL = {
    ("bank-a", "EUR"): -105_220,
    ("mm-1", "EUR"): 105_220,
    ("mm-1", "USD"): -113_637,
    ("mm-2", "USD"): 113_637,
    ("mm-2", "CHF"): -100_000,
    ("bank-c", "CHF"): 100_000,
}


def changes(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in before if after[key] != before[key]}


def killing(coordinator, phase: Phase, act) -> trio.Event:
    """`act(record)` once, when the payment's settlement reaches `phase`."""
    done = trio.Event()

    def on_phase(record):
        if record.settlement_id.startswith(PATH_PREFIX) and record.phase is phase and not done.is_set():
            act(record)
            done.set()

    coordinator.on_phase = on_phase
    return done


async def no_locks_held(local: Local) -> None:
    assert await test_coordinator.World(local).held_locks() == []


async def paid_in_full(local: Local, before: dict) -> None:
    """Every party holds what the whole path moves, no lock is left, and the audit is clean."""
    assert changes(before, await world.positions(local)) == FULL
    await no_locks_held(local)
    await audited(local)


@pytest.mark.parametrize("killed_at", [Phase.LOCKING, Phase.CLAIMING])
async def test_the_middle_hops_ledger_killed_leaves_the_path_settled_whole_or_not_at_all(
    tmp_path, autojump_clock, killed_at
):
    """The USD ledger, which carries the middle hop (mm-1 pays mm-2), is killed as the
    path's locks go out, or as they are claimed, and started again 20 s later. Killed as
    they lock, the path is aborted (a lock unconfirmed in time) and every lock placed is
    cancelled; killed as they are claimed, every hop is claimed once it is back. Either
    way each party ends with all of its hops or none: no intermediary pays without being
    paid."""
    async with trio.open_nursery() as nursery:
        local, _scope = await start(nursery, tmp_path)
        before = await world.positions(local)
        killed = killing(local.coordinator, killed_at, lambda record: local.stop_ledger("cbdc-usd"))
        async with trio.open_nursery() as paying:
            paying.start_soon(pay, local, "pay-1")
            await killed.wait()
            await trio.sleep(20)
            await local.start_ledger("cbdc-usd")
        record = settlement_of(local, "pay-1")
        moved = changes(before, await world.positions(local))
        if killed_at is Phase.LOCKING:
            assert record.phase is Phase.ROLLED_BACK and moved == {}, (record, moved)
        else:
            assert record.phase is Phase.SETTLED and moved == FULL, (record, moved)
        await no_locks_held(local)
        await audited(local)
        nursery.cancel_scope.cancel()


async def test_intermediaries_that_never_claim_are_paid_by_the_coordinator_back_from_a_crash(tmp_path, autojump_clock):
    """The coordinator dies the moment it has decided to commit, before any claim, and
    comes back a minute later. The intermediaries do nothing after accepting their hops
    (no watchtower, no claim of their own): the coordinator, from its journal, claims
    every hop, and each is paid."""
    async with trio.open_nursery() as nursery:
        local, scope = await start(nursery, tmp_path)
        before = await world.positions(local)
        killed = killing(local.coordinator, Phase.CLAIMING, lambda record: scope.cancel())
        nursery.start_soon(pay, local, "pay-1")
        await killed.wait()
        await trio.sleep(60)
        assert changes(before, await world.positions(local)) == {}  # locked, none claimed
        coordinator, _ = await local.start_coordinator(TIMING, desks=(PathDesk,))
        assert (await coordinator.wait(settlement_of(local, "pay-1").settlement_id)).phase is Phase.SETTLED
        await paid_in_full(local, before)
        nursery.cancel_scope.cancel()


async def test_with_the_coordinator_gone_for_good_an_intermediarys_watchtower_collects_every_hop(
    tmp_path, autojump_clock
):
    """Leg 0 (mm-2 pays the payee CHF) is claimed while the USD and EUR ledgers are
    down; then the coordinator dies for good. mm-2 never claims anything. mm-1 runs its
    own watchtower: it reads the claim secret off the CHF ledger's journal and claims
    the other hops once their ledgers are back, mm-2's incoming one too. Nobody loses."""
    async with trio.open_nursery() as nursery:
        local, scope = await start(nursery, tmp_path)
        before = await world.positions(local)
        watchtower = Watchtower(
            "mm-1",
            local.world.keys["mm-1"],
            local.world.registry,
            local.bus,
            [spec.ledger_id for spec in world.LEDGERS],
            ServiceClock(),
            grace_ms=TIMING.claim_deadline_ms // 2,
        )
        await nursery.start(watchtower.run)

        def cut_off(record) -> None:
            local.stop_ledger("cbdc-usd")
            local.stop_ledger("cbdc-eur")

        killed = killing(local.coordinator, Phase.CLAIMING, cut_off)
        nursery.start_soon(pay, local, "pay-1")
        await killed.wait()
        with trio.fail_after(60):
            while not (await local.balances("cbdc-chf", world.account(world.PAYEE, "CHF"))).get("CHF"):
                await trio.sleep(0.1)
        scope.cancel()
        await trio.sleep(30)
        await local.start_ledger("cbdc-usd")
        await local.start_ledger("cbdc-eur")
        with trio.fail_after(60):
            while changes(before, await world.positions(local)) != FULL:
                await trio.sleep(0.5)
        await no_locks_held(local)
        await audited(local)
        nursery.cancel_scope.cancel()


async def cut_off_at_commit(local: Local, nursery: trio.Nursery, ledgers: list[str]):
    """Pay "pay-1" and stop `ledgers` the moment the path commits; its record then."""
    records = []

    def cut_off(record) -> None:
        records.append(record)
        for ledger in ledgers:
            local.stop_ledger(ledger)

    killed = killing(local.coordinator, Phase.CLAIMING, cut_off)
    nursery.start_soon(pay, local, "pay-1")
    await killed.wait()
    return records[0]


async def test_an_expiry_race_on_the_middle_hop_is_won_inside_the_intermediarys_margin(tmp_path, autojump_clock):
    """Backstops forced down to a minute, every ledger cut off once the path commits,
    and each brought back a second before its own lock's backstop: the payee's hop at
    its backstop B0, the middle hop (mm-1 pays mm-2) at B1 = B0 + mm-2's 10 s margin,
    the payer's hop at B2 = B1 + mm-1's margin. Every claim lands in the last second of
    its lock, and every intermediary that paid out is paid: the margin, not luck."""
    timing = attrs.evolve(TIMING, backstop_ms=60_000)
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path, timing)
        before = await world.positions(local)
        record = await cut_off_at_commit(local, nursery, [spec.ledger_id for spec in world.LEDGERS])
        backstops = record.backstop_ms
        assert backstops[1] - backstops[0] == MARGIN_MS and backstops[2] - backstops[1] == MARGIN_MS
        for ledger, backstop_ms in zip(("cbdc-chf", "cbdc-usd", "cbdc-eur"), backstops, strict=True):
            await trio.sleep_until(local.clock.trio_time_at(backstop_ms - 1_000))
            await local.start_ledger(ledger)
        settled = await local.coordinator.wait(record.settlement_id)
        assert settled.phase is Phase.SETTLED, settled
        await paid_in_full(local, before)
        nursery.cancel_scope.cancel()


async def test_the_middle_hops_ledger_out_past_its_backstop_is_reported_one_legged_naming_the_unpaid_intermediary(
    tmp_path, autojump_clock
):
    """What the margin cannot cover, detected: the USD ledger stays cut off past the
    middle hop's backstop, so its lock goes back to mm-1 though mm-2 has paid the payee.
    The coordinator ends the payment one-legged, and the audit reports it."""
    timing = attrs.evolve(TIMING, backstop_ms=60_000)
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path, timing)
        before = await world.positions(local)
        record = await cut_off_at_commit(local, nursery, ["cbdc-usd"])
        await trio.sleep_until(local.clock.trio_time_at(record.backstop_ms[1] + 1_000))
        await local.start_ledger("cbdc-usd")
        ended = await local.coordinator.wait(record.settlement_id)
        assert ended.phase is Phase.ONE_LEGGED and "leg 1 is refunded" in ended.reason, ended
        moved = changes(before, await world.positions(local))
        assert moved == {key: value for key, value in FULL.items() if key[1] != "USD"}, moved
        journals = await read_over_bus(local.bus, local.world.registry, [spec.ledger_id for spec in world.LEDGERS])
        report = audit(journals, grace_ms=60_000)
        assert [v.kind.value for v in report.violations] == ["one_legged"], report.text()
        assert "mm-2 paid leg 0 and was not paid leg 1" in report.violations[0].reason, report.text()
        nursery.cancel_scope.cancel()


async def test_a_payment_is_routed_and_settled_under_the_shortest_backstop_the_timing_allows(tmp_path, autojump_clock):
    """The payee's leg backstopped as soon as the timing allows (the time to decide, then
    Δ): the hops are still to be decided before it, Δ ahead, so the path is routed and
    settles, rather than every hop failing its own check."""
    timing = attrs.evolve(TIMING, backstop_ms=TIMING.decide_ms + TIMING.margin_ms)
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path, timing)
        before = await world.positions(local)
        status = await pay(local, "pay-1")
        assert status.phase == "settled", status
        await paid_in_full(local, before)
        nursery.cancel_scope.cancel()


async def test_a_payment_taken_as_the_coordinator_is_stopped_ends_with_it_and_leaves_nothing_behind(
    tmp_path, autojump_clock
):
    """The coordinator hands a desk's message to a task of its own; when it is stopped in
    that same turn, the task first runs with the desk's nursery already closed."""
    desks: list[PathDesk] = []

    def path_desk(coordinator) -> PathDesk:
        desks.append(PathDesk(coordinator))
        return desks[-1]

    async with trio.open_nursery() as nursery:
        local = Local(world.path_world(tmp_path), MemoryBus(), nursery)
        for spec in world.LEDGERS:
            await local.start_ledger(spec.ledger_id)
        _, scope = await local.start_coordinator(TIMING, desks=(path_desk,))
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        order = decode_signed(world.payment(local, "pay-1", 100_000, 110_000, 60_000), allowed=(PathPayment,))
        with trio.CancelScope() as stopping:
            stopping.cancel()
            await desks[0].answer(order, None)
        assert stopping.cancelled_caught
        assert desks[0]._routing == {}
        nursery.cancel_scope.cancel()
