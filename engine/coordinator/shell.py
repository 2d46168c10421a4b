"""The coordinator's shell: the I/O around the pure core (core.py).

It accepts settlements from the bus and from the desks, checks them (the parties'
signatures, the ledgers, the time left), and feeds the core what happens: a settlement
to drive, a ledger's answer, a time that has come. Each step's actions it performs in
one order: every record the step changed is committed to the journal in one
transaction, and only then are the step's instructions sent (gathered per ledger into
batch messages by a Batcher), its queries asked, its decisions announced and its
finished settlements answered. One loop, no task per settlement: the loop works out the
next step while this one's commit is on its way to the disk, the journal commits in the
order of the steps, and the steps' actions go in that order, each step's once every
commit up to its own that gates is on disk.

A restart resumes every unfinished settlement at its journaled phase: locks and settles
are sent again byte for byte (ledgers answer a repeated id with their first receipt),
claims and cancels are safe to repeat, and what a ledger already did is read from its
lock state.

Every start opens the journal at a new epoch, and the shell fences each ledger at that
epoch before it sends it anything else (`_fence_then_send`): from then on the ledger
refuses the claims, cancels and aborts of every earlier instance of this coordinator.
An instance that finds itself fenced out stops: another has taken its journal over."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import trio

from protocols import canonical
from protocols.authority import Terms, settlement_terms, terms_of
from protocols.bus import Bus, BusTimeout, Request, decisions_topic, service_of_coordinator
from protocols.bus.batcher import Batcher, Outcome
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.canonical import MESSAGE_BYTES_MAX, encode
from protocols.envelope import BATCH_BYTES_MAX, is_settlements, item_id, open_settlements, seal
from protocols.errors import Code, Rejected
from protocols.failures import ExpectedFailure
from protocols.messages import (
    Body,
    Fence,
    QuerySettlement,
    Receipt,
    Settlement,
    SettlementDecision,
    SettlementStatus,
    readable_id,
)
from protocols.registry import Registry
from protocols.settlement import Phase, Timing
from protocols.signing import PrivateKey, Signed, decode_signed, from_wire, sign, unsigned

from .. import config
from ..watchtower import Watchtower
from . import core
from .journal import Change, Journal, Record

log = logging.getLogger("lockstep.coordinator")

SUBMIT_TIMEOUT_S = 0.5  # one attempt at a ledger request; the core sends it again while time allows
IN_FLIGHT_MAX = config.IN_FLIGHT_MAX  # settlements driven at once, desks' included; then every request is refused
INTAKE_MAX = config.INTAKE_MAX  # back offices' settlements in flight; a new one past it is refused `busy`


DECISIONS_PER_EVENT_MAX = 256  # some 120 KiB: well under the broker's 1 MiB
FENCE_RETRY_S = 1.0  # after a ledger refuses a fence for a reason that may pass (a clock ahead, say), or a bad reply


class FencedOut(ExpectedFailure):
    """A ledger has been fenced past this instance's epoch: a later instance of the same
    coordinator has opened its journal. This one must stop; it would only be refused."""

    def __init__(self, coordinator: str, epoch: int, ledger: str, reason: str) -> None:
        super().__init__(f"coordinator {coordinator} at epoch {epoch}", f"fenced out by {ledger}: {reason}")


class Desk(Protocol):
    """A service the coordinator hosts beside the settlement driver (matching, asset
    servicing, repo): it answers its own message types and runs its own tasks, settling
    through `Coordinator.settle`."""

    @property
    def messages(self) -> tuple[type[Body], ...]:
        """The message types it answers."""

    async def answer(self, signed: Signed, request: Request) -> bytes:
        """The signed reply to one of `messages`."""

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resume what the journal holds, then work until cancelled."""


class Coordinator:
    def __init__(
        self,
        coordinator_id: str,
        key: PrivateKey,
        registry: Registry,
        bus: Bus,
        journal: Journal,
        clock: ServiceClock,
        timing: Timing = Timing(),
        watched_ledgers: tuple[str, ...] = (),
        intake_max: int = INTAKE_MAX,
    ) -> None:
        assert 0 < intake_max <= IN_FLIGHT_MAX, intake_max
        self.id = coordinator_id
        self.intake_max = intake_max
        self._key = key
        self.registry = registry
        self.bus = bus
        self.journal = journal
        self.clock = clock
        self.timing = timing
        self._clients: dict[str, LedgerClient] = {}
        self._batchers: dict[str, Batcher] = {}  # each ledger's, sending instructions in batches
        self._state = core.State(coordinator_id, timing, secrets.token_hex(3), journal.epoch)
        self._events: list[core.Event] = []  # for the next step
        self._arrived = trio.lowlevel.ParkingLot()  # the step loop, waiting for events
        self._wakes: list[tuple[int, str]] = []  # (at_ms, settlement id): a heap of times to feed Due
        self._gate = trio.Event()  # set once the latest step's gating saves are on disk
        self._gate.set()
        self._gone = trio.Event()  # set once the latest step's actions have gone
        self._gone.set()
        # settlement id -> its instruction, and an event set when it is final: from acceptance until final
        self._driven: dict[str, tuple[bytes, trio.Event]] = {}
        self._intake: set[str] = set()  # back offices' settlements being driven now
        # settlement id -> what answers the requests that sent it, with its status once final
        self._requests: dict[str, list[Callable[[SettlementStatus], Awaitable[None]]]] = {}
        self._nursery: trio.Nursery | None = None
        self.on_phase: Callable[[Record], None] = lambda record: None  # for observers and tests
        self.on_busy: Callable[[], None] = lambda: None  # a new settlement refused at the intake bound
        # the settlement queue released trades that fund one another: how many, what they
        # move and the liquidity they saved, per asset (engine/desks/offsetting.py)
        self.on_offset: Callable[[int, dict[str, int], dict[str, int]], None] = lambda count, value, saved: None
        self.steps = 0
        self.watchtower = (
            Watchtower(
                coordinator_id, key, registry, bus, list(watched_ledgers), clock, grace_ms=timing.claim_deadline_ms // 2
            )
            if watched_ledgers
            else None
        )
        self._desks: dict[type[Body], Desk] = {}
        self._reserved: dict[str, str] = {}  # settlement id -> the desk's role that alone may start it

    def add_desk(self, desk: Desk) -> None:
        """Serve a desk's messages on the coordinator's topic and run it alongside; added
        before `run`."""
        assert self._nursery is None, "desks are added before the coordinator runs"
        for message_type in desk.messages:
            assert message_type not in self._desks, f"two desks answer {message_type.TYPE}"
            self._desks[message_type] = desk

    def sign(self, msg) -> bytes:
        """The coordinator's signature on a reply of its own (a desk's answer)."""
        return sign(msg, (self.id, self._key)).encode()

    @property
    def in_flight(self) -> int:
        """Settlements being driven now."""
        return len(self._driven)

    @property
    def intake(self) -> int:
        """Back offices' settlements in flight: what `intake_max` bounds."""
        return len(self._intake)

    def phases(self) -> dict[Phase, int]:
        """Settlements being driven now, by phase."""
        counts: dict[Phase, int] = {}
        for driving in self._state.settlements.values():
            counts[driving.record.phase] = counts.get(driving.record.phase, 0) + 1
        return counts

    def client(self, ledger_id: str) -> LedgerClient:
        if ledger_id not in self._clients:
            party = self.registry.get(ledger_id)
            if party is None:
                raise Rejected(Code.INVALID_FIELD, "legs", f"{ledger_id!r} is not a registered ledger")
            self._clients[ledger_id] = LedgerClient(
                self.bus, ledger_id, party.public_key, timeout_s=SUBMIT_TIMEOUT_S, attempts=1
            )
        return self._clients[ledger_id]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resume every unfinished settlement, then drive new ones as they come over
        the bus, each request answered when its settlement is final."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.journal.run)
            if self.watchtower is not None:
                await nursery.start(self.watchtower.run)
            for record in self.journal.unfinished():
                log.info("resuming settlement %s from %s", record.settlement_id, record.phase.value)
                self._drive(record)
            nursery.start_soon(self._steps)
            for desk in dict.fromkeys(self._desks.values()):
                await nursery.start(desk.run)
            async with self.bus.serve(service_of_coordinator(self.id)) as requests:
                task_status.started()
                async for first in requests:
                    # all that has arrived, at once: a request waits here no longer than a
                    # turn, so the intake bound, not this queue, decides how long one waits
                    for request in [first, *requests.arrived(IN_FLIGHT_MAX)]:
                        await self._answer(request)

    async def _answer(self, request: Request) -> None:
        """Answer a request now, or (a settlement being driven) once it is final."""
        try:
            if len(self._driven) >= IN_FLIGHT_MAX:
                raise Rejected(Code.OVERLOADED, "$", f"{IN_FLIGHT_MAX} settlements in flight; retry later")
            value = _value(request.payload)
            if is_settlements(value):
                await self._answer_settlements(value, request)
                return
            accepted: tuple[type[Body], ...] = (Settlement, QuerySettlement, *self._desks)
            signed = from_wire(value, allowed=accepted)
            msg = signed.msg
            if type(msg) in self._desks:
                assert self._nursery is not None
                self._nursery.start_soon(self._desk_answer, self._desks[type(msg)], signed, request)
                return
            if isinstance(msg, QuerySettlement):
                record = self.journal.get(msg.settlement_id)
                if record is None:
                    raise Rejected(Code.INVALID_FIELD, "settlement_id", f"no settlement {msg.settlement_id!r}")
            else:
                assert isinstance(msg, Settlement)
                record = self._submitted(signed)
                if record is None:  # answered when final
                    self._requests.setdefault(msg.id, []).append(partial(self._reply_alone, request))
                    return
            status = self._status(record)
        except Rejected as error:
            status = self._refusal(_sent_id(request.payload), error)
        await self._reply_alone(request, status)

    async def _answer_settlements(self, value: dict, request: Request) -> None:
        """Settlements sent in one request: each accepted or refused on its own, exactly
        as if it had come alone; their statuses go back in one envelope, signed once, when
        the last of them is final."""
        try:
            items = open_settlements(value, allowed=(Settlement,))
        except Rejected as error:  # the container itself: answered alone, as a settlement alone would be
            await self._reply_alone(request, self._refusal("unknown", error))
            return
        statuses = _Statuses(request, len(items), partial(seal, party=self.id, key=self._key))
        for index, (item, raw) in enumerate(zip(items, value["items"], strict=True)):
            if isinstance(item, Rejected):
                await statuses.put(index, self._refusal(item_id(raw), item))
                continue
            try:
                record = self._submitted(item)
            except Rejected as error:
                await statuses.put(index, self._refusal(item.msg.id, error))
                continue
            if record is None:  # its status once final
                self._requests.setdefault(item.msg.id, []).append(partial(statuses.put, index))
            else:
                await statuses.put(index, self._status(record))

    async def _reply_alone(self, request: Request, status: SettlementStatus) -> None:
        await request.reply(sign(status, (self.id, self._key)).encode())

    async def _desk_answer(self, desk: Desk, signed: Signed, request: Request) -> None:
        try:
            reply = await desk.answer(signed, request)
        except Rejected as error:
            await self._reply_alone(request, self._refusal(_sent_id(request.payload), error))
        else:
            await request.reply(reply)

    def _status(self, record: Record) -> SettlementStatus:
        return SettlementStatus(
            self.id,
            record.settlement_id,
            record.phase.value,
            self.clock.now_ms(),
            record.reason_code,
            record.reason,
            tuple(list(step) for step in record.steps),
        )

    def _refusal(self, settlement_id: str, error: Rejected) -> SettlementStatus:
        """A refusal in the shape of a status, phase "rejected", for the sender's id."""
        return SettlementStatus(
            self.id, settlement_id, "rejected", self.clock.now_ms(), error.code.value, f"{error.field}: {error.reason}"
        )

    # -- intake ----------------------------------------------------------------------------

    async def submit(self, raw: bytes) -> Record:
        """Accept a signed settlement and return its record once final."""
        signed = decode_signed(raw, allowed=(Settlement,))
        record = self._submitted(signed)
        return record if record is not None else await self.wait(signed.msg.id)

    def _submitted(self, signed: Signed) -> Record | None:
        """Accept a back office's signed settlement: its record if already final, None if
        it is being driven. A settlement sent again (same id, same bytes) is not run
        twice. A new one past the intake bound is refused `busy` and not recorded, so
        that what is accepted is settled in bounded time and the rest is sent again later."""
        settlement_id = signed.msg.id
        owner = self._reserved.get(settlement_id)
        if owner is not None:
            raise Rejected(Code.NOT_AUTHORISED, "id", f"settlement {settlement_id} settles only as {owner}")
        full = len(self._intake) >= self.intake_max and settlement_id not in self._driven
        if full and self.journal.get(settlement_id) is None:  # new: a known one is always answered
            self.on_busy()
            raise Rejected(
                Code.BUSY, "$", f"{self.intake_max} settlements in flight, the most this coordinator takes; retry"
            )
        record = self._accept(signed.wire(), signed)
        if record is None:
            self._intake.add(settlement_id)
        return record

    def reserve(self, settlement_id: str, owner: str) -> None:
        """Let only a desk start this settlement (a repo's reverse leg, due at its term and
        only if the start leg settled): sent on its own, it is refused."""
        self._reserved[settlement_id] = owner

    async def settle(self, auth: dict) -> Record:
        """Drive what an `auth` allows (protocols.authority: a settlement both parties
        signed, a matched pair of instructions, a holder's entitlement) and return its
        record once final; the same `auth` again is not run twice."""
        record = self._accept(auth)
        return record if record is not None else await self.wait(terms_of(auth, None).id)

    def _accept(self, auth: dict, settlement: Signed[Settlement] | None = None) -> Record | None:
        """Start driving what `auth` allows: None once it is being driven, or its record
        if it is already final. A `settlement` sent on its own comes read already: it is
        `auth`, not read again."""
        try:
            terms = (
                settlement_terms(settlement, self.registry) if settlement is not None else terms_of(auth, self.registry)
            )
        except Rejected as error:  # the auth is the whole message here: name its fields
            raise Rejected(error.code, error.field.removeprefix("auth."), error.reason) from None
        instruction = settlement.encode() if settlement is not None else encode(auth)
        driven = self._driven.get(terms.id)
        if driven is not None:
            if driven[0] != instruction:
                raise _reused(terms.id)
            return None
        known = self.journal.get(terms.id)
        if known is not None:
            if known.instruction != instruction:
                raise _reused(terms.id)
            if known.final:
                return known
            self._drive(known)  # journaled unfinished but not driven here (a commit that landed late)
            return None
        self.validate(terms)
        now_ms = self.clock.now_ms()
        record = Record(terms.id, instruction, Phase.PENDING, steps=((Phase.PENDING.value, now_ms),))
        self._drive(record, new=(terms, auth))
        return None

    def validate(self, terms: Terms) -> None:
        if terms.coordinator != self.id:
            raise Rejected(Code.WRONG_LEDGER, "coordinator", f"this is coordinator {self.id!r}")
        if self.id in terms.payers:
            raise Rejected(
                Code.NOT_AUTHORISED, "parties", "the coordinator cannot settle for itself: it holds the secret"
            )
        for leg in terms.legs:
            self.client(leg.ledger)
        start_ms = max(self.clock.now_ms(), terms.not_before_ms)
        if terms.deadline_ms < start_ms + self.timing.total_ms():
            raise Rejected(
                Code.EXPIRY_OUT_OF_RANGE,
                "deadline_ms",
                f"deadline leaves less than the {self.timing.total_ms()} ms a settlement may take",
            )

    async def wait(self, settlement_id: str) -> Record:
        driven = self._driven.get(settlement_id)
        if driven is not None:
            await driven[1].wait()
        record = self.journal.get(settlement_id)
        assert record is not None
        return record

    def _drive(self, record: Record, *, new: tuple[Terms, dict] | None = None) -> None:
        """Hand a settlement to the core, with fresh secrets in case it draws them now;
        a `new` one with its terms, as just read and verified."""
        self._driven[record.settlement_id] = (record.instruction, trio.Event())
        draws = secrets.token_bytes(32), secrets.token_bytes(32)
        self._event(core.Start(record, *draws, new is not None, new))

    # -- the step loop ---------------------------------------------------------------------

    def _event(self, event: core.Event) -> None:
        self._events.append(event)
        self._arrived.unpark()

    async def _steps(self) -> None:
        """Feed the core what has happened, all of it at once, and perform its actions."""
        while True:
            if not self._events:
                wake_at = self.clock.trio_time_at(self._wakes[0][0]) if self._wakes else math.inf
                with trio.move_on_at(wake_at):
                    await self._arrived.park()
            now_ms = self.clock.now_ms()
            while self._wakes and self._wakes[0][0] <= now_ms:
                settlement_id = heapq.heappop(self._wakes)[1]
                if settlement_id in self._driven:  # a wake-up set before it ended is for nothing
                    self._events.append(core.Due(settlement_id))
            events, self._events = self._events, []
            if events:
                self._state, actions = core.step(self._state, events, now_ms)
                self.steps += 1
                await self._perform_soon(actions)

    async def _perform_soon(self, actions: list[core.Action]) -> None:
        """Hand the step's saves to the journal, in the order of the steps, and perform
        the rest in a task of its own, so that the next step is worked out while this
        one's commit is on its way to the disk. The step's actions wait for the commit
        of every save that gates (core.Save.gates), its own and every earlier step's,
        since the journal commits in order, and for the earlier step's actions to have
        gone: nothing leaves sooner, nor in another order, than if each step waited for
        its own commit. A step whose every save is a note sends without waiting for its
        notes."""
        if not actions:  # a step that changed nothing: nothing to wait for nor perform
            return
        for action in actions:
            if isinstance(action, core.Wake):
                heapq.heappush(self._wakes, (action.at_ms, action.settlement_id))
        saves = [action for action in actions if isinstance(action, core.Save)]
        committed = None
        if saves:
            gates = any(save.gates for save in saves)
            committed = await self.journal.queue(_transitions(saves), note=not gates)
            if gates:
                self._gate = committed
        gone = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._perform, actions, (self._gate, self._gone), gone, committed, saves)
        self._gone = gone

    async def _perform(
        self,
        actions: list[core.Action],
        after: tuple[trio.Event, trio.Event],
        gone: trio.Event,
        committed: trio.Event | None,
        saves: list[core.Save],
    ) -> None:
        """The step's actions once `after` (the gating commit and the step before it)
        allows; `gone` once its announcements are out and its sends handed on."""
        gate, previous = after
        await gate.wait()
        await previous.wait()
        if committed is gate:  # the step's own saves gate: on disk now, before anything leaves
            self._on_disk(saves)
        decisions = [action.decision for action in actions if isinstance(action, core.Announce)]
        if decisions:
            await self._announce(decisions)
        for action in actions:
            if isinstance(action, core.Send):
                deliver = partial(self._delivered, action.settlement_id, action.tag)
                self._batcher(action.ledger).post(action.instruction, deliver)
            elif isinstance(action, core.Ask):
                assert self._nursery is not None
                self._nursery.start_soon(self._ask, action)
        gone.set()
        for action in actions:
            if isinstance(action, core.Done):
                await self._finished(action.record)
        if committed is not None and committed is not gate:  # notes, committed as they go
            await committed.wait()
            self._on_disk(saves)

    def _on_disk(self, saves: list[core.Save]) -> None:
        for save in saves:
            self.on_phase(save.record)

    async def _announce(self, decisions: list[SettlementDecision]) -> None:
        """The step's decisions, before anything acts on them: one signed event, or one
        batch envelope of them signed once (protocol section 4a)."""
        for start in range(0, len(decisions), DECISIONS_PER_EVENT_MAX):
            some = decisions[start : start + DECISIONS_PER_EVENT_MAX]
            if len(some) == 1:
                event = self.sign(some[0])
            else:
                event = seal([unsigned(decision) for decision in some], self.id, self._key)
            await self.bus.publish(decisions_topic(self.id), event)

    async def _finished(self, record: Record) -> None:
        settlement_id = record.settlement_id
        reason = f": {record.reason_code}: {record.reason}" if record.reason_code else ""
        log.info("settlement %s %s%s", settlement_id, record.phase.value, reason)
        self._intake.discard(settlement_id)
        self._driven.pop(settlement_id)[1].set()
        for reply in self._requests.pop(settlement_id, ()):
            await reply(self._status(record))

    def _delivered(self, settlement_id: str, tag: tuple[str, int], outcome: Outcome) -> None:
        """An instruction's outcome, from the task that sent its batch."""
        if isinstance(outcome, Exception):
            log.debug("%s %s: %s; sent again", settlement_id, tag, outcome)
        elif outcome.code == Code.FENCED.value:
            raise FencedOut(self.id, self.journal.epoch, outcome.ledger, outcome.reason or "")
        self._event(core.Answer(settlement_id, tag, outcome if isinstance(outcome, Receipt) else core.NO_ANSWER))

    async def _ask(self, action: core.Ask) -> None:
        """One attempt at a query: its value, ABSENT for a lock never placed, None for an
        instruction never applied, NO_ANSWER for silence or any other refusal."""
        value: object
        try:
            value = await self.client(action.ledger).query(action.query)
        except Rejected as error:
            if error.code is Code.UNKNOWN_LOCK:
                value = core.ABSENT
            elif error.code is Code.UNKNOWN_INSTRUCTION:
                value = None
            else:
                log.warning("%s refused %s: %s", action.ledger, action.query, error)
                value = core.NO_ANSWER
        except (BusTimeout, BadReply) as error:
            log.debug("%s: %s; asked again", action.ledger, error)
            value = core.NO_ANSWER
        self._event(core.Answer(action.settlement_id, action.tag, value))

    def _batcher(self, ledger_id: str) -> Batcher:
        batcher = self._batchers.get(ledger_id)
        if batcher is None:
            assert self._nursery is not None, "coordinator is not running"
            batcher = self._batchers[ledger_id] = Batcher(self.client(ledger_id), self.id, self._key)
            self._nursery.start_soon(self._fence_then_send, ledger_id, batcher)
        return batcher

    async def _fence_then_send(self, ledger_id: str, batcher: Batcher) -> None:
        """Fence the ledger at this instance's epoch, then send it the batches that have
        gathered meanwhile: nothing of this instance reaches a ledger before its fence."""
        epoch, client = self.journal.epoch, self.client(ledger_id)
        for attempt in itertools.count():
            fence = Fence(f"fence-{epoch}-{self._state.nonce}-{attempt:x}", ledger_id, self.clock.now_ms(), epoch)
            try:
                receipt = await client.submit(sign(fence, (self.id, self._key)))
            except BusTimeout as error:  # its attempt waited out the timeout: again at once
                log.info("fencing %s at epoch %d: %s; again", ledger_id, epoch, error)
                continue
            except BadReply as error:
                log.warning("fencing %s at epoch %d: %s; again", ledger_id, epoch, error)
            else:
                if receipt.applied:
                    break
                if receipt.code == Code.FENCED.value:
                    raise FencedOut(self.id, epoch, ledger_id, receipt.reason or "")
                log.warning("%s refused the fence at epoch %d: %s: %s", ledger_id, epoch, receipt.field, receipt.reason)
            await trio.sleep(FENCE_RETRY_S)
        log.info("fenced %s at epoch %d", ledger_id, epoch)
        await batcher.run()


def _transitions(saves: list[core.Save]) -> list[Change]:
    """A step's saves as the journal's rows: one per settlement, from what it was before
    the step to what the step made it (a new settlement locked at once is one row, not
    two), in the order the step first changed each."""
    rows: dict[str, Change] = {}
    for save in saves:
        first = rows.get(save.record.settlement_id)
        rows[save.record.settlement_id] = (save.previous if first is None else first[0], save.record)
    return list(rows.values())


class _Statuses:
    """The statuses of a request's settlements, gathered in their order as each is known
    and sent in one envelope once the last is."""

    def __init__(self, request: Request, count: int, seal: Callable[[list[Signed]], bytes]) -> None:
        self._request, self._seal = request, seal
        self._statuses: list[SettlementStatus | None] = [None] * count
        self._missing = count

    async def put(self, index: int, status: SettlementStatus) -> None:
        assert self._statuses[index] is None, index
        self._statuses[index] = status
        self._missing -= 1
        if not self._missing:
            statuses = [unsigned(status) for status in self._statuses if status is not None]
            assert len(statuses) == len(self._statuses)
            await self._request.reply(self._seal(statuses))


def _sent_id(payload: bytes) -> str:
    """The id a refused request was about, for the sender to match the refusal with."""
    return readable_id(payload, ("settlement_id", "id"))


def _value(payload: bytes) -> Any:
    """A request's value: settlements sent together may take BATCH_BYTES_MAX, anything
    else MESSAGE_BYTES_MAX, past which it is refused as too large whatever else is wrong."""
    too_large = Rejected(Code.TOO_LARGE, "$", f"message is {len(payload)} bytes, limit is {MESSAGE_BYTES_MAX}")
    try:
        value = canonical.decode(payload, bytes_max=BATCH_BYTES_MAX)
    except Rejected as error:
        raise (too_large if len(payload) > MESSAGE_BYTES_MAX else error) from None
    if len(payload) > MESSAGE_BYTES_MAX and not is_settlements(value):
        raise too_large
    return value


def _reused(settlement_id: str) -> Rejected:
    return Rejected(Code.ID_REUSED, "id", f"settlement {settlement_id} was submitted with other content")
