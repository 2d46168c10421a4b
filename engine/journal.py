"""The coordinator's durable journal: one row per settlement, rewritten at every phase
change *before* the action that phase announces, so that a coordinator killed at any
point restarts knowing what it may have done.

Writes are group-committed: every settlement task hands its record to one writer, which
commits whatever has gathered in one SQLite transaction (synchronous=FULL) and only then
lets each task go on."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import attrs
import sqlite_utils
import trio

from protocols.settlement import FINAL, Phase, check_transition

SCHEMA_VERSION = 1
BATCH_SIZE_MAX = 1024
# in one fixed order: the query must spell the partial index's condition as it was created
_FINAL_SQL = ", ".join(f"'{value}'" for value in sorted(phase.value for phase in FINAL))


@attrs.frozen
class Record:
    """What the coordinator knows of one settlement. `sent` holds the signed
    instructions it sent (or is about to send) whose exact bytes a retry must repeat:
    the two locks, or the one same-ledger settle."""

    settlement_id: str
    instruction: bytes  # the signed settlement, as received
    phase: Phase
    secret: bytes = b""
    expiry_ms: tuple[int, ...] = ()
    sent: tuple[bytes, ...] = ()
    reason_code: str = ""
    reason: str = ""
    steps: tuple[tuple[str, int], ...] = ()

    def to(self, phase: Phase, now_ms: int, **changes) -> Record:
        check_transition(self.phase, phase)
        return attrs.evolve(self, phase=phase, steps=self.steps + ((phase.value, now_ms),), **changes)

    @property
    def final(self) -> bool:
        return self.phase in FINAL


class Journal:
    def __init__(self, path: str | Path, *, offload: bool = False) -> None:
        """`offload=True` commits in a worker thread, so settlements go on while the
        disk syncs (as LedgerService does; off under a MockClock)."""
        self.path = Path(path)
        self.offload = offload
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._send, self._receive = trio.open_memory_channel[tuple[Record, trio.Event]](BATCH_SIZE_MAX * 4)
        self.commits = 0

    def _migrate(self) -> None:
        db = sqlite_utils.Database(self._db)
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._db:
            db.table("settlements").create(
                {
                    "id": str,
                    "instruction": bytes,
                    "phase": str,
                    "secret": bytes,
                    "expiry_ms": str,
                    "sent": str,
                    "reason_code": str,
                    "reason": str,
                    "steps": str,
                },
                pk="id",
            )
            db.execute(f"CREATE INDEX unfinished ON settlements(phase) WHERE phase NOT IN ({_FINAL_SQL})")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit what has gathered, then release its waiters."""
        task_status.started()
        async with self._receive:
            while True:
                batch = [await self._receive.receive()]
                while len(batch) < BATCH_SIZE_MAX:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                with trio.CancelScope(shield=True):
                    records = [record for record, _ in batch]
                    if self.offload:
                        await trio.to_thread.run_sync(self._write, records)
                    else:
                        self._write(records)
                for _, done in batch:
                    done.set()

    async def save(self, record: Record) -> None:
        """Return once the record is on disk."""
        done = trio.Event()
        await self._send.send((record, done))
        await done.wait()

    def _write(self, records: list[Record]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO settlements (id, instruction, phase, secret, expiry_ms, sent, "
                "reason_code, reason, steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.settlement_id,
                        r.instruction,
                        r.phase.value,
                        r.secret,
                        json.dumps(list(r.expiry_ms)),
                        json.dumps([raw.decode() for raw in r.sent]),
                        r.reason_code,
                        r.reason,
                        json.dumps([list(step) for step in r.steps]),
                    )
                    for r in records
                ],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self.commits += 1

    def get(self, settlement_id: str) -> Record | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM settlements WHERE id = ?", (settlement_id,)).fetchone()
        return _record(row) if row else None

    def unfinished(self) -> list[Record]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM settlements WHERE phase NOT IN ({_FINAL_SQL}) ORDER BY id")
        return [_record(row) for row in rows]

    def all(self) -> list[Record]:
        return [_record(row) for row in self._db.execute(f"SELECT {_COLUMNS} FROM settlements ORDER BY id")]


def desk_database(path: str | Path) -> sqlite3.Connection:
    """A desk's own connection to the coordinator's database (one database per service);
    every write is durable before the desk acts on it."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


_COLUMNS = "id, instruction, phase, secret, expiry_ms, sent, reason_code, reason, steps"


def _record(row: tuple) -> Record:
    settlement_id, instruction, phase, secret, expiry_ms, sent, reason_code, reason, steps = row
    return Record(
        settlement_id,
        bytes(instruction),
        Phase(phase),
        bytes(secret),
        tuple(json.loads(expiry_ms)),
        tuple(raw.encode() for raw in json.loads(sent)),
        reason_code,
        reason,
        tuple(tuple(step) for step in json.loads(steps)),
    )
