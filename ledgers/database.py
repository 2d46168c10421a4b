"""Where a ledger keeps its book: an SQLite file (the default: embedded, nothing else to
run), here, or a PostgreSQL database (`database = "postgresql://..."`, postgres.py), for
an operator who runs its book of record on a replicated server.

A PostgreSQL ledger keeps its tables in a schema of its own (protocols/databases.py),
so one database may hold several ledgers.

Both are spoken to in one dialect, which `Store` writes once: `?` placeholders (turned
into psycopg's `%s` by postgres.py), upserts as `INSERT ... ON CONFLICT ... DO UPDATE`, and sums
cast to BIGINT. Each backend holds its database for one ledger process at a time, makes
every commit durable before it returns, and opens read-only connections for whoever
only looks (the metrics scrape)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from protocols.databases import is_postgres
from protocols.failures import ExpectedFailure

if TYPE_CHECKING:
    from .postgres import Postgres


class DatabaseUnavailable(ExpectedFailure):
    """The database cannot be opened, or cannot be trusted with a ledger's book."""


def connect(database: str | Path) -> SQLite | Postgres:
    """SQLite for a path, PostgreSQL for a postgresql:// URL (its driver loaded only then)."""
    if is_postgres(database):
        from .postgres import Postgres

        return Postgres(str(database))
    return SQLite(Path(database))


class SQLite:
    """One file in WAL mode, synchronous=FULL: a commit is on disk when it returns."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as error:
            raise DatabaseUnavailable(f"database {path}", f"cannot open it: {error}") from None
        self.raw = self._db  # for the SQLite migrations, written with sqlite-utils
        self.execute = self._db.execute
        self.executemany = self._db.executemany

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, version: int) -> None:
        self._db.execute(f"PRAGMA user_version = {int(version)}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own, which never meets the writer's transaction."""
        with closing(sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            yield db
