"""The coordinator's core: every settlement it drives, as a pure function of events.

    step(state, events, now_ms) -> (state, actions)

No I/O, no clock, no randomness: the shell (shell.py) draws the secrets, reads the
clock, and turns actions into messages, journal commits and timers; the events it
feeds back are what came of them. The same core runs in tests as plain function calls,
so the hard cases (a claim's reply lost, a restart between the two claims, a lock
expiring as its claim is sent) need no bus and no clock.

Each settlement moves by the table below, (phase, event) -> handler; a handler decides
the next phase (protocols.settlement checks each transition) and the actions. Every
record a step changes comes out as a `Save`, and the shell makes every `Save` of a step
durable in one commit before it performs any other action of that step: so a decision
is on disk before the preimage it reveals is announced or sent, and a lock is journaled
with its secrets before it leaves.

Requests are tracked here, not in the shell: each is an `Out` with a tag (what it asks,
of which leg), sent once per `Send`/`Ask`. An attempt that goes unanswered comes back as
`NO_ANSWER` and is sent again RETRY_MS later, the same bytes, until its deadline; past
the deadline an instruction counts as unanswered (`None`). Queries have no deadline:
the core asks until the ledger answers, because guessing a lock's state could pay one
leg and return the other."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from protocols.authority import Terms, terms_of
from protocols.canonical import decode
from protocols.errors import Code
from protocols.htlc import hashlock_of
from protocols.messages import (
    INSTRUCTIONS,
    Abort,
    Cancel,
    Claim,
    Lock,
    Query,
    QueryLock,
    QueryReceipt,
    Receipt,
    Settle,
    SettlementDecision,
)
from protocols.settlement import Decision, Phase, Timing, lock_id, settle_id
from protocols.signing import Signed, decode_signed, unsigned

from .journal import Record

RETRY_MS = 50  # an unanswered attempt is sent again this much later
ATTEMPTS_MAX = 16**5  # claims or releases of one settlement in one run: ids stay within 64 characters
ABSENT = "absent"  # a lock's state when its ledger never placed it


class _NoAnswer:
    """One attempt of a request went unanswered (lost, late, or a reply that did not verify)."""

    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER = _NoAnswer()


# -- events -------------------------------------------------------------------------------


@attrs.frozen
class Start:
    """Drive a settlement: `new` (its record PENDING, to be journaled now) or resumed
    from the journal at its phase. `secret` and `cancel_secret` are fresh draws, used
    only if the settlement has none yet. `terms`, when given, are the record's
    instruction as read when it was accepted, so that it is not read twice."""

    record: Record
    secret: bytes = attrs.field(repr=False)
    cancel_secret: bytes = attrs.field(repr=False)
    new: bool = False
    terms: tuple[Terms, dict] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def settlement_id(self) -> str:
        return self.record.settlement_id


@attrs.frozen
class Answer:
    """What came of a request: a Receipt, or None when a ledger never applied the
    instruction (QueryReceipt); a lock's view (dict) or ABSENT (QueryLock); NO_ANSWER."""

    settlement_id: str
    tag: tuple[str, int]
    value: Any


@attrs.frozen
class Due:
    """A settlement's time to act has come (see `Wake`)."""

    settlement_id: str


Event = Start | Answer | Due


# -- actions ------------------------------------------------------------------------------


@attrs.frozen
class Save:
    """Journal the transition from `previous` (None: a new settlement) to `record`;
    durable before any other action of the step, unless it does not `gate` them: a
    note of what a restart would learn again from the ledgers, committed while the
    step's instructions are on their way, with the next change that must be durable
    (Journal.run)."""

    record: Record
    previous: Record | None
    gates: bool = True


@attrs.frozen
class Send:
    """Send an instruction to its ledger (signed by the batch it joins); answered by an
    `Answer` with the same tag."""

    settlement_id: str
    tag: tuple[str, int]
    ledger: str
    instruction: Signed


@attrs.frozen
class Ask:
    """Ask a ledger a query; answered by an `Answer` with the same tag."""

    settlement_id: str
    tag: tuple[str, int]
    ledger: str
    query: Query


@attrs.frozen
class Announce:
    """Publish a recorded decision for watchtowers, signed by the coordinator."""

    decision: SettlementDecision


@attrs.frozen
class Wake:
    """Feed `Due(settlement_id)` at `at_ms` (or at once if that has passed)."""

    settlement_id: str
    at_ms: int


@attrs.frozen
class Done:
    """The settlement is final and journaled: answer whoever waits for it."""

    record: Record


Action = Save | Send | Ask | Announce | Wake | Done


# -- state --------------------------------------------------------------------------------


@attrs.frozen
class Out:
    """A request being made: `message` to `ledger`, asked for by `tag`. Sent and awaited
    while `send_at_ms` is None; otherwise (sent again) at that time. An instruction
    unanswered by `deadline_ms` counts as unanswered for good; None: no deadline."""

    tag: tuple[str, int]
    ledger: str
    message: Signed
    deadline_ms: int | None
    send_at_ms: int | None = None


_KEEP: Any = object()  # Driving.but: the field as it is


@attrs.frozen
class Driving:
    """One settlement being driven: its journaled record, and what is not journaled
    because a restart may forget it (requests out, answers gathered)."""

    record: Record
    terms: Terms
    auth: dict = attrs.field(eq=False, repr=False)  # what its locks or its settle carry
    sent: tuple[Signed, ...] = ()  # record.sent, decoded
    out: tuple[Out, ...] = ()
    outcomes: tuple[Any, ...] = ()  # LOCKING: each lock's receipt, or None if unanswered in time
    ended: tuple[str, ...] = ()  # CLAIMING, ROLLING_BACK: how each leg's lock ended, "" if not known
    attempts: int = 0  # claims, releases and queries made, for their ids
    begin_at_ms: int | None = None  # PENDING: not to begin before its not_before_ms
    secrets: tuple[bytes, ...] = attrs.field(default=(), repr=False)  # PENDING: the draws to lock under

    @property
    def settlement_id(self) -> str:
        return self.record.settlement_id

    def but(
        self,
        *,
        record: Record = _KEEP,
        sent: tuple[Signed, ...] = _KEEP,
        out: tuple[Out, ...] = _KEEP,
        outcomes: tuple[Any, ...] = _KEEP,
        ended: tuple[str, ...] = _KEEP,
        attempts: int = _KEEP,
        begin_at_ms: int | None = _KEEP,
        secrets: tuple[bytes, ...] = _KEEP,
    ) -> Driving:
        """This settlement with some fields changed: attrs.evolve at half its cost, which
        the core pays some thirty times a settlement (its terms never change)."""
        return Driving(
            self.record if record is _KEEP else record,
            self.terms,
            self.auth,
            self.sent if sent is _KEEP else sent,
            self.out if out is _KEEP else out,
            self.outcomes if outcomes is _KEEP else outcomes,
            self.ended if ended is _KEEP else ended,
            self.attempts if attempts is _KEEP else attempts,
            self.begin_at_ms if begin_at_ms is _KEEP else begin_at_ms,
            self.secrets if secrets is _KEEP else secrets,
        )

    def wake_ms(self) -> int | None:
        """The next time something is due: a request to send again, or a deadline."""
        times = [o.send_at_ms if o.send_at_ms is not None else o.deadline_ms for o in self.out]
        times.append(self.begin_at_ms)
        return min((t for t in times if t is not None), default=None)


@attrs.frozen
class State:
    """The settlements being driven. `nonce` is the shell's for this run, drawn at
    start, so the ids this run gives claims, releases and queries are its own; `epoch`
    is the journal's for this run, carried by its claims and releases so that ledgers
    refuse those of an instance since replaced (protocols.messages.Fence)."""

    coordinator_id: str
    timing: Timing
    nonce: str
    epoch: int = 0
    settlements: Mapping[str, Driving] = attrs.field(factory=dict)


# -- the step -----------------------------------------------------------------------------


def step(state: State, events: Iterable[Event], now_ms: int) -> tuple[State, list[Action]]:
    """Apply a batch of events; the new state and what the shell must do, in order."""
    settlements = dict(state.settlements)
    actions: list[Action] = []
    touched: dict[str, int | None] = {}  # settlement -> the wake-up the shell has for it
    for event in events:
        driving = settlements.get(event.settlement_id)
        if isinstance(event, Start):
            if driving is not None:
                continue  # driven already
            driving = _started(event, state)
        elif driving is None:
            continue  # an answer or a wake-up for a settlement already final
        if isinstance(event, Answer):  # the wake-up set before still stands: not set twice
            touched.setdefault(event.settlement_id, driving.wake_ms())
        else:
            touched[event.settlement_id] = None
        driving, more = _advance(state, driving, event, now_ms)
        actions += more
        if driving.record.final:
            settlements.pop(driving.settlement_id, None)
            touched.pop(driving.settlement_id)
            actions.append(Done(driving.record))
        else:
            settlements[driving.settlement_id] = driving
    for settlement_id, known in touched.items():
        wake_ms = settlements[settlement_id].wake_ms()
        if wake_ms is not None and wake_ms != known:
            actions.append(Wake(settlement_id, wake_ms))
    return attrs.evolve(state, settlements=settlements), actions


Handler = Callable[[State, Driving, Any, int], tuple[Driving, list[Action]]]


def _advance(state: State, driving: Driving, event: Event, now_ms: int) -> tuple[Driving, list[Action]]:
    """One event for one settlement: requests settled first, then the table."""
    if isinstance(event, Due):
        if driving.begin_at_ms is not None:
            if now_ms < driving.begin_at_ms:
                return driving, []
            return _begin_now(state, driving.but(begin_at_ms=None), now_ms)
        return _due(state, driving, now_ms)
    if isinstance(event, Answer):
        found = _find(driving, event.tag)
        if found is None or found.send_at_ms is not None:
            return driving, []  # not awaited (given up, or superseded): a late answer changes nothing
        if event.value is NO_ANSWER:
            return _unanswered(driving, found, now_ms), []
        driving = _without(driving, event.tag)
    handler = TABLE.get((driving.record.phase, type(event)))
    assert handler is not None, f"no transition from {driving.record.phase} on {type(event).__name__}"
    return handler(state, driving, event, now_ms)


def _started(event: Start, state: State) -> Driving:
    record = event.record
    if event.terms is not None:
        terms, auth = event.terms
    else:
        auth = decode(record.instruction)
        terms = terms_of(auth, None)  # verified when accepted
    sent = tuple(decode_signed(raw, allowed=INSTRUCTIONS) for raw in record.sent)
    secrets = (event.secret, event.cancel_secret) if record.phase is Phase.PENDING else ()
    return Driving(record, terms, auth, sent, secrets=secrets)


def _due(state: State, driving: Driving, now_ms: int) -> tuple[Driving, list[Action]]:
    """Send what is due again; give up on instructions past their deadline."""
    actions: list[Action] = []
    for out in driving.out:
        if _find(driving, out.tag) is not out or driving.record.final:
            continue  # superseded by what an earlier one led to
        expired = out.deadline_ms is not None and out.deadline_ms <= now_ms
        if expired and (out.send_at_ms is None or out.send_at_ms <= now_ms):
            driving, more = _gave_up(state, driving, out, now_ms)
            actions += more
        elif out.send_at_ms is not None and out.send_at_ms <= now_ms:
            driving = _replace(driving, attrs.evolve(out, send_at_ms=None))
            actions.append(_request(driving.settlement_id, out))
    return driving, actions


def _gave_up(state: State, driving: Driving, out: Out, now_ms: int) -> tuple[Driving, list[Action]]:
    """An instruction unanswered by its deadline: its answer is None, for good."""
    driving = _without(driving, out.tag)
    handler = TABLE[(driving.record.phase, Answer)]
    return handler(state, driving, Answer(driving.settlement_id, out.tag, None), now_ms)


def _unanswered(driving: Driving, out: Out, now_ms: int) -> Driving:
    """Send the same request again shortly (the deadline, if any, still holds)."""
    return _replace(driving, attrs.evolve(out, send_at_ms=now_ms + RETRY_MS))


def _find(driving: Driving, tag: tuple[str, int]) -> Out | None:
    return next((o for o in driving.out if o.tag == tag), None)


def _without(driving: Driving, tag: tuple[str, int]) -> Driving:
    return driving.but(out=tuple(o for o in driving.out if o.tag != tag))


def _replace(driving: Driving, out: Out) -> Driving:
    return driving.but(out=tuple(out if o.tag == out.tag else o for o in driving.out))


def _request(settlement_id: str, out: Out) -> Send | Ask:
    if isinstance(out.message.msg, Query):
        return Ask(settlement_id, out.tag, out.ledger, out.message.msg)
    return Send(settlement_id, out.tag, out.ledger, out.message)


def _make(
    driving: Driving,
    tag: tuple[str, int],
    ledger: str,
    message: Signed,
    deadline_ms: int | None,
    now_ms: int,
    at_ms: int | None = None,
) -> tuple[Driving, list[Action]]:
    """A new request: sent now, or at `at_ms` (then due by a wake-up); one whose deadline
    has passed already is given up on at the next wake-up, unsent."""
    send_at_ms: int | None
    if deadline_ms is not None and deadline_ms <= now_ms:
        send_at_ms = now_ms
    else:
        send_at_ms = at_ms if at_ms is not None and at_ms > now_ms else None
    out = Out(tag, ledger, message, deadline_ms, send_at_ms)
    driving = driving.but(out=(*(o for o in driving.out if o.tag != tag), out))
    return driving, [] if send_at_ms is not None else [_request(driving.settlement_id, out)]


def _next_id(state: State, driving: Driving, target: str, kind: str) -> tuple[Driving, str]:
    """A fresh id for a claim, release or query of `target`: `{target}:{kind}{nonce}{n}`."""
    assert driving.attempts < ATTEMPTS_MAX, f"{driving.settlement_id}: {driving.attempts} attempts"
    return driving.but(attempts=driving.attempts + 1), f"{target}:{kind}{state.nonce}{driving.attempts:x}"


def _save(driving: Driving, record: Record) -> tuple[Driving, list[Action]]:
    return driving.but(record=record), [Save(record, driving.record)]


# -- same ledger: one settle --------------------------------------------------------------


def _begin(state: State, driving: Driving, event: Start, now_ms: int) -> tuple[Driving, list[Action]]:
    """PENDING: a new settlement, or one resumed before its first instruction was sent;
    one not to move before a later time (a repo's reverse leg, a trade for a later day)
    waits for it."""
    actions: list[Action] = [Save(driving.record, None)] if event.new else []
    if now_ms < driving.terms.not_before_ms:
        return driving.but(begin_at_ms=driving.terms.not_before_ms), actions
    driving, more = _begin_now(state, driving, now_ms)
    return driving, actions + more


def _begin_now(state: State, driving: Driving, now_ms: int) -> tuple[Driving, list[Action]]:
    terms = driving.terms
    if not terms.legs:  # a linked settlement whose legs all net out: settled, nothing to move
        reason = "its legs net to nothing: no ledger moves anything"
        return _final(driving, driving.record.to(Phase.SETTLED, now_ms, reason=reason))
    if not terms.same_ledger:
        return _lock(state, driving, now_ms)
    actions: list[Action] = []
    if not driving.sent:
        legs = tuple(leg.as_leg() for leg in terms.legs)
        settle = unsigned(Settle(settle_id(terms.id), terms.legs[0].ledger, now_ms, legs, auth=driving.auth))
        driving = driving.but(sent=(settle,))
        driving, actions = _save(driving, attrs.evolve(driving.record, sent=(settle.encode(),)))
    # past the deadline (on the slowest clock) the ledger refuses this settle: silence
    # until then means the receipt, if any, is final
    deadline_ms = terms.deadline_ms + state.timing.clock_skew_ms_max
    driving, more = _make(driving, ("settle", 0), terms.legs[0].ledger, driving.sent[0], deadline_ms, now_ms)
    return driving, actions + more


def _settled_alone(state: State, driving: Driving, event: Answer, now_ms: int) -> tuple[Driving, list[Action]]:
    """PENDING (same ledger): the settle's receipt, or silence past its deadline, when
    only its ledger knows whether it applied: then ask for the receipt."""
    terms = driving.terms
    if event.tag == ("settle", 0) and event.value is None:
        driving, query_id = _next_id(state, driving, settle_id(terms.id), "q")
        query = unsigned(QueryReceipt(query_id, terms.legs[0].ledger, settle_id(terms.id)))
        return _make(driving, ("receipt", 0), terms.legs[0].ledger, query, None, now_ms)
    outcome = event.value
    if isinstance(outcome, Receipt) and outcome.applied:
        return _final(driving, driving.record.to(Phase.SETTLED, now_ms))
    code, reason = _failure(outcome)
    return _final(driving, driving.record.to(Phase.FAILED, now_ms, reason_code=code, reason=reason))


def _final(driving: Driving, record: Record) -> tuple[Driving, list[Action]]:
    return driving.but(record=record, out=()), [Save(record, driving.record)]


# -- cross ledger: lock both legs, decide, then claim or release ---------------------------


def _lock(state: State, driving: Driving, now_ms: int) -> tuple[Driving, list[Action]]:
    """PENDING: every leg's decision lock under the two secrets' hashes, journaled with
    the secrets before any is sent."""
    record, terms, timing = driving.record, driving.terms, state.timing
    expiry_ms = timing.expiry(now_ms)
    if expiry_ms > terms.deadline_ms:
        reason = "too little time left before the settlement deadline"
        return _final(
            driving, record.to(Phase.FAILED, now_ms, reason_code=Code.EXPIRY_OUT_OF_RANGE.value, reason=reason)
        )
    backstops = terms.backstops or timing.backstops(now_ms, len(terms.legs))  # a path's are signed
    locks = tuple(
        unsigned(
            Lock(
                lock_id(terms.id, index),
                leg.ledger,
                now_ms,
                leg.from_account,
                leg.to_account,
                leg.asset,
                leg.amount,
                hashlock_of(driving.secrets[0]),
                expiry_ms,
                (),
                auth=driving.auth,
                cancel_hashlock=hashlock_of(driving.secrets[1]),
                backstop_ms=backstops[index],
            )
        )
        for index, leg in enumerate(terms.legs)
    )
    record = record.to(
        Phase.LOCKING,
        now_ms,
        secret=driving.secrets[0],
        cancel_secret=driving.secrets[1],
        expiry_ms=(expiry_ms,) * len(locks),
        backstop_ms=backstops,
        sent=tuple(lock.encode() for lock in locks),
    )
    driving, actions = _save(driving.but(sent=locks, secrets=()), record)
    driving, more = _send_locks(state, driving, None, now_ms)
    return driving, actions + more


def _send_locks(state: State, driving: Driving, event: Event | None, now_ms: int) -> tuple[Driving, list[Action]]:
    """LOCKING: every lock out at once, the same bytes as journaled, answered within the
    lock wait or counted unanswered."""
    deadline_ms = driving.record.steps[-1][1] + state.timing.lock_wait_ms
    driving = driving.but(outcomes=(None,) * len(driving.sent))
    actions: list[Action] = []
    for index, lock in enumerate(driving.sent):
        driving, more = _make(driving, ("lock", index), driving.terms.legs[index].ledger, lock, deadline_ms, now_ms)
        actions += more
    return driving, actions


def _lock_answered(state: State, driving: Driving, event: Answer, now_ms: int) -> tuple[Driving, list[Action]]:
    """LOCKING: one lock's receipt (or None); once all are in, decide."""
    kind, index = event.tag
    assert kind == "lock", event
    outcomes = list(driving.outcomes)
    outcomes[index] = event.value
    driving = driving.but(outcomes=tuple(outcomes))
    if driving.out:
        return driving, []
    record = driving.record
    if all(isinstance(o, Receipt) and o.applied for o in outcomes):
        driving, actions = _save(driving, record.to(Phase.LOCKED, now_ms))
        driving, more = _decide(state, driving, event, now_ms)
        return driving, actions + more
    refusals = [o for o in outcomes if isinstance(o, Receipt) and not o.applied]
    code, reason = _failure(refusals[0] if refusals else None)
    return _abort(state, driving, record.to(Phase.ROLLING_BACK, now_ms, reason_code=code, reason=reason), now_ms)


def _decide(state: State, driving: Driving, event: Event, now_ms: int) -> tuple[Driving, list[Action]]:
    """LOCKED: commit if there is still time to, otherwise abort. The commit point."""
    record = driving.record
    if state.timing.may_commit(now_ms, record.expiry_ms[0], record.refund_at_ms[0]):
        driving, actions = _save(driving, record.to(Phase.CLAIMING, now_ms))
        driving, more = _claiming(state, driving, event, now_ms)
        return driving, actions + more
    reason = "the locks were confirmed too late to commit"
    return _abort(
        state, driving, record.to(Phase.ROLLING_BACK, now_ms, reason_code=Code.TIMEOUT.value, reason=reason), now_ms
    )


def _abort(state: State, driving: Driving, record: Record, now_ms: int) -> tuple[Driving, list[Action]]:
    driving, actions = _save(driving, record)
    driving, more = _rolling_back(state, driving, None, now_ms)
    return driving, actions + more


def _announce(state: State, driving: Driving, now_ms: int) -> list[Action]:
    """The recorded decision with the preimage it reveals, for any watchtower to forward;
    a time-lock's abort reveals nothing (it is aborted by our signature)."""
    record = driving.record
    preimage = record.secret if record.decision is Decision.COMMIT else record.cancel_secret
    if not preimage:
        return []
    ledgers = tuple(leg.ledger for leg in driving.terms.legs)
    decision = SettlementDecision(
        state.coordinator_id,
        record.settlement_id,
        record.decision.value,
        ledgers,
        preimage,
        record.expiry_ms[0],
        now_ms,
    )
    return [Announce(decision)]


# claiming: leg 0, then every other leg, however long it takes


def _claiming(state: State, driving: Driving, event: Event, now_ms: int) -> tuple[Driving, list[Action]]:
    """CLAIMING, entered or resumed: announce, then claim leg 0 or, once it is known
    claimed, every other leg. The others are claimed only once leg 0 is (the order the
    backstops were set in): if leg 0 ends without being claimed, which only its backstop
    can do, the others are left to their own."""
    assert driving.record.decision is Decision.COMMIT, driving.record
    driving = driving.but(ended=("",) * len(driving.terms.legs))
    if driving.record.claimed:
        driving, actions = _claim_others(state, driving, now_ms)
    else:
        driving, actions = _claim(state, driving, 0, now_ms)
    return driving, _announce(state, driving, now_ms) + actions


def _claim_others(state: State, driving: Driving, now_ms: int) -> tuple[Driving, list[Action]]:
    actions: list[Action] = []
    for index in range(1, len(driving.terms.legs)):
        driving, more = _claim(state, driving, index, now_ms)
        actions += more
    return driving, actions


def _claim(state: State, driving: Driving, index: int, now_ms: int, at_ms: int | None = None):
    record, leg = driving.record, driving.terms.legs[index]
    target = lock_id(record.settlement_id, index)
    driving, claim_id = _next_id(state, driving, target, "c")
    time_ms = at_ms or now_ms  # a later at_ms: sent then
    claim = unsigned(Claim(claim_id, leg.ledger, time_ms, target, record.secret, state.epoch))
    deadline_ms = time_ms + state.timing.claim_deadline_ms
    return _make(driving, ("claim", index), leg.ledger, claim, deadline_ms, now_ms, at_ms)


def _ask_lock(state: State, driving: Driving, kind: str, index: int, now_ms: int, at_ms: int | None = None):
    leg = driving.terms.legs[index]
    target = lock_id(driving.settlement_id, index)
    driving, query_id = _next_id(state, driving, target, "q")
    return _make(
        driving, (kind, index), leg.ledger, unsigned(QueryLock(query_id, leg.ledger, target)), None, now_ms, at_ms
    )


def _claim_answered(state: State, driving: Driving, event: Answer, now_ms: int) -> tuple[Driving, list[Action]]:
    """CLAIMING: a claim's receipt, a lock's state, or another leg's end."""
    kind, index = event.tag
    if kind == "claim":
        if isinstance(event.value, Receipt) and event.value.applied:
            return _leg_claimed(state, driving, index, now_ms)
        # the secret may be out: learn the lock's real state, for as long as it takes;
        # guessing would risk paying one leg and returning another
        return _ask_lock(state, driving, "state", index, now_ms)
    found = _lock_state(event.value)
    if kind == "state":
        if found == "claimed":
            return _leg_claimed(state, driving, index, now_ms)
        if found == "held":
            return _claim(state, driving, index, now_ms, at_ms=now_ms + RETRY_MS)
        if index:
            return _end(driving, Phase.ONE_LEGGED, f"leg 0 claimed but leg {index} is {found}", now_ms)
        driving = driving.but(ended=(found, *driving.ended[1:]))
        actions: list[Action] = []
        for other in range(1, len(driving.terms.legs)):
            driving, more = _ask_lock(state, driving, "other", other, now_ms)
            actions += more
        return driving, actions
    assert kind == "other", event  # leg 0 ended unclaimed: wait for every other leg to end too
    if found == "held":
        refund_at_ms = event.value["backstop_ms"] or event.value["expiry_ms"]
        return _ask_lock(state, driving, "other", index, now_ms, at_ms=max(refund_at_ms, now_ms + RETRY_MS))
    if found == "claimed":
        return _end(driving, Phase.ONE_LEGGED, f"leg {index} claimed but leg 0 is {driving.ended[0]}", now_ms)
    driving = _ended(driving, index, found)
    if "" in driving.ended:
        return driving, []
    others = ", ".join(f"leg {other} is {how}" for other, how in enumerate(driving.ended) if other)
    reason = f"committed, but leg 0 was {driving.ended[0]} at its backstop before it could be claimed; {others}"
    return _end(driving, Phase.ROLLED_BACK, reason, now_ms)


def _leg_claimed(state: State, driving: Driving, index: int, now_ms: int) -> tuple[Driving, list[Action]]:
    """Leg 0 claimed, every other leg is claimed at once: that leg 0 is claimed is
    noted, not waited for, since a restart that missed the note claims leg 0 again and
    reads it claimed, and only then claims the others."""
    if index == 0:
        previous, record = driving.record, attrs.evolve(driving.record, claimed=1)
        driving, more = _claim_others(state, driving.but(record=record), now_ms)
        return driving, [Save(record, previous, gates=False), *more]
    driving = _ended(driving, index, "claimed")
    if any(how != "claimed" for how in driving.ended[1:]):
        return driving, []
    return _final(driving, driving.record.to(Phase.SETTLED, now_ms, claimed=len(driving.terms.legs)))


def _ended(driving: Driving, index: int, how: str) -> Driving:
    ended = list(driving.ended)
    ended[index] = how
    return driving.but(ended=tuple(ended))


def _end(driving: Driving, phase: Phase, reason: str, now_ms: int, code: Code = Code.LOCK_EXPIRED):
    """A final phase reached otherwise than as decided, with its reason."""
    return _final(driving, driving.record.to(phase, now_ms, reason_code=code.value, reason=reason))


# rolling back: every lock that may have been placed, all at once


def _rolling_back(state: State, driving: Driving, event: Event | None, now_ms: int) -> tuple[Driving, list[Action]]:
    """ROLLING_BACK, entered or resumed: announce, then end every lock that may have
    been placed, however long it takes (a decision lock is refunded by itself only at
    its backstop)."""
    assert driving.record.decision is Decision.ABORT, driving.record
    legs = len(driving.record.sent)
    driving = driving.but(ended=("",) * legs, out=())
    actions = _announce(state, driving, now_ms)
    for index in range(legs):
        driving, more = _release(state, driving, index, now_ms)
        actions += more
    return driving, actions


def _release(state: State, driving: Driving, index: int, now_ms: int, at_ms: int | None = None):
    """Cancel a leg's lock (a time-lock: abort it)."""
    record, leg = driving.record, driving.terms.legs[index]
    target = lock_id(record.settlement_id, index)
    time_ms = at_ms or now_ms  # a later at_ms: sent then
    if record.cancel_secret:
        driving, release_id = _next_id(state, driving, target, "x")
        release: Cancel | Abort = Cancel(release_id, leg.ledger, time_ms, target, record.cancel_secret, state.epoch)
    else:
        driving, release_id = _next_id(state, driving, target, "a")
        release = Abort(release_id, leg.ledger, time_ms, target, state.epoch)
    deadline_ms = time_ms + state.timing.claim_deadline_ms
    return _make(driving, ("release", index), leg.ledger, unsigned(release), deadline_ms, now_ms, at_ms)


def _release_answered(state: State, driving: Driving, event: Answer, now_ms: int) -> tuple[Driving, list[Action]]:
    """ROLLING_BACK: a release's receipt, a lock's state, or whether a lock was ever placed."""
    kind, index = event.tag
    record = driving.record
    if kind == "release":
        if isinstance(event.value, Receipt) and event.value.applied:
            return _leg_ended(driving, index, "cancelled" if record.cancel_secret else "aborted", now_ms)
        return _ask_lock(state, driving, "state", index, now_ms)
    if kind == "state":
        found = _lock_state(event.value)
        if found == "held":
            return _release(state, driving, index, now_ms, at_ms=now_ms + RETRY_MS)
        if found != ABSENT:
            return _leg_ended(driving, index, found, now_ms)
        target = lock_id(record.settlement_id, index)
        driving, query_id = _next_id(state, driving, target, "q")
        ledger = driving.terms.legs[index].ledger
        return _make(driving, ("placed", index), ledger, unsigned(QueryReceipt(query_id, ledger, target)), None, now_ms)
    assert kind == "placed", event  # absent: refused (its receipt says so), or never to be placed
    placed_by_ms = record.expiry_ms[index] + state.timing.clock_skew_ms_max
    if event.value is not None or now_ms >= placed_by_ms:
        return _leg_ended(driving, index, ABSENT, now_ms)
    return _release(state, driving, index, now_ms, at_ms=placed_by_ms + RETRY_MS)


def _leg_ended(driving: Driving, index: int, how: str, now_ms: int) -> tuple[Driving, list[Action]]:
    driving = _ended(driving, index, how)
    ended = driving.ended
    if "" in ended:
        return driving, []
    if "claimed" in ended:  # only a second decision could have revealed the claim secret
        reason = f"aborted, yet leg {ended.index('claimed')} was claimed"
        return _end(driving, Phase.ONE_LEGGED, reason, now_ms, Code.LOCK_NOT_HELD)
    ran_out_of_time = driving.record.reason_code in (Code.TIMEOUT.value, Code.LOCK_EXPIRED.value)
    return _final(driving, driving.record.to(Phase.ROLLED_BACK if ran_out_of_time else Phase.FAILED, now_ms))


def _lock_state(value: Any) -> str:
    return ABSENT if value == ABSENT else value["state"]


def _failure(outcome: Receipt | None) -> tuple[str, str]:
    if outcome is None:
        return Code.TIMEOUT.value, "a ledger did not confirm in time"
    return outcome.code or "", f"{outcome.ledger}: {outcome.field}: {outcome.reason}"


TABLE: dict[tuple[Phase, type], Handler] = {
    # started, or resumed at the journaled phase
    (Phase.PENDING, Start): _begin,
    (Phase.LOCKING, Start): _send_locks,
    (Phase.LOCKED, Start): _decide,
    (Phase.CLAIMING, Start): _claiming,
    (Phase.ROLLING_BACK, Start): _rolling_back,
    # answers, or an instruction unanswered by its deadline (None)
    (Phase.PENDING, Answer): _settled_alone,
    (Phase.LOCKING, Answer): _lock_answered,
    (Phase.CLAIMING, Answer): _claim_answered,
    (Phase.ROLLING_BACK, Answer): _release_answered,
}
