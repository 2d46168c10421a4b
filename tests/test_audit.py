"""The auditor (engine/audit/journals.py) on a real history: a world that settled DvP and PvP across
ledgers and on one, rolled one back at its locks' backstop and failed one (its placed lock
cancelled), then stopped. Its database
files audit clean; each corruption made on purpose to a copy of them is caught and named
(the ledger and the entry, and the settlement where there is one); a settlement made
one-legged for real is named with both its ledgers and its entries, over the bus while
the ledgers run and from their files after; and the command exits 0, 1 or 2."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from engine.audit.journals import At, Kind, LegView, Report, Terms, audit, judge, main, read_database, read_over_bus
from engine.world.local import BOND, Local, dvp_legs, standard_world
from protocols import canonical
from protocols.bus.faults import Faults, FaultyBus
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure
from protocols.journal import entry_hash, make_entry
from protocols.messages import Entry, QueryLock, SettlementLeg
from protocols.registry import Registry
from protocols.settlement import Phase, Timing, lock_id
from protocols.signing import PrivateKey, decode_signed, from_wire
from tests.databases import run_sql

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
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
SETTLED = [
    ("dvp-cross", "dvp", CROSS_DVP),
    ("pvp-cross", "pvp", CROSS_PVP),
    ("dvp-same", "dvp", SAME_DVP),
    ("pvp-same", "pvp", SAME_PVP),
]
EXPIRED = "dvp-expired"  # its coordinator was down, undecided, until both locks' backstops


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


# -- the history, made once, copied for each test ------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("history")
    trio.run(make_history, directory, clock=trio.testing.MockClock(autojump_threshold=0))
    return directory


async def make_history(directory: Path) -> None:
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(directory), MemoryBus(), nursery)
        for ledger in LEDGERS:
            await local.start_ledger(ledger)
        await local.fund_standard()
        coordinator, scope = await local.start_coordinator(TIMING)
        coordinator.on_phase = lambda record: record.phase is Phase.LOCKED and scope.cancel()
        nursery.start_soon(local.send_settlement, local.settlement("dvp", CROSS_DVP, PARTIES, settlement_id=EXPIRED))
        with trio.fail_after(30):
            while not scope.cancel_called:
                await trio.sleep(0.01)
        await trio.sleep(TIMING.backstop_ms / 1000 + TIMING.margin_ms / 1000 + 1)
        coordinator, scope = await local.start_coordinator(TIMING)
        assert (await coordinator.wait(EXPIRED)).phase is Phase.ROLLED_BACK
        for settlement_id, kind, legs in SETTLED:
            record = await coordinator.submit(local.settlement(kind, legs, PARTIES, settlement_id=settlement_id))
            assert record.phase is Phase.SETTLED, record
        record = await coordinator.submit(local.settlement("dvp", REFUSED, PARTIES, settlement_id="dvp-refused"))
        assert record.phase is Phase.FAILED, record
        stop(local, scope)


def stop(local: Local, coordinator_scope: trio.CancelScope) -> None:
    """Stop every service; each closes its database as it ends."""
    coordinator_scope.cancel()
    for ledger in list(local.services):
        local.stop_ledger(ledger)


@pytest.fixture
def files(history: Path, tmp_path: Path) -> Path:
    """A copy of the history's databases, this test's to corrupt."""
    for ledger in LEDGERS:
        shutil.copy(history / f"{ledger}.db", tmp_path)
    return tmp_path


def audit_files(directory: Path, registry_dir: Path, grace_ms: int = 60_000) -> Report:
    registry = Registry.load(registry_dir / "registry.toml")
    return audit([read_database(directory / f"{ledger}.db", registry) for ledger in LEDGERS], grace_ms)


def journal(database: Path | str) -> list[dict]:
    _, rows = run_sql(database, "SELECT entry FROM journal ORDER BY seq")
    return [canonical.decode(raw) for (raw,) in rows]


def seq_of(entries: list[dict], kind: str, **fields) -> int:
    """The seq of the one entry of this kind whose instruction has these fields."""
    found = [
        entry["seq"]
        for entry in entries
        if entry["kind"] == kind
        and all((entry["instruction"] or {}).get(name) == value for name, value in fields.items())
    ]
    assert len(found) == 1, (kind, fields, found)
    return found[0]


def store(database: Path | str, seq: int, stored_hash: str | None, value: dict) -> None:
    if stored_hash is None:
        run_sql(database, "UPDATE journal SET entry = ? WHERE seq = ?", (canonical.encode(value), seq))
    else:
        run_sql(
            database,
            "UPDATE journal SET hash = ?, entry = ? WHERE seq = ?",
            (stored_hash, canonical.encode(value), seq),
        )


def rewrite(db_path: Path | str, seq: int, change: Callable[[dict], None], key: PrivateKey) -> None:
    """Change entry `seq` and sign it and every later entry again with `key`, each linked
    to the one before: history rewritten by whoever holds `key`."""
    entries = journal(db_path)
    prev_hash = entries[seq]["prev_hash"]
    for entry in entries[seq:]:
        if entry["seq"] == seq:
            change(entry)
        signed, prev_hash = make_entry(
            key,
            entry["ledger"],
            entry["seq"],
            prev_hash,
            entry["time_ms"],
            entry["kind"],
            entry["instruction"],
            entry["effects"],
        )
        store(db_path, entry["seq"], prev_hash, signed.wire())


def only(report: Report, kind: Kind):
    assert [v.kind for v in report.violations] == [kind], report.text()
    return report.violations[0]


# -- a clean history ---------------------------------------------------------------------------


def test_the_history_audits_clean_with_every_settlement_accounted_for(files, history):
    report = audit_files(files, history)
    assert report.clean, report.text()
    assert report.settlements == {"settled": 2, "rolled back": 2}  # dvp-expired and dvp-refused
    assert report.settles == 2 and report.incomplete == ()
    ledgers = {summary.ledger: summary for summary in report.ledgers}
    for ledger in LEDGERS:
        entries = journal(files / f"{ledger}.db")
        assert ledgers[ledger].entries == len(entries)
        with closing(sqlite3.connect(files / f"{ledger}.db")) as db:
            assert ledgers[ledger].head_hash == db.execute("SELECT hash FROM journal ORDER BY seq DESC").fetchone()[0]
    assert ledgers["csd"].outstanding == {BOND: 1_000_000}
    assert ledgers["cbdc-multi"].outstanding == {"CHF": 0, "USD": 10**12}
    assert ledgers["unified"].outstanding == {BOND: 1_000_000, "EUR": 10**12, "USD": 10**12}
    lines = report.text().splitlines()
    assert lines[1].startswith("cbdc-eur: ") and "outstanding EUR 10,000,000,000.00" in lines[1]
    assert lines[0].startswith("csd: ") and lines[0].endswith(f"outstanding {BOND} 1,000,000 units")
    assert lines[-1].startswith("CLEAN: 4 ledgers") and lines[-1].endswith("0 violations")


# -- corruptions made on purpose ----------------------------------------------------------------


@pytest.mark.parametrize("stored_hash", ["kept", "recomputed"])
def test_an_edited_amount_breaks_the_chain_at_that_entry(files, history, stored_hash):
    path = files / "csd.db"
    entries = journal(path)
    seq = seq_of(entries, "transfer", from_account="treasury")
    edited = entries[seq]
    edited["instruction"]["amount"] += 1
    for row in edited["effects"]["balances"]:
        row[2] += 1 if row[2] > 0 else -1
    if stored_hash == "kept":
        store(path, seq, None, edited)
    else:
        store(path, seq, entry_hash(from_wire(edited, allowed=(Entry,))), edited)
    violation = only(audit_files(files, history), Kind.JOURNAL)
    assert violation.ledgers == ("csd",) and violation.entries == (At("csd", seq),)
    reason = "does not match its stored hash" if stored_hash == "kept" else "ledger signature does not verify"
    assert reason in violation.reason


def test_a_deleted_entry_is_named_as_missing_and_nothing_after_it_is_judged(files, history):
    path = files / "csd.db"
    seq = seq_of(journal(path), "lock", id=lock_id("dvp-cross", 1))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM journal WHERE seq = ?", (seq,))
    report = audit_files(files, history)
    violation = only(report, Kind.JOURNAL)
    assert (
        violation.entries == (At("csd", seq),) and f"is missing: the next stored entry is {seq + 1}" in violation.reason
    )
    assert report.ledgers[0].broken_at == seq and report.ledgers[0].entries == seq
    assert report.settlements["unchecked"] >= 1  # dvp-cross's leg 1 lies past the break: not guessed


@pytest.mark.parametrize("forgery", ["signature bytes replaced", "history signed again with another key"])
def test_a_forged_signature_is_caught_with_every_hash_link_intact(files, history, forgery):
    path = files / "cbdc-eur.db"
    entries = journal(path)
    seq = seq_of(entries, "claim", lock_id=lock_id("pvp-cross", 0))
    if forgery == "signature bytes replaced":
        entries[seq]["sigs"] = entries[seq - 1]["sigs"]
        store(path, seq, None, entries[seq])
    else:
        rewrite(path, seq, lambda entry: None, PrivateKey.generate())
    violation = only(audit_files(files, history), Kind.JOURNAL)
    assert violation.entries == (At("cbdc-eur", seq),) and "ledger signature does not verify" in violation.reason


def test_a_ledger_that_signs_an_edited_amount_itself_is_caught_by_conservation_and_its_instruction(files, history):
    """Under the ledger's own key every link and signature checks; the entry still
    creates money, and the replay names it; its claim does not vouch for it; and the
    token view, whose lots moved only what the claim moved, no longer agrees."""
    path = files / "cbdc-eur.db"
    seq = seq_of(journal(path), "claim", lock_id=lock_id("dvp-cross", 0))

    def pay_twice(entry: dict) -> None:
        entry["effects"]["balances"][-1][2] *= 2  # the beneficiary's credit

    rewrite(path, seq, pay_twice, PrivateKey.load(history / "keys" / "cbdc-eur.pem"))
    report = audit_files(files, history)
    assert [v.kind for v in report.violations] == [Kind.CONSERVATION, Kind.TOKENS, Kind.FORGED], report.text()
    conservation, tokens, forged = report.violations
    assert conservation.entries == tokens.entries == forged.entries == (At("cbdc-eur", seq, "claim"),)
    assert tokens.reason == (
        "the token view and the account view disagree: "
        "a-eur EUR: lots 99000 available, 0 locked; balances 198000 available, 0 locked"
    )
    assert conservation.reason == "balances change by EUR 990.00, issued minus redeemed by EUR 0.00"
    assert forged.reason == (
        "claim entry: effects balances are [b-eur: EUR 0.00 available, EUR -990.00 locked; "
        "a-eur: EUR 1,980.00 available, EUR 0.00 locked], its instruction implies "
        "[b-eur: EUR 0.00 available, EUR -990.00 locked; a-eur: EUR 990.00 available, EUR 0.00 locked]"
    )


def test_a_balance_a_signed_entry_leaves_negative_is_named_with_its_amounts(files, history):
    """Value is conserved (the lock's owner gives twice what the beneficiary gets twice),
    but the owner's locked balance goes below zero: the violation says so in money (and
    the token view, which moved the lock's lots once, disagrees)."""
    path = files / "cbdc-eur.db"
    seq = seq_of(journal(path), "claim", lock_id=lock_id("dvp-cross", 0))

    def claim_twice(entry: dict) -> None:
        entry["effects"]["balances"][0][3] *= 2  # the owner's locked debit
        entry["effects"]["balances"][-1][2] *= 2  # the beneficiary's credit

    rewrite(path, seq, claim_twice, PrivateKey.load(history / "keys" / "cbdc-eur.pem"))
    report = audit_files(files, history)
    assert [v.kind for v in report.violations] == [Kind.CONSERVATION, Kind.TOKENS, Kind.FORGED], report.text()
    conservation = report.violations[0]
    assert conservation.entries == (At("cbdc-eur", seq, "claim"),)
    assert conservation.reason == "b-eur left negative: EUR 9,999,999,010.00 available, EUR -990.00 locked"


def test_a_ledger_that_signs_the_end_of_a_lock_already_ended_is_caught_by_the_replay(files, history):
    path = files / "csd.db"
    seq = seq_of(journal(path), "claim", lock_id=lock_id("dvp-cross", 1))

    def claim_a_refunded_lock_too(entry: dict) -> None:
        entry["effects"]["locks"].append([lock_id(EXPIRED, 1), "claimed"])

    rewrite(path, seq, claim_a_refunded_lock_too, PrivateKey.load(history / "keys" / "csd.pem"))
    report = audit_files(files, history)
    violation = only(report, Kind.REPLAY)
    assert violation.entries == (At("csd", seq, "claim"),)
    assert violation.reason == f"ends lock {lock_id(EXPIRED, 1)} claimed, but it is refunded"
    assert report.ledgers[0].broken_at == seq


def test_a_lock_its_ledger_never_refunded_is_overdue(files, history):
    """The ledger's own refund of dvp-expired's leg 1 made into an empty entry: the lock
    stays held while the ledger goes on writing entries long after its expiry."""
    path = files / "csd.db"
    leg = lock_id(EXPIRED, 1)
    entries = journal(path)
    refund = [e["seq"] for e in entries if e["kind"] == "expire" and e["effects"]["locks"] == [[leg, "refunded"]]]

    def no_refund(entry: dict) -> None:
        entry["effects"] = {}

    rewrite(path, refund[0], no_refund, PrivateKey.load(history / "keys" / "csd.pem"))
    with closing(sqlite3.connect(path)) as db, db:  # and the tables to match, as that ledger would have them
        db.execute("UPDATE locks SET state = 'held' WHERE lock_id = ?", (leg,))
        db.execute(
            "UPDATE balances SET available = available - 100, locked = locked + 100 "
            "WHERE account = 'a-sec' AND asset = ?",
            (BOND,),
        )
    assert audit_files(files, history).clean  # within the default grace of a minute
    violation = only(audit_files(files, history, grace_ms=500), Kind.LOCK_OVERDUE)
    assert violation.settlement == EXPIRED and violation.entries == (
        At("csd", seq_of(entries, "lock", id=leg), "lock"),
    )
    assert violation.reason.startswith(f"lock {leg} ({BOND} 100 units of a-sec) still held")


# -- a settlement made one-legged for real -------------------------------------------------------


async def test_a_claim_whose_other_leg_was_refunded_is_one_legged_over_the_bus_and_in_the_files(
    tmp_path, autojump_clock
):
    """Every claim of leg 1 (csd) is lost until csd refunds it at its backstop: bank-a was
    paid EUR and kept its bonds. While leg 1 is still claimable the audit calls the
    settlement incomplete; after, a violation naming it, both ledgers and their entries."""
    bus = MemoryBus()
    claims_lost = FaultyBus(
        bus,
        Faults(drop_request=1.0),
        seed=1,
        applies=lambda service, payload: service == "ledger/csd" and b'"claim"' in payload,
    )
    ledgers = ("cbdc-eur", "csd")
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), bus, nursery)
        for ledger in ledgers:
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=ledgers)
        local.bus = claims_lost
        timing = attrs.evolve(TIMING, backstop_ms=120_000)  # not the default 4 h of claims retried
        coordinator, scope = await local.start_coordinator(timing, watchtower=False)
        local.bus = bus
        raw = local.settlement("dvp", CROSS_DVP, PARTIES)
        settlement_id = decode_signed(raw).msg.id
        records = []

        async def submit() -> None:
            records.append(await coordinator.submit(raw))

        nursery.start_soon(submit)
        with trio.fail_after(30):
            while await lock_state(local, "cbdc-eur", lock_id(settlement_id, 0)) != "claimed":
                await trio.sleep(0.01)
        registry = local.world.registry
        halfway = audit(await read_over_bus(bus, registry, ledgers, page_limit=2))
        assert halfway.clean and halfway.settlements == {"incomplete": 1}, halfway.text()
        assert halfway.incomplete == (
            f"settlement {settlement_id}: leg 0 claimed on cbdc-eur, leg 1 held on csd, still claimable",
        )
        with trio.fail_after(timing.backstop_ms / 1000 + 60):
            while not records:
                await trio.sleep(1)
        assert records[0].phase is Phase.ONE_LEGGED  # what the coordinator itself concluded
        over_bus = audit(await read_over_bus(bus, registry, ledgers))
        stop(local, scope)

    violation = only(over_bus, Kind.ONE_LEGGED)
    assert violation.settlement == settlement_id and violation.ledgers == ledgers
    assert violation.reason == "leg 0 claimed on cbdc-eur, leg 1 refunded to its owner on csd"
    eur, csd = journal(tmp_path / "cbdc-eur.db"), journal(tmp_path / "csd.db")
    refund = [
        e["seq"]
        for e in csd
        if e["kind"] == "expire" and e["effects"]["locks"] == [[lock_id(settlement_id, 1), "refunded"]]
    ]
    assert violation.entries == (
        At("cbdc-eur", seq_of(eur, "lock", id=lock_id(settlement_id, 0)), "lock"),
        At("cbdc-eur", seq_of(eur, "claim", lock_id=lock_id(settlement_id, 0)), "claim"),
        At("csd", seq_of(csd, "lock", id=lock_id(settlement_id, 1)), "lock"),
        At("csd", refund[0], "expire"),
    )
    from_files = audit([read_database(tmp_path / f"{ledger}.db", local.world.registry) for ledger in ledgers])
    assert from_files.violations == over_bus.violations and from_files.ledgers == over_bus.ledgers


async def lock_state(local: Local, ledger: str, lock: str) -> str | None:
    client = local.client(ledger)
    try:
        return (await client.query(QueryLock(client.next_query_id(), ledger, lock)))["state"]
    except Rejected:
        return None  # not placed yet


# -- the rules of judgement, as a table -----------------------------------------------------------

TERMS = Terms("s", ("A", "B"), deadline_ms=10_000)


@pytest.mark.parametrize(
    "leg0, leg1, outcome, violation",
    [
        (("claimed", False), ("claimed", False), "settled", False),
        (("refunded", False), ("aborted", False), "rolled back", False),
        (("absent", False), ("aborted", False), "rolled back", False),
        (("held", True), ("refunded", False), "in progress", False),
        (("claimed", False), ("held", True), "incomplete", False),
        (("claimed", False), ("absent", True), "incomplete", False),
        (("claimed", False), ("held", False), "one-legged", True),  # past its expiry: refused if claimed
        (("claimed", False), ("absent", False), "one-legged", True),  # past the deadline: can never be locked
        (("refunded", False), ("claimed", False), "one-legged", True),
        (("claimed", False), ("unknown", False), "unchecked", False),
        (("cancelled", False), ("cancelled", False), "rolled back", False),
        (("cancelled", False), ("absent", False), "rolled back", False),
        (("held", True), ("cancelled", False), "in progress", False),
        (("claimed", False), ("cancelled", False), "one-legged", True),  # both decisions revealed
        (("cancelled", False), ("claimed", False), "one-legged", True),
    ],
)
def test_a_settlement_is_one_legged_only_when_its_other_leg_can_no_longer_be_claimed(leg0, leg1, outcome, violation):
    found, finding = judge(TERMS, [LegView("A", *leg0), LegView("B", *leg1)])
    assert found == outcome
    assert (getattr(finding, "kind", None) is Kind.ONE_LEGGED) == violation


def test_a_claim_beside_a_cancel_names_both_decisions_revealed():
    _, finding = judge(TERMS, [LegView("A", "claimed", False), LegView("B", "cancelled", False)])
    assert finding.reason == (
        "leg 0 claimed on A, leg 1 cancelled on B: both the claim secret and the cancellation were revealed"
    )


# -- the command --------------------------------------------------------------------------------


def lockstep_audit(registry_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "audit", "--registry", str(registry_dir / "registry.toml"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_exits_0_when_clean_and_1_on_a_violation(files, history):
    databases = [arg for ledger in LEDGERS for arg in ("--db", str(files / f"{ledger}.db"))]
    clean = lockstep_audit(history, *databases)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    lines = clean.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == list(LEDGERS) and lines[-1].startswith("CLEAN")

    path = files / "cbdc-eur.db"
    entries = journal(path)
    entries[2]["sigs"] = entries[1]["sigs"]
    store(path, 2, None, entries[2])
    violated = lockstep_audit(history, *databases)
    assert violated.returncode == 1, violated.stdout + violated.stderr
    assert "VIOLATION journal on cbdc-eur: journal entry 2 ledger signature does not verify" in violated.stdout
    assert violated.stdout.splitlines()[-1].startswith("VIOLATIONS") and violated.stdout.rstrip().endswith(
        "1 violation"
    )


def test_the_command_refuses_naming_what_it_cannot_read(files, history):
    """Each an expected failure, which the command prints in one line with exit status 2
    (tests/test_cli.py runs the command itself)."""
    registry = str(history / "registry.toml")
    cases = [
        ((registry, [str(files / "nowhere.db")], None, []), f"database {files / 'nowhere.db'}: no such file"),
        ((registry, [str(files / "csd.db")] * 2, None, []), "ledger csd: given more than once"),
        (
            (str(files / "nowhere.toml"), [str(files / "csd.db")], None, []),
            f"registry {files / 'nowhere.toml'}: no such file",
        ),
        ((registry, None, "mqtt://127.0.0.1:1", []), "--broker with --ledger"),
        ((registry, None, "mqtt://127.0.0.1:1", ["csd"]), "MQTT broker 127.0.0.1:1: cannot reach it"),
    ]
    for args, needle in cases:
        with pytest.raises(ExpectedFailure) as failure:
            main(*args)
        assert needle in str(failure.value), args


async def test_the_command_reads_the_journals_of_running_ledgers_over_mqtt(tmp_path, broker):
    ledgers = ("csd", "cbdc-eur")
    async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), bus, nursery)
        for ledger in ledgers:
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=ledgers)
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "audit",
                "--registry",
                str(tmp_path / "registry.toml"),
                "--broker",
                broker.url,
                "--ledger",
                "csd",
                "--ledger",
                "cbdc-eur",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert out.startswith("csd: 6 entries checked") and "cbdc-eur: 4 entries checked" in out
    assert out.splitlines()[-1].startswith("CLEAN: 2 ledgers, 10 entries")
