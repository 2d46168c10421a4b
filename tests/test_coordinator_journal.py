"""The coordinator's journal holds each settlement's decision once: a second decision, or
another secret, is refused by the record and by the database itself; a journal from
before decision locks is migrated with each decision read from its phase; and a
settlement it held in flight across that upgrade, with time-locks, is finished as before.
The database's schema, the desks' tables included, is made by numbered migrations in one
place (engine/coordinator/schema.py), from any earlier version."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path

import attrs
import psycopg
import pytest
import trio
import trio.testing

from engine.coordinator import schema
from engine.coordinator.journal import Journal, Record
from engine.world.local import Local, dvp_legs, standard_world
from engine.world.postgres import new_schema
from protocols.bus.memory import MemoryBus
from protocols.htlc import hashlock_of
from protocols.messages import Lock, QueryLock, Settlement
from protocols.settlement import Decision, Phase, Timing, lock_id
from protocols.signing import decode_signed, sign
from tests.databases import BACKENDS, run_sql

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
LEGS = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
PARTIES = ("bank-b", "bank-a")


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def locking(settlement_id: str = "dvp-1") -> Record:
    return Record(settlement_id, b"{}", Phase.PENDING, steps=(("pending", 1),)).to(
        Phase.LOCKING, 2, secret=secrets.token_bytes(32), cancel_secret=secrets.token_bytes(32)
    )


def test_a_record_is_decided_once():
    committed = locking().to(Phase.LOCKED, 3).to(Phase.CLAIMING, 4)
    assert committed.decision is Decision.COMMIT
    with pytest.raises(AssertionError, match="CLAIMING -> ROLLING_BACK is not a transition"):
        committed.to(Phase.ROLLING_BACK, 5)
    with pytest.raises(AssertionError, match="decided commit, now abort"):
        attrs.evolve(committed, phase=Phase.LOCKED).to(Phase.ROLLING_BACK, 5)  # even were the phase rewound


@pytest.mark.parametrize(
    "change",
    [
        {"decision": Decision.ABORT, "phase": Phase.ROLLING_BACK},
        {"secret": secrets.token_bytes(32)},
        {"cancel_secret": secrets.token_bytes(32)},
    ],
    ids=["decision", "secret", "cancel_secret"],
)
async def test_the_database_refuses_a_second_decision_or_other_secrets(database, change):
    journal = Journal(database)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        committed = locking().to(Phase.LOCKED, 3).to(Phase.CLAIMING, 4)
        await journal.save(committed)
        with pytest.raises(DECIDED_ONCE, match="decided once"):
            # as the writer would, past the record's checks
            journal._write([(committed, attrs.evolve(committed, **change))])
        assert journal.get("dvp-1") == committed
        await journal.save(attrs.evolve(committed, claimed=1))  # what may change still does
        assert journal.get("dvp-1").claimed == 1
        nursery.cancel_scope.cancel()
    journal.close()


SCHEMA_1 = """
CREATE TABLE settlements (id TEXT PRIMARY KEY, instruction BLOB, phase TEXT, secret BLOB, expiry_ms TEXT,
                          sent TEXT, reason_code TEXT, reason TEXT, steps TEXT);
CREATE INDEX unfinished ON settlements(phase)
    WHERE phase NOT IN ('failed', 'one_legged', 'rolled_back', 'settled');
PRAGMA user_version = 1;
"""


def schema_1(path, rows: list[tuple]) -> None:
    """A journal as the coordinator wrote it before decision locks."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA_1)
        db.executemany("INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()


def test_a_journal_from_before_decision_locks_is_migrated_with_each_decision_from_its_phase(tmp_path):
    two_locks, one_settle = json.dumps(["{}", "{}"]), json.dumps(["{}"])
    rows = [
        ("claiming", "claiming", two_locks),
        ("settled-cross", "settled", two_locks),
        ("settled-same", "settled", one_settle),
        ("one-legged", "one_legged", two_locks),
        ("rolling", "rolling_back", two_locks),
        ("rolled", "rolled_back", two_locks),
        ("failed-cross", "failed", two_locks),
        ("failed-same", "failed", one_settle),
        ("locked", "locked", two_locks),
    ]
    schema_1(
        tmp_path / "coordinator.db",
        [(sid, b"{}", phase, b"s" * 32, "[1, 2]", sent, "", "", json.dumps([[phase, 1]])) for sid, phase, sent in rows],
    )
    journal = Journal(tmp_path / "coordinator.db")
    decisions = {record.settlement_id: record.decision for record in journal.all()}
    journal.close()
    assert (
        version(tmp_path / "coordinator.db") == schema.SCHEMA_VERSION and tables(tmp_path / "coordinator.db") == TABLES
    )
    assert decisions == {
        "claiming": Decision.COMMIT,
        "settled-cross": Decision.COMMIT,
        "settled-same": Decision.NONE,
        "one-legged": Decision.COMMIT,
        "rolling": Decision.ABORT,
        "rolled": Decision.ABORT,
        "failed-cross": Decision.ABORT,
        "failed-same": Decision.NONE,
        "locked": Decision.NONE,
    }


async def test_a_settlement_in_flight_across_the_upgrade_keeps_its_time_locks_and_is_aborted_by_signature(
    tmp_path, autojump_clock
):
    """Aborted by the old coordinator, its time-locks placed and not yet released: the new
    one, started on the migrated journal, aborts them by its signature (it has no
    cancellation preimage to give), and the settlement ends rolled back."""
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), MemoryBus(), nursery)
        for ledger in ("csd", "cbdc-eur"):
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=("csd", "cbdc-eur"))
        signed = decode_signed(local.settlement("dvp", LEGS, PARTIES), allowed=(Settlement,))
        settlement: Settlement = signed.msg
        now = local.clock.now_ms()
        expiries = (now + 20_000, now + 25_000)  # within the settlement deadline, a minute away
        locks = []
        for index, leg in enumerate(settlement.legs):
            lock = sign(
                Lock(
                    lock_id(settlement.id, index),
                    leg.ledger,
                    now,
                    leg.from_account,
                    leg.to_account,
                    leg.asset,
                    leg.amount,
                    hashlock_of(b"s" * 32),
                    expiries[index],
                    ("coordinator",),
                    auth=signed.wire(),
                ),
                ("coordinator", local.world.keys["coordinator"]),
            )
            assert (await local.client(leg.ledger).submit(lock)).applied
            locks.append(lock.encode().decode())
        steps = [["pending", now], ["locking", now], ["rolling_back", now]]
        schema_1(
            local.world.directory / "coordinator.db",
            [
                (
                    settlement.id,
                    signed.encode(),
                    "rolling_back",
                    b"s" * 32,
                    json.dumps(expiries),
                    json.dumps(locks),
                    "timeout",
                    "a ledger did not confirm in time",
                    json.dumps(steps),
                )
            ],
        )
        coordinator, _ = await local.start_coordinator(TIMING, watchtower=False)
        with trio.fail_after(30):
            record = await coordinator.wait(settlement.id)
        assert (record.phase, record.decision) == (Phase.ROLLED_BACK, Decision.ABORT)
        for index, leg in enumerate(LEGS):
            client = local.client(leg.ledger)
            view = await client.query(QueryLock(client.next_query_id(), leg.ledger, lock_id(settlement.id, index)))
            assert view["state"] == "aborted"
        nursery.cancel_scope.cancel()


TABLES = {
    "settlements",
    "transitions",
    "instructions",
    "advices",
    "corporate_actions",
    "entitlements",
    "repos",
    "epochs",
    "holds",
    "links",
}


def tables(path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {
            "sqlite_sequence"
        }


def version(path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_new_database_has_every_table_at_the_last_migration(tmp_path):
    schema.connect(tmp_path / "coordinator.db").close()
    assert tables(tmp_path / "coordinator.db") == TABLES
    assert version(tmp_path / "coordinator.db") == schema.SCHEMA_VERSION == len(schema.MIGRATIONS) == 8


def test_a_database_whose_desks_made_their_own_tables_keeps_their_rows(tmp_path):
    """Schema 2, as the coordinator and its desks left it before one module owned the
    schema: the desks' tables already there, with rows."""
    path = tmp_path / "coordinator.db"
    with closing(schema.connect(path)) as db:
        db.execute("INSERT INTO repos VALUES ('r1', '{}', 'open', '', '', '[]')")
        db.execute("PRAGMA user_version = 2")
    assert version(path) == 2
    Journal(path).close()
    assert version(path) == schema.SCHEMA_VERSION and tables(path) == TABLES
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id, state FROM repos").fetchall() == [("r1", "open")]


def test_a_database_from_a_newer_coordinator_is_refused(tmp_path):
    path = tmp_path / "coordinator.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(AssertionError, match="is newer than this code"):
        Journal(path)


def rows(database, table: str) -> int:
    _, ((count,),) = run_sql(database, f"SELECT COUNT(*) FROM {table}")
    return count


@pytest.fixture(params=BACKENDS)
def database(request, tmp_path):
    """The journal's database: an SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "coordinator.db"
    return new_schema(request.getfixturevalue("postgres"), f"c{secrets.token_hex(4)}")


DECIDED_ONCE = (sqlite3.IntegrityError, psycopg.errors.RaiseException)  # each backend's trigger


async def test_the_journal_logs_what_changed_and_compacts_a_settlement_into_one_row_when_it_ends(database):
    """Each save appends one transition holding what changed (the secrets once, in the
    row that drew them); the record read back is the fold of them; once final, the
    settlement is one row and its transitions are gone, in the same commit."""
    path = database
    journal = Journal(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        pending = Record("dvp-1", b'{"id": "dvp-1"}', Phase.PENDING, steps=(("pending", 1),))
        records = [pending, locking().to(Phase.LOCKED, 3)]
        records[1] = attrs.evolve(records[1], instruction=pending.instruction)
        records.append(records[1].to(Phase.CLAIMING, 4))
        records.append(attrs.evolve(records[2], claimed=1))
        await journal.save_all([(None, records[0]), (records[0], records[1])])
        await journal.save_all([(records[1], records[2])])
        await journal.save_all([(records[2], records[3])])
        assert journal.get("dvp-1") == records[3] and journal.unfinished() == [records[3]]
        assert (rows(path, "transitions"), rows(path, "settlements")) == (4, 0)
        _, ((drew,),) = run_sql(path, "SELECT COUNT(*) FROM transitions WHERE length(secret) > 0")
        assert drew == 1, "the secret is written once, in the transition that drew it"
        settled = records[3].to(Phase.SETTLED, 5, claimed=2)
        await journal.save_all([(records[3], settled)])
        assert (rows(path, "transitions"), rows(path, "settlements")) == (0, 1)
        assert journal.get("dvp-1") == settled and journal.unfinished() == [] and journal.all() == [settled]
        with pytest.raises(DECIDED_ONCE, match="ends once"):
            journal._write([(settled, attrs.evolve(settled, reason="again"))])
        nursery.cancel_scope.cancel()
    journal.close()


async def test_a_note_shares_the_next_commit_and_is_on_disk_within_its_wait_if_none_comes(tmp_path, autojump_clock):
    """A note (leg 0 claimed) costs no commit of its own while a change that must be
    durable follows it within NOTES_WAIT_S; alone, it is committed once that wait is
    over; either way in the order handed over."""
    from engine.coordinator.journal import NOTES_WAIT_S

    journal = Journal(tmp_path / "journal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        claiming = locking().to(Phase.LOCKED, 3).to(Phase.CLAIMING, 4)
        await journal.save(claiming)
        commits = journal.commits
        noted = attrs.evolve(claiming, claimed=1)
        note = await journal.queue([(claiming, noted)], note=True)
        await trio.sleep(NOTES_WAIT_S / 2)
        assert not note.is_set() and journal.get("dvp-1") == claiming
        settled = noted.to(Phase.SETTLED, 5, claimed=2)
        await journal.save_all([(noted, settled)])
        assert note.is_set() and journal.commits == commits + 1 and journal.get("dvp-1") == settled

        other = locking("dvp-2").to(Phase.LOCKED, 3).to(Phase.CLAIMING, 4)
        await journal.save(other)
        started = trio.current_time()
        await (await journal.queue([(other, attrs.evolve(other, claimed=1))], note=True)).wait()
        assert trio.current_time() - started == pytest.approx(NOTES_WAIT_S)
        assert journal.get("dvp-2").claimed == 1
        nursery.cancel_scope.cancel()
    journal.close()


async def test_a_journal_reopened_folds_its_log_into_rows_and_resumes_the_same_records(database):
    path = database
    journal = Journal(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        first = locking("dvp-1")
        await journal.save_all([(None, first), (first, first.to(Phase.LOCKED, 3))])
        nursery.cancel_scope.cancel()
    before = journal.unfinished()
    journal.close()
    reopened = Journal(path)
    assert reopened.unfinished() == before and [r.phase for r in before] == [Phase.LOCKED]
    assert (rows(path, "transitions"), rows(path, "settlements")) == (0, 1)
    reopened.close()


def test_a_journal_is_held_by_one_coordinator_at_a_time(database):
    """A second Journal on the same database is refused, naming the holder where it can;
    once the first is closed (or its process dies: the kernel drops the lock file, the
    server the session) the next one opens it."""
    from engine.coordinator.journal import JournalInUse

    first = Journal(database)
    holder = f"process {os.getpid()}" if isinstance(database, Path) else "another coordinator process"
    with pytest.raises(JournalInUse, match=f"held by {holder}"):
        Journal(database)
    first.close()
    Journal(database).close()


def columns(database) -> dict[str, list[str]]:
    """Each table's columns, in order, as the database lists them."""
    if isinstance(database, Path):
        with closing(sqlite3.connect(database)) as db:
            names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {name: [row[1] for row in db.execute(f"PRAGMA table_info({name})")] for name in names}
    _, rows = run_sql(
        database,
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "ORDER BY table_name, ordinal_position",
    )
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def test_postgresql_has_the_tables_and_columns_that_the_sqlite_migrations_end_with(tmp_path, postgres):
    schema.connect(tmp_path / "coordinator.db").close()
    url = new_schema(postgres, f"c{secrets.token_hex(4)}")
    schema.connect(url).close()
    sqlite = {
        table: names for table, names in columns(tmp_path / "coordinator.db").items() if table != "sqlite_sequence"
    }
    assert columns(url) == {**sqlite, "lockstep_schema": ["version"]}


def test_a_postgresql_schema_made_by_an_earlier_version_is_brought_up_to_this_ones(postgres):
    """Made whole at version 5 (before a settlement's instructions had an index, a
    matched pair an attempt and a link), it gets the upgrades since, once; a schema newer
    than the code is refused."""
    url = new_schema(postgres, f"c{secrets.token_hex(4)}")
    schema.connect(url).close()
    run_sql(url, "DROP INDEX instructions_of")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN attempt")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN held")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN settle_on")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN settled_units")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN part_to")
    run_sql(url, "DROP TABLE holds")
    run_sql(url, "ALTER TABLE instructions DROP COLUMN link_id")
    run_sql(url, "DROP TABLE links")
    run_sql(url, "UPDATE lockstep_schema SET version = 5")
    schema.connect(url).close()
    assert run_sql(url, "SELECT version FROM lockstep_schema")[1] == [(schema.SCHEMA_VERSION,)]
    assert run_sql(url, "SELECT to_regclass('instructions_of') IS NOT NULL")[1] == [(True,)]
    assert run_sql(url, "SELECT count(attempt) FROM instructions")[1] == [(0,)]
    assert run_sql(url, "SELECT count(link_id) FROM links, instructions")[1] == [(0,)]
    run_sql(url, "UPDATE lockstep_schema SET version = ?", (schema.SCHEMA_VERSION + 1,))
    with pytest.raises(AssertionError, match="newer than this code"):
        schema.connect(url)
