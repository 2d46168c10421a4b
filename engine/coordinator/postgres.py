"""The coordinator's database on PostgreSQL (`journal = "postgresql://..."`): a
connection that the journal and the desks use as they use sqlite3's (`?` placeholders,
BEGIN IMMEDIATE, `with db:` committing what a BEGIN opened), and the journal's hold as
a session advisory lock in place of a lock file.

A server that could lose an acknowledged commit is refused (protocols/databases.py):
the journal is written before the actions it announces, or it is no journal."""

from __future__ import annotations

from typing import Any

import psycopg

from protocols.bus.address import redacted
from protocols.databases import POSTGRES_HOLD_KEY, error_line, postgres_dialect, unfit

from .schema import JournalUnavailable


class PostgresConnection:
    def __init__(self, url: str) -> None:
        self.name = redacted(url)
        try:
            self._db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as error:
            raise JournalUnavailable(f"journal {self.name}", f"cannot open it: {error_line(error)}") from None
        try:
            problem = unfit(self.value)
            if problem:
                raise JournalUnavailable(f"journal {self.name}", problem)
        except BaseException:
            self._db.close()
            raise

    def execute(self, sql: str, params: Any = (), /) -> psycopg.Cursor:
        try:
            return self._db.execute(postgres_dialect(sql), params)
        except psycopg.OperationalError as error:
            raise self._lost(error) from None

    def executemany(self, sql: str, rows: Any, /) -> None:
        try:
            with self._db.cursor() as cursor:
                cursor.executemany(postgres_dialect(sql), rows)
        except psycopg.OperationalError as error:
            raise self._lost(error) from None

    def _lost(self, error: psycopg.OperationalError) -> JournalUnavailable:
        """The server gone: the coordinator stops, and acts on nothing not yet committed."""
        return JournalUnavailable(f"journal {self.name}", f"connection lost: {error_line(error)}")

    def value(self, sql: str, params: tuple = ()) -> Any:
        """The one value a query answers."""
        row = self.execute(sql, params).fetchone()
        assert row is not None, sql
        return row[0]

    def hold(self) -> bool:
        """Take the schema's advisory lock for as long as this connection lives, if free."""
        return bool(self.value("SELECT pg_try_advisory_lock(?, hashtext(current_schema()))", (POSTGRES_HOLD_KEY,)))

    def release(self) -> None:
        """Give the schema's advisory lock back and close: the lock is free once this
        returns, not only once the server has seen the connection go."""
        try:
            self.value("SELECT pg_advisory_unlock(?, hashtext(current_schema()))", (POSTGRES_HOLD_KEY,))
        except (JournalUnavailable, psycopg.Error):
            pass  # the connection is gone, and the lock with it
        finally:
            self.close()

    def __enter__(self) -> PostgresConnection:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any, /) -> None:
        """Commit the transaction a BEGIN opened inside the block, or roll it back on an
        error (sqlite3's `with connection:`); statements outside one committed each alone."""
        if self._db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._db.execute("COMMIT" if kind is None else "ROLLBACK")

    def close(self) -> None:
        self._db.close()
