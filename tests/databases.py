"""Ledger databases for the tests: SQLite files, or PostgreSQL schemas on the server this
machine runs (LOCKSTEP_TEST_POSTGRES, 127.0.0.1:5432 by default; `.ci/run` makes sure it is
up), one database per test process and a schema per ledger per test; and plain SQL run on a
closed ledger's database, whichever it is, as an intruder or a bad disk would."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg

from engine.world.postgres import LOCAL_POSTGRES, scratch_database
from protocols.databases import is_postgres

BACKENDS = ("sqlite", "postgresql")
SERVER = os.environ.get("LOCKSTEP_TEST_POSTGRES", LOCAL_POSTGRES)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on SERVER, dropped afterwards."""
    with scratch_database(SERVER, "lockstep_test") as url:
        yield url


def run_sql(database: str | Path, sql: str, params: tuple = ()) -> tuple[int, list[tuple]]:
    """Run one statement and commit it: (rows changed, rows returned)."""
    if is_postgres(database):
        with closing(psycopg.connect(str(database), autocommit=True)) as db:
            cursor = db.execute(sql.replace("?", "%s"), params)
            return cursor.rowcount, cursor.fetchall() if cursor.description else []
    with closing(sqlite3.connect(database)) as db, db:
        cursor = db.execute(sql, params)
        return cursor.rowcount, cursor.fetchall()
