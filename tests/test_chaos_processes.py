"""Short seeded chaos runs with every service a real process on a real Mosquitto: the
coordinator and the ledgers SIGKILLed and started again, the broker SIGKILLed and
started again on its port. Each outage, start-up included, stays under Δ; then the
audit of every ledger finds nothing one-legged, created or lost, and no lock past its
expiry. (`lockstep chaos --bus mqtt` runs the long soaks.)"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli
from engine.world.chaos_processes import FAULTS, Result, run

pytestmark = pytest.mark.slow  # every service a process, killed and restarted

RESTARTED = {"kill-coordinator": "coordinator", "kill-ledger": "ledger", "broker-restart": "broker"}


def check_clean(result: Result, faults: tuple[str, ...], strikes: int) -> None:
    outcome, restarts = result.outcome, result.restarts
    report = outcome.report
    assert report is not None and report.clean, report.text()
    assert set(outcome.phases) <= {"settled", "rolled_back", "failed"}, outcome.phases
    assert outcome.phases["settled"] > 0
    assert sum(report.settlements.values()) > 0 and report.settles > 0  # cross and same ledger both ran
    assert outcome.together["requests"] > 0, "no settlements were sent together"
    for fault in faults:
        assert outcome.faults[fault] >= strikes, f"{fault} struck {outcome.faults[fault]} times"
        assert restarts.outage_ms[RESTARTED[fault]], f"nothing came back after {fault}"
    # how soon a killed process answered again is the command's to report, not a test's
    # to require: a loaded machine restarts a coordinator in 4 s where an idle one takes 2


async def test_every_process_fault_twice_under_load_ends_clean(tmp_path):
    """Each fault class from its own generator, so each strikes as if alone, twice at
    least (the first at once), besides the others."""
    check_clean(await run(tmp_path, seconds=14, seed=11, faults=FAULTS, strikes=2), FAULTS, strikes=2)


async def test_one_of_three_coordinators_killed_again_and_again_ends_clean(tmp_path):
    """Three coordinators share the settlement ids, each process standing by for the
    others. Every kill frees the journals its process held; each is opened again (by a
    survivor taking it over, or by the restarted process) at a new epoch, which fences
    the ledgers against the dead instance. The seed's two kills strike two processes:
    one struck twice may hold no journal the second time (a survivor took its own over
    while it restarted), and then frees none."""
    result = await run(tmp_path, seconds=10, seed=6, faults=("kill-coordinator",), coordinators=3, strikes=2)
    check_clean(result, ("kill-coordinator",), strikes=2)
    reopened = 0
    for journal in ("coordinator.db", "coordinator-1.db", "coordinator-2.db"):
        with sqlite3.connect(tmp_path / journal) as db:
            reopened += db.execute("SELECT MAX(epoch) - 1 FROM epochs").fetchone()[0]
    assert reopened >= result.outcome.faults["kill-coordinator"]


async def test_every_process_fault_at_qos_0_ends_clean(tmp_path):
    """No message acknowledged on any hop: one lost on the way is found out by its sender's
    timeout alone, and the senders' retries carry the protocol through every fault."""
    result = await run(tmp_path, seconds=10, seed=12, faults=FAULTS, strikes=1, qos=0)
    check_clean(result, FAULTS, strikes=1)
    lines = [line for config in tmp_path.glob("*.toml") for line in config.read_text().splitlines()]
    brokers = [line for line in lines if "broker" in line]
    assert brokers and all(line.endswith('?qos=0"') for line in brokers), brokers


def test_qos_needs_the_process_mode(capsys):
    assert cli.main(["chaos", "--qos", "0"]) == 2
    assert "--qos and --strikes need --bus mqtt" in capsys.readouterr().err


def test_a_fault_the_process_mode_does_not_have_is_refused_by_name(capsys):
    assert cli.main(["chaos", "--bus", "mqtt", "--faults", "kill-ledger,partition"]) == 2
    assert "unknown faults for --bus mqtt: partition" in capsys.readouterr().err


def test_several_coordinators_need_the_process_mode(capsys):
    assert cli.main(["chaos", "--coordinators", "3"]) == 2
    assert "more than 1 only with --bus mqtt" in capsys.readouterr().err


def test_a_chaos_run_terminated_stops_every_process_it_started():
    """SIGTERM to `lockstep chaos --bus mqtt`, as a supervisor or `timeout` sends it,
    unwinds it as Ctrl-C does: the broker and every service it started are gone."""
    chaos = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "chaos", "--bus", "mqtt", "--seconds", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert chaos.stdout is not None
    world = Path(chaos.stdout.readline().rsplit(" world and logs in ", 1)[1].strip())
    deadline = time.monotonic() + 30
    while not (world / "coordinator-coordinator.log").exists() or not started_by(world):
        assert time.monotonic() < deadline, "the chaos run's services did not start"
        time.sleep(0.1)
    time.sleep(1)  # the workload under way
    chaos.send_signal(signal.SIGTERM)
    _, err = chaos.communicate(timeout=60)
    assert chaos.returncode == 130 and err.strip().splitlines()[-1] == "lockstep chaos: interrupted", err
    assert started_by(world) == [], "a process the chaos run started outlived it"
    shutil.rmtree(world)


def started_by(world: Path) -> list[int]:
    """The processes whose command line names the chaos run's folder: its broker and services."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(world).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found
