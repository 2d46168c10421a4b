"""The coordinator's durable journal: an append-only log of each settlement's
transitions, written *before* the actions a transition announces, so that a coordinator
killed at any point restarts knowing what it may have done.

A transition row holds what changed (the phase entered, the secrets when drawn, the
locks when signed, ...), not the whole record again; a settlement's record is its last
checkpoint (a row of `settlements`) with the transitions after it applied in order. The
log is compacted as settlements end: in the transaction that appends a settlement's
final transition, its record is written whole to `settlements` once and its transitions
dropped. So the log holds only unfinished settlements, and never grows with history.

It holds each cross-ledger settlement's decision, and holds it once: the database itself
refuses (triggers) a transition that changes a decision once recorded, draws a secret a
second time or follows a final phase, so no bug can make it reveal the claim secret of
a settlement it aborted or the cancellation of one it committed.

Writes are group-committed: whoever saves hands its transitions to one writer, which
commits whatever has gathered in one transaction, durably, and only then
lets each go on. The coordinator's shell saves once per step."""

from __future__ import annotations

import fcntl
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from protocols.canonical import encode
from protocols.databases import is_postgres
from protocols.settlement import FINAL, Decision, Phase, check_transition, decided

from . import schema
from .schema import FINAL_SQL

BATCH_SIZE_MAX = 1024  # saves gathered into one commit
NOTES_WAIT_S = 0.05  # notes alone wait this long for a change that must be on disk soon, to share its commit


def _json(value: Any) -> str:
    """A column's JSON text, canonical (protocols.canonical); rows written before, with
    the standard library's spacing, read the same."""
    return encode(value).decode()


@attrs.frozen
class Record:
    """What the coordinator knows of one settlement. `sent` holds the signed
    instructions it sent (or is about to send) whose exact bytes a retry must repeat:
    the two locks, or the one same-ledger settle. `secret` claims its locks and
    `cancel_secret` cancels them (none: time-locks, from before decision locks);
    `claimed`: 1 once leg 0 is known claimed, every leg once all are."""

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


Change = tuple["Record | None", "Record"]  # a record as it was (None: new), and as it is now


@attrs.frozen
class _Queued:
    changes: list[Change]
    done: trio.Event
    note: bool


class JournalInUse(Exception):
    """Another process holds the journal: two coordinators on one journal would drive
    the same settlements at once."""


class Journal:
    def __init__(self, database: str | Path, *, offload: bool = False, held: Hold | None = None) -> None:
        """`database`: an SQLite file's path or a postgresql:// URL (schema.py).
        `offload=True` commits in a worker thread, so that the other services of
        the same process go on while the disk syncs (as LedgerService does; off under a
        MockClock, and in a coordinator process of its own, where the thread's hand-offs
        cost more than a commit). Held by one Journal at a time (`hold`); `held`: that
        hold, taken already."""
        self.database = database
        self.offload = offload
        self._hold = hold(database) if held is None else held
        try:
            self._db = schema.connect(database)  # the writer's
            self._reader = schema.connect(database)  # sees what is committed, never a commit under way
        except BaseException:
            self._hold.release()
            raise
        self._send, self._receive = trio.open_memory_channel[_Queued](BATCH_SIZE_MAX * 4)
        self.commits = 0
        self.checkpoint()
        self.epoch = self._next_epoch()

    def close(self) -> None:
        self._db.close()
        self._reader.close()
        self._hold.release()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit what has gathered, then release its waiters. Notes alone
        (`queue(..., note=True)`) wait up to NOTES_WAIT_S for a change that must be on
        disk soon and go in its commit, so that a note costs no commit of its own on
        the settlement's path."""
        task_status.started()
        async with self._receive:
            while True:
                batch = self._gathered([await self._receive.receive()])
                if all(queued.note for queued in batch):
                    with trio.move_on_after(NOTES_WAIT_S):
                        batch = self._gathered([*batch, await self._receive.receive()])
                with trio.CancelScope(shield=True):
                    changes = [change for queued in batch for change in queued.changes]
                    if self.offload:
                        await trio.to_thread.run_sync(self._write, changes)
                    else:
                        self._write(changes)
                for queued in batch:
                    queued.done.set()

    def _gathered(self, batch: list[_Queued]) -> list[_Queued]:
        """`batch` and what else has been handed to the writer, up to a commit's worth."""
        while len(batch) < BATCH_SIZE_MAX:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def save(self, record: Record) -> None:
        """Return once the record is on disk, as a transition from what the journal holds."""
        await self.save_all([(self.get(record.settlement_id), record)])

    async def save_all(self, changes: list[Change]) -> None:
        """Return once every change is on disk, all in one commit."""
        await (await self.queue(changes)).wait()

    async def queue(self, changes: list[Change], *, note: bool = False) -> trio.Event:
        """Hand changes to the writer, to commit after all handed to it before them (in
        the same commit or a later one); the event is set once they are on disk. A
        `note` nobody waits for soon: it may wait for company (`run`)."""
        done = trio.Event()
        await self._send.send(_Queued(changes, done, note))
        return done

    def _write(self, changes: list[Change]) -> None:
        """Append the transitions; a settlement now final is written whole as its
        checkpoint and its transitions dropped, in the same transaction."""
        finals = [record for _, record in changes if record.final]
        with _transaction(self._db):
            self._db.executemany(_APPEND, [_transition(previous, record) for previous, record in changes])
            if finals:  # appended first, so the trigger has seen the final transition
                self._db.executemany(_UPSERT, [_row(record) for record in finals])
                self._db.executemany(_DROP, [(record.settlement_id,) for record in finals])
        self.commits += 1

    def checkpoint(self) -> None:
        """Write every settlement the log holds whole, once, and drop its transitions (at
        start: the log then holds only what was unfinished)."""
        with _transaction(self._db):
            ids = [row[0] for row in self._db.execute("SELECT DISTINCT settlement_id FROM transitions")]
            records = [_fold(self._db, settlement_id) for settlement_id in ids]
            self._db.executemany(_UPSERT, [_row(record) for record in records if record is not None])
            self._db.execute("DELETE FROM transitions")

    def _next_epoch(self) -> int:
        """This instance's epoch: one more than any before it on this journal, committed
        before it sends anything, so that ledgers can tell it from every earlier one."""
        with _transaction(self._db):
            (last,) = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()
            self._db.execute(
                "INSERT INTO epochs (epoch, pid, opened_ms) VALUES (?, ?, ?)",
                (last + 1, os.getpid(), int(time.time() * 1000)),
            )
        return last + 1

    def get(self, settlement_id: str) -> Record | None:
        return _fold(self._reader, settlement_id)

    def unfinished(self) -> list[Record]:
        ids = self._reader.execute(
            f"SELECT id FROM settlements WHERE phase NOT IN ({FINAL_SQL}) "
            "UNION SELECT settlement_id FROM transitions ORDER BY 1"
        )
        records = [self.get(settlement_id) for (settlement_id,) in ids.fetchall()]
        return [record for record in records if record is not None and not record.final]

    def all(self) -> list[Record]:
        ids = self._reader.execute("SELECT id FROM settlements UNION SELECT settlement_id FROM transitions ORDER BY 1")
        return [record for (settlement_id,) in ids.fetchall() if (record := self.get(settlement_id)) is not None]


class Hold:
    """A journal held by this process until `release`, or until the process dies however
    it dies (the kernel closes its lock file; the server ends its session), so that a
    restart takes it at once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release


def hold(database: str | Path) -> Hold:
    """The journal held, or JournalInUse saying by whom: on SQLite an exclusive lock on
    `{database}.lock`, on PostgreSQL the schema's advisory lock."""
    if is_postgres(database):
        from .postgres import PostgresConnection  # its driver loaded only for a journal on PostgreSQL

        connection = PostgresConnection(str(database))
        if not connection.hold():
            connection.close()
            raise JournalInUse(
                "held by another coordinator process (its lock on the schema); one coordinator per journal"
            )
        return Hold(connection.release)
    descriptor = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise JournalInUse(f"held by process {holder}; one coordinator per journal") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return Hold(lambda: os.close(descriptor))


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, db) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


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
_UPSERT = (
    f"INSERT INTO settlements ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _FIELDS[1:])}"
)  # an update in place, so that the trigger sees every change
_DROP = "DELETE FROM transitions WHERE settlement_id = ?"
_APPEND = (
    "INSERT INTO transitions (settlement_id, phase, decision, secret, cancel_secret, changes) VALUES (?, ?, ?, ?, ?, ?)"
)

# what a transition may change besides the phase, the decision and the secrets: how each
# is written in its JSON, and read back
_CHANGES: dict[str, tuple[Any, Any]] = {
    "instruction": (bytes.decode, str.encode),
    "expiry_ms": (list, tuple),
    "sent": (lambda sent: [raw.decode() for raw in sent], lambda sent: tuple(raw.encode() for raw in sent)),
    "reason_code": (str, str),
    "reason": (str, str),
    "backstop_ms": (list, tuple),
    "claimed": (int, int),
}


def _transition(previous: Record | None, record: Record) -> tuple:
    """The row of what changed from `previous` (None: a new settlement) to `record`."""
    before = previous or Record(record.settlement_id, b"", Phase.PENDING)
    assert before.settlement_id == record.settlement_id, (before, record)
    assert record.steps[: len(before.steps)] == before.steps, f"{record.settlement_id}: steps rewritten"
    new_steps = record.steps[len(before.steps) :]
    phases = [Phase(phase) for phase, _ in (before.steps[-1:] + new_steps)]
    for current, following in itertools.pairwise(phases):
        check_transition(current, following)
    assert not new_steps or phases[-1] is record.phase, f"{record.settlement_id}: {record.phase} is not its last step"
    changes = {
        name: write(getattr(record, name))
        for name, (write, _) in _CHANGES.items()
        if getattr(record, name) != getattr(before, name)
    }
    changes["steps"] = [list(step) for step in new_steps]
    return (
        record.settlement_id,
        record.phase.value,
        record.decision.value,
        record.secret if record.secret != before.secret else b"",
        record.cancel_secret if record.cancel_secret != before.cancel_secret else b"",
        _json(changes),
    )


def _fold(db, settlement_id: str) -> Record | None:
    """A settlement's record: its checkpoint, with the transitions since applied."""
    row = db.execute(f"SELECT {_COLUMNS} FROM settlements WHERE id = ?", (settlement_id,)).fetchone()
    record = _record(row) if row else None
    transitions = db.execute(
        "SELECT phase, decision, secret, cancel_secret, changes FROM transitions WHERE settlement_id = ? ORDER BY seq",
        (settlement_id,),
    )
    for phase, decision, secret, cancel_secret, changes in transitions:
        values = orjson.loads(changes)
        fields = {name: read(values[name]) for name, (_, read) in _CHANGES.items() if name in values}
        if secret:
            fields["secret"] = bytes(secret)
        if cancel_secret:
            fields["cancel_secret"] = bytes(cancel_secret)
        before = record or Record(settlement_id, b"", Phase.PENDING)
        steps = before.steps + tuple(tuple(step) for step in values["steps"])
        record = attrs.evolve(before, phase=Phase(phase), decision=Decision(decision), steps=steps, **fields)
    return record


def _row(r: Record) -> tuple:
    return (
        r.settlement_id,
        r.instruction,
        r.phase.value,
        r.secret,
        _json(list(r.expiry_ms)),
        _json([raw.decode() for raw in r.sent]),
        r.reason_code,
        r.reason,
        _json([list(step) for step in r.steps]),
        r.cancel_secret,
        _json(list(r.backstop_ms)),
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
        tuple(orjson.loads(expiry_ms)),
        tuple(raw.encode() for raw in orjson.loads(sent)),
        reason_code,
        reason,
        tuple(tuple(step) for step in orjson.loads(steps)),
        bytes(cancel_secret),
        tuple(orjson.loads(backstop_ms)),
        Decision(decision),
        claimed,
    )
