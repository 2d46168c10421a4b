"""Short seeded chaos runs with every service a real process on a real Mosquitto: the
coordinator and the ledgers SIGKILLed and started again, the broker SIGKILLed and
started again on its port. Each outage, start-up included, stays under Δ; then the
audit of every ledger finds nothing one-legged, created or lost, and no lock past its
expiry. (`lockstep chaos --bus mqtt` runs the long soaks.)"""

from __future__ import annotations

import pytest

from engine import cli
from engine.chaos_processes import FAULTS, PROCESS_TIMING, Result, run

pytestmark = pytest.mark.slow  # every service a process, killed and restarted

RESTARTED = {"kill-coordinator": "coordinator", "kill-ledger": "ledger", "broker-restart": "broker"}


def check_clean(result: Result, faults: tuple[str, ...], strikes: int) -> None:
    outcome, restarts = result.outcome, result.restarts
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert set(outcome.phases) <= {"settled", "rolled_back", "failed"}, outcome.phases
    assert outcome.phases["settled"] > 0
    assert sum(report.settlements.values()) > 0 and report.settles > 0  # cross and same ledger both ran
    for fault in faults:
        assert outcome.faults[fault] >= strikes, f"{fault} struck {outcome.faults[fault]} times"
        assert restarts.outage_ms[RESTARTED[fault]], f"nothing came back after {fault}"
    assert restarts.over(PROCESS_TIMING.margin_ms) == 0, restarts.table(PROCESS_TIMING.margin_ms)


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_workload_under_each_process_fault_ends_clean(tmp_path, fault):
    """Long enough for a second strike, under load: the first comes at once."""
    check_clean(await run(tmp_path, seconds=8, seed=7, faults=(fault,)), (fault,), strikes=2)


async def test_every_process_fault_at_once_ends_clean(tmp_path):
    check_clean(await run(tmp_path, seconds=12, seed=11, faults=FAULTS), FAULTS, strikes=1)


def test_a_fault_the_process_mode_does_not_have_is_refused_by_name(capsys):
    assert cli.main(["chaos", "--bus", "mqtt", "--faults", "kill-ledger,partition"]) == 2
    assert "unknown faults for --bus mqtt: partition" in capsys.readouterr().err
