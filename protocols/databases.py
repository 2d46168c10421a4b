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
from pathlib import Path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"  # where a local world makes its databases
POSTGRES_HOLD_KEY = 0x6C6B7370  # "lksp"
# the settings without which a commit the server acknowledges may still be lost
POSTGRES_DURABLE = {"fsync": ("on",), "synchronous_commit": ("on", "remote_write", "remote_apply", "local")}
POSTGRES_HOLD_SQL = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"


def is_postgres(database: str | Path) -> bool:
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def durability_problem(setting: str, value: str) -> str | None:
    """Why a server whose `setting` (one of POSTGRES_DURABLE) is `value` cannot keep a
    Lockstep service's book, or None."""
    durable = POSTGRES_DURABLE[setting]
    if value in durable:
        return None
    return (
        f"{setting} is {value!r}: a commit the server acknowledges could be lost "
        f"(Lockstep needs {' or '.join(repr(v) for v in durable)})"
    )


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
