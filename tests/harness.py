"""Test helpers and fixtures: a world on disk (keys, registry, ledger configs) and a ledger engine
driven by plain function calls with a time we choose."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.world.layout import LedgerSpec, World, lay_out
from engine.world.postgres import service_schemas
from ledgers.config import LedgerConfig
from ledgers.ledger import Ledger
from ledgers.store import Store
from protocols.canonical import decode
from protocols.identifiers import make_isin
from protocols.messages import Body, Receipt, Result
from protocols.registry import Role
from protocols.signing import from_wire, sign, unsigned
from tests.databases import BACKENDS, postgres_database

BOND = make_isin("XS000000001")
T0 = 1_800_000_000_000  # a fixed ledger time, ms since the epoch

PARTIES = {
    "csd-op": (Role.OPERATOR,),
    "ecb": (Role.CENTRAL_BANK, Role.PARTICIPANT),
    "fed": (Role.CENTRAL_BANK, Role.PARTICIPANT),
    "snb": (Role.CENTRAL_BANK, Role.PARTICIPANT),
    "treasury": (Role.PARTICIPANT,),
    "bank-a": (Role.PARTICIPANT,),
    "bank-b": (Role.PARTICIPANT,),
    "coordinator": (Role.COORDINATOR,),
}
LEDGERS = [
    LedgerSpec("csd", "securities", "csd-op"),
    LedgerSpec("cbdc-eur", "cbdc", "ecb", (("EUR", "ecb"),)),
    LedgerSpec("cbdc-multi", "cbdc", "fed", (("USD", "fed"), ("CHF", "snb"))),
    LedgerSpec("unified", "unified", "csd-op", (("EUR", "ecb"), ("USD", "fed"))),
]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """This test process's database on the PostgreSQL server, made when a test first asks."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def world(tmp_path: Path, request) -> World:
    """Each ledger's database an SQLite file; or, where a test module parametrizes this
    fixture with "postgresql" (`pytestmark = BOTH_BACKENDS`), a PostgreSQL schema of its own."""
    return lay_out(tmp_path, LEDGERS, PARTIES, databases=databases_for(request))


def databases_for(request) -> dict[str, str] | None:
    """For a fixture parametrized with "postgresql": a new schema per ledger."""
    if getattr(request, "param", "sqlite") != "postgresql":
        return None
    url = request.getfixturevalue("postgres")
    return service_schemas(url, [spec.ledger_id for spec in LEDGERS], prefix=f"t{secrets.token_hex(4)}_")


BOTH_BACKENDS = pytest.mark.parametrize("world", BACKENDS, indirect=True)


class Harness:
    """One ledger engine, instructions signed by named parties, time set by the test."""

    def __init__(self, world: World, ledger_id: str, now_ms: int = T0) -> None:
        self.world = world
        self.ledger_id = ledger_id
        self.now_ms = now_ms
        self.config = LedgerConfig.load(world.ledger_configs[ledger_id])
        self._ids = itertools.count(1)
        self.open()

    def open(self) -> None:
        self.store = Store(self.config.database)
        self.ledger = Ledger(self.config, self.world.registry, self.world.keys[self.ledger_id], self.store, self.now_ms)

    def close(self) -> None:
        self.store.close()

    def next_id(self, prefix: str = "i") -> str:
        return f"{prefix}{next(self._ids)}"

    def make(self, cls: type, *signers: str, **fields) -> Body:
        fields.setdefault("id", self.next_id())
        fields.setdefault("ledger", self.ledger_id)
        fields.setdefault("ts_ms", self.now_ms)
        msg = cls(**fields)
        return sign(msg, *((party, self.world.keys[party]) for party in signers))

    def send(self, cls: type, *signers: str, **fields) -> Receipt:
        return self.submit(self.make(cls, *signers, **fields))

    def submit(self, signed) -> Receipt:
        return self.raw(signed.encode())

    def raw(self, payload: bytes) -> Receipt | Result:
        (reply,), _ = self.ledger.process([payload], self.now_ms)
        return from_wire(decode(reply, bytes_max=1 << 22)).msg

    def query(self, cls: type, **fields):
        fields.setdefault("id", self.next_id("q"))
        fields.setdefault("ledger", self.ledger_id)
        reply = self.raw(unsigned(cls(**fields)).encode())
        if isinstance(reply, Receipt):
            raise reply.error()
        return reply.value

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        return self.store.balance(account, asset)

    def tick(self) -> None:
        """Run an empty batch: what the service does when it wakes at an expiry."""
        self.ledger.process([], self.now_ms)


@pytest.fixture
def harness(world: World):
    def make(ledger_id: str, now_ms: int = T0) -> Harness:
        return Harness(world, ledger_id, now_ms)

    return make
