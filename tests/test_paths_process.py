"""Multi-hop payments as users run them: three CBDC ledgers, the coordinator and three
market makers (`lockstep intermediary`), each its own process on Mosquitto, and the
payer's `lockstep pay`; the ledger of the middle hop SIGKILLed under a payment."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from engine.world import paths as world_of_paths
from engine.world.local import Local
from protocols.bus import decisions_topic
from protocols.bus.mqtt import MqttBus
from protocols.messages import SettlementDecision
from protocols.signing import decode_signed
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # ledgers, a coordinator and intermediaries as processes


def lockstep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=120)


async def test_a_payment_routed_through_market_maker_processes_survives_the_middle_ledger_sigkilled(tmp_path, broker):
    """The USD ledger (mm-1 pays mm-2 there) is SIGKILLed, then bank-a pays bank-c
    1,000.00 CHF from its euros: the USD lock is never confirmed, so the path is aborted
    and, once the ledger is back, every lock placed is cancelled: `lockstep pay` says
    rolled back, and nothing moved. Paid again under a new id, it settles through mm-1
    and mm-2, the cheapest path, and prints each hop. `lockstep audit` of the three
    journals is clean."""
    world = world_of_paths.path_world(tmp_path / "world", broker=broker.url)
    names = [spec.ledger_id for spec in world_of_paths.LEDGERS]
    ledgers = {name: ServiceProcess(world, "ledger", name, broker.url).start() for name in names}
    others = [ServiceProcess(world, "coordinator", "coordinator", broker.url).start()]
    others += [ServiceProcess(world, "intermediary", party, broker.url).start() for party in world_of_paths.RATES]
    payer = world_of_paths.PAYER
    common = ["--broker", broker.url, "--registry", str(world.registry_path), "--party", payer]
    common += ["--key", str(world.key_path(payer)), "--from", f"cbdc-eur:{world_of_paths.account(payer, 'EUR')}:EUR"]
    common += ["--source-max", "1100.00", "--payee", world_of_paths.PAYEE, "--amount", "1000.00"]
    common += ["--to", f"cbdc-chf:{world_of_paths.account(world_of_paths.PAYEE, 'CHF')}:CHF"]
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in [*ledgers.values(), *others]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await world_of_paths.fund(local)
            before = await world_of_paths.positions(local)
            ledgers["cbdc-usd"].kill()
            said: list[subprocess.CompletedProcess] = []

            async def pay(payment_id: str) -> None:
                said.append(await trio.to_thread.run_sync(lambda: lockstep("pay", *common, "--id", payment_id)))

            async with bus.subscribe(decisions_topic("coordinator")) as decisions, trio.open_nursery() as paying:
                paying.start_soon(pay, "first")
                with trio.fail_after(60):  # decided while the ledger is down, however slowly the pay starts
                    decision = decode_signed(await decisions.receive(), allowed=(SettlementDecision,)).msg
                assert decision.outcome == "abort" and "cbdc-usd" in decision.ledgers, decision
                ledgers["cbdc-usd"] = ServiceProcess(world, "ledger", "cbdc-usd", broker.url).start()
                await ledgers["cbdc-usd"].ready(bus)
            assert said[0].returncode == 1 and "payment first: rolled_back" in said[0].stdout, said[0]
            assert await world_of_paths.positions(local) == before
            await pay("second")
            assert said[1].returncode == 0, said[1]
            assert said[1].stdout.splitlines()[1:] == [
                "  bank-a -> mm-1: EUR 1,052.20 on cbdc-eur",
                "  mm-1 -> mm-2: USD 1,136.37 on cbdc-usd",
                "  mm-2 -> bank-c: CHF 1,000.00 on cbdc-chf",
            ], said[1].stdout
            after = await world_of_paths.positions(local)
            assert (
                after[("bank-c", "CHF")] == 100_000 and after[("bank-a", "EUR")] == before[("bank-a", "EUR")] - 105_220
            )
            nursery.cancel_scope.cancel()
        audited = await trio.to_thread.run_sync(
            lambda: lockstep(
                "audit",
                "--registry",
                str(world.registry_path),
                *(arg for name in names for arg in ("--db", str(world.directory / f"{name}.db"))),
            )
        )
        assert audited.returncode == 0 and "0 violations" in audited.stdout, audited
    finally:
        for process in [*ledgers.values(), *others]:
            process.stop()
