"""The coordinator: drives each settlement through its phases (protocols.settlement)
across the ledgers, journaling every phase before acting on it.

Cross-ledger: draw a claim secret and a cancellation secret, lock both legs in parallel
as decision locks (protocols.htlc) under their two hashes, each lock authorised by the
counterparties' signed settlement. Then decide, once, and put the decision on disk
before revealing anything: commit when both locks are confirmed in time (then claim
leg 0, then leg 1, for as long as it takes), abort otherwise (then cancel every lock
placed). The decision is published for watchtowers, which forward it to the ledgers
if this coordinator cannot. Same ledger: one `settle` instruction, all legs or none.

Recovery is the same code entered at the journaled phase: locks and settles are sent
again byte for byte (ledgers answer a repeated id with their first receipt), claims and
cancels are safe to repeat, and what a ledger already did is read from its lock state."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from protocols.authority import Terms, terms_of
from protocols.bus import Bus, BusTimeout, Request, decisions_topic, service_of_coordinator
from protocols.bus.batcher import Batcher
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.canonical import decode, encode
from protocols.errors import Code, Rejected
from protocols.htlc import hashlock_of
from protocols.messages import (
    INSTRUCTIONS,
    Abort,
    Body,
    Cancel,
    Claim,
    Lock,
    QueryLock,
    QueryReceipt,
    QuerySettlement,
    Receipt,
    Settle,
    Settlement,
    SettlementDecision,
    SettlementStatus,
    readable_id,
)
from protocols.registry import Registry
from protocols.settlement import Decision, Phase, Timing, lock_id, settle_id
from protocols.signing import PrivateKey, Signed, decode_signed, sign, unsigned

from . import config
from .journal import Journal, Record
from .watchtower import Watchtower

log = logging.getLogger("lockstep.coordinator")

RETRY_S = 0.05
SUBMIT_TIMEOUT_S = 0.5  # one attempt at a ledger request; retried while time allows
IN_FLIGHT_MAX = config.IN_FLIGHT_MAX  # settlements driven at once, desks' included; then every request is refused
INTAKE_MAX = config.INTAKE_MAX  # back offices' settlements in flight; a new one past it is refused `busy`


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
        self._intake: set[str] = set()  # back offices' settlements being driven now
        self._key = key
        self.registry = registry
        self.bus = bus
        self.journal = journal
        self.clock = clock
        self.timing = timing
        self._clients: dict[str, LedgerClient] = {}
        self._batchers: dict[str, Batcher] = {}  # each ledger's, sending instructions in batches
        self._running: dict[str, trio.Event] = {}  # settlement id -> set when final
        self._auth: dict[str, dict] = {}  # settlement id -> its signed wire form, while driven
        self._accepted: dict[str, Record] = {}  # settlement id -> record being saved as PENDING
        self._nursery: trio.Nursery | None = None
        self.on_phase: Callable[[Record], None] = lambda record: None  # for observers and tests
        self.on_busy: Callable[[], None] = lambda: None  # a new settlement refused at the intake bound
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
        return len(self._running)

    @property
    def intake(self) -> int:
        """Back offices' settlements in flight: what `intake_max` bounds."""
        return len(self._intake)

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
                self._start(record)
            for desk in dict.fromkeys(self._desks.values()):
                await nursery.start(desk.run)
            async with self.bus.serve(service_of_coordinator(self.id)) as requests:
                task_status.started()
                async for first in requests:
                    # all that has arrived, at once: a request waits here no longer than a
                    # turn, so the intake bound, not this queue, decides how long one waits
                    for request in [first, *requests.arrived(IN_FLIGHT_MAX)]:
                        if len(self._running) >= IN_FLIGHT_MAX:
                            await request.reply(
                                self._status_error(
                                    request.payload,
                                    Rejected(
                                        Code.OVERLOADED, "$", f"{IN_FLIGHT_MAX} settlements in flight; retry later"
                                    ),
                                )
                            )
                            continue
                        nursery.start_soon(self._answer, request)

    async def _answer(self, request) -> None:
        try:
            accepted: tuple[type[Body], ...] = (Settlement, QuerySettlement, *self._desks)
            signed = decode_signed(request.payload, allowed=accepted)
            msg = signed.msg
            if type(msg) in self._desks:
                await request.reply(await self._desks[type(msg)].answer(signed, request))
                return
            if isinstance(msg, QuerySettlement):
                record = self.journal.get(msg.settlement_id)
                if record is None:
                    raise Rejected(Code.INVALID_FIELD, "settlement_id", f"no settlement {msg.settlement_id!r}")
            else:
                record = await self.submit(request.payload)
            reply = self.status(record)
        except Rejected as error:
            reply = self._status_error(request.payload, error)
        await request.reply(reply)

    def status(self, record: Record) -> bytes:
        return sign(
            SettlementStatus(
                self.id,
                record.settlement_id,
                record.phase.value,
                self.clock.now_ms(),
                record.reason_code,
                record.reason,
                tuple(list(step) for step in record.steps),
            ),
            (self.id, self._key),
        ).encode()

    def _status_error(self, payload: bytes, error: Rejected) -> bytes:
        """A refusal in the shape of a status, phase "rejected", for the sender's id."""
        settlement_id = readable_id(payload, ("settlement_id", "id"))
        return sign(
            SettlementStatus(
                self.id,
                settlement_id,
                "rejected",
                self.clock.now_ms(),
                error.code.value,
                f"{error.field}: {error.reason}",
            ),
            (self.id, self._key),
        ).encode()

    # -- intake ----------------------------------------------------------------------------

    async def submit(self, raw: bytes) -> Record:
        """Accept a signed settlement and return its record once final. A settlement
        sent again (same id, same bytes) is not run twice: its record is returned.
        A new one past the intake bound is refused `busy` and not recorded, so that
        what is accepted is settled in bounded time and the rest is sent again later."""
        signed = decode_signed(raw, allowed=(Settlement,))
        settlement_id = signed.msg.id
        owner = self._reserved.get(settlement_id)
        if owner is not None:
            raise Rejected(Code.NOT_AUTHORISED, "id", f"settlement {settlement_id} settles only as {owner}")
        full = len(self._intake) >= self.intake_max and settlement_id not in self._running
        if full and self.journal.get(settlement_id) is None:  # new: a known one is always answered
            self.on_busy()
            raise Rejected(
                Code.BUSY, "$", f"{self.intake_max} settlements in flight, the most this coordinator takes; retry"
            )
        self._intake.add(settlement_id)
        try:
            return await self.settle(signed.wire())
        finally:
            self._intake.discard(settlement_id)

    def reserve(self, settlement_id: str, owner: str) -> None:
        """Let only a desk start this settlement (a repo's reverse leg, due at its term and
        only if the start leg settled): sent on its own, it is refused."""
        self._reserved[settlement_id] = owner

    async def settle(self, auth: dict) -> Record:
        """Drive what an `auth` allows (protocols.authority: a settlement both parties
        signed, a matched pair of instructions, a holder's entitlement) and return its
        record once final; the same `auth` again is not run twice."""
        try:
            terms = terms_of(auth, self.registry)
        except Rejected as error:  # the auth is the whole message here: name its fields
            raise Rejected(error.code, error.field.removeprefix("auth."), error.reason) from None
        instruction = encode(auth)
        known = self.journal.get(terms.id) or self._accepted.get(terms.id)
        if known is not None:
            if known.instruction != instruction:
                raise Rejected(Code.ID_REUSED, "id", f"settlement {terms.id} was submitted with other content")
            if not known.final and terms.id not in self._running:
                self._start(known)  # journaled unfinished but not driven here (a commit that landed late)
            return await self.wait(terms.id)
        self.validate(terms)
        record = Record(terms.id, instruction, Phase.PENDING, steps=((Phase.PENDING.value, self.clock.now_ms()),))
        self._accepted[terms.id] = record  # a copy arriving while this one is saved waits for it
        self._running[terms.id] = trio.Event()
        try:
            await self._save(record)
        finally:
            del self._accepted[terms.id]
        self._start(record)
        return await self.wait(terms.id)

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
        event = self._running.get(settlement_id)
        if event is not None:
            await event.wait()
        record = self.journal.get(settlement_id)
        assert record is not None
        return record

    def _start(self, record: Record) -> None:
        assert self._nursery is not None, "coordinator is not running"
        self._running.setdefault(record.settlement_id, trio.Event())
        self._nursery.start_soon(self._drive, record)

    # -- the driver --------------------------------------------------------------------------

    async def _save(self, record: Record) -> Record:
        await self.journal.save(record)
        self.on_phase(record)
        return record

    async def _drive(self, record: Record) -> None:
        auth = decode(record.instruction)
        terms = terms_of(auth, None)  # verified when accepted
        self._auth[terms.id] = auth  # what the locks or the settle carry
        try:
            while not record.final:
                record = await self._step(record, terms)
        finally:
            self._auth.pop(record.settlement_id, None)
            self._running.pop(record.settlement_id).set()
        log.info(
            "settlement %s %s%s",
            record.settlement_id,
            record.phase.value,
            f": {record.reason_code}: {record.reason}" if record.reason_code else "",
        )

    async def _step(self, record: Record, settlement: Terms) -> Record:
        now_ms = self.clock.now_ms()
        if record.phase is Phase.PENDING:
            if now_ms < settlement.not_before_ms:  # a repo's reverse leg, a trade for a later day
                await trio.sleep_until(self.clock.trio_time_at(settlement.not_before_ms))
                now_ms = self.clock.now_ms()
            return await (self._settle_same_ledger if settlement.same_ledger else self._lock)(
                record, settlement, now_ms
            )
        if record.phase is Phase.LOCKING:
            return await self._confirm_locks(record, settlement)
        if record.phase is Phase.LOCKED:
            if self.timing.may_commit(now_ms, record.expiry_ms[0], record.refund_at_ms[0]):
                return await self._decide(record.to(Phase.CLAIMING, now_ms))
            return await self._decide(
                record.to(
                    Phase.ROLLING_BACK,
                    now_ms,
                    reason_code=Code.TIMEOUT.value,
                    reason="both locks were confirmed too late to commit",
                )
            )
        if record.phase is Phase.CLAIMING:
            await self._announce(record, settlement)
            return await self._claim_in_order(record, settlement)
        if record.phase is Phase.ROLLING_BACK:
            await self._announce(record, settlement)
            return await self._roll_back(record, settlement)
        raise AssertionError(f"no step from {record.phase}")

    async def _settle_same_ledger(self, record: Record, settlement: Terms, now_ms: int) -> Record:
        if not record.sent:
            settle = unsigned(
                Settle(
                    settle_id(settlement.id),
                    settlement.legs[0].ledger,
                    now_ms,
                    tuple(leg.as_leg() for leg in settlement.legs),
                    auth=self._auth[settlement.id],
                )
            )
            record = await self._save(attrs.evolve(record, sent=(settle.encode(),)))
        ledger = settlement.legs[0].ledger
        # past the deadline (on the slowest clock) the ledger refuses this settle: silence
        # until then means the receipt, if any, is final
        outcome = await self._send(
            ledger, record.sent[0], self.clock.trio_time_at(settlement.deadline_ms + self.timing.clock_skew_ms_max)
        )
        if outcome is None:  # silent past the deadline: applied or not, the ledger alone knows
            outcome = await self._receipt(ledger, settle_id(settlement.id))
        now_ms = self.clock.now_ms()
        if isinstance(outcome, Receipt) and outcome.applied:
            return await self._save(record.to(Phase.SETTLED, now_ms))
        code, reason = _failure(outcome)
        return await self._save(record.to(Phase.FAILED, now_ms, reason_code=code, reason=reason))

    async def _lock(self, record: Record, settlement: Terms, now_ms: int) -> Record:
        """Draw both secrets and sign both decision locks; all on disk before either is sent."""
        secret, cancel_secret = secrets.token_bytes(32), secrets.token_bytes(32)
        expiry_ms = self.timing.expiry(now_ms)
        backstops = self.timing.backstops(now_ms)
        if expiry_ms > settlement.deadline_ms:
            return await self._save(
                record.to(
                    Phase.FAILED,
                    now_ms,
                    reason_code=Code.EXPIRY_OUT_OF_RANGE.value,
                    reason="too little time left before the settlement deadline",
                )
            )
        locks = tuple(
            unsigned(
                Lock(
                    lock_id(settlement.id, index),
                    leg.ledger,
                    now_ms,
                    leg.from_account,
                    leg.to_account,
                    leg.asset,
                    leg.amount,
                    hashlock_of(secret),
                    expiry_ms,
                    (),
                    auth=self._auth[settlement.id],
                    cancel_hashlock=hashlock_of(cancel_secret),
                    backstop_ms=backstops[index],
                )
            ).encode()
            for index, leg in enumerate(settlement.legs)
        )
        return await self._save(
            record.to(
                Phase.LOCKING,
                now_ms,
                secret=secret,
                cancel_secret=cancel_secret,
                expiry_ms=(expiry_ms, expiry_ms),
                backstop_ms=backstops,
                sent=locks,
            )
        )

    async def _confirm_locks(self, record: Record, settlement: Terms) -> Record:
        outcomes: list[object] = [None, None]
        deadline = self.clock.trio_time_at(record.steps[-1][1] + self.timing.lock_wait_ms)

        async def place(index: int) -> None:
            outcomes[index] = await self._send(settlement.legs[index].ledger, record.sent[index], deadline)

        async with trio.open_nursery() as nursery:
            for index in range(2):
                nursery.start_soon(place, index)
        now_ms = self.clock.now_ms()
        if all(isinstance(o, Receipt) and o.applied for o in outcomes):
            return await self._save(record.to(Phase.LOCKED, now_ms))
        refusals = [o for o in outcomes if isinstance(o, Receipt) and not o.applied]
        code, reason = _failure(refusals[0] if refusals else None)
        return await self._decide(record.to(Phase.ROLLING_BACK, now_ms, reason_code=code, reason=reason))

    async def _decide(self, record: Record) -> Record:
        """The commit point: the decision on disk before anything it allows is revealed
        (announced, then acted on, by the step of its phase)."""
        assert record.decision is not Decision.NONE, record
        return await self._save(record)

    async def _announce(self, record: Record, settlement: Terms) -> None:
        """Publish a recorded decision with the preimage it reveals, for any watchtower to
        forward; a time-lock's abort reveals nothing (it is aborted by our signature)."""
        preimage = record.secret if record.decision is Decision.COMMIT else record.cancel_secret
        if not preimage:
            return
        decision = SettlementDecision(
            self.id,
            settlement.id,
            record.decision.value,
            tuple(leg.ledger for leg in settlement.legs),
            preimage,
            record.expiry_ms[0],
            self.clock.now_ms(),
        )
        await self.bus.publish(decisions_topic(self.id), self.sign(decision))

    async def _claim_in_order(self, record: Record, settlement: Terms) -> Record:
        """Committed: claim leg 0, then leg 1, however long it takes. Leg 1 is claimed
        only once leg 0 is (the order the backstops were set in): if leg 0 ends without
        being claimed, which only its backstop can do, leg 1 is left to its own backstop."""
        assert record.decision is Decision.COMMIT, record
        if record.claimed == 0:
            state = await self._claim(settlement, 0, record)
            if state != "claimed":
                other = await self._lock_state(settlement.legs[1].ledger, lock_id(settlement.id, 1), until_ended=True)
                if other == "claimed":
                    return await self._end(record, Phase.ONE_LEGGED, f"leg 1 claimed but leg 0 is {state}")
                return await self._end(
                    record,
                    Phase.ROLLED_BACK,
                    f"committed, but leg 0 was {state} at its backstop before it could be claimed; leg 1 is {other}",
                )
            record = await self._save(attrs.evolve(record, claimed=1))
        state = await self._claim(settlement, 1, record)
        if state != "claimed":
            return await self._end(record, Phase.ONE_LEGGED, f"leg 0 claimed but leg 1 is {state}")
        return await self._save(record.to(Phase.SETTLED, self.clock.now_ms(), claimed=2))

    async def _end(self, record: Record, phase: Phase, reason: str, code: Code = Code.LOCK_EXPIRED) -> Record:
        """A final phase reached otherwise than as decided, with its reason."""
        return await self._save(record.to(phase, self.clock.now_ms(), reason_code=code.value, reason=reason))

    async def _claim(self, settlement: Terms, index: int, record: Record) -> str:
        """Claim one leg until the ledger says it is claimed, or that it never can be."""
        assert record.decision is Decision.COMMIT, "the claim secret leaves only a committed settlement"
        leg = settlement.legs[index]
        target = lock_id(settlement.id, index)
        while True:
            claim = unsigned(
                Claim(f"{target}:c{secrets.token_hex(3)}", leg.ledger, self.clock.now_ms(), target, record.secret)
            )
            outcome = await self._send(
                leg.ledger, claim.encode(), trio.current_time() + self.timing.claim_deadline_ms / 1000
            )
            if isinstance(outcome, Receipt) and outcome.applied:
                return "claimed"
            # The secret may be out: wait as long as it takes to learn the lock's real state;
            # guessing would risk paying one leg and returning the other.
            state = await self._lock_state(leg.ledger, target)
            if state != "held":
                return state
            await trio.sleep(RETRY_S)

    async def _roll_back(self, record: Record, settlement: Terms) -> Record:
        """Aborted: end every lock that may have been placed, all at once, however long
        it takes (a decision lock is refunded by itself only at its backstop)."""
        assert record.decision is Decision.ABORT, record
        states: list[str] = [""] * len(record.sent)

        async def release(index: int) -> None:
            states[index] = await self._release(record, settlement, index)

        async with trio.open_nursery() as nursery:
            for index in range(len(record.sent)):
                nursery.start_soon(release, index)
        if "claimed" in states:  # only a second decision could have revealed the claim secret
            leg = states.index("claimed")
            return await self._end(record, Phase.ONE_LEGGED, f"aborted, yet leg {leg} was claimed", Code.LOCK_NOT_HELD)
        ran_out_of_time = record.reason_code in (Code.TIMEOUT.value, Code.LOCK_EXPIRED.value)
        phase = Phase.ROLLED_BACK if ran_out_of_time else Phase.FAILED
        return await self._save(record.to(phase, self.clock.now_ms()))

    async def _release(self, record: Record, settlement: Terms, index: int) -> str:
        """Cancel one leg's lock (a time-lock: abort it) until its ledger says it has ended,
        or that it was never placed and, past its expiry, never will be."""
        leg = settlement.legs[index]
        target = lock_id(settlement.id, index)
        while True:
            release: Cancel | Abort = (
                Cancel(
                    f"{target}:x{secrets.token_hex(3)}", leg.ledger, self.clock.now_ms(), target, record.cancel_secret
                )
                if record.cancel_secret
                else Abort(f"{target}:a{secrets.token_hex(3)}", leg.ledger, self.clock.now_ms(), target)
            )
            outcome = await self._send(
                leg.ledger,
                unsigned(release).encode(),
                trio.current_time() + self.timing.claim_deadline_ms / 1000,
            )
            if isinstance(outcome, Receipt) and outcome.applied:
                return "cancelled" if isinstance(release, Cancel) else "aborted"
            state = await self._lock_state(leg.ledger, target)
            if state == "absent":
                if await self._receipt(leg.ledger, target) is not None:
                    return state  # its refusal is recorded: the same lock is never placed
                placed_by_ms = record.expiry_ms[index] + self.timing.clock_skew_ms_max
                if self.clock.now_ms() >= placed_by_ms:  # no ledger places it any more
                    return state
                await trio.sleep_until(self.clock.trio_time_at(placed_by_ms))
            elif state != "held":
                return state
            await trio.sleep(RETRY_S)

    # -- talking to ledgers --------------------------------------------------------------------

    async def _send(self, ledger_id: str, raw: bytes, deadline: float) -> Receipt | None:
        """Send the same instruction until answered or the trio deadline passes (None),
        in whichever batches to its ledger it joins: signed by the batch."""
        instruction = decode_signed(raw, allowed=INSTRUCTIONS)
        batcher = self._batcher(ledger_id)
        with trio.move_on_at(deadline):
            while True:
                try:
                    return await batcher.submit(instruction)
                except (BusTimeout, BadReply) as error:
                    log.debug("%s: %s; retrying", ledger_id, error)
                    await trio.sleep(RETRY_S)
        return None

    def _batcher(self, ledger_id: str) -> Batcher:
        batcher = self._batchers.get(ledger_id)
        if batcher is None:
            assert self._nursery is not None, "coordinator is not running"
            batcher = self._batchers[ledger_id] = Batcher(self.client(ledger_id), self.id, self._key)
            self._nursery.start_soon(batcher.run)
        return batcher

    async def _lock_state(self, ledger_id: str, target: str, *, until_ended: bool = False) -> str:
        """A lock's state as its ledger reports it ("absent" if it was never placed),
        asked until the ledger answers; with `until_ended`, until it is no longer held."""
        client = self.client(ledger_id)
        while True:
            try:
                view = await client.query(QueryLock(client.next_query_id(), ledger_id, target))
                if not (until_ended and view["state"] == "held"):
                    return view["state"]
                refund_at = self.clock.trio_time_at(view["backstop_ms"] or view["expiry_ms"])
                await trio.sleep_until(max(refund_at, trio.current_time() + RETRY_S))
            except Rejected as error:
                if error.code is Code.UNKNOWN_LOCK:
                    return "absent"
                raise
            except (BusTimeout, BadReply):
                await trio.sleep(RETRY_S)

    async def _receipt(self, ledger_id: str, instruction_id: str) -> Receipt | None:
        """The ledger's receipt for an instruction, asked until it answers; None if it
        never applied it."""
        client = self.client(ledger_id)
        while True:
            try:
                return await client.query(QueryReceipt(client.next_query_id(), ledger_id, instruction_id))
            except Rejected as error:
                if error.code is Code.UNKNOWN_INSTRUCTION:
                    return None
                raise
            except (BusTimeout, BadReply):
                await trio.sleep(RETRY_S)


def _failure(outcome: Receipt | None) -> tuple[str, str]:
    if outcome is None:
        return Code.TIMEOUT.value, "a ledger did not confirm in time"
    return outcome.code or "", f"{outcome.ledger}: {outcome.field}: {outcome.reason}"
