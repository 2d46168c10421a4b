"""A ledger database's schema, and this module its one owner: numbered migrations for
SQLite (files from every earlier version are brought up to date in one transaction),
and the current schema made whole for PostgreSQL, which came in at version 4.

Text is compared byte by byte on both (SQLite's default; COLLATE "C" on PostgreSQL), so
that a query that pages by account id answers the same on either."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .database import SQLite

if TYPE_CHECKING:
    import sqlite_utils

    from .postgres import Postgres

SCHEMA_VERSION = 4  # 2: rotated keys; 3: checkpoints, and the entry that applied each instruction; 4: decision locks
REFUND_AT = "COALESCE(backstop_ms, expiry_ms)"  # as HeldLock.refund_at_ms: the same expression as the index's


def migrate(db: SQLite | Postgres) -> None:
    """Bring the database to SCHEMA_VERSION, all steps or none."""
    version = db.schema_version
    assert version <= SCHEMA_VERSION, f"{db.name}: schema {version} is newer than this code ({SCHEMA_VERSION})"
    if version == SCHEMA_VERSION:
        return
    with db.transaction():
        if isinstance(db, SQLite):
            import sqlite_utils  # loaded only to migrate: it loads numpy where installed

            _migrate_sqlite(sqlite_utils.Database(db.raw), version)
        else:
            assert version == 0, f"{db.name}: PostgreSQL schema {version} has no migration"
            for statement in POSTGRES:
                db.execute(statement)
        db.set_schema_version(SCHEMA_VERSION)


def _migrate_sqlite(db: sqlite_utils.Database, version: int) -> None:
    if version < 1:
        _create_v1(db)
    if version < 2:
        db.table("keys").create({"party": str, "public_key": str}, pk="party")
    if version < 3:
        _add_v3(db)
    if version < 4:
        _add_v4(db)


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("accounts").create({"account": str, "owner": str}, pk="account")
    db.table("assets").create(
        {
            "code": str,
            "kind": str,
            "issuer": str,
            "minor_units": int,
            "reference": str,
            "issued": int,
            "redeemed": int,
        },
        pk="code",
    )
    db.table("balances").create(
        {"account": str, "asset": str, "available": int, "locked": int},
        pk=("account", "asset"),
        foreign_keys=[("account", "accounts"), ("asset", "assets")],
    )
    db.table("locks").create(
        {
            "lock_id": str,
            "owner_account": str,
            "beneficiary_account": str,
            "asset": str,
            "amount": int,
            "hashlock": bytes,
            "expiry_ms": int,
            "abort_by": str,
            "state": str,
        },
        pk="lock_id",
    )
    db.execute("CREATE INDEX locks_held_by_expiry ON locks(expiry_ms) WHERE state = 'held'")
    db.table("instructions").create({"id": str, "digest": bytes, "body": str, "receipt": bytes}, pk="id")
    db.table("journal").create({"seq": int, "hash": str, "entry": bytes}, pk="seq")


def _add_v3(db: sqlite_utils.Database) -> None:
    """The checkpoints table (at most one row: the latest), and in `instructions` the
    seq of the entry that applied each (NULL: refused), read from the journal as it
    stands: the start that follows checks the whole journal and these seqs with it."""
    db.table("checkpoints").create(
        {"seq": int, "entry_hash": str, "state_digest": str, "keys": str, "signature": bytes}, pk="seq"
    )
    db.execute("ALTER TABLE instructions ADD COLUMN seq INTEGER")
    db.execute(
        "UPDATE instructions SET seq = applied.seq FROM "
        "(SELECT seq, json_extract(CAST(entry AS TEXT), '$.instruction.id') AS id FROM journal "
        " WHERE json_valid(CAST(entry AS TEXT))) AS applied WHERE applied.id = instructions.id"
    )


def _add_v4(db: sqlite_utils.Database) -> None:
    """A decision lock's cancel hashlock and backstop (NULL for a time-lock), and the
    held locks indexed by when the ledger refunds them: the backstop, else the expiry."""
    db.execute("ALTER TABLE locks ADD COLUMN cancel_hashlock BLOB")
    db.execute("ALTER TABLE locks ADD COLUMN backstop_ms INTEGER")
    db.execute(f"CREATE INDEX locks_held_by_refund ON locks({REFUND_AT}) WHERE state = 'held'")


_TEXT = 'TEXT COLLATE "C"'
POSTGRES = (
    f"CREATE TABLE meta (key {_TEXT} PRIMARY KEY, value TEXT)",
    f"CREATE TABLE accounts (account {_TEXT} PRIMARY KEY, owner {_TEXT})",
    f"CREATE TABLE assets (code {_TEXT} PRIMARY KEY, kind TEXT, issuer {_TEXT}, minor_units BIGINT, "
    "reference TEXT, issued BIGINT, redeemed BIGINT)",
    f"CREATE TABLE balances (account {_TEXT} REFERENCES accounts, asset {_TEXT} REFERENCES assets, "
    "available BIGINT, locked BIGINT, PRIMARY KEY (account, asset))",
    f"CREATE TABLE locks (lock_id {_TEXT} PRIMARY KEY, owner_account {_TEXT}, beneficiary_account {_TEXT}, "
    f"asset {_TEXT}, amount BIGINT, hashlock BYTEA, expiry_ms BIGINT, abort_by TEXT, state TEXT, "
    "cancel_hashlock BYTEA, backstop_ms BIGINT)",
    "CREATE INDEX locks_held_by_expiry ON locks(expiry_ms) WHERE state = 'held'",
    f"CREATE INDEX locks_held_by_refund ON locks(({REFUND_AT})) WHERE state = 'held'",
    f"CREATE TABLE instructions (id {_TEXT} PRIMARY KEY, digest BYTEA, body TEXT, receipt BYTEA, seq BIGINT)",
    "CREATE TABLE journal (seq BIGINT PRIMARY KEY, hash TEXT, entry BYTEA)",
    f"CREATE TABLE keys (party {_TEXT} PRIMARY KEY, public_key TEXT)",
    "CREATE TABLE checkpoints (seq BIGINT PRIMARY KEY, entry_hash TEXT, state_digest TEXT, keys TEXT, signature BYTEA)",
)
