"""The bus on brokers other than Mosquitto: NATS's MQTT support and RabbitMQ's MQTT plugin.
On each, a ledger process passes the conformance suite, and a matched DvP settles across
ledger and coordinator processes, end to end, audited clean; on NATS, a workload also ends
clean under every process fault, the broker's SIGKILL included."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from engine.audit.conformance import run_checks
from engine.world.chaos_processes import FAULTS, run
from engine.world.local import BOND, Local, standard_world
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.settlement import utc_date
from tests.backoffice import Who, sese023
from tests.brokers import NatsServer, RabbitMQNode
from tests.processes import ServiceProcess
from tests.test_chaos_processes import check_clean

pytestmark = pytest.mark.slow  # a broker and services as processes


@pytest.mark.parametrize("broker_in", [NatsServer, RabbitMQNode], ids=["nats", "rabbitmq"])
async def test_a_ledger_conforms_and_a_matched_dvp_settles_across_processes(tmp_path, broker_in):
    """One broker started per kind: each is slow to start, RabbitMQ above all."""
    (tmp_path / "broker").mkdir()
    with broker_in(tmp_path / "broker") as broker:
        await _conforms_and_settles(tmp_path, broker.url)


async def _conforms_and_settles(tmp_path, url: str) -> None:
    world = standard_world(tmp_path / "world", broker=url)
    processes = [ServiceProcess(world, "ledger", ledger, url).start() for ledger in ("csd", "cbdc-eur")]
    processes.append(ServiceProcess(world, "coordinator", "coordinator", url).start())
    try:
        async with MqttBus.connect(url) as bus, trio.open_nursery() as nursery:
            for process in processes:
                await process.ready(bus)
            lines: list[str] = []
            passed, failed = await run_checks(bus, "csd", world.registry, world.keys, out=lines.append)
            assert (passed, failed) == (14, 0), "\n".join(lines)
            await Local(world, bus, nursery).fund_standard(ledgers=("csd", "cbdc-eur"))
            nursery.cancel_scope.cancel()
        today = utc_date(ServiceClock().now_ms())
        sides = {
            "bank-a": dict(movement="DELI", safekeeping="a-sec", cash_account="a-eur"),
            "bank-b": dict(movement="RECE", safekeeping="b-sec", cash_account="b-eur"),
        }
        for party, side in sides.items():
            document = sese023(
                reference=f"NATS-{party}",
                payment="APMT",
                trade_date=today,
                settlement_date=today,
                isin=BOND,
                units=10,
                amount=("EUR", "10000.00"),
                deliverer=Who(proprietary="bank-a"),
                receiver=Who(proprietary="bank-b"),
                envelope="Envelope",
                **side,
            )
            (tmp_path / f"{party}.xml").write_bytes(document)
            done = subprocess.run(
                [sys.executable, "-m", "engine.cli", "submit", str(tmp_path / f"{party}.xml")]
                + ["--broker", url, "--registry", str(world.registry_path), "--party", party]
                + ["--key", str(world.key_path(party)), "--wait", "60" if party == "bank-b" else "0"],
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        assert "SETTLED" in done.stdout, done.stdout
        audited = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "audit",
                "--broker",
                url,
                "--registry",
                str(world.registry_path),
            ]
            + ["--ledger", "csd", "--ledger", "cbdc-eur"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert audited.returncode == 0, audited.stdout + audited.stderr
    finally:
        for process in processes:
            assert process.stop() == 0, process.log_path.read_text()[-3000:]


async def test_a_workload_under_every_process_fault_ends_clean_on_nats(tmp_path):
    """The chaos of tests/test_chaos_processes.py with NATS as the broker: ledgers and the
    coordinator SIGKILLed, and the broker itself, each started again."""
    result = await run(tmp_path, seconds=10, seed=13, faults=FAULTS, strikes=1, broker_in=NatsServer)
    check_clean(result, FAULTS, strikes=1)
