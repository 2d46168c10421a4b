"""Short seeded chaos runs, one per fault class, each followed by the audit of every
ledger: with outages shorter than Δ nothing may be one-legged, created or lost, and no
lock may be left past its expiry. (`lockstep chaos` runs the long soaks.)"""

from __future__ import annotations

import pytest

from engine.chaos import FAULTS, run


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_workload_under_each_fault_class_ends_clean(tmp_path, fault):
    outcome = await run(tmp_path, seconds=60, seed=7, faults=(fault,), settlements=60)
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert sum(outcome.phases.values()) >= 60
    assert set(outcome.phases) <= {"settled", "rolled_back", "failed"}, outcome.phases
    assert outcome.phases["settled"] > 0
    assert sum(outcome.faults.values()) > 0, f"no {fault} fault was injected"
    assert sum(report.settlements.values()) > 0 and report.settles > 0  # cross and same ledger both ran


async def test_every_fault_class_at_once_ends_clean(tmp_path):
    outcome = await run(tmp_path, seconds=60, seed=11, faults=FAULTS, settlements=80)
    assert outcome.report is not None and outcome.report.clean, outcome.report.text()
    assert len(outcome.faults) >= 5
