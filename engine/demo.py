"""`lockstep demo`: a whole local world settling DvP and PvP, across ledgers and on one,
with a rollback, a coordinator crash and a lock that expires. One report at the end.

By default everything runs in this process on the in-memory bus. With `--broker URL`
every ledger runs as its own process over MQTT (and the coordinator here, on MQTT)."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.bus import service_of_coordinator
from protocols.iso20022 import sese023
from protocols.iso20022.model import SESE_023, OneSided
from protocols.messages import QueryInfo, QueryLocks, SettlementInstruction, SettlementLeg
from protocols.settlement import Phase, Timing, utc_date
from protocols.signing import decode_signed, sign

from .coordinator import Coordinator
from .journal import Record
from .local import BOND, LEDGERS, PLACES, Local, dvp_legs, standard_world
from .matching_desk import MatchingDesk

# Short enough that the expiry scenario takes seconds; long enough for a loaded laptop.
DEMO_TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=1_500, clock_skew_ms_max=500)
ACCOUNTS = [("csd", "a-sec"), ("csd", "b-sec"), ("cbdc-eur", "a-eur"), ("cbdc-eur", "b-eur"),
            ("cbdc-multi", "a-usd"), ("cbdc-multi", "b-usd"), ("unified", "a"), ("unified", "b")]
TREASURY = [("csd", "treasury"), ("unified", "treasury")]  # holds the rest of the bonds
DESKS = (lambda coordinator: MatchingDesk(coordinator, PLACES),)


@attrs.frozen
class Outcome:
    title: str
    record: Record

    @property
    def latency_ms(self) -> int:
        return self.record.steps[-1][1] - self.record.steps[0][1]


async def run(broker: str | None, directory: Path, out=print) -> list[Outcome]:
    world = standard_world(directory, broker=broker)
    async with _bus(broker) as bus, trio.open_nursery() as nursery:
        local = Local(world, bus, nursery, offload=True)
        processes = await _start_ledgers(local, broker)
        try:
            outcomes = await _scenarios(local, out)
        finally:
            for process in processes:
                process.terminate()
                process.wait()
        nursery.cancel_scope.cancel()
    return outcomes


@asynccontextmanager
async def _bus(broker: str | None):
    if broker is None:
        yield MemoryBus()
    else:
        async with MqttBus.connect(broker, client_id="lockstep-demo") as bus:
            yield bus


async def _start_ledgers(local: Local, broker: str | None) -> list[subprocess.Popen]:
    if broker is None:
        for spec in LEDGERS:
            await local.start_ledger(spec.ledger_id)
        return []
    processes = [subprocess.Popen([sys.executable, "-m", "engine.cli", "ledger", "--config",
                                   str(local.world.ledger_configs[spec.ledger_id])],
                                  stdout=subprocess.DEVNULL, stderr=(local.world.directory / f"{spec.ledger_id}.log").open("w"))
                 for spec in LEDGERS]
    for spec in LEDGERS:  # wait until each answers
        client = local.client(spec.ledger_id)
        with trio.fail_after(30):
            await client.query(QueryInfo(client.next_query_id(), spec.ledger_id))
    return processes


async def _scenarios(local: Local, out) -> list[Outcome]:
    await local.fund_standard()
    before = await _balances(local)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes = []

    async def settle(title: str, kind: str, legs, parties) -> Record:
        record = await coordinator.submit(local.settlement(kind, legs, parties))
        outcomes.append(Outcome(title, record))
        return record

    cross_dvp = dvp_legs("csd", "a-sec", "b-sec", 1_000, "cbdc-eur", "EUR", "b-eur", "a-eur", 985_000_00)
    await settle("cross-ledger DvP: 1,000 bonds (csd) against EUR 985,000.00 (cbdc-eur)", "dvp", cross_dvp, ("bank-b", "bank-a"))
    pvp = (SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 500_000_00),
           SettlementLeg("cbdc-multi", "a-usd", "b-usd", "USD", 540_000_00))
    await settle("cross-ledger PvP: EUR 500,000.00 (cbdc-eur) against USD 540,000.00 (cbdc-multi)", "pvp", pvp, ("bank-b", "bank-a"))
    same_dvp = dvp_legs("unified", "a", "b", 1_000, "unified", "EUR", "b", "a", 985_000_00)
    await settle("same-ledger DvP on unified", "dvp", same_dvp, ("bank-b", "bank-a"))
    same_pvp = (SettlementLeg("unified", "b", "a", "EUR", 500_000_00), SettlementLeg("unified", "a", "b", "USD", 540_000_00))
    await settle("same-ledger PvP on unified", "pvp", same_pvp, ("bank-b", "bank-a"))
    outcomes.append(Outcome("ISO 20022: a sese.023 from each bank, matched, settled, sese.025 to both",
                            await _matched(local, coordinator, local.world.directory / "iso20022", out)))
    broke = dvp_legs("csd", "a-sec", "b-sec", 1_000, "cbdc-eur", "EUR", "b-eur", "a-eur", 10**14)
    await settle("DvP without the cash: refused by cbdc-eur, bond lock rolled back", "dvp", broke, ("bank-b", "bank-a"))

    # A coordinator killed right after both locks are confirmed, restarted at once.
    crash = local.settlement("dvp", cross_dvp, ("bank-b", "bank-a"))
    coordinator, scope = await _kill_at(local, coordinator, scope, crash, Phase.LOCKED)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes.append(Outcome("cross-ledger DvP, coordinator killed after locking, restarted: resumed",
                            await coordinator.wait(_id(crash))))

    # Killed after locking and kept down past both expiries: the ledgers refund by themselves.
    expire = local.settlement("dvp", cross_dvp, ("bank-b", "bank-a"))
    coordinator, scope = await _kill_at(local, coordinator, scope, expire, Phase.LOCKED)
    await trio.sleep(DEMO_TIMING.total_ms() / 1000 + 0.5)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes.append(Outcome("coordinator down past expiry: both locks refunded by their ledgers",
                            await coordinator.wait(_id(expire))))
    scope.cancel()

    after = await _balances(local)
    _report(outcomes, before, after, out)
    await _check(local, before, after)
    return outcomes


async def _check(local: Local, before, after) -> None:
    """Nothing created or lost, nothing left locked: asserted, not assumed."""
    def totals(balances) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = {}
        for (ledger, _), assets in balances.items():
            for asset, amount in assets.items():
                result[(ledger, asset)] = result.get((ledger, asset), 0) + amount
        return result

    assert totals(before) == totals(after), f"value created or lost: {totals(before)} != {totals(after)}"
    for spec in LEDGERS:
        client = local.client(spec.ledger_id)
        held = await client.query(QueryLocks(client.next_query_id(), spec.ledger_id, 2**62, 10))
        assert not held, f"{spec.ledger_id} still holds locks: {held}"


async def _kill_at(local: Local, coordinator, scope, raw: bytes, phase: Phase):
    """Submit and kill the coordinator the moment the settlement reaches `phase`."""
    def crash(record: Record) -> None:
        if record.phase is phase:
            scope.cancel()
    coordinator.on_phase = crash
    local.nursery.start_soon(local.send_settlement, raw)
    with trio.fail_after(30):
        while not scope.cancel_called:
            await trio.sleep(0.01)
    await trio.sleep(0.05)
    return coordinator, scope


async def _matched(local: Local, coordinator: Coordinator, folder: Path, out) -> Record:
    """Each bank's back office sends its own side; the desk matches them and settles the
    pair; every advice it writes is saved under `folder`."""
    today = utc_date(coordinator.clock.now_ms())
    sides = (OneSided(SESE_023, "SELL-2026-001", "dvp", "deliver", "bank-a", "bank-b", today, today,
                      BOND, 1_000, "a-sec", "EUR", 985_000_00, "a-eur"),
             OneSided(SESE_023, "BUY-2026-001", "dvp", "receive", "bank-b", "bank-a", today, today,
                      "EUR", 985_000_00, "b-eur", BOND, 1_000, "b-sec"))
    for one in sides:
        msg = SettlementInstruction(one.reference, coordinator.id, one.party, coordinator.clock.now_ms(), SESE_023,
                                    sese023.write(one).decode())
        await coordinator.bus.request(service_of_coordinator(coordinator.id),
                                      sign(msg, (one.party, local.world.keys[one.party])).encode(), timeout_s=30)
    folder.mkdir(exist_ok=True)
    desk = sqlite3.connect(coordinator.journal.path)
    while not desk.execute("SELECT count(*) FROM advices WHERE status = 'settled'").fetchone()[0] == 2:
        await trio.sleep(0.05)
    for party, seq, status, document, settlement_id in desk.execute(
            "SELECT party, seq, status, document, settlement_id FROM advices ORDER BY seq").fetchall():
        (folder / f"{party}-{seq:06d}-{status}.xml").write_text(document)
    desk.close()
    out(f"ISO 20022 advices and confirmations written to {folder}")
    return coordinator.journal.get(settlement_id)


def _id(raw: bytes) -> str:
    return decode_signed(raw).msg.id


async def _balances(local: Local) -> dict[tuple[str, str], dict[str, int]]:
    return {(ledger, account): await local.balances(ledger, account) for ledger, account in ACCOUNTS + TREASURY}


def _report(outcomes: list[Outcome], before, after, out) -> None:
    out("")
    out("Settlements:")
    for outcome in outcomes:
        record = outcome.record
        start = record.steps[0][1]
        steps = " > ".join(f"{phase} +{at - start}ms" for phase, at in record.steps)
        reason = f"  ({record.reason_code}: {record.reason})" if record.reason_code else ""
        out(f"  {record.phase.value.upper():<12} {outcome.latency_ms:>6} ms  {outcome.title}")
        out(f"  {'':<12} {'':>9} {steps}{reason}")
    out("")
    out("Balances (available + locked):")
    out(f"  {'ledger / account':<22} {'asset':<13} {'before':>16} {'after':>16}")
    for key in before:
        assets = sorted(before[key].keys() | after[key].keys())
        for asset in assets:
            out(f"  {key[0] + ' / ' + key[1]:<22} {asset:<13} {before[key].get(asset, 0):>16,} {after[key].get(asset, 0):>16,}")


def main(broker: str | None) -> int:
    directory = Path(tempfile.mkdtemp(prefix="lockstep-demo-"))
    log_path = directory / "demo.log"
    logging.getLogger().handlers[:] = [logging.FileHandler(log_path)]
    print(f"Lockstep demo: world in {directory}, bus: {broker or 'in-memory'}, log: {log_path}")
    outcomes = trio.run(run, broker, directory)
    expected = [Phase.SETTLED] * 5 + [Phase.FAILED, Phase.SETTLED, Phase.ROLLED_BACK]
    actual = [o.record.phase for o in outcomes]
    if actual != expected:
        print(f"unexpected outcomes: {[p.value for p in actual]}", file=sys.stderr)
        return 1
    print("\nChecked: every asset conserved on every ledger, no lock left held.")
    return 0
