"""`lockstep demo`: a whole local world settling DvP and PvP, across ledgers and on one,
with a rollback, a coordinator crash, an abort by a coordinator that came back too late to
commit and a commit its coordinator was down long after; then, in a world of its own, a
payment through two market makers across three currency ledgers. One report at the end.

By default everything runs in this process on the in-memory bus. With `--broker URL`
every ledger runs as its own process over MQTT (and the coordinator here, on MQTT)."""

from __future__ import annotations

import functools
import logging
import math
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from protocols.bus import service_of_coordinator
from protocols.bus.faults import Faults, FaultyBus, except_fences
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.errors import Rejected
from protocols.iso20022 import camt053, pacs009, sese023
from protocols.iso20022.model import PACS_009, SESE_023, OneSided
from protocols.matching import attempt_id
from protocols.messages import (
    PathStatus,
    QueryBalances,
    QueryInfo,
    QueryLock,
    QueryLocks,
    Settlement,
    SettlementInstruction,
    SettlementLeg,
    Transfer,
)
from protocols.money import format_amount
from protocols.settlement import Phase, Timing, lock_id, utc_date
from protocols.signing import decode_signed, sign

from ..client.pay import report
from ..client.statement import read_entries, statement_of
from ..console.access import read_users
from ..console.service import Supervisor, console_of, start_http
from ..coordinator import Coordinator
from ..coordinator.journal import Record
from ..desks.matching import MatchingDesk
from ..desks.paths import PathDesk
from . import paths
from .local import BOND, COORDINATOR, LEDGERS, PLACES, Local, dvp_legs, standard_world

# Short enough that the scenarios of a coordinator kept down take seconds; long enough for a loaded laptop.
DEMO_TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=1_500, clock_skew_ms_max=500)
ACCOUNTS = [
    ("csd", "a-sec"),
    ("csd", "b-sec"),
    ("csd", "treasury"),  # the treasury holds the rest of the bonds
    ("cbdc-eur", "a-eur"),
    ("cbdc-eur", "b-eur"),
    ("cbdc-multi", "a-usd"),
    ("cbdc-multi", "b-usd"),
    ("unified", "a"),
    ("unified", "b"),
    ("unified", "treasury"),
]
DESKS = (lambda coordinator: MatchingDesk(coordinator, PLACES),)


Balances = dict[tuple[str, str], dict[str, tuple[int, int]]]  # (ledger, account) -> asset -> (available, locked)


@attrs.frozen
class Outcome:
    title: str
    record: Record

    @property
    def latency_ms(self) -> int:
        return self.record.steps[-1][1] - self.record.steps[0][1]


async def run(broker: str | None, directory: Path, out=print, console: tuple[str, int] | None = None) -> list[Outcome]:
    """With `console` (host, port), the console follows the world from its start and
    goes on serving once the scenarios are over, until the demo is interrupted."""
    world = standard_world(directory, broker=broker)
    async with _bus(broker) as bus, trio.open_nursery() as nursery:
        local = Local(world, bus, nursery, offload=True)
        processes = await _start_ledgers(local, broker)
        try:
            if console is not None:
                await _console(local, console, nursery, out)
            outcomes = await _scenarios(local, out)
            if console is not None:
                out(verdict(outcomes))
                await local.start_coordinator(DEMO_TIMING, desks=DESKS)  # its desk answers for the advices
                out("The console goes on serving; Ctrl-C stops the demo.")
                await trio.sleep_forever()
        finally:
            for process in processes:
                process.terminate()
                process.wait()
        nursery.cancel_scope.cancel()
    return outcomes


async def _console(local: Local, address: tuple[str, int], nursery: trio.Nursery, out) -> None:
    """The console over the demo's world, a supervisor's password drawn for it."""
    users = local.world.directory / "console-users"
    password = secrets.token_urlsafe(12)
    users.write_text(f"supervisor:{password}\n")
    users.chmod(0o600)
    supervisor = Supervisor("supervisor", local.world.keys["supervisor"])  # reads every party's advices
    ledgers = [spec.ledger_id for spec in LEDGERS]
    console = console_of(local.world.registry, local.bus, ledgers, local.coordinators, supervisor=supervisor)
    await nursery.start(console.run)
    url = await start_http(console, read_users(users), *address, nursery)
    out(f"Console: {url}, sign in as supervisor with password {password}")


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
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "ledger", "--config", str(local.world.ledger_configs[spec.ledger_id])],
            stdout=subprocess.DEVNULL,
            stderr=(local.world.directory / f"{spec.ledger_id}.log").open("w"),
        )
        for spec in LEDGERS
    ]
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
        out(f"  {title} ...")
        record = await coordinator.submit(local.settlement(kind, legs, parties))
        outcomes.append(Outcome(title, record))
        return record

    out("Settling:")
    cross_dvp = dvp_legs("csd", "a-sec", "b-sec", 1_000, "cbdc-eur", "EUR", "b-eur", "a-eur", 985_000_00)
    await settle(f"cross-ledger DvP: {_legs(cross_dvp)}", "dvp", cross_dvp, ("bank-b", "bank-a"))
    pvp = (
        SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 500_000_00),
        SettlementLeg("cbdc-multi", "a-usd", "b-usd", "USD", 540_000_00),
    )
    await settle(f"cross-ledger PvP: {_legs(pvp)}", "pvp", pvp, ("bank-b", "bank-a"))
    same_dvp = dvp_legs("unified", "a", "b", 1_000, "unified", "EUR", "b", "a", 985_000_00)
    await settle(f"same-ledger DvP: {_legs(same_dvp)}", "dvp", same_dvp, ("bank-b", "bank-a"))
    same_pvp = (
        SettlementLeg("unified", "b", "a", "EUR", 500_000_00),
        SettlementLeg("unified", "a", "b", "USD", 540_000_00),
    )
    await settle(f"same-ledger PvP: {_legs(same_pvp)}", "pvp", same_pvp, ("bank-b", "bank-a"))
    iso = local.world.directory / "iso20022"
    matched = "ISO 20022: a sese.023 from each bank, matched, settled, sese.025 to both"
    out(f"  {matched} ...")
    outcomes.append(Outcome(matched, await _matched(local, coordinator, iso, _sese023_pair(coordinator))))
    paired = "ISO 20022: a pacs.009 leg from each bank, paired, settled, pacs.002 to both; camt.053 of a-eur"
    out(f"  {paired} ...")
    head = len(await read_entries(local.client("cbdc-eur")))
    outcomes.append(Outcome(paired, await _matched(local, coordinator, iso, _pacs009_legs(coordinator))))
    await _statement(local, coordinator, iso, head)
    queued = (
        "ISO 20022, the settlement queue: bank-a sells 1,000 bonds holding 400, both sides allowing parts; "
        "400 settle at once (sese.025 PAIN), 600 wait (pending PART) until the treasury delivers them (PARC)"
    )
    out(f"  {queued} ...")
    outcomes.append(Outcome(queued, await _in_parts(local, coordinator, iso)))
    broke = dvp_legs("csd", "a-sec", "b-sec", 1_000, "cbdc-eur", "EUR", "b-eur", "a-eur", 10**14)
    await settle(
        f"DvP without the cash ({_legs(broke)}): refused by cbdc-eur, bond lock cancelled",
        "dvp",
        broke,
        ("bank-b", "bank-a"),
    )

    # A coordinator killed right after both locks are confirmed, restarted at once.
    title = f"cross-ledger DvP, coordinator killed after locking, restarted: resumed ({_legs(cross_dvp)})"
    out(f"  {title} ...")
    crash = local.settlement("dvp", cross_dvp, ("bank-b", "bank-a"))
    coordinator, scope = await _kill_at(local, coordinator, scope, crash, Phase.LOCKED)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes.append(Outcome(title, await coordinator.wait(_id(crash))))

    # Killed before deciding and kept down past the time to decide: restarted, it aborts.
    title = f"coordinator down before deciding, past the time to decide: aborted, both locks cancelled ({_legs(pvp)})"
    out(f"  {title} ...")
    late = local.settlement("pvp", pvp, ("bank-b", "bank-a"))
    coordinator, scope = await _kill_unheard(local, scope, late, pvp)
    await _count_down(DEMO_TIMING.total_ms() / 1000 + 0.5, "before deciding", out)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes.append(Outcome(title, await coordinator.wait(_id(late))))

    # Killed the moment it committed and kept down for three times Δ: no lock times out,
    # nothing is refunded, and the restarted coordinator settles both legs.
    title = f"coordinator down for 3 Δ after committing: the locks wait, both legs settle ({_legs(cross_dvp)})"
    out(f"  {title} ...")
    committed = local.settlement("dvp", cross_dvp, ("bank-b", "bank-a"))
    coordinator, scope = await _kill_at(local, coordinator, scope, committed, Phase.CLAIMING)
    await _count_down(3 * DEMO_TIMING.margin_ms / 1000, "after committing", out)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS)
    outcomes.append(Outcome(title, await coordinator.wait(_id(committed))))
    scope.cancel()
    outcomes.append(await _multi_hop(local.world.directory / "paths", out))

    after = await _balances(local)
    _report(outcomes, before, after, out)
    await _check(local, before, after)
    return outcomes


async def _multi_hop(directory: Path, out) -> Outcome:
    """bank-a, holding only euros, pays bank-c, holding only francs, through market makers
    the coordinator chooses from their quotes: three one-currency CBDC ledgers, in this
    process on a bus of their own (their ids are the first world's too)."""
    title = "multi-hop PvP: bank-a pays bank-c CHF 1,000.00 from its euros, through market makers"
    out(f"  {title} ...")
    async with trio.open_nursery() as nursery:
        local = Local(paths.path_world(directory), MemoryBus(), nursery, offload=True)
        for spec in paths.LEDGERS:
            await local.start_ledger(spec.ledger_id)
        await paths.fund(local)
        await paths.start_intermediaries(local, nursery, DEMO_TIMING.margin_ms)
        coordinator, _ = await local.start_coordinator(DEMO_TIMING, desks=(PathDesk,))
        order = paths.payment(local, "demo-1", 100_000, 110_000, local.clock.now_ms() + 30_000)
        reply = await local.bus.request(service_of_coordinator(COORDINATOR), order, timeout_s=60)
        status = decode_signed(reply, allowed=(PathStatus,)).msg
        record = coordinator.journal.get(status.settlement_id)
        nursery.cancel_scope.cancel()
    assert record is not None, status
    for line in report(status).splitlines()[1:]:
        out(f"    {line.strip()}")
    return Outcome(title, record)


def _legs(legs) -> str:
    """What each leg moves and where, as a person reads it."""
    return " against ".join(f"{format_amount(leg.asset, leg.amount)} ({leg.ledger})" for leg in legs)


async def _count_down(seconds: float, when: str, out) -> None:
    """The coordinator stays down this long; say so each second rather than go silent."""
    deadline = trio.current_time() + seconds
    while (left := deadline - trio.current_time()) > 0:
        out(f"      coordinator down {when}: {math.ceil(left)} s to go")
        await trio.sleep(left - math.ceil(left) + 1)


async def _check(local: Local, before, after) -> None:
    """Nothing created or lost, nothing left locked: asserted, not assumed."""

    def totals(balances: Balances) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = {}
        for (ledger, _), assets in balances.items():
            for asset, (available, locked) in assets.items():
                result[(ledger, asset)] = result.get((ledger, asset), 0) + available + locked
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


async def _kill_unheard(local: Local, scope, raw: bytes, legs):
    """Restart the coordinator deaf to every ledger's reply, submit, and kill it once both
    locks are held: placed, and nothing decided."""
    scope.cancel()
    deaf = FaultyBus(local.bus, Faults(drop_reply=1.0), seed=0, applies=except_fences)
    coordinator, scope = await local.start_coordinator(DEMO_TIMING, desks=DESKS, bus=deaf)
    local.nursery.start_soon(local.send_settlement, raw)

    async def held(index: int, leg) -> bool:
        client = local.client(leg.ledger)
        try:
            view = await client.query(QueryLock(client.next_query_id(), leg.ledger, lock_id(_id(raw), index)))
        except Rejected:
            return False  # not placed yet
        return view["state"] == "held"

    with trio.fail_after(30):
        while not all([await held(index, leg) for index, leg in enumerate(legs)]):
            await trio.sleep(0.01)
    scope.cancel()
    await trio.sleep(0.05)
    return coordinator, scope


def _sese023_pair(coordinator: Coordinator) -> tuple[OneSided, OneSided]:
    """A DvP as each bank's back office states its side."""
    today = utc_date(coordinator.clock.now_ms())
    security, cash = (BOND, 1_000), ("EUR", 985_000_00)
    return (
        OneSided(
            SESE_023,
            "SELL-2026-001",
            "dvp",
            "deliver",
            "bank-a",
            "bank-b",
            today,
            today,
            *security,
            "a-sec",
            *cash,
            "a-eur",
        ),
        OneSided(
            SESE_023,
            "BUY-2026-001",
            "dvp",
            "receive",
            "bank-b",
            "bank-a",
            today,
            today,
            *cash,
            "b-eur",
            *security,
            "b-sec",
        ),
    )


def _pacs009_legs(coordinator: Coordinator) -> tuple[OneSided, OneSided]:
    """A PvP as real senders write it: each bank's own payment, one pacs.009 each, paired
    by the trade's reference."""
    today = utc_date(coordinator.clock.now_ms())
    nothing = (None, 0, None)
    return (
        OneSided(
            PACS_009,
            "FX-A-001",
            "pvp",
            "leg",
            "bank-a",
            "bank-b",
            None,
            today,
            "USD",
            540_000_00,
            "a-usd",
            *nothing,
            common_id="FX-2026-001",
            pays_into="b-usd",
        ),
        OneSided(
            PACS_009,
            "FX-B-001",
            "pvp",
            "leg",
            "bank-b",
            "bank-a",
            None,
            today,
            "EUR",
            500_000_00,
            "b-eur",
            *nothing,
            common_id="FX-2026-001",
            pays_into="a-eur",
        ),
    )


async def _matched(
    local: Local, coordinator: Coordinator, folder: Path, sides: tuple[OneSided, ...], confirmations: int = 2
) -> Record:
    """Each bank's back office sends its own side; the desk matches them and settles the
    pair (`confirmations`: two a part); every advice it writes is saved under `folder`;
    the record of its last try."""
    for one in sides:
        now_ms = coordinator.clock.now_ms()
        document = sese023.write(one) if one.format == SESE_023 else pacs009.write(one, now_ms=now_ms)
        msg = SettlementInstruction(one.reference, coordinator.id, one.party, now_ms, one.format, document.decode())
        await coordinator.bus.request(
            service_of_coordinator(coordinator.id),
            sign(msg, (one.party, local.world.keys[one.party])).encode(),
            timeout_s=30,
        )
    folder.mkdir(exist_ok=True)
    desk = sqlite3.connect(coordinator.journal.database)
    ids = tuple(one.reference for one in sides)
    settled = "SELECT count(*) FROM advices WHERE status = 'settled' AND instruction_id IN (?, ?)"
    while desk.execute(settled, ids).fetchone()[0] != confirmations:
        await trio.sleep(0.05)
    advices = desk.execute(
        "SELECT party, seq, status, document, settlement_id FROM advices WHERE instruction_id IN (?, ?) ORDER BY seq",
        ids,
    ).fetchall()
    pair_id = advices[-1][4]
    (attempt,) = desk.execute("SELECT attempt FROM instructions WHERE settlement_id = ? LIMIT 1", (pair_id,)).fetchone()
    desk.close()
    for party, seq, status, document, _ in advices:
        (folder / f"{party}-{seq:06d}-{status}.xml").write_text(document)
    record = coordinator.journal.get(attempt_id(pair_id, attempt))
    assert record is not None  # it settled, so it is journaled
    return record


async def _in_parts(local: Local, coordinator: Coordinator, folder: Path) -> Record:
    """A sale short of bonds settled in two parts by the queue: bank-a lends all but 400
    of its bonds to the treasury, which delivers them back once the first part settled."""
    lent = (await local.balances("csd", "a-sec"))[BOND] - 400
    await local.instruct(
        Transfer, "csd", "bank-a", from_account="a-sec", to_account="treasury", asset=BOND, amount=lent
    )
    sides = tuple(
        attrs.evolve(one, reference=one.reference.replace("-001", "-002"), partial=True)
        for one in _sese023_pair(coordinator)
    )
    records: list[Record] = []

    async def settle() -> None:
        records.append(await _matched(local, coordinator, folder, sides, confirmations=4))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(settle)
        desk = sqlite3.connect(coordinator.journal.database)
        first_part = "SELECT count(*) FROM advices WHERE status = 'settled' AND instruction_id = ?"
        while desk.execute(first_part, (sides[0].reference,)).fetchone()[0] < 1:
            await trio.sleep(0.05)
        desk.close()
        await local.instruct(
            Transfer, "csd", "treasury", from_account="treasury", to_account="a-sec", asset=BOND, amount=lent
        )
    return records[0]


async def _statement(local: Local, coordinator: Coordinator, folder: Path, head: int) -> None:
    """bank-a's EUR account statement since `head`, as camt.053."""
    entries = await read_entries(local.client("cbdc-eur"))
    statement = statement_of(
        entries, "cbdc-eur", "a-eur", "EUR", from_seq=head, to_seq=None, now_ms=coordinator.clock.now_ms()
    )
    (folder / "a-eur-statement.xml").write_bytes(camt053.write(statement))


def _id(raw: bytes) -> str:
    return decode_signed(raw, allowed=(Settlement,)).msg.id


async def _balances(local: Local) -> Balances:
    result: Balances = {}
    for ledger, account in ACCOUNTS:
        client = local.client(ledger)
        value = await client.query(QueryBalances(client.next_query_id(), ledger, account))
        result[(ledger, account)] = {asset: (b["available"], b["locked"]) for asset, b in value["balances"].items()}
    return result


def _report(outcomes: list[Outcome], before: Balances, after: Balances, out) -> None:
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
    out("Balances, by ledger and account (locked: held in a lock, not yet claimed, cancelled or refunded):")
    rows = [("ledger / account", "before: available", "locked", "after: available", "locked")]
    for key in sorted(before.keys() | after.keys()):
        for asset in sorted(before.get(key, {}).keys() | after.get(key, {}).keys()):
            was, now = before.get(key, {}).get(asset, (0, 0)), after.get(key, {}).get(asset, (0, 0))
            rows.append(
                (
                    f"{key[0]} / {key[1]}",
                    format_amount(asset, was[0]),
                    _locked(asset, was[1]),
                    format_amount(asset, now[0]),
                    _locked(asset, now[1]),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        out(
            "  "
            + "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


def _locked(asset: str, amount: int) -> str:
    return "0" if amount == 0 else format_amount(asset, amount)


EXPECTED = [Phase.SETTLED] * 7 + [Phase.FAILED, Phase.SETTLED, Phase.ROLLED_BACK, Phase.SETTLED, Phase.SETTLED]


def as_expected(outcomes: list[Outcome]) -> bool:
    return [o.record.phase for o in outcomes] == EXPECTED


def verdict(outcomes: list[Outcome]) -> str:
    if as_expected(outcomes):
        return "\nChecked: every asset conserved on every ledger, no lock left held."
    return f"unexpected outcomes: {[o.record.phase.value for o in outcomes]}"


def main(broker: str | None, keep: bool = False, console: tuple[str, int] | None = None) -> int:
    """Runs in a fresh temporary folder, removed at the end unless `keep`."""
    directory = Path(tempfile.mkdtemp(prefix="lockstep-demo-"))
    log_path = directory / "demo.log"
    logging.getLogger().handlers[:] = [logging.FileHandler(log_path)]
    print(
        f"Lockstep demo, bus: {broker or 'in-memory'}"
        + (f"; world, log and ISO 20022 documents in {directory}" if keep else "")
    )
    try:
        outcomes = trio.run(run, broker, directory, functools.partial(print, flush=True), console)
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    if not as_expected(outcomes):
        print(verdict(outcomes) + ("" if keep else "; run again with --keep to read its log"), file=sys.stderr)
        return 1
    print(verdict(outcomes))
    if keep:
        print(f"Kept: {directory} (log {log_path.name}, advices and confirmations in iso20022/)")
    return 0
