"""A ledger's book on PostgreSQL (ledgers/database.py says how the two backends meet),
apart so that a ledger on SQLite never loads the driver."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg

from protocols.bus.address import redacted
from protocols.databases import POSTGRES_HOLD_KEY, error_line, postgres_dialect, unfit

from .database import DatabaseUnavailable

# how long a start waits for that lock: a ledger killed a moment ago holds it until the
# server notices that its connection is gone
POSTGRES_HOLD_WAIT_MS = 5_000


class Postgres:
    """A PostgreSQL database over psycopg 3. Held by one ledger process at a time (a
    session advisory lock, released by the server when the connection goes, however it
    goes), refused unless its commits are durable (fsync, synchronous_commit). A
    transaction runs in pipeline mode: statements go out without waiting for their
    answers, and only a read waits for the server (the store writes a batch's rows at its
    commit, so a batch waits about once)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redacted(url)
        self._db = _connect(url, self.name)
        try:
            problem = unfit(lambda sql: _value(self._db, sql))
            if problem:
                raise DatabaseUnavailable(f"database {self.name}", problem)
            _hold(self._db, self.name)
        except BaseException:
            self._db.close()
            raise

    @property
    def schema_version(self) -> int:
        exists = _value(self._db, "SELECT to_regclass('lockstep_schema') IS NOT NULL")
        if not exists:
            return 0
        row = self._db.execute("SELECT version FROM lockstep_schema").fetchone()
        return 0 if row is None else row[0]

    def set_schema_version(self, version: int) -> None:
        self.execute("CREATE TABLE IF NOT EXISTS lockstep_schema (version INTEGER NOT NULL)")
        self.execute("DELETE FROM lockstep_schema")
        self.execute("INSERT INTO lockstep_schema (version) VALUES (?)", (version,))

    def execute(self, sql: str, params: tuple | list = ()) -> psycopg.Cursor:
        try:
            return self._db.execute(postgres_dialect(sql), params)
        except psycopg.OperationalError as error:
            raise self._lost(error) from None

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(postgres_dialect(sql), rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT in pipeline mode, or ROLLBACK on any error."""
        try:
            with self._db.pipeline(), self._db.transaction():
                yield
        except psycopg.OperationalError as error:
            raise self._lost(error) from None

    def _lost(self, error: psycopg.OperationalError) -> DatabaseUnavailable:
        """The server gone mid-batch: nothing of the batch was answered, so whether its
        commit happened or not, a client's retry gets the same receipt after a restart."""
        return DatabaseUnavailable(f"database {self.name}", f"connection lost: {error_line(error)}")

    def close(self) -> None:
        self._db.close()  # and with it the advisory lock

    @contextmanager
    def reader(self) -> Iterator[_Reader]:
        db = _connect(self.url, self.name)
        db.execute("SET default_transaction_read_only = on")
        with closing(db):
            yield _Reader(db)


class _Reader:
    """A read-only PostgreSQL connection that takes the common dialect."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: tuple | list = ()) -> psycopg.Cursor:
        return self._db.execute(postgres_dialect(sql), params)


def _connect(url: str, name: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as error:
        raise DatabaseUnavailable(f"database {name}", f"cannot open it: {error_line(error)}") from None


def _hold(db: psycopg.Connection, name: str) -> None:
    """Hold the ledger's schema (the first of the URL's search_path that exists: `public`
    unless `options=-csearch_path=...` says otherwise) for this connection's life."""
    schema = _value(db, "SELECT current_schema()")
    db.execute(f"SET lock_timeout = {int(POSTGRES_HOLD_WAIT_MS)}")
    try:
        db.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (POSTGRES_HOLD_KEY, schema))
    except psycopg.errors.LockNotAvailable:
        raise DatabaseUnavailable(
            f"database {name}",
            f"schema {schema} is held by another ledger process (waited {POSTGRES_HOLD_WAIT_MS} ms); "
            "one ledger per schema",
        ) from None
    db.execute("RESET lock_timeout")


def _value(db: psycopg.Connection, sql, params: tuple = ()) -> object:
    """The one value a query answers."""
    row = db.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]
