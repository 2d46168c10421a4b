"""What every desk shares (the coordinator asks of one only what
engine.coordinator.Desk says): a connection of its own to the coordinator's database,
where its tables are; a nursery in which each of its units of work (a corporate action,
a repo, a matched pair) is carried out once however often it is asked for; and its
answer to the messages it takes, with a refusal in the shape of its own status.

`Units` is the table shape the asset-servicing and repo desks share: each unit journaled
whole as received, with its state, why it is there and the time of every step, moved
only as its state machine allows."""

from __future__ import annotations

import abc
import enum
import json
from collections.abc import Callable
from contextlib import closing
from typing import Any

import attrs
import trio

from protocols.errors import Rejected
from protocols.messages import Body
from protocols.signing import Signed

from ..coordinator import schema

Unit = tuple[str, Any, str, str, list]  # the signed message as received, state, reason_code, reason, steps


class Desk(abc.ABC):
    messages: tuple[type[Body], ...] = ()

    def __init__(self, coordinator) -> None:
        self.coordinator = coordinator
        self._db = schema.connect(coordinator.journal.database)
        self._nursery: trio.Nursery | None = None
        self._serving: set[str] = set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Take up again what the tables hold unfinished, then work until cancelled."""
        with closing(self._db):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._resume()
                task_status.started()
                await self._work()

    @abc.abstractmethod
    async def _resume(self) -> None:
        """Carry out again each unit accepted and not finished."""

    async def _work(self) -> None:
        """What the desk does besides its units: by default, nothing."""
        await trio.sleep_forever()

    def _serve(self, unit_id: str) -> None:
        """Carry out a unit in the desk's nursery, once however often it is asked for."""
        assert self._nursery is not None, "the desk is not running"
        if unit_id not in self._serving:
            self._serving.add(unit_id)
            self._nursery.start_soon(self._carry_out, unit_id)

    @abc.abstractmethod
    async def _carry_out(self, unit_id: str) -> None:
        """Take one unit of work to its end."""

    async def answer(self, signed: Signed, request) -> bytes:
        """The signed reply to one of `messages`: the desk's own refusal if it has one,
        else the coordinator's (a settlement status, phase `rejected`).

        A request taken in the turn the coordinator was stopped is not begun: a task's
        first step is no checkpoint, and the desk's nursery is closed by then."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return await self._reply(signed)
        except Rejected as error:
            refusal = self._refusal(request.payload, error)
            if refusal is None:
                raise
            return self.coordinator.sign(refusal)

    @abc.abstractmethod
    async def _reply(self, signed: Signed) -> bytes:
        """The signed reply to one of `messages`; Rejected for a refusal."""

    def _refusal(self, payload: bytes, error: Rejected) -> Body | None:
        return None


@attrs.frozen
class Units:
    """A desk's table of units: `id`, the message as received (column `column`), `state`,
    `reason_code`, `reason` and `steps` (JSON: [state, ms] each)."""

    db: schema.Connection
    table: str
    column: str
    states: type[enum.Enum]
    check: Callable[[Any, Any], None]  # raises unless the state machine allows current -> following
    what: str  # "repo", "corporate action": for messages

    def get(self, unit_id: str) -> Unit | None:
        row = self.db.execute(
            f"SELECT {self.column}, state, reason_code, reason, steps FROM {self.table} WHERE id = ?", (unit_id,)
        ).fetchone()
        if row is None:
            return None
        wire, state, reason_code, reason, steps = row
        return wire, self.states(state), reason_code, reason, json.loads(steps)

    def known(self, unit_id: str) -> Unit:
        """A unit the desk has journaled."""
        found = self.get(unit_id)
        assert found is not None, f"{self.what} {unit_id} is not journaled"
        return found

    def unfinished(self, final: tuple[enum.Enum, ...]) -> list[str]:
        values = tuple(state.value for state in final)
        return [
            unit_id
            for (unit_id,) in self.db.execute(
                f"SELECT id FROM {self.table} WHERE state NOT IN ({', '.join('?' * len(values))}) ORDER BY id", values
            )
        ]

    def add(self, unit_id: str, wire: str, state: enum.Enum, now_ms: int) -> None:
        """Journal a new unit (one already there, from another copy, is left as it is)."""
        self.db.execute(
            f"INSERT INTO {self.table} VALUES (?, ?, ?, '', '', ?) ON CONFLICT DO NOTHING",
            (unit_id, wire, state.value, json.dumps([[state.value, now_ms]])),
        )

    def to(
        self, unit_id: str, current: Any, following: Any, now_ms: int, reason_code: str = "", reason: str = ""
    ) -> Any:
        """Move a unit as its state machine allows, from the state it must be in."""
        self.check(current, following)
        steps = self.known(unit_id)[4] + [[following.value, now_ms]]
        changed = self.db.execute(
            f"UPDATE {self.table} SET state = ?, reason_code = ?, reason = ?, steps = ? WHERE id = ? AND state = ?",
            (following.value, reason_code, reason, json.dumps(steps), unit_id, current.value),
        )
        assert changed.rowcount == 1, f"{self.what} {unit_id} was not {current.value}"
        return following
