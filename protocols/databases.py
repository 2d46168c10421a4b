"""What a service's database setting names: an SQLite file by its path (the embedded
default), or a PostgreSQL database by a postgresql:// URL; and what every Lockstep
service asks of a PostgreSQL server and says to it alike. Pure: each service opens its
own connections (ledgers/database.py, engine/coordinator/postgres.py).

A service keeps its tables in the first schema of the URL's search_path (`public`
unless `?options=-csearch_path%3Dcsd`), and holds that schema alone: a session advisory
lock on (POSTGRES_HOLD_KEY, the schema's hash), which the server releases when the
connection goes, however it goes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"  # where a local world makes its databases
POSTGRES_HOLD_KEY = 0x6C6B7370  # "lksp"
# the settings without which a commit the server acknowledges may still be lost
POSTGRES_DURABLE = {"fsync": ("on",), "synchronous_commit": ("on", "remote_write", "remote_apply", "local")}


def is_postgres(database: str | Path) -> bool:
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def unfit(value: Callable[[str], object]) -> str | None:
    """Why the server a connection reaches cannot keep a Lockstep service's book, or None:
    a commit it acknowledges could be lost, or the URL names no schema to keep it in.
    `value` answers a query's one value on that connection."""
    for setting, durable in POSTGRES_DURABLE.items():
        found = value(f"SHOW {setting}")
        if found not in durable:
            return (
                f"{setting} is {found!r}: a commit the server acknowledges could be lost "
                f"(Lockstep needs {' or '.join(repr(v) for v in durable)})"
            )
    if value("SELECT current_schema()") is None:
        return "its search_path names no schema that exists"
    return None


def error_line(error: BaseException) -> str:
    """A driver's error said in its first line (the server's message), for a reason."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


@functools.lru_cache(maxsize=512)
def postgres_dialect(sql: str) -> str:
    """A statement of the dialect Lockstep writes for both backends, as psycopg takes it:
    `?` placeholders as `%s`, SQLite's BEGIN IMMEDIATE as BEGIN (no statement of ours
    holds a `?` or `%` of its own)."""
    assert "%" not in sql, sql
    return "BEGIN" if sql == "BEGIN IMMEDIATE" else sql.replace("?", "%s")
