"""A ledger's database on either backend: what each refuses to open, and an SQLite file
from before a migration brought up to date. What both must do alike (the journal, the
checkpoint, idempotency, the start checks, the audit from the database) is tested once
for both, by the modules that parametrize `world` with BOTH_BACKENDS."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import psycopg
import pytest

import ledgers.postgres
from engine.world.layout import lay_out
from engine.world.postgres import new_schema
from ledgers.database import DatabaseUnavailable
from ledgers.store import Store
from tests.databases import SERVER, postgres_database, run_sql
from tests.harness import LEDGERS, PARTIES, Harness
from tests.test_checkpoint import before_checkpoint, decoded, opened, stored_checkpoint  # noqa: F401
from tests.test_restart import edit, refusal


def test_a_database_from_before_checkpoints_is_checked_whole_once_then_from_its_checkpoint(tmp_path, decoded):  # noqa: F811
    h = Harness(lay_out(tmp_path, LEDGERS, PARTIES), "unified")  # SQLite: PostgreSQL came in at schema 4
    before_checkpoint(h)
    height = h.ledger.seq
    h.close()
    with closing(sqlite3.connect(h.config.database)) as db, db:  # as schema 2 left it
        db.execute("DROP TABLE checkpoints")
        db.execute("ALTER TABLE instructions DROP COLUMN seq")
        db.execute("DROP INDEX locks_held_by_refund")
        db.execute("ALTER TABLE locks DROP COLUMN cancel_hashlock")
        db.execute("ALTER TABLE locks DROP COLUMN backstop_ms")
        db.execute("PRAGMA user_version = 2")
    assert opened(h, decoded) == height
    assert h.store.tables().applied["t-early"] == 7  # read from the journal by the migration, checked at start
    h.close()
    assert opened(h, decoded) == 1
    assert stored_checkpoint(h).seq == height - 1
    h.close()
    edit(h, "DELETE FROM instructions WHERE id = 't-early'")
    assert "instruction t-early" in refusal(h)


def tables_in(url: str) -> list[str]:
    _, rows = run_sql(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    return sorted(name for (name,) in rows)


def test_a_postgres_ledger_holds_its_schema_alone_and_another_schema_opens_beside_it(postgres, monkeypatch):
    monkeypatch.setattr(ledgers.postgres, "POSTGRES_HOLD_WAIT_MS", 200)
    first, second = new_schema(postgres, "held_a"), new_schema(postgres, "held_b")
    store = Store(first)
    try:
        with pytest.raises(DatabaseUnavailable, match="schema held_a is held by another ledger process"):
            Store(first)
        Store(second).close()
    finally:
        store.close()
    Store(first).close()  # the connection gone, so is its hold
    assert "journal" in tables_in(first) and "lockstep_schema" in tables_in(first)


def test_a_postgres_database_that_may_lose_acknowledged_commits_is_refused_and_left_untouched():
    with postgres_database() as url:
        run_sql(url, f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = off")
        with pytest.raises(DatabaseUnavailable, match="synchronous_commit is 'off': a commit the server ack"):
            Store(url)
        assert tables_in(url) == []


def test_a_postgres_url_naming_no_schema_or_no_server_is_refused_saying_why_with_its_password_hidden(postgres):
    with pytest.raises(DatabaseUnavailable, match="its search_path names no schema that exists"):
        Store(f"{postgres}?options=-csearch_path%3Dnowhere")
    unreachable = "postgresql://ledger:s3cret@127.0.0.1:1/book"
    with pytest.raises(DatabaseUnavailable, match="cannot open it") as refused:
        Store(unreachable)
    assert "s3cret" not in str(refused.value) and "ledger:***@127.0.0.1:1" in refused.value.subject


def test_the_test_server_is_durable_as_a_ledger_needs():
    """What `.ci/run` starts must be what a ledger accepts: else every PostgreSQL test
    here would test a refusal."""
    with closing(psycopg.connect(SERVER)) as db:
        assert db.execute("SHOW fsync").fetchone() == ("on",)


def test_postgresql_has_the_tables_and_columns_that_the_sqlite_migrations_end_with(tmp_path, postgres):
    from tests.test_coordinator_journal import columns

    Store(tmp_path / "ledger.db").close()
    url = new_schema(postgres, "same_columns")
    Store(url).close()
    assert columns(url) == {**columns(tmp_path / "ledger.db"), "lockstep_schema": ["version"]}
