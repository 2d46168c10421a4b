"""The coordinator daemon over Mosquitto, killed with SIGKILL mid-stream and restarted:
every settlement ends on both legs or on neither, checked on the ledgers themselves."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
import trio

from engine.world.local import Local, dvp_legs, standard_world
from engine.world.postgres import service_schemas
from protocols.bus.mqtt import MqttBus
from protocols.messages import QueryLocks, SettlementStatus
from protocols.signing import decode_signed
from tests.databases import BACKENDS
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a coordinator process killed and restarted

LEGS = dvp_legs("csd", "a-sec", "b-sec", 10, "cbdc-eur", "EUR", "b-eur", "a-eur", 1_000)
SETTLEMENTS = 60


@pytest.mark.parametrize("backend", BACKENDS)
async def test_coordinator_killed_mid_stream_resumes_every_settlement(tmp_path, broker, backend, request):
    """On SQLite files, or with the journal and both ledgers on PostgreSQL."""
    databases = None
    if backend == "postgresql":
        prefix = f"k{secrets.token_hex(4)}_"
        databases = service_schemas(request.getfixturevalue("postgres"), ["coordinator", "csd", "cbdc-eur"], prefix)
    world = standard_world(tmp_path, broker=broker.url, databases=databases)
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))
            settlements = [local.settlement("dvp", LEGS, ("bank-b", "bank-a")) for _ in range(SETTLEMENTS)]
            statuses: dict[str, str] = {}

            async def back_office(raw: bytes) -> None:
                """Send until the coordinator answers with a final status, as a client must."""
                settlement_id = decode_signed(raw).msg.id
                while True:
                    reply = await local.send_settlement(raw, timeout_s=2)
                    if reply is not None:
                        statuses[settlement_id] = decode_signed(reply, allowed=(SettlementStatus,)).msg.phase
                        return

            async def killer() -> None:
                for kill_at in (SETTLEMENTS // 4, SETTLEMENTS // 2):
                    while len(statuses) < kill_at:
                        await trio.sleep(0.001)
                    coordinator.kill()
                    coordinator.start()

            with trio.fail_after(120):
                async with trio.open_nursery() as clients:
                    clients.start_soon(killer)
                    limit = trio.CapacityLimiter(8)
                    for raw in settlements:

                        async def one(raw=raw):
                            async with limit:
                                await back_office(raw)

                        clients.start_soon(one)
            assert len(statuses) == SETTLEMENTS
            assert set(statuses.values()) <= {"settled", "rolled_back"}, statuses
            settled = sum(1 for phase in statuses.values() if phase == "settled")
            assert settled >= SETTLEMENTS // 2
            assert await local.balances("csd", "b-sec") == {"XS2700000016": 10 * settled}
            assert await local.balances("cbdc-eur", "a-eur") == {"EUR": 1_000 * settled}
            for ledger in ("csd", "cbdc-eur"):
                client = local.client(ledger)
                assert await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 10)) == []

            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "engine.cli",
                    "status",
                    decode_signed(settlements[0]).msg.id,
                    "--config",
                    str(world.ledger_configs["coordinator"]),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert status.returncode == 0, status.stderr
            assert statuses[decode_signed(settlements[0]).msg.id].upper() in status.stdout
            nursery.cancel_scope.cancel()
    finally:
        for process in ledgers + [coordinator]:
            process.stop()
