"""The live observer (engine/audit/observer.py) on a real world in one process, on the in-memory
bus with a mock clock: settlements that settle or roll back raise no alert, whether it
watches them happen or reads them afterwards, and it agrees with the audit; a settlement
made one-legged for real is alerted once, within a second of the refund that made it so;
a lock whose ledger is down past its backstop and the grace period is alerted once; a
journal page that does not verify is alerted, naming the ledger and the entry, while the
other ledgers are still followed; garbage on an entries topic costs nothing. Then the
command, as its own process on a real broker, until SIGTERM."""

from __future__ import annotations

import copy
import logging
import signal
import subprocess
import sys

import attrs
import pytest
import trio
import trio.testing

from engine.audit.journals import At, Kind, audit, read_over_bus
from engine.audit.observer import ALERTS_TOPIC, Observer, alert_event
from engine.world.local import BOND, Local, dvp_legs, standard_world
from protocols import canonical
from protocols.bus import entries_topic
from protocols.bus import follow as follow_module
from protocols.bus.clock import ServiceClock
from protocols.bus.faults import Faults, FaultyBus
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.htlc import LockState
from protocols.messages import QueryJournal, SettlementLeg
from protocols.settlement import Phase, Timing, lock_id
from protocols.signing import decode_signed

GRACE_MS = 1_000
TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500, backstop_ms=60_000)
LEDGERS = ("csd", "cbdc-eur", "cbdc-multi", "unified")
PARTIES = ("bank-b", "bank-a")  # bank-b pays leg 0, bank-a pays leg 1
CROSS_DVP = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
CROSS_PVP = (
    SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 50_000),
    SettlementLeg("cbdc-multi", "a-usd", "b-usd", "USD", 54_000),
)
SAME_DVP = dvp_legs("unified", "a", "b", 100, "unified", "EUR", "b", "a", 99_000)
SAME_PVP = (SettlementLeg("unified", "b", "a", "EUR", 50_000), SettlementLeg("unified", "a", "b", "USD", 54_000))
REFUSED = (attrs.evolve(CROSS_DVP[0], amount=10**15), CROSS_DVP[1])  # bank-b has not that much EUR


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def start_world(nursery: trio.Nursery, tmp_path, ledgers: tuple[str, ...], bus=None) -> Local:
    local = Local(standard_world(tmp_path), bus or MemoryBus(), nursery)
    for ledger in ledgers:
        await local.start_ledger(ledger)
    await local.fund_standard(ledgers=ledgers)
    return local


def observer_of(local: Local, ledgers: tuple[str, ...]) -> Observer:
    return Observer(local.world.registry, local.bus, list(ledgers), GRACE_MS, ServiceClock())


async def observing(nursery: trio.Nursery, local: Local, ledgers: tuple[str, ...]) -> Observer:
    observer = observer_of(local, ledgers)
    await nursery.start(observer.run)
    return observer


async def until_alerted(observer: Observer, count: int = 1, timeout_s: float = TIMING.backstop_ms / 1000 + 60) -> int:
    """Wait for the observer's `count`th alert; the time it came, on the observer's clock."""
    with trio.fail_after(timeout_s):
        while len(observer.alerts) < count:
            await trio.sleep(0.01)
    return observer.clock.now_ms()


async def journal(local: Local, ledger: str) -> list[dict]:
    client = local.client(ledger)
    entries: list[dict] = []
    while True:
        page = await client.query(QueryJournal(client.next_query_id(), ledger, len(entries), 200))
        entries += page["entries"]
        if not page["entries"] or len(entries) >= page["head"]:
            return entries


def at(entries: list[dict], kind: str, **fields) -> At:
    """The one entry of this kind whose instruction (or, for an expiry, whose effects'
    `locks`) has these fields."""
    found = [
        entry
        for entry in entries
        if entry["kind"] == kind
        and all(
            (entry["instruction"] or {}).get(name) == value or [value, "refunded"] in entry["effects"].get("locks", ())
            for name, value in fields.items()
        )
    ]
    assert len(found) == 1, (kind, fields, found)
    return At(found[0]["ledger"], found[0]["seq"], kind)


def time_of(entries: list[dict], where: At) -> int:
    return entries[where.seq]["time_ms"]


# -- (1) clean -----------------------------------------------------------------------------------


async def test_settlements_that_settle_or_roll_back_raise_no_alert_live_or_read_afterwards(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), MemoryBus(), nursery)
        for ledger in LEDGERS:
            await local.start_ledger(ledger)
        live = await observing(nursery, local, LEDGERS)  # from the first entry of every ledger, as it happens
        await local.fund_standard()
        coordinator, _ = await local.start_coordinator(TIMING)
        for _ in range(2):
            for kind, legs in (("dvp", CROSS_DVP), ("pvp", CROSS_PVP), ("dvp", SAME_DVP), ("pvp", SAME_PVP)):
                assert (await coordinator.submit(local.settlement(kind, legs, PARTIES))).phase is Phase.SETTLED
        assert (await coordinator.submit(local.settlement("dvp", REFUSED, PARTIES))).phase is Phase.FAILED
        late = await observing(nursery, local, LEDGERS)  # reads all of it afterwards
        await trio.sleep(61 + GRACE_MS / 1000)  # past the refused one's deadline: its leg 0 can never be locked
        report = audit(await read_over_bus(local.bus, local.world.registry, LEDGERS))
        heads = {ledger: len(await journal(local, ledger)) for ledger in LEDGERS}
        nursery.cancel_scope.cancel()

    assert report.clean and report.settlements == {"settled": 4, "rolled back": 1}, report.text()
    for observer in (live, late):
        assert observer.alerts == [] and not observer.alerted
        assert observer.judged == report.settlements  # the audit's own judgement, reached live
        assert {ledger: j.entries for ledger, j in observer.journals.items()} == heads
        assert sum(j.settles for j in observer.journals.values()) == report.settles == 4
        assert observer.open_settlements == 0  # each judged for good is forgotten
        assert all(not j.replay.locks and not j.legs for j in observer.journals.values())


async def test_an_observer_catching_up_judges_by_the_journals_until_it_reaches_their_heads(
    tmp_path, autojump_clock, monkeypatch
):
    """Started after a settlement settled, the observer reads csd's journal two entries
    every 20 s: it reads the claim on cbdc-eur well past the settlement's deadline, before
    reaching csd's lock. Its own clock says nothing of a journal not yet read to its head:
    no alert, and the settlement judged settled."""
    ledgers = ("cbdc-eur", "csd")
    monkeypatch.setattr(follow_module, "PAGE_SIZE", 2)
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers)
        coordinator, _ = await local.start_coordinator(TIMING)
        assert (await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED
        observer = observer_of(local, ledgers)
        client = observer.clients["csd"]
        original = client.query

        async def slow(query):
            if isinstance(query, QueryJournal):
                await trio.sleep(20)
            return await original(query)

        monkeypatch.setattr(client, "query", slow)
        await nursery.start(observer.run)
        with trio.fail_after(600):
            while observer.judged != {"settled": 1}:
                await trio.sleep(0.5)
        assert trio.current_time() > 60 + GRACE_MS / 1000  # the settlement's deadline passed during the read
        nursery.cancel_scope.cancel()
    assert observer.alerts == []


# -- (2) one-legged for real ---------------------------------------------------------------------


async def test_a_settlement_made_one_legged_is_alerted_once_within_a_second_of_the_refund(
    tmp_path, autojump_clock, caplog
):
    """Every claim to csd is lost until csd refunds leg 1 at its backstop: bank-a was paid
    EUR and kept its bonds (as in tests/test_audit.py)."""
    ledgers = ("cbdc-eur", "csd")
    bus = MemoryBus()
    claims_lost = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=1,
        applies=lambda service, payload: service == "ledger/csd" and b'"claim"' in payload,
    )
    caplog.set_level(logging.ERROR, logger="lockstep.observer")
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers, bus)
        observer = await observing(nursery, local, ledgers)
        async with bus.subscribe(ALERTS_TOPIC) as published:
            local.bus = claims_lost
            coordinator, _ = await local.start_coordinator(TIMING, watchtower=False)
            local.bus = bus
            raw = local.settlement("dvp", CROSS_DVP, PARTIES)
            settlement_id = decode_signed(raw).msg.id
            records = []

            async def submit() -> None:
                records.append(await coordinator.submit(raw))

            nursery.start_soon(submit)
            alerted_ms = await until_alerted(observer)
            event = canonical.decode(published.receive_nowait())
        await trio.sleep(10)  # judged for good: the half-second checks do not alert it again
        eur, csd = await journal(local, "cbdc-eur"), await journal(local, "csd")
        nursery.cancel_scope.cancel()

    assert records[0].phase is Phase.ONE_LEGGED
    assert len(observer.alerts) == 1 and observer.judged == {"one-legged": 1} and observer.open_settlements == 0
    violation = observer.alerts[0]
    refund = at(csd, "expire", lock_id=lock_id(settlement_id, 1))
    assert violation.kind is Kind.ONE_LEGGED and violation.settlement == settlement_id
    assert violation.ledgers == ledgers
    assert violation.reason == "leg 0 claimed on cbdc-eur, leg 1 refunded to its owner on csd"
    assert violation.entries == (
        at(eur, "lock", id=lock_id(settlement_id, 0)),
        at(eur, "claim", lock_id=lock_id(settlement_id, 0)),
        at(csd, "lock", id=lock_id(settlement_id, 1)),
        refund,
    )
    assert 0 <= event["time_ms"] - time_of(csd, refund) <= 1_000 and event["time_ms"] <= alerted_ms
    assert event == alert_event(violation, event["time_ms"])
    alerts = [record.getMessage() for record in caplog.records if record.name == "lockstep.observer"]
    assert alerts == [f"ALERT {violation.text()}"]
    assert alerts[0].startswith(f"ALERT one_legged on cbdc-eur, csd: settlement {settlement_id}: ")


async def test_a_claim_whose_other_ledger_went_down_is_alerted_on_the_observers_clock(tmp_path, autojump_clock):
    """As above, but csd stops once leg 0 is claimed: no entry will say that leg 1 can
    no longer be claimed. At its backstop plus the grace period, on the observer's clock,
    the settlement is alerted one-legged and the lock overdue; when csd comes back and
    refunds leg 1, it is not alerted again."""
    ledgers = ("cbdc-eur", "csd")
    bus = MemoryBus()
    claims_lost = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=1,
        applies=lambda service, payload: service == "ledger/csd" and b'"claim"' in payload,
    )
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers, bus)
        observer = await observing(nursery, local, ledgers)
        local.bus = claims_lost
        coordinator, _ = await local.start_coordinator(TIMING, watchtower=False)
        local.bus = bus
        raw = local.settlement("dvp", CROSS_DVP, PARTIES)
        settlement_id = decode_signed(raw).msg.id
        nursery.start_soon(coordinator.submit, raw)
        eur = observer.journals["cbdc-eur"].replay
        with trio.fail_after(30):
            while getattr(eur.locks.get(lock_id(settlement_id, 0)), "state", None) is not LockState.CLAIMED:
                await trio.sleep(0.01)
        local.stop_ledger("csd")
        expiry_ms = observer.journals["csd"].replay.locks[lock_id(settlement_id, 1)].refund_at_ms
        alerted_ms = await until_alerted(observer, 2)
        await trio.sleep(5)
        await local.start_ledger("csd")
        with trio.fail_after(30):
            while observer.open_settlements:
                await trio.sleep(0.01)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()

    assert expiry_ms + GRACE_MS < alerted_ms <= expiry_ms + GRACE_MS + 1_000
    assert sorted(v.kind.value for v in observer.alerts) == ["lock_overdue", "one_legged"]
    (one_legged,) = (v for v in observer.alerts if v.kind is Kind.ONE_LEGGED)
    assert one_legged.settlement == settlement_id and one_legged.ledgers == ledgers
    assert one_legged.reason == "leg 0 claimed on cbdc-eur, leg 1 still held past its refund time on csd"
    assert observer.judged == {"one-legged": 1}


# -- (3) a lock held past its expiry -------------------------------------------------------------


async def test_a_lock_whose_ledger_is_down_past_its_backstop_and_grace_is_alerted_once(tmp_path, autojump_clock):
    """The coordinator and csd stop once both locks are placed, nothing decided: cbdc-eur
    refunds leg 0 at its backstop; csd, down, cannot refund leg 1. Alerted within a second
    of its backstop plus the grace period; when csd comes back and refunds it, the
    settlement rolled back."""
    ledgers = ("cbdc-eur", "csd")
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers)
        observer = await observing(nursery, local, ledgers)
        coordinator, scope = await local.start_coordinator(TIMING, watchtower=False)

        def stop_at_locked(record) -> None:
            if record.phase is Phase.LOCKED:
                scope.cancel()
                local.stop_ledger("csd")

        coordinator.on_phase = stop_at_locked
        raw = local.settlement("dvp", CROSS_DVP, PARTIES)
        settlement_id = decode_signed(raw).msg.id
        nursery.start_soon(local.send_settlement, raw)
        with trio.fail_after(30):
            while lock_id(settlement_id, 1) not in observer.journals["csd"].replay.locks:
                await trio.sleep(0.01)
        expiry_ms = observer.journals["csd"].replay.locks[lock_id(settlement_id, 1)].refund_at_ms
        alerted_ms = await until_alerted(observer)
        await trio.sleep(5)
        assert len(observer.alerts) == 1 and observer.open_settlements == 1  # still held: remembered
        await local.start_ledger("csd")  # back: it refunds leg 1 at once
        with trio.fail_after(30):
            while observer.open_settlements:
                await trio.sleep(0.01)
        await trio.sleep(5)
        csd = await journal(local, "csd")
        nursery.cancel_scope.cancel()

    assert expiry_ms + GRACE_MS < alerted_ms <= expiry_ms + GRACE_MS + 1_000
    assert len(observer.alerts) == 1 and observer.judged == {"rolled back": 1}
    violation = observer.alerts[0]
    assert violation.kind is Kind.LOCK_OVERDUE and violation.settlement == settlement_id
    assert violation.ledgers == ("csd",) and violation.entries == (at(csd, "lock", id=lock_id(settlement_id, 1)),)
    assert violation.reason.startswith(f"lock {lock_id(settlement_id, 1)} ({BOND} 100 units ")
    assert "of a-sec) still held" in violation.reason


# -- (4) a journal that does not verify ----------------------------------------------------------


def changed_amount(entry: dict) -> dict:
    """A copy of an issue entry issuing twice the amount, its signature left as it was."""
    forged = copy.deepcopy(entry)
    forged["instruction"]["amount"] *= 2
    forged["effects"]["balances"] = [
        [account, asset, available * 2, locked] for account, asset, available, locked in forged["effects"]["balances"]
    ]
    forged["effects"]["supply"] = [
        [asset, issued * 2, redeemed] for asset, issued, redeemed in forged["effects"]["supply"]
    ]
    return forged


async def test_a_journal_page_that_does_not_verify_is_alerted_and_the_other_ledgers_still_followed(
    tmp_path, autojump_clock, monkeypatch
):
    ledgers = ("cbdc-eur", "csd")
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers)
        observer = observer_of(local, ledgers)
        client = observer.clients["cbdc-eur"]
        original = client.query

        async def tampered(query):
            value = await original(query)
            if isinstance(query, QueryJournal):
                value["entries"] = [changed_amount(e) if e["kind"] == "issue" else e for e in value["entries"]]
            return value

        monkeypatch.setattr(client, "query", tampered)
        await nursery.start(observer.run)
        await until_alerted(observer)
        coordinator, _ = await local.start_coordinator(TIMING)
        assert (await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED
        await trio.sleep(5)
        eur, csd = await journal(local, "cbdc-eur"), await journal(local, "csd")
        nursery.cancel_scope.cancel()

    (violation,) = observer.alerts
    issue = at(eur, "issue")
    assert violation.kind is Kind.JOURNAL and violation.ledgers == ("cbdc-eur",)
    assert violation.entries == (At("cbdc-eur", issue.seq),)
    assert violation.text().startswith(
        f"journal on cbdc-eur: journal entry {issue.seq} ledger signature does not verify"
    )
    assert observer.journals["cbdc-eur"].entries == issue.seq  # nothing from the break on
    assert observer.journals["csd"].entries == len(csd)  # still followed to the end
    assert observer.judged == {"unchecked": 1}  # its cash leg lies past the break: not guessed


# -- (5) garbage on the change stream ------------------------------------------------------------


async def test_garbage_on_an_entries_topic_costs_the_observer_nothing(tmp_path, autojump_clock):
    """Anyone may publish on a ledger's entries topic; what does not decode stops the
    follower (protocols/bus/follow.py), and the observer follows again from where it was."""
    ledgers = ("cbdc-eur", "csd")
    async with trio.open_nursery() as nursery:
        local = await start_world(nursery, tmp_path, ledgers)
        observer = await observing(nursery, local, ledgers)
        await local.bus.publish(entries_topic("csd"), b"not an entry")
        coordinator, _ = await local.start_coordinator(TIMING)
        assert (await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED
        await trio.sleep(5)
        heads = {ledger: len(await journal(local, ledger)) for ledger in ledgers}
        nursery.cancel_scope.cancel()

    assert observer.alerts == [] and observer.judged == {"settled": 1}
    assert {ledger: j.entries for ledger, j in observer.journals.items()} == heads


# -- the command ---------------------------------------------------------------------------------


def lockstep_observer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "observer", *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_the_command_exits_2_naming_what_it_cannot_use(tmp_path):
    world = standard_world(tmp_path)
    config = world.ledger_configs["coordinator"]
    missing = lockstep_observer("--config", str(tmp_path / "nowhere.toml"))
    assert missing.returncode == 2 and "nowhere.toml" in missing.stderr
    config.write_text(config.read_text().replace('"csd"', '"bank-a"'))
    wrong = lockstep_observer("--config", str(config), "--broker", "mqtt://127.0.0.1:1")
    assert wrong.returncode == 2 and "ledger bank-a: not a ledger in the registry" in wrong.stderr


async def test_the_command_follows_the_ledgers_over_mqtt_until_sigterm(tmp_path, broker):
    world = standard_world(tmp_path, broker=broker.url)
    async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
        local = Local(world, bus, nursery)
        for ledger in LEDGERS:
            await local.start_ledger(ledger)
        await local.fund_standard()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine.cli", "observer", "--config", str(world.ledger_configs["coordinator"])],
            stderr=subprocess.PIPE,
        )
        stderr = b""
        with trio.fail_after(30):
            while b"observer following" not in stderr:
                stderr += await process.stderr.receive_some()
            await trio.sleep(0.6)  # read every journal; its half-second check ran
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                stderr += chunk
            returncode = await process.wait()
        nursery.cancel_scope.cancel()
    text = stderr.decode()
    assert returncode == 0, text
    assert "observer following csd, cbdc-eur, cbdc-multi, unified" in text and "stopping on SIGTERM" in text
    assert "ALERT" not in text and " ERROR " not in text
