"""The coordinator's database, and this module the one owner of its schema: an SQLite
file, or a PostgreSQL database (`journal = "postgresql://..."`, postgres.py).

Every table of what the coordinator hosts (the settlement journal, the matching,
servicing and repo desks) is made here. On SQLite by numbered migrations, applied in
order in one transaction when a connection opens; `PRAGMA user_version` is the number
of the last applied. PostgreSQL came in at version 5 and is made whole at it, its
triggers in PL/pgSQL. A desk reads and writes its tables but never makes or changes one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from protocols.databases import POSTGRES_HOLD_KEY, is_postgres
from protocols.failures import ExpectedFailure
from protocols.settlement import FINAL

if TYPE_CHECKING:
    import sqlite_utils

    from .postgres import PostgresConnection

# in one fixed order: a query must spell the partial index's condition as it was created
FINAL_SQL = ", ".join(f"'{value}'" for value in sorted(phase.value for phase in FINAL))
BUSY_TIMEOUT_S = 30  # the journal's writer and the desks share the file
POSTGRES_MAKE_KEY = POSTGRES_HOLD_KEY + 1  # held while the schema is made: the journal's connections race


class JournalUnavailable(ExpectedFailure):
    """The journal's database cannot be opened, or cannot be trusted with it."""


def connect(database: str | Path) -> Connection:
    """A connection to the coordinator's database at the current schema, every commit
    durable before whoever made it acts on it: on SQLite WAL and synchronous=FULL."""
    if is_postgres(database):
        from .postgres import PostgresConnection  # its driver loaded only for a journal on PostgreSQL

        pg = PostgresConnection(str(database))
        try:
            _migrate_postgres(pg)
        except BaseException:
            pg.close()
            raise
        return pg
    path = database
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    migrate(db, path)
    return db


def read_only(database: str | Path) -> Connection:
    """A connection that only reads what is committed (a metrics scrape): it never meets
    the writer's transaction, and never makes or migrates the schema."""
    if is_postgres(database):
        from .postgres import PostgresConnection

        pg = PostgresConnection(str(database))
        pg.execute("SET default_transaction_read_only = on")
        return pg
    return sqlite3.connect(Path(database).resolve().as_uri() + "?mode=ro", uri=True)


def migrate(db: sqlite3.Connection, path: str | Path) -> None:
    """Apply the migrations the database has not had, all or none."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    assert version <= SCHEMA_VERSION, f"{path}: schema {version} is newer than this code ({SCHEMA_VERSION})"
    if version == SCHEMA_VERSION:
        return
    import sqlite_utils  # loaded only to migrate (it loads numpy where installed), and before the lock is taken

    with db:
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]  # another connection may have been first
        for migration in MIGRATIONS[version:]:
            migration(sqlite_utils.Database(db))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _1_settlements(db: sqlite_utils.Database) -> None:
    """The journal: one row per settlement, and an index of the unfinished ones."""
    db.table("settlements").create(
        {
            "id": str,
            "instruction": bytes,
            "phase": str,
            "secret": bytes,
            "expiry_ms": str,
            "sent": str,
            "reason_code": str,
            "reason": str,
            "steps": str,
        },
        pk="id",
    )
    db.execute(f"CREATE INDEX unfinished ON settlements(phase) WHERE phase NOT IN ({FINAL_SQL})")


def _2_decisions(db: sqlite_utils.Database) -> None:
    """The cancellation secret, backstops, decision and legs claimed; the decision of
    settlements recorded before, read from their phase (a cross-ledger one sent two
    locks); and the trigger that keeps every decision and secret as first recorded."""
    db.execute("ALTER TABLE settlements ADD COLUMN cancel_secret BLOB NOT NULL DEFAULT x''")
    db.execute("ALTER TABLE settlements ADD COLUMN backstop_ms TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE settlements ADD COLUMN decision TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE settlements ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0")
    cross = "json_array_length(sent) = 2"
    db.execute(
        "UPDATE settlements SET decision = 'commit' "
        f"WHERE phase IN ('claiming', 'one_legged') OR (phase = 'settled' AND {cross})"
    )
    db.execute(
        "UPDATE settlements SET decision = 'abort' "
        f"WHERE phase IN ('rolling_back', 'rolled_back') OR (phase = 'failed' AND {cross})"
    )
    db.execute(
        "CREATE TRIGGER decided_once BEFORE UPDATE ON settlements "
        "WHEN (OLD.decision != '' AND NEW.decision != OLD.decision) "
        "OR (OLD.secret != x'' AND NEW.secret != OLD.secret) "
        "OR (OLD.cancel_secret != x'' AND NEW.cancel_secret != OLD.cancel_secret) "
        "BEGIN SELECT RAISE(ABORT, 'a settlement is decided once, under the secrets first drawn'); END"
    )


def _3_desks(db: sqlite_utils.Database) -> None:
    """The desks' tables, which each desk made for itself before (hence IF NOT EXISTS):
    the matching desk's instructions and advices, the servicing desk's corporate actions
    and entitlements, the repo desk's repos."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS instructions (party TEXT NOT NULL, id TEXT NOT NULL, raw BLOB NOT NULL, "
        "counterparty TEXT NOT NULL, settlement_date TEXT NOT NULL, state TEXT NOT NULL, settlement_id TEXT, "
        "received_ms INTEGER NOT NULL, PRIMARY KEY (party, id))",
        "CREATE INDEX IF NOT EXISTS open_instructions ON instructions(state, counterparty) "
        "WHERE state IN ('unmatched', 'matched')",
        "CREATE TABLE IF NOT EXISTS advices (seq INTEGER PRIMARY KEY AUTOINCREMENT, party TEXT NOT NULL, "
        "instruction_id TEXT NOT NULL, settlement_id TEXT, status TEXT NOT NULL, format TEXT NOT NULL, "
        "document TEXT NOT NULL, time_ms INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS advices_of ON advices(party, seq)",
        "CREATE TABLE IF NOT EXISTS corporate_actions (id TEXT PRIMARY KEY, action TEXT NOT NULL, "
        "state TEXT NOT NULL, reason_code TEXT NOT NULL, reason TEXT NOT NULL, steps TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS entitlements (action_id TEXT NOT NULL, holder_account TEXT NOT NULL, "
        "holder TEXT NOT NULL, cash_account TEXT NOT NULL, units INTEGER NOT NULL, "
        "amount_minor INTEGER NOT NULL, state TEXT NOT NULL, reason_code TEXT NOT NULL, "
        "reason TEXT NOT NULL, PRIMARY KEY (action_id, holder_account))",
        "CREATE TABLE IF NOT EXISTS repos (id TEXT PRIMARY KEY, repo TEXT NOT NULL, state TEXT NOT NULL, "
        "reason_code TEXT NOT NULL, reason TEXT NOT NULL, steps TEXT NOT NULL)",
    ):
        db.execute(statement)


def _4_transitions(db: sqlite_utils.Database) -> None:
    """The journal as an append-only log of transitions, each holding what changed, with
    `settlements` now its checkpoint; and the trigger that keeps, across both, every
    decision and secret as first recorded and nothing after a final phase."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS transitions (seq INTEGER PRIMARY KEY, settlement_id TEXT NOT NULL, "
        "phase TEXT NOT NULL, decision TEXT NOT NULL, secret BLOB NOT NULL, cancel_secret BLOB NOT NULL, "
        "changes TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS transitions_of ON transitions(settlement_id, seq)")
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS decided_once_logged BEFORE INSERT ON transitions WHEN "
        "EXISTS (SELECT 1 FROM transitions AS t WHERE t.settlement_id = NEW.settlement_id AND ("
        + _REFUSED.format(t="t", empty="x''")
        + ")) OR EXISTS (SELECT 1 FROM settlements AS s WHERE s.id = NEW.settlement_id AND ("
        + _REFUSED.format(t="s", empty="x''")
        + ")) BEGIN SELECT RAISE(ABORT, 'a settlement is decided once, under the secrets first drawn, "
        "and ends once'); END"
    )


# what a transition may not do, in the table `t` holding the settlement's earlier rows
# ({empty}: each backend's empty blob)
_REFUSED = (
    "({t}.decision != '' AND NEW.decision != {t}.decision) "
    "OR ({t}.secret != {empty} AND NEW.secret != {empty}) "
    "OR ({t}.cancel_secret != {empty} AND NEW.cancel_secret != {empty}) "
    f"OR {{t}}.phase IN ({FINAL_SQL})"
)


def _5_epochs(db: sqlite_utils.Database) -> None:
    """One row per instance that opened the journal: its epoch, which fences the ledgers
    against every instance before it (protocols.messages.Fence), its process and when."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, pid INTEGER NOT NULL, "
        "opened_ms INTEGER NOT NULL)"
    )


_INSTRUCTIONS_SETTLED_BY = "CREATE INDEX IF NOT EXISTS instructions_of ON instructions(settlement_id)"


def _6_instructions_of(db: sqlite_utils.Database) -> None:
    """A settlement's instructions found by its id: its advices read by the supervisor,
    its outcome told to both parties."""
    db.execute(_INSTRUCTIONS_SETTLED_BY)


_QUEUE = (
    "ALTER TABLE instructions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE instructions ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE instructions ADD COLUMN settle_on TEXT",
    "ALTER TABLE instructions ADD COLUMN settled_units INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE instructions ADD COLUMN part_to INTEGER",
)
_HOLDS = (
    "CREATE TABLE {exists}holds (party {text} NOT NULL, id {text} NOT NULL, raw {blob} NOT NULL, "
    "PRIMARY KEY (party, id))"
)


def _7_queue(db: sqlite_utils.Database) -> None:
    """The settlement queue: a matched pair's current try (protocols.matching.attempt_id),
    counted up each time the queue recycles it; whether its party holds an instruction;
    the pair's settlement day (engine/desks/calendar.py); its units settled so far and
    the end of the part being tried (a partial settlement); and each hold or release as
    received, so that one sent again changes nothing. (A table made by its desk, before
    this module owned the schema, may have them: see _3_desks.)"""
    columns = db["instructions"].columns_dict
    for statement in _QUEUE:
        if statement.split()[5] not in columns:
            db.execute(statement)
    db.execute(_HOLDS.format(exists="IF NOT EXISTS ", text="TEXT", blob="BLOB"))


_LINKS = (
    "ALTER TABLE instructions ADD COLUMN link_id TEXT",
    "CREATE TABLE {exists}links (id {text} PRIMARY KEY, auth {blob} NOT NULL)",
)


def _8_links(db: sqlite_utils.Database) -> None:
    """The linked settlement a matched pair's try is part of while it is under way, and
    each linked settlement's authority as the queue released it (protocols.authority,
    `linked`): a restart drives it again with the same pairs, each pair's outcome
    recorded with its instruction's state."""
    if "link_id" not in db["instructions"].columns_dict:  # migrated again from before 3: see _3_desks
        db.execute(_LINKS[0])
    db.execute(_LINKS[1].format(exists="IF NOT EXISTS ", text="TEXT", blob="BLOB"))


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _1_settlements,
    _2_decisions,
    _3_desks,
    _4_transitions,
    _5_epochs,
    _6_instructions_of,
    _7_queue,
    _8_links,
)
SCHEMA_VERSION = len(MIGRATIONS)
# 1: settlements; 2: decision locks, the decision; 3: desks; 4: the log; 5: epochs; 6: a settlement's
# instructions; 7: the settlement queue; 8: linked settlements


class Connection(Protocol):
    """What the journal and the desks use of a connection, sqlite3's or PostgresConnection."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, kind: Any, error: Any, traceback: Any, /) -> Any: ...


def _migrate_postgres(db: PostgresConnection) -> None:
    """Make the schema whole at SCHEMA_VERSION, once: all or none."""
    with db:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", (POSTGRES_MAKE_KEY,))
        if db.value("SELECT to_regclass('lockstep_schema') IS NOT NULL"):
            version = db.value("SELECT version FROM lockstep_schema")
            assert version <= SCHEMA_VERSION, f"{db.name}: schema {version} is newer than this code ({SCHEMA_VERSION})"
            for statement in (s for later in range(version + 1, SCHEMA_VERSION + 1) for s in POSTGRES_UPGRADES[later]):
                db.execute(statement)
            db.execute("UPDATE lockstep_schema SET version = ?", (SCHEMA_VERSION,))
            return
        for statement in POSTGRES:
            db.execute(statement)
        db.execute("INSERT INTO lockstep_schema (version) VALUES (?)", (SCHEMA_VERSION,))


_TEXT = 'TEXT COLLATE "C"'
_EMPTY = "''::bytea"
POSTGRES = (
    "CREATE TABLE lockstep_schema (version INTEGER NOT NULL)",
    f"CREATE TABLE settlements (id {_TEXT} PRIMARY KEY, instruction BYTEA, phase TEXT, secret BYTEA, "
    "expiry_ms TEXT, sent TEXT, reason_code TEXT, reason TEXT, steps TEXT, "
    f"cancel_secret BYTEA NOT NULL DEFAULT {_EMPTY}, backstop_ms TEXT NOT NULL DEFAULT '[]', "
    "decision TEXT NOT NULL DEFAULT '', claimed INTEGER NOT NULL DEFAULT 0)",
    f"CREATE INDEX unfinished ON settlements(phase) WHERE phase NOT IN ({FINAL_SQL})",
    "CREATE FUNCTION decided_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF (OLD.decision != '' AND NEW.decision != OLD.decision) "
    f"OR (OLD.secret != {_EMPTY} AND NEW.secret != OLD.secret) "
    f"OR (OLD.cancel_secret != {_EMPTY} AND NEW.cancel_secret != OLD.cancel_secret) THEN "
    "RAISE EXCEPTION 'a settlement is decided once, under the secrets first drawn'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER decided_once BEFORE UPDATE ON settlements FOR EACH ROW EXECUTE FUNCTION decided_once()",
    f"CREATE TABLE instructions (party {_TEXT} NOT NULL, id {_TEXT} NOT NULL, raw BYTEA NOT NULL, "
    f"counterparty {_TEXT} NOT NULL, settlement_date TEXT NOT NULL, state TEXT NOT NULL, settlement_id {_TEXT}, "
    "received_ms BIGINT NOT NULL, PRIMARY KEY (party, id))",
    "CREATE INDEX open_instructions ON instructions(state, counterparty) WHERE state IN ('unmatched', 'matched')",
    f"CREATE TABLE advices (seq BIGSERIAL PRIMARY KEY, party {_TEXT} NOT NULL, instruction_id {_TEXT} NOT NULL, "
    f"settlement_id {_TEXT}, status TEXT NOT NULL, format TEXT NOT NULL, document TEXT NOT NULL, "
    "time_ms BIGINT NOT NULL)",
    "CREATE INDEX advices_of ON advices(party, seq)",
    f"CREATE TABLE corporate_actions (id {_TEXT} PRIMARY KEY, action TEXT NOT NULL, state TEXT NOT NULL, "
    "reason_code TEXT NOT NULL, reason TEXT NOT NULL, steps TEXT NOT NULL)",
    f"CREATE TABLE entitlements (action_id {_TEXT} NOT NULL, holder_account {_TEXT} NOT NULL, "
    f"holder {_TEXT} NOT NULL, cash_account {_TEXT} NOT NULL, units BIGINT NOT NULL, amount_minor BIGINT NOT NULL, "
    "state TEXT NOT NULL, reason_code TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (action_id, holder_account))",
    f"CREATE TABLE repos (id {_TEXT} PRIMARY KEY, repo TEXT NOT NULL, state TEXT NOT NULL, "
    "reason_code TEXT NOT NULL, reason TEXT NOT NULL, steps TEXT NOT NULL)",
    f"CREATE TABLE transitions (seq BIGSERIAL PRIMARY KEY, settlement_id {_TEXT} NOT NULL, phase TEXT NOT NULL, "
    "decision TEXT NOT NULL, secret BYTEA NOT NULL, cancel_secret BYTEA NOT NULL, changes TEXT NOT NULL)",
    "CREATE INDEX transitions_of ON transitions(settlement_id, seq)",
    "CREATE FUNCTION decided_once_logged() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF EXISTS (SELECT 1 FROM transitions AS t WHERE t.settlement_id = NEW.settlement_id AND ("
    + _REFUSED.format(t="t", empty=_EMPTY)
    + ")) OR EXISTS (SELECT 1 FROM settlements AS s WHERE s.id = NEW.settlement_id AND ("
    + _REFUSED.format(t="s", empty=_EMPTY)
    + ")) THEN RAISE EXCEPTION 'a settlement is decided once, under the secrets first drawn, and ends once'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER decided_once_logged BEFORE INSERT ON transitions FOR EACH ROW "
    "EXECUTE FUNCTION decided_once_logged()",
    "CREATE TABLE epochs (epoch BIGINT PRIMARY KEY, pid INTEGER NOT NULL, opened_ms BIGINT NOT NULL)",
    _INSTRUCTIONS_SETTLED_BY,
    *_QUEUE,
    _HOLDS.format(exists="", text=_TEXT, blob="BYTEA"),
    *(statement.format(exists="", text=_TEXT, blob="BYTEA") for statement in _LINKS),
)
# what brings a schema made whole at an earlier version to each later one (6 on: the
# versions before it were never made in PostgreSQL by a release)
POSTGRES_UPGRADES: dict[int, tuple[str, ...]] = {
    6: (_INSTRUCTIONS_SETTLED_BY,),
    7: (*_QUEUE, _HOLDS.format(exists="", text=_TEXT, blob="BYTEA")),
    8: tuple(statement.format(exists="", text=_TEXT, blob="BYTEA") for statement in _LINKS),
}
