"""What a service's `database` setting names: an SQLite file by its path (the embedded
default), or a PostgreSQL database by a postgresql:// URL. Only the naming is here; each
service opens its own."""

from __future__ import annotations

from pathlib import Path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str | Path) -> bool:
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)
