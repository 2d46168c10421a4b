"""Ledgers as separate OS processes over a real Mosquitto: conformance, SIGKILL and
restart mid-stream, broker restart under load, hostile messages."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from engine.audit.conformance import run_checks
from engine.world.broker import Broker
from engine.world.layout import World, lay_out
from ledgers.config import LedgerConfig
from protocols import canonical
from protocols.bus import BusTimeout, service_of_ledger
from protocols.bus.address import redacted
from protocols.bus.client import LedgerClient
from protocols.bus.mqtt import TOPIC_ROOT, MqttBus, request_topic
from protocols.journal import Link, verify_chain
from protocols.messages import Issue, OpenAccount, QueryBalances, QueryJournal, Receipt, Transfer
from protocols.signing import sign, signing_bytes
from tests.databases import BACKENDS, run_sql
from tests.harness import LEDGERS, PARTIES, databases_for
from tests.processes import ServiceProcess


@pytest.fixture
def world_on_disk(tmp_path, request) -> World:
    return lay_out(tmp_path, LEDGERS, PARTIES, databases=databases_for(request))


@pytest.mark.slow
@pytest.mark.parametrize("ledger_id", ["csd", "cbdc-multi", "unified"])
async def test_conformance_suite_passes_against_a_ledger_process(world_on_disk, broker, ledger_id):
    process = ServiceProcess(world_on_disk, "ledger", ledger_id, broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus:
            await process.ready(bus)
            lines = []
            passed, failed = await run_checks(
                bus, ledger_id, world_on_disk.registry, world_on_disk.keys, out=lines.append
            )
        assert failed == 0, "\n".join(lines)
        assert passed == 14
    finally:
        assert process.stop() == 0, process.log_path.read_text()[-3000:]


class Stream:
    """A stream of transfers from bank-a to bank-b, each retried until answered."""

    def __init__(self, world: World, bus, ledger_id: str = "cbdc-eur") -> None:
        self.world = world
        self.ledger_id = ledger_id
        self.client = LedgerClient(bus, ledger_id, world.registry[ledger_id].public_key, timeout_s=0.5, attempts=1)
        self.acknowledged: dict[str, Receipt] = {}
        self._ids = itertools.count()

    def signed(self, cls, signer: str, **fields):
        return sign(
            cls(ledger=self.ledger_id, ts_ms=time.time_ns() // 1_000_000, **fields), (signer, self.world.keys[signer])
        )

    async def submit(self, signed, deadline_s: float = 60) -> Receipt:
        """Send the same bytes until the ledger answers, as any client must."""
        with trio.fail_after(deadline_s):
            while True:
                try:
                    receipt = await self.client.submit(signed)
                    self.acknowledged[signed.msg.id] = receipt
                    return receipt
                except BusTimeout:
                    await trio.sleep(0.05)

    async def fund(self) -> None:
        for signed in (
            self.signed(OpenAccount, "ecb", id="open-a", account="a", owner="bank-a"),
            self.signed(OpenAccount, "ecb", id="open-b", account="b", owner="bank-b"),
            self.signed(Issue, "ecb", id="mint", asset="EUR", account="a", amount=1_000_000),
        ):
            assert (await self.submit(signed)).applied

    async def transfers(self, count: int, concurrency: int = 16) -> list[str]:
        ids = [f"t{n}" for n in range(count)]
        signed = [
            self.signed(Transfer, "bank-a", id=i, from_account="a", to_account="b", asset="EUR", amount=1) for i in ids
        ]
        queue = iter(signed)

        async def worker() -> None:
            for instruction in queue:
                assert (await self.submit(instruction)).applied

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return ids

    async def journal(self) -> list:
        """Every entry, checked link by link and signature by signature."""
        links, seq = [], 0
        while True:
            page = await self.client.query(QueryJournal(self.client.next_query_id(), self.ledger_id, seq, 200))
            if not page["entries"]:
                break
            for entry in page["entries"]:
                body = {k: v for k, v in entry.items() if k != "sigs"}
                links.append(
                    Link(entry["seq"], hashlib.sha256(signing_bytes(body)).hexdigest(), canonical.encode(entry))
                )
            seq = page["entries"][-1]["seq"] + 1
        key = self.world.registry[self.ledger_id].public_key
        return [signed.msg for signed, _ in verify_chain(links, self.ledger_id, key)]

    async def check_exactly_once(self, ids: list[str]) -> None:
        entries = await self.journal()
        applied = [e.instruction["id"] for e in entries if e.kind == "transfer"]
        assert sorted(applied) == sorted(ids), "a transfer is missing from the journal or is there twice"
        balances = await self.client.query(QueryBalances(self.client.next_query_id(), self.ledger_id, "b"))
        assert balances["balances"]["EUR"] == {"available": len(ids), "locked": 0}


async def stream_through(
    world: World, process: ServiceProcess, url: str, fault: Callable[[], Awaitable[None]], *, after: int, count: int
) -> None:
    """Stream `count` transfers through the ledger process; once `after` are
    acknowledged, `fault` strikes and brings the ledger back. Then every transfer is
    applied exactly once, and none acknowledged before the fault is lost."""
    async with MqttBus.connect(url) as bus:
        await process.ready(bus)
        stream = Stream(world, bus)
        await stream.fund()
        acknowledged_before: set[str] = set()

        async def strike() -> None:
            while len(stream.acknowledged) < after:
                await trio.sleep(0.005)
            acknowledged_before.update(stream.acknowledged)
            await fault()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(strike)
            ids = await stream.transfers(count)
        assert len(acknowledged_before) >= after
        await stream.check_exactly_once(ids)
        journal_ids = {e.instruction["id"] for e in await stream.journal() if e.instruction}
        assert acknowledged_before <= journal_ids, "an acknowledged instruction was lost"


@pytest.mark.slow
@pytest.mark.parametrize("world_on_disk", BACKENDS, indirect=True)
async def test_ledger_killed_mid_stream_loses_nothing_and_doubles_nothing(world_on_disk, broker):
    process = ServiceProcess(world_on_disk, "ledger", "cbdc-eur", broker.url).start()

    async def kill() -> None:
        process.kill()
        process.start()

    try:
        await stream_through(world_on_disk, process, broker.url, kill, after=150, count=400)
    finally:
        assert process.stop() == 0


@pytest.mark.slow
async def test_broker_restart_under_load_loses_nothing_and_doubles_nothing(world_on_disk, tmp_path):
    own_broker = Broker(tmp_path).start()
    process = ServiceProcess(world_on_disk, "ledger", "cbdc-eur", own_broker.url).start()
    try:
        async with MqttBus.connect(own_broker.url) as bus:
            await process.ready(bus)
            stream = Stream(world_on_disk, bus)
            await stream.fund()

            async def restarter() -> None:
                while len(stream.acknowledged) < 150:
                    await trio.sleep(0.005)
                own_broker.stop()
                await trio.sleep(0.5)
                own_broker.start()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(restarter)
                ids = await stream.transfers(400)
            await stream.check_exactly_once(ids)
    finally:
        assert process.stop() == 0
        own_broker.stop()


async def test_hostile_messages_get_an_error_and_the_ledger_keeps_serving(world_on_disk, broker):
    process = ServiceProcess(world_on_disk, "ledger", "cbdc-eur", broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus:
            await process.ready(bus)
            stream = Stream(world_on_disk, bus)
            oversized = await stream.client.submit_raw(b'{"v":1,"pad":"' + b"x" * 200_000 + b'"}')
            assert (oversized.status, oversized.code) == ("rejected", "too_large")
            garbage = await stream.client.submit_raw(b"\x00\xff garbage")
            assert (garbage.status, garbage.code) == ("rejected", "malformed")
            # a request on a topic with no reply address cannot be answered, but is survived
            bus._client.publish(f"{TOPIC_ROOT}/svc/{service_of_ledger('cbdc-eur')}", b"{}", qos=1)
            bus._client.publish(request_topic(service_of_ledger("cbdc-eur"), "x", "y") + "/extra", b"{}", qos=1)
            await stream.fund()
            assert (
                await stream.submit(
                    stream.signed(
                        Transfer, "bank-a", id="after", from_account="a", to_account="b", asset="EUR", amount=5
                    )
                )
            ).applied
    finally:
        assert process.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("world_on_disk", ["postgresql"], indirect=True)
async def test_a_ledger_whose_database_connection_is_cut_stops_and_restarts_losing_nothing(world_on_disk, broker):
    """The server ends the ledger's session mid-stream (a failover, an operator): the
    ledger exits rather than answer from a book it cannot write, and once restarted, as
    its supervisor would, every transfer is applied once, none lost of those acknowledged."""
    process = ServiceProcess(world_on_disk, "ledger", "cbdc-eur", broker.url).start()
    database = str(LedgerConfig.load(world_on_disk.ledger_configs["cbdc-eur"]).database)
    (session,) = parse_qs(urlsplit(database).query)["application_name"]  # as service_schemas names it

    async def cut() -> None:
        sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?"
        assert run_sql(database.split("?")[0], sql, (session,))[1] == [(True,)]
        with trio.fail_after(10):
            while process.running:
                await trio.sleep(0.02)
        assert process.process is not None and process.process.returncode == 2
        stopped = process.log_path.read_text().splitlines()[-1]
        assert stopped.startswith(f"lockstep ledger: database {redacted(database)}: connection lost: ")
        process.start()

    try:
        await stream_through(world_on_disk, process, broker.url, cut, after=100, count=300)
    finally:
        process.stop()
