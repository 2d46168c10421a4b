"""Ledger databases for the tests: SQLite files, or PostgreSQL schemas on the server this
machine runs (LOCKSTEP_TEST_POSTGRES, 127.0.0.1:5432 by default; `.ci/run` makes sure it is
up), one database per test process and a schema per ledger per test; and plain SQL run on a
closed ledger's database, whichever it is, as an intruder or a bad disk would."""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from protocols.databases import is_postgres

BACKENDS = ("sqlite", "postgresql")
SERVER = os.environ.get("LOCKSTEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _on(database: str) -> str:
    """SERVER's URL with `database` in place of its own."""
    return urlunsplit(urlsplit(SERVER)._replace(path=f"/{database}"))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on SERVER, dropped afterwards."""
    name = f"lockstep_test_{os.getpid()}_{secrets.token_hex(4)}"
    with closing(psycopg.connect(SERVER, autocommit=True)) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield _on(name)
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def postgres_schema(database_url: str, schema: str) -> str:
    """A new schema in the database, and the URL a ledger keeps its tables there by."""
    with closing(psycopg.connect(database_url, autocommit=True)) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    return f"{database_url}?options=-csearch_path%3D{schema}"


def run_sql(database: str | Path, sql: str, params: tuple = ()) -> tuple[int, list[tuple]]:
    """Run one statement and commit it: (rows changed, rows returned)."""
    if is_postgres(database):
        with closing(psycopg.connect(str(database), autocommit=True)) as db:
            cursor = db.execute(sql.replace("?", "%s"), params)
            return cursor.rowcount, cursor.fetchall() if cursor.description else []
    with closing(sqlite3.connect(database)) as db, db:
        cursor = db.execute(sql, params)
        return cursor.rowcount, cursor.fetchall()
