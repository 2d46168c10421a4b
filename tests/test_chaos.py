"""Short seeded chaos runs, one per fault class, all at once, and with outages up to ten
times Δ, each followed by the audit of every ledger: nothing may be one-legged, created
or lost, and no lock may be left held; then a backstop forced to pass during an outage,
whose one-legged settlements must each be reported. (`lockstep chaos` runs the long soaks.)"""

from __future__ import annotations

import pytest

from engine.audit.journals import Kind
from engine.world.chaos import CHAOS_TIMING, FAULTS, TOGETHER, OneLegged, run

pytestmark = pytest.mark.slow  # seconds of faults per run, then a wait for every lock to end


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_workload_under_each_fault_class_ends_clean(tmp_path, fault):
    outcome = await run(tmp_path, seconds=60, seed=7, faults=(fault,), settlements=60)
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert sum(outcome.phases.values()) >= 60
    assert set(outcome.phases) <= {"settled", "rolled_back", "failed"}, outcome.phases
    assert outcome.phases["settled"] > 0
    assert sum(outcome.faults.values()) > 0, f"no {fault} fault was injected"
    assert outcome.over(CHAOS_TIMING.margin_ms) == 0, outcome.table()  # restarts included, each under Δ
    assert sum(report.settlements.values()) > 0 and report.settles > 0  # cross and same ledger both ran
    # a quarter of the back offices send theirs together, one request for several (protocol section 17)
    assert outcome.together["settlements"] == TOGETHER * outcome.together["requests"] > 0, outcome.together
    assert "sent together" in outcome.table()


async def test_every_fault_class_at_once_ends_clean(tmp_path):
    outcome = await run(tmp_path, seconds=60, seed=11, faults=FAULTS, settlements=80)
    assert outcome.report is not None and outcome.report.clean, outcome.report.text()
    assert len(outcome.faults) >= 5


async def test_trades_short_at_first_wait_in_the_queue_through_every_fault_and_all_settle_once(tmp_path):
    """The queue under every fault: trades through the matching desk, the seller's bonds
    and the buyer's cash put aside and handed back a little at a time; once the faults
    stop and all of it is back, every trade has settled, none twice, nothing one-legged."""
    outcome = await run(tmp_path, seconds=60, seed=5, faults=FAULTS, settlements=24, queue=True)
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert outcome.trades.total() >= 24 and set(outcome.trades) == {"settled"}, outcome.trades
    assert outcome.released_minor > 0 and len(outcome.faults) >= 5
    assert report.settlements.get("rolled back", 0) > 0, report.settlements  # tries that waited, then again
    tries = ", ".join(f"{end} {n}" for end, n in sorted(report.settlements.items()))
    (row,) = [line for line in outcome.table().splitlines() if line.strip().startswith("settlement")]
    assert row.split()[:4] == ["settlement", "tries", "across", "ledgers"] and row.endswith(f"  {tries}"), row


async def test_outages_up_to_ten_delta_overlapping_end_clean_before_the_backstop(tmp_path):
    """Ledgers cut off and killed and the coordinator killed for Δ to 10 Δ each, overlapping:
    far past the time to decide and any Δ, yet nothing one-legged, since no timing decides
    a settlement (its coordinator's decision does, and the locks wait for it until their
    backstop, hours away)."""
    outcome = await run(
        tmp_path,
        seconds=15,  # three outages over Δ by then, from this seed's draw
        seed=5,
        faults=("partition", "kill-ledger", "kill-coordinator"),
        long_outages=True,
        settlements=100,
    )
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert outcome.over(CHAOS_TIMING.margin_ms) >= 3, outcome.table()  # outages longer than Δ did happen
    assert "in progress" not in report.settlements, outcome.table()  # every lock ended
    assert outcome.phases["settled"] > 0 and "one_legged" not in outcome.phases
    assert outcome.recoveries_ms(), outcome.table()  # settlements lived through outages and completed after


async def test_a_backstop_passing_during_an_outage_is_reported_alerted_and_explained(tmp_path):
    """The one way left to lose atomicity, forced: a backstop of seconds, and ledgers cut
    off for up to 10 Δ at the worst moment (as leg 1's claim is sent). Nothing may be
    silent: the coordinator, the audit and the live observer all report it, and the
    outage timeline accounts for it."""
    backstop_ms = CHAOS_TIMING.decide_ms + CHAOS_TIMING.margin_ms  # the least the timing allows
    outcome = await run(tmp_path, seconds=20, seed=6, faults=("partition",), long_outages=True, backstop_ms=backstop_ms)
    report = outcome.report
    assert report is not None
    one_legged = {v.settlement for v in report.violations if v.kind is Kind.ONE_LEGGED}
    assert one_legged, "no outage outlasted a backstop between two claims; choose another seed"
    assert {v.kind for v in report.violations} == {Kind.ONE_LEGGED}, report.text()  # nothing created, lost or stuck
    assert outcome.phases["one_legged"] <= len(one_legged)  # what the coordinator saw, the audit found
    assert outcome.unalerted == []
    assert len(outcome.explanations) == len(one_legged)
    for why in outcome.explanations:
        assert isinstance(why, OneLegged), why
        reachable_ms = why.window_ms - why.out_of_reach_ms
        assert reachable_ms < CHAOS_TIMING.claim_deadline_ms, (
            why
        )  # the ledger was out of reach, not the coordinator slow


async def test_payments_through_intermediaries_under_every_fault_end_clean(tmp_path):
    """Multi-hop payments (EUR to CHF through market makers that never claim) under every
    fault class at once: a hop's ledger killed or cut off at the worst moment (as a second
    leg's claim, a middle hop's, is sent), the coordinator killed, messages lost. Every
    payment ends whole or not at all: no intermediary pays without being paid, nothing
    is created or lost, no lock is left."""
    outcome = await run(tmp_path, seconds=60, seed=3, faults=FAULTS, settlements=12, paths=True)
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert outcome.phases["settled"] > 0 and set(outcome.phases) <= {"settled", "rolled_back", "failed"}
    assert outcome.paths["2 intermediaries"] > 0, outcome.paths
    assert len(outcome.faults) >= 5, outcome.faults
