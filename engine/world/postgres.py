"""Databases on a PostgreSQL server for a world laid out here (the bench, chaos, the
tests): a scratch database, dropped afterwards, and in it a schema per ledger or
coordinator, which the service's URL names by its search_path."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

from protocols.databases import LOCAL_POSTGRES

__all__ = ["LOCAL_POSTGRES", "backend_pids", "new_schema", "scratch_database", "service_schemas"]


@contextmanager
def scratch_database(server: str, prefix: str = "lockstep") -> Iterator[str]:
    """A new database on `server` (a URL to any database there, by a user who may create
    databases), and the URL to it; dropped afterwards, connections and all."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with closing(psycopg.connect(server, autocommit=True)) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def new_schema(database: str, schema: str) -> str:
    """A new schema in `database`, and the URL a service keeps its tables there by (its
    connections named after the schema, as the server lists them)."""
    with closing(psycopg.connect(database, autocommit=True)) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    return _url(database, schema)


def _url(database: str, schema: str) -> str:
    return f"{database}?options=-csearch_path%3D{schema}&application_name={schema}"


def service_schemas(database: str, services: list[str], prefix: str = "") -> dict[str, str]:
    """A schema for each service (a ledger or a coordinator), made in one statement: its
    id -> its database setting."""
    schemas = {service: f"{prefix}{service.replace('-', '_')}" for service in services}
    with closing(psycopg.connect(database, autocommit=True)) as db:
        db.execute("; ".join(f"CREATE SCHEMA {schema}" for schema in schemas.values()))
    return {service: _url(database, schema) for service, schema in schemas.items()}


def backend_pids(database: str) -> dict[str, int]:
    """The server processes serving connections to `database` now, by the name each
    connection gave (its ledger's schema): the ledgers' share of the server's CPU."""
    name = urlsplit(database).path.lstrip("/")
    with closing(psycopg.connect(database, autocommit=True)) as db:
        rows = db.execute(
            "SELECT application_name, pid FROM pg_stat_activity WHERE datname = %s AND pid != pg_backend_pid() "
            "ORDER BY application_name, pid",
            (name,),
        ).fetchall()
    return {application or f"postgres {pid}": pid for application, pid in rows}
