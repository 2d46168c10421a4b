"""The coordinator's core driving linked settlements, as plain function calls: N legs
on N ledgers, locked at once under one secret, committed, claimed leg 0 first and then
every other leg at once; refused, rolled back, restarted between the claims, a claim
lost, a leg refunded at its backstop; and a settlement whose legs net to nothing.

The terms are built by hand (`Start.terms` lets the core skip reading the auth), so no
signature is needed: what is tested is the core, not `protocols.authority`. A
Hypothesis test then delivers every answer in any order, some claims silent first, and
checks that the settlement always settles with each leg claimed once, leg 0 first."""

from __future__ import annotations

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from engine.coordinator import core
from engine.coordinator.core import ABSENT, NO_ANSWER, RETRY_MS, Announce, Answer, Ask, Done, Due, Save, Send, Start
from engine.coordinator.journal import Record
from protocols.authority import Terms
from protocols.canonical import encode
from protocols.errors import Code
from protocols.htlc import hashlock_of
from protocols.messages import Cancel, Claim, Lock, QueryLock, QueryReceipt, SettlementLeg
from protocols.settlement import Decision, Phase, Timing, lock_id
from tests.test_coordinator_core import CANCEL, SECRET, T0, TIMING, answer, of, phases, receipt

LINKED_ID = "l-" + "5e" * 20  # as protocols.authority.linked_id makes them
AUTH = {"type": "linked", "coordinator": "coordinator", "pairs": []}  # carried by the locks, never read here
ISIN = "XS0000000009"
LEGS = (  # three legs on three ledgers, as netting orders them (by ledger)
    SettlementLeg("cbdc-eur", "b-eur", "c-eur", "EUR", 99_000),
    SettlementLeg("cbdc-usd", "c-usd", "a-usd", "USD", 105_000),
    SettlementLeg("csd", "a-sec", "b-sec", ISIN, 100),
)
LEDGERS = tuple(leg.ledger for leg in LEGS)
MORE_LEGS = (  # up to five legs on distinct ledgers, for the any-order test
    *LEGS,
    SettlementLeg("cbdc-gbp", "a-gbp", "d-gbp", "GBP", 7_000),
    SettlementLeg("cbdc-chf", "d-chf", "b-chf", "CHF", 8_000),
)


def linked_terms(legs: tuple[SettlementLeg, ...] = LEGS, *, not_before_ms: int = 0) -> Terms:
    parties = tuple(f"bank-{index}" for index in range(len(legs)))
    return Terms(
        LINKED_ID,
        "linked",
        "coordinator",
        not_before_ms,
        T0 + 3_600_000,
        legs,
        parties,
        parties[1:] + parties[:1],
    )


def linked(legs: tuple[SettlementLeg, ...] = LEGS, *, not_before_ms: int = 0) -> tuple[Record, tuple[Terms, dict]]:
    record = Record(LINKED_ID, encode(AUTH), Phase.PENDING, steps=(("pending", T0),))
    return record, (linked_terms(legs, not_before_ms=not_before_ms), AUTH)


def state(timing: Timing = TIMING) -> core.State:
    return core.State("coordinator", timing, "n0")


def start(
    legs: tuple[SettlementLeg, ...] = LEGS, *, timing: Timing = TIMING, not_before_ms: int = 0
) -> tuple[core.State, list]:
    record, terms = linked(legs, not_before_ms=not_before_ms)
    return core.step(state(timing), [Start(record, SECRET, CANCEL, True, terms)], T0)


def resume(record: Record, now_ms: int) -> tuple[core.State, list]:
    """A restart: the journaled record, fresh draws (unused: the record has its secrets)."""
    return core.step(state(), [Start(record, b"x" * 32, b"y" * 32, terms=(linked_terms(), AUTH))], now_ms)


def tags(actions) -> list[tuple[str, int]]:
    return [action.tag for action in actions if isinstance(action, (Send, Ask))]


def locking_record() -> Record:
    _s, actions = start()
    return of(actions, Save)[-1].record


def claiming_record(claimed: int) -> Record:
    """The record as journaled on entering CLAIMING (built from the LOCKING one, so
    without driving the core through its announce), and leg 0 noted claimed or not."""
    record = locking_record().to(Phase.LOCKED, T0 + 10).to(Phase.CLAIMING, T0 + 10)
    return attrs.evolve(record, claimed=claimed)


def all_locked(now_ms: int = T0 + 10) -> tuple[core.State, list]:
    """Every lock confirmed: committed, leg 0's claim out."""
    s, actions = start()
    for lock in of(actions, Send):
        s, actions = answer(s, lock, receipt(lock), now_ms)
    return s, actions


def others_out(now_ms: int = T0 + 20) -> tuple[core.State, list[Send]]:
    """Leg 0 claimed: the claims of legs 1 and 2 out."""
    s, actions = all_locked()
    [claim_0] = of(actions, Send)
    s, actions = answer(s, claim_0, receipt(claim_0), now_ms)
    return s, of(actions, Send)


def done(actions) -> Record:
    [finished] = of(actions, Done)
    return finished.record


# -- locking: every leg at once ---------------------------------------------------------


def test_three_legs_are_locked_at_once_under_one_secret_and_one_expiry_leg_0_backstop_first():
    s, actions = start()
    assert phases(actions) == ["pending", "locking"]
    assert actions.index(of(actions, Save)[-1]) < actions.index(of(actions, Send)[0]), "journaled before sent"
    record = of(actions, Save)[-1].record
    assert (record.secret, record.cancel_secret) == (SECRET, CANCEL)
    sends = of(actions, Send)
    assert tags(actions) == [("lock", 0), ("lock", 1), ("lock", 2)]
    assert [send.ledger for send in sends] == list(LEDGERS)
    locks = [send.instruction.msg for send in sends]
    assert all(isinstance(lock, Lock) for lock in locks)
    assert [send.instruction.encode() for send in sends] == list(record.sent)
    assert [lock.id for lock in locks] == [lock_id(LINKED_ID, index) for index in range(3)]
    assert [(lock.ledger, lock.owner_account, lock.beneficiary_account, lock.asset, lock.amount) for lock in locks] == [
        (leg.ledger, leg.from_account, leg.to_account, leg.asset, leg.amount) for leg in LEGS
    ]
    assert {lock.hashlock for lock in locks} == {hashlock_of(SECRET)}
    assert {lock.cancel_hashlock for lock in locks} == {hashlock_of(CANCEL)}
    assert {lock.expiry_ms for lock in locks} == {T0 + TIMING.decide_ms}
    assert record.expiry_ms == (T0 + TIMING.decide_ms,) * 3
    backstops = [lock.backstop_ms for lock in locks]
    assert backstops[0] < backstops[1] == backstops[2]
    assert backstops == [T0 + TIMING.backstop_ms, *(T0 + TIMING.backstop_ms + TIMING.margin_ms,) * 2]
    assert record.backstop_ms == tuple(backstops)
    assert {lock.auth["type"] for lock in locks} == {"linked"}
    assert of(actions, core.Wake) == [core.Wake(LINKED_ID, T0 + TIMING.lock_wait_ms)]
    assert set(s.settlements) == {LINKED_ID}


def test_no_decision_while_any_of_the_three_locks_is_unanswered():
    s, actions = start()
    lock_0, _lock_1, lock_2 = of(actions, Send)
    s, actions = answer(s, lock_2, receipt(lock_2), T0 + 5)
    assert actions == []
    s, actions = answer(s, lock_0, receipt(lock_0, applied=False, code=Code.INSUFFICIENT_FUNDS), T0 + 6)
    assert actions == [], "a refusal still waits for the lock that may be placed"
    assert s.settlements[LINKED_ID].record.phase is Phase.LOCKING


# -- claiming: leg 0, then every other leg at once ----------------------------------------


def test_three_legs_all_locked_claim_leg_0_then_legs_1_and_2_together_then_settle():
    s, actions = start()
    lock_0, lock_1, lock_2 = of(actions, Send)
    s, actions = answer(s, lock_1, receipt(lock_1), T0 + 5)
    s, actions = answer(s, lock_2, receipt(lock_2), T0 + 6)
    assert of(actions, Save) == [] and tags(actions) == []
    s, actions = answer(s, lock_0, receipt(lock_0), T0 + 10)
    assert phases(actions) == ["locked", "claiming"]
    assert of(actions, Save)[-1].record.decision is Decision.COMMIT
    [announce] = of(actions, Announce)
    assert actions.index(of(actions, Save)[-1]) < actions.index(announce), "the commit is on disk first"
    assert (announce.decision.outcome, announce.decision.preimage) == ("commit", SECRET)
    assert announce.decision.ledgers == LEDGERS
    [claim_0] = of(actions, Send)
    assert (claim_0.tag, claim_0.ledger) == (("claim", 0), LEDGERS[0]), "only leg 0 is claimed first"
    msg = claim_0.instruction.msg
    assert isinstance(msg, Claim) and (msg.lock_id, msg.preimage) == (lock_id(LINKED_ID, 0), SECRET)

    s, actions = answer(s, claim_0, receipt(claim_0), T0 + 20)
    [note] = of(actions, Save)
    assert (note.record.phase, note.record.claimed, note.gates) == (Phase.CLAIMING, 1, False)
    assert actions.index(note) < actions.index(of(actions, Send)[0])
    claims = of(actions, Send)
    assert [(claim.tag, claim.ledger) for claim in claims] == [(("claim", 1), LEDGERS[1]), (("claim", 2), LEDGERS[2])]
    assert [claim.instruction.msg.lock_id for claim in claims] == [lock_id(LINKED_ID, i) for i in (1, 2)]
    assert {claim.instruction.msg.preimage for claim in claims} == {SECRET}

    claim_1, claim_2 = claims
    s, actions = answer(s, claim_2, receipt(claim_2), T0 + 30)
    assert of(actions, Save) == [] and of(actions, Done) == [], "leg 1 is not claimed yet"
    s, actions = answer(s, claim_1, receipt(claim_1), T0 + 40)
    assert phases(actions) == ["settled"]
    record = done(actions)
    assert (record.phase, record.claimed, record.decision) == (Phase.SETTLED, 3, Decision.COMMIT)
    assert s.settlements == {}


def test_one_of_three_locks_refused_rolls_back_cancelling_every_leg_then_fails():
    s, actions = start()
    lock_0, lock_1, lock_2 = of(actions, Send)
    s, _ = answer(s, lock_0, receipt(lock_0), T0 + 5)
    s, _ = answer(s, lock_1, receipt(lock_1, applied=False, code=Code.INSUFFICIENT_FUNDS), T0 + 6)
    s, actions = answer(s, lock_2, receipt(lock_2), T0 + 7)
    assert phases(actions) == ["rolling_back"]
    rolling_back = of(actions, Save)[0].record
    assert (rolling_back.decision, rolling_back.reason_code) == (Decision.ABORT, Code.INSUFFICIENT_FUNDS.value)
    [announce] = of(actions, Announce)
    assert (announce.decision.outcome, announce.decision.preimage) == ("abort", CANCEL)
    cancels = of(actions, Send)
    assert [(c.tag, c.ledger) for c in cancels] == [(("release", i), LEDGERS[i]) for i in range(3)]
    assert all(isinstance(c.instruction.msg, Cancel) for c in cancels)
    assert [(c.instruction.msg.lock_id, c.instruction.msg.preimage) for c in cancels] == [
        (lock_id(LINKED_ID, i), CANCEL) for i in range(3)
    ]
    assert not any(isinstance(a.instruction.msg, Claim) for a in of(actions, Send))

    cancel_0, cancel_1, cancel_2 = cancels
    s, actions = answer(s, cancel_2, receipt(cancel_2), T0 + 10)
    s, actions = answer(s, cancel_0, receipt(cancel_0), T0 + 11)
    assert of(actions, Done) == []
    # leg 1's lock was refused: its cancel is refused too, and the ledger says it was never placed
    s, actions = answer(s, cancel_1, receipt(cancel_1, applied=False, code=Code.UNKNOWN_LOCK), T0 + 12)
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 1) and isinstance(ask.query, QueryLock)
    s, actions = answer(s, ask, ABSENT, T0 + 13)
    [placed] = of(actions, Ask)
    assert placed.tag == ("placed", 1) and isinstance(placed.query, QueryReceipt)
    s, actions = answer(s, placed, receipt(lock_1, applied=False, code=Code.INSUFFICIENT_FUNDS), T0 + 14)
    record = done(actions)
    assert (record.phase, record.decision, record.reason_code) == (
        Phase.FAILED,
        Decision.ABORT,
        Code.INSUFFICIENT_FUNDS.value,
    )
    assert s.settlements == {}


def test_restarted_with_leg_0_noted_claimed_it_claims_legs_1_and_2_only():
    s, actions = resume(claiming_record(claimed=1), T0 + 99)
    assert of(actions, Save) == [], "nothing new to journal: the secrets are those first drawn"
    [announce] = of(actions, Announce)
    assert announce.decision.preimage == SECRET
    claims = of(actions, Send)
    assert tags(actions) == [("claim", 1), ("claim", 2)], "leg 0 is not claimed again"
    assert [(c.instruction.msg.lock_id, c.instruction.msg.preimage) for c in claims] == [
        (lock_id(LINKED_ID, i), SECRET) for i in (1, 2)
    ]
    for claim in claims:
        s, actions = answer(s, claim, receipt(claim), T0 + 100)
    assert done(actions).phase is Phase.SETTLED and done(actions).claimed == 3


def test_restarted_before_leg_0_was_noted_claimed_it_claims_leg_0_only_then_the_others():
    s, actions = resume(claiming_record(claimed=0), T0 + 99)
    assert of(actions, Save) == []
    [claim_0] = of(actions, Send)
    assert claim_0.tag == ("claim", 0) and claim_0.instruction.msg.preimage == SECRET
    # its ledger had applied it before the restart: a claim under a new id is refused, its state read
    s, actions = answer(s, claim_0, receipt(claim_0, applied=False, code=Code.LOCK_NOT_HELD), T0 + 100)
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 0) and of(actions, Send) == []
    s, actions = answer(s, ask, {"state": "claimed"}, T0 + 101)
    assert [(save.record.claimed, save.gates) for save in of(actions, Save)] == [(1, False)]
    assert tags(actions) == [("claim", 1), ("claim", 2)]


def test_leg_2_claim_unanswered_is_sent_again_then_its_lock_read_held_claimed_again_then_read_claimed():
    s, (claim_1, claim_2) = others_out(T0 + 20)
    s, actions = answer(s, claim_1, receipt(claim_1), T0 + 30)
    s, actions = answer(s, claim_2, NO_ANSWER, T0 + 600)
    assert actions == [core.Wake(LINKED_ID, T0 + 600 + RETRY_MS)]
    s, actions = core.step(s, [Due(LINKED_ID)], T0 + 600 + RETRY_MS)
    assert of(actions, Send) == [claim_2], "the same claim, the same id, again"
    s, actions = core.step(s, [Due(LINKED_ID)], T0 + 20 + TIMING.claim_deadline_ms)  # unanswered for good
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 2) and ask.ledger == LEDGERS[2] and ask.query.lock_id == lock_id(LINKED_ID, 2)
    held_at = T0 + 2_100
    s, actions = answer(s, ask, {"state": "held", "backstop_ms": T0 + 62_500, "expiry_ms": T0 + 1_500}, held_at)
    assert of(actions, Send) == [] and of(actions, core.Wake) == [core.Wake(LINKED_ID, held_at + RETRY_MS)]
    s, actions = core.step(s, [Due(LINKED_ID)], held_at + RETRY_MS)
    [again] = of(actions, Send)
    assert again.tag == ("claim", 2) and again.instruction.msg.preimage == SECRET
    assert again.instruction.msg.id != claim_2.instruction.msg.id, "a new claim, not the one given up on"
    s, actions = answer(s, again, receipt(again, applied=False, code=Code.LOCK_NOT_HELD), held_at + 60)
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 2)
    s, actions = answer(s, ask, {"state": "claimed"}, held_at + 70)
    record = done(actions)
    assert (record.phase, record.claimed) == (Phase.SETTLED, 3)


@pytest.mark.parametrize("refunded", [1, 2])
def test_a_leg_found_refunded_after_leg_0_was_claimed_is_one_legged_naming_it(refunded):
    s, claims = others_out(T0 + 20)
    lost, kept = claims[refunded - 1], claims[2 - refunded]
    s, actions = answer(s, kept, receipt(kept), T0 + 30)
    s, actions = answer(s, lost, receipt(lost, applied=False, code=Code.LOCK_NOT_HELD), T0 + 40)
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", refunded)
    s, actions = answer(s, ask, {"state": "refunded"}, T0 + 50)
    record = done(actions)
    assert (record.phase, record.reason) == (Phase.ONE_LEGGED, f"leg 0 claimed but leg {refunded} is refunded")
    assert record.reason_code == Code.LOCK_EXPIRED.value
    assert s.settlements == {}


def test_a_leg_found_refunded_before_the_other_is_claimed_is_one_legged_at_once():
    """Leg 1 refunded while leg 2's claim is still out: one-legged, without waiting."""
    s, (claim_1, _claim_2) = others_out(T0 + 20)
    s, actions = answer(s, claim_1, receipt(claim_1, applied=False, code=Code.LOCK_NOT_HELD), T0 + 30)
    s, actions = answer(s, of(actions, Ask)[0], {"state": "refunded"}, T0 + 40)
    assert done(actions).reason == "leg 0 claimed but leg 1 is refunded"


def leg_0_refunded() -> tuple[core.State, list[Ask]]:
    """Leg 0's claim refused, its lock read refunded at its backstop: every other leg asked."""
    s, actions = all_locked()
    [claim_0] = of(actions, Send)
    s, actions = answer(s, claim_0, receipt(claim_0, applied=False, code=Code.LOCK_EXPIRED), T0 + 20)
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 0)
    s, actions = answer(s, ask, {"state": "refunded"}, T0 + 30)
    assert of(actions, Send) == [] and of(actions, Save) == [], "no other leg is claimed"
    return s, of(actions, Ask)


def test_leg_0_refunded_asks_every_other_leg_and_all_refunded_is_rolled_back():
    s, asks = leg_0_refunded()
    assert [(ask.tag, ask.ledger) for ask in asks] == [(("other", 1), LEDGERS[1]), (("other", 2), LEDGERS[2])]
    assert all(isinstance(ask.query, QueryLock) for ask in asks)
    other_1, other_2 = asks
    backstop_ms = T0 + TIMING.backstop_ms + TIMING.margin_ms
    s, actions = answer(s, other_2, {"state": "held", "backstop_ms": backstop_ms, "expiry_ms": T0}, T0 + 40)
    assert of(actions, core.Wake) == [core.Wake(LINKED_ID, backstop_ms)] and tags(actions) == []
    s, actions = answer(s, other_1, {"state": "refunded"}, T0 + 50)
    assert of(actions, Done) == [], "leg 2 has not ended yet"
    s, actions = core.step(s, [Due(LINKED_ID)], backstop_ms)
    [other_2] = of(actions, Ask)
    assert other_2.tag == ("other", 2)
    s, actions = answer(s, other_2, {"state": "refunded"}, backstop_ms + 1)
    record = done(actions)
    assert record.phase is Phase.ROLLED_BACK and record.decision is Decision.COMMIT
    assert record.reason == (
        "committed, but leg 0 was refunded at its backstop before it could be claimed; "
        "leg 1 is refunded, leg 2 is refunded"
    )


@pytest.mark.parametrize("claimed", [1, 2])
def test_leg_0_refunded_and_another_leg_found_claimed_is_one_legged(claimed):
    s, asks = leg_0_refunded()
    unclaimed = asks[2 - claimed]
    s, actions = answer(s, unclaimed, {"state": "refunded"}, T0 + 40)
    assert of(actions, Done) == []
    s, actions = answer(s, asks[claimed - 1], {"state": "claimed"}, T0 + 50)
    record = done(actions)
    assert (record.phase, record.reason) == (Phase.ONE_LEGGED, f"leg {claimed} claimed but leg 0 is refunded")


# -- legs that net to nothing -------------------------------------------------------------


def test_a_linked_settlement_whose_legs_net_to_nothing_settles_at_once_sending_nothing():
    s, actions = start(())
    assert phases(actions) == ["pending", "settled"]
    assert tags(actions) == [] and of(actions, Announce) == [] and of(actions, core.Wake) == []
    record = done(actions)
    assert (record.phase, record.decision, record.secret, record.sent) == (Phase.SETTLED, Decision.NONE, b"", ())
    assert "net to nothing" in record.reason
    assert s.settlements == {}


def test_a_linked_settlement_netting_to_nothing_for_a_later_time_settles_then():
    s, actions = start((), not_before_ms=T0 + 5_000)
    assert phases(actions) == ["pending"] and of(actions, core.Wake) == [core.Wake(LINKED_ID, T0 + 5_000)]
    s, actions = core.step(s, [Due(LINKED_ID)], T0 + 5_000)
    assert phases(actions) == ["settled"] and tags(actions) == []
    assert done(actions).phase is Phase.SETTLED and s.settlements == {}


# -- any order of answers -----------------------------------------------------------------

# patient enough that no instruction reaches its deadline in the test below: every
# answer comes, after at most a few silences
PATIENT = Timing(lock_wait_ms=60_000, claim_deadline_ms=60_000, clock_skew_ms_max=500, backstop_ms=3_600_000)
SILENCES_MAX = 2  # per instruction


def settles_in_any_order(legs: tuple[SettlementLeg, ...], data: st.DataObject) -> None:
    """Deliver the answers to every lock and claim in any order, batched as drawn, some
    silent first (a request or a reply lost; then sent again): the settlement settles,
    every leg's lock claimed by one claim, and no leg but 0 claimed before leg 0's receipt
    is in; while not final, something is awaited or the shell has a wake-up for it."""
    n = len(legs)
    s, actions = start(legs, timing=PATIENT)
    now_ms = T0
    out: dict[tuple[str, int], Send] = {}  # awaiting an answer
    silences: dict[tuple[str, int], int] = {}
    applied: dict[str, int] = {}  # claim id -> leg: what each ledger applied
    claim_ids: dict[int, set[str]] = {index: set() for index in range(n)}
    leg_0_receipt_fed = False
    notes = 0
    wake_ms = None
    for _ in range(400):
        for action in actions:
            if isinstance(action, Send):
                msg = action.instruction.msg
                assert isinstance(msg, (Lock, Claim)), f"nothing but locks and claims: {msg}"
                if isinstance(msg, Claim):
                    kind, index = action.tag
                    assert kind == "claim" and msg.lock_id == lock_id(LINKED_ID, index)
                    assert msg.preimage == SECRET
                    assert index == 0 or leg_0_receipt_fed, f"leg {index} claimed before leg 0's receipt"
                    claim_ids[index].add(msg.id)
                out[action.tag] = action
            elif isinstance(action, Ask):
                raise AssertionError(f"every answer came: nothing to ask, yet {action}")
            elif isinstance(action, Save) and not action.gates:
                notes += 1
                assert action.record.claimed == 1 and leg_0_receipt_fed
            elif isinstance(action, core.Wake):
                wake_ms = action.at_ms
            elif isinstance(action, Done):
                record = action.record
                assert (record.phase, record.claimed) == (Phase.SETTLED, n), record
                assert s.settlements == {}
                assert all(len(ids) == 1 for ids in claim_ids.values()), f"claims sent: {claim_ids}"
                assert sorted(applied.values()) == list(range(n)), "every leg claimed once"
                assert notes == 1, "leg 0 noted claimed once"
                return
        driving = s.settlements[LINKED_ID]
        assert driving.out, "stuck: nothing awaited, nothing due"
        awaited = [o.tag for o in driving.out if o.send_at_ms is None and o.tag in out]
        now_ms += data.draw(st.integers(0, 20))
        if not awaited:
            assert wake_ms == driving.wake_ms(), "the shell must have a wake-up for what is due"
            now_ms = max(now_ms, driving.wake_ms())
            s, actions = core.step(s, [Due(LINKED_ID)], now_ms)
            continue
        order = data.draw(st.permutations(awaited))
        batch = order[: data.draw(st.integers(1, len(order)))]
        events = []
        for tag in batch:
            request = out.pop(tag)
            msg = request.instruction.msg
            if isinstance(msg, Claim) and msg.id not in applied and data.draw(st.booleans()):
                applied[msg.id] = tag[1]  # the ledger applies it (its reply may yet be lost)
            if silences.get(tag, 0) < SILENCES_MAX and data.draw(st.booleans()):
                silences[tag] = silences.get(tag, 0) + 1
                events.append(Answer(LINKED_ID, tag, NO_ANSWER))
                continue
            if isinstance(msg, Claim):
                applied.setdefault(msg.id, tag[1])
                if tag == ("claim", 0):
                    leg_0_receipt_fed = True
            events.append(Answer(LINKED_ID, tag, receipt(request)))
        s, actions = core.step(s, events, now_ms)
    raise AssertionError("not settled after 400 steps")


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5), st.data())
def test_two_to_five_linked_legs_settle_whatever_the_order_of_answers(n, data):
    settles_in_any_order(MORE_LEGS[:n], data)
