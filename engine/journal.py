"""The coordinator's durable journal: one row per settlement, rewritten at every phase
change *before* the action that phase announces, so that a coordinator killed at any
point restarts knowing what it may have done.

It holds each cross-ledger settlement's decision, and holds it once: the database itself
refuses (a trigger) to change a decision once recorded, or a secret once drawn, so no
bug can make it reveal the claim secret of a settlement it aborted or the cancellation
of one it committed.

Writes are group-committed: every settlement task hands its record to one writer, which
commits whatever has gathered in one SQLite transaction (synchronous=FULL) and only then
lets each task go on."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import trio

from protocols.settlement import FINAL, Decision, Phase, check_transition, decided

from . import schema
from .schema import FINAL_SQL

BATCH_SIZE_MAX = 1024


@attrs.frozen
class Record:
    """What the coordinator knows of one settlement. `sent` holds the signed
    instructions it sent (or is about to send) whose exact bytes a retry must repeat:
    the two locks, or the one same-ledger settle. `secret` claims its locks and
    `cancel_secret` cancels them (none: time-locks, from before decision locks);
    `claimed` counts the legs, from leg 0, known claimed."""

    settlement_id: str
    instruction: bytes  # the signed settlement, as received
    phase: Phase
    secret: bytes = b""
    expiry_ms: tuple[int, ...] = ()
    sent: tuple[bytes, ...] = ()
    reason_code: str = ""
    reason: str = ""
    steps: tuple[tuple[str, int], ...] = ()
    cancel_secret: bytes = b""
    backstop_ms: tuple[int, ...] = ()
    decision: Decision = Decision.NONE
    claimed: int = 0

    def to(self, phase: Phase, now_ms: int, **changes) -> Record:
        check_transition(self.phase, phase)
        return attrs.evolve(
            self,
            phase=phase,
            decision=decided(self.decision, phase),
            steps=self.steps + ((phase.value, now_ms),),
            **changes,
        )

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    @property
    def refund_at_ms(self) -> tuple[int, ...]:
        """When each leg's ledger refunds its lock by itself: the backstops, or a
        time-lock's expiry."""
        return self.backstop_ms or self.expiry_ms


class Journal:
    def __init__(self, path: str | Path, *, offload: bool = False) -> None:
        """`offload=True` commits in a worker thread, so settlements go on while the
        disk syncs (as LedgerService does; off under a MockClock)."""
        self.path = Path(path)
        self.offload = offload
        self._db = schema.connect(self.path)
        self._send, self._receive = trio.open_memory_channel[tuple[Record, trio.Event]](BATCH_SIZE_MAX * 4)
        self.commits = 0

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
        """Insert or update in place (an update, so that the trigger sees every change)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                f"INSERT INTO settlements ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))}) "
                f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _FIELDS[1:])}",
                [_row(r) for r in records],
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
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM settlements WHERE phase NOT IN ({FINAL_SQL}) ORDER BY id")
        return [_record(row) for row in rows]

    def all(self) -> list[Record]:
        return [_record(row) for row in self._db.execute(f"SELECT {_COLUMNS} FROM settlements ORDER BY id")]


_FIELDS = (
    "id",
    "instruction",
    "phase",
    "secret",
    "expiry_ms",
    "sent",
    "reason_code",
    "reason",
    "steps",
    "cancel_secret",
    "backstop_ms",
    "decision",
    "claimed",
)
_COLUMNS = ", ".join(_FIELDS)


def _row(r: Record) -> tuple:
    return (
        r.settlement_id,
        r.instruction,
        r.phase.value,
        r.secret,
        json.dumps(list(r.expiry_ms)),
        json.dumps([raw.decode() for raw in r.sent]),
        r.reason_code,
        r.reason,
        json.dumps([list(step) for step in r.steps]),
        r.cancel_secret,
        json.dumps(list(r.backstop_ms)),
        r.decision.value,
        r.claimed,
    )


def _record(row: tuple) -> Record:
    (
        settlement_id,
        instruction,
        phase,
        secret,
        expiry_ms,
        sent,
        reason_code,
        reason,
        steps,
        cancel_secret,
        backstop_ms,
        decision,
        claimed,
    ) = row
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
        bytes(cancel_secret),
        tuple(json.loads(backstop_ms)),
        Decision(decision),
        claimed,
    )
