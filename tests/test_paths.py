"""Multi-hop payments through intermediaries (protocols.paths, engine/desks/paths.py),
in one process on the memory bus with a mock clock: the path chosen from quotes, each
hop accepted by its intermediary's signature, one secret for the whole path, and the
staggered backstops that let every intermediary collect."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.audit.journals import audit, read_over_bus
from engine.desks.paths import PathDesk
from engine.world import paths as world
from engine.world.local import COORDINATOR, Local
from protocols.bus import service_of_coordinator
from protocols.bus.memory import MemoryBus
from protocols.messages import SettlementStatus
from protocols.settlement import Timing
from protocols.signing import decode_signed

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
MARGIN_MS = 10_000


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def start(nursery, tmp_path, timing: Timing = TIMING) -> Local:
    local = Local(world.path_world(tmp_path), MemoryBus(), nursery)
    for spec in world.LEDGERS:
        await local.start_ledger(spec.ledger_id)
    await world.fund(local)
    await world.start_intermediaries(local, nursery, MARGIN_MS)
    await local.start_coordinator(timing, desks=(PathDesk,))
    return local


async def audited(local: Local) -> None:
    """The auditor's reading of every ledger's journal: clean, nothing one-legged."""
    journals = await read_over_bus(local.bus, local.world.registry, [spec.ledger_id for spec in world.LEDGERS])
    report = audit(journals, grace_ms=60_000)
    assert report.clean, report.text()


async def pay(local: Local, payment_id: str, amount: int = 100_000, source_max: int = 110_000) -> SettlementStatus:
    raw = world.payment(local, payment_id, amount, source_max, local.clock.now_ms() + 60_000)
    reply = await local.bus.request(service_of_coordinator(COORDINATOR), raw, timeout_s=120)
    return decode_signed(reply, allowed=(SettlementStatus,)).msg


async def test_a_payment_from_eur_to_chf_goes_the_cheapest_way_through_two_market_makers(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path)
        before = await world.positions(local)
        status = await pay(local, "pay-1")
        assert status.phase == "settled", status
        after = await world.positions(local)
        change = {key: after[key] - before[key] for key in before if after[key] != before[key]}
        assert change == {
            ("bank-a", "EUR"): -105_220,
            ("mm-1", "EUR"): 105_220,
            ("mm-1", "USD"): -113_637,
            ("mm-2", "USD"): 113_637,
            ("mm-2", "CHF"): -100_000,
            ("bank-c", "CHF"): 100_000,
        }
        await audited(local)
        nursery.cancel_scope.cancel()
