"""The coordinator's core as plain function calls: no bus, no clock, no journal. The
hard cases (a claim's reply lost, a restart between the two claims, a lock expiring as
its claim is sent, a lock refused, locks confirmed too late) are events fed to `step`,
and what must hold is read from the actions it returns; a Hypothesis machine then feeds
it any order of answers, silences and wake-ups and checks the invariants every time."""

from __future__ import annotations

import secrets

import attrs
import hypothesis.strategies as st
from hypothesis import given, settings

from engine.coordinator import core
from engine.coordinator.core import ABSENT, NO_ANSWER, RETRY_MS, Announce, Answer, Ask, Done, Due, Save, Send, Start
from engine.coordinator.journal import Record
from engine.world.local import dvp_legs
from protocols.canonical import encode
from protocols.errors import Code
from protocols.messages import Cancel, Claim, Lock, QueryLock, QueryReceipt, Receipt, Settle, Settlement
from protocols.settlement import Decision, Phase, Timing
from protocols.signing import PrivateKey, sign

T0 = 1_800_000_000_000
TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500, backstop_ms=60_000)
KEYS = {party: PrivateKey.generate() for party in ("bank-a", "bank-b")}
CROSS = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
SAME = dvp_legs("unified", "a", "b", 100, "unified", "EUR", "b", "a", 99_000)
SECRET, CANCEL = secrets.token_bytes(32), secrets.token_bytes(32)


def settlement(legs=CROSS, *, settlement_id: str = "dvp-1", not_before_ms: int = 0) -> Record:
    msg = Settlement(settlement_id, "dvp", T0, "coordinator", T0 + 60_000, ("bank-b", "bank-a"), legs)
    if not_before_ms:
        msg = attrs.evolve(msg, not_before_ms=not_before_ms)
    signed = sign(msg, *((party, KEYS[party]) for party in msg.parties))
    return Record(settlement_id, encode(signed.wire()), Phase.PENDING, steps=(("pending", T0),))


def state() -> core.State:
    return core.State("coordinator", TIMING, "n0")


def start(record: Record, now_ms: int = T0, *, new: bool = True) -> tuple[core.State, list]:
    return core.step(state(), [Start(record, SECRET, CANCEL, new)], now_ms)


def receipt(action: Send, applied: bool = True, code: Code = Code.LOCK_EXPIRED) -> Receipt:
    msg = action.instruction.msg
    if applied:
        return Receipt(msg.ledger, msg.id, "applied", T0, seq=1)
    return Receipt(msg.ledger, msg.id, "rejected", T0, code=code.value, field="lock_id", reason="refused")


def of(actions, kind):
    return [action for action in actions if isinstance(action, kind)]


def answer(s: core.State, action, value, now_ms: int) -> tuple[core.State, list]:
    return core.step(s, [Answer(action.settlement_id, action.tag, value)], now_ms)


def phases(actions) -> list[str]:
    return [save.record.phase.value for save in of(actions, Save)]


def locked(now_ms: int = T0 + 10):
    """A cross-ledger DvP with both locks confirmed: committed, leg 0's claim out."""
    s, actions = start(settlement())
    lock_0, lock_1 = of(actions, Send)
    s, _ = answer(s, lock_0, receipt(lock_0), now_ms)
    s, actions = answer(s, lock_1, receipt(lock_1), now_ms)
    return s, actions


def test_a_settlement_is_journaled_with_its_secrets_before_either_lock_leaves():
    _s, actions = start(settlement())
    assert [type(a) for a in actions[:2]] == [Save, Save] and phases(actions) == ["pending", "locking"]
    locking = of(actions, Save)[-1].record
    assert (locking.secret, locking.cancel_secret) == (SECRET, CANCEL)
    sends = of(actions, Send)
    assert [(send.tag, type(send.instruction.msg)) for send in sends] == [(("lock", 0), Lock), (("lock", 1), Lock)]
    assert [send.instruction.encode() for send in sends] == list(locking.sent)
    assert of(actions, core.Wake) == [core.Wake("dvp-1", T0 + TIMING.lock_wait_ms)]


def test_both_locks_confirmed_commit_is_journaled_before_it_is_announced_and_claimed():
    s, actions = locked()
    assert phases(actions) == ["locked", "claiming"]
    assert actions.index(of(actions, Save)[-1]) < actions.index(of(actions, Announce)[0])
    [announce] = of(actions, Announce)
    assert (announce.decision.outcome, announce.decision.preimage) == ("commit", SECRET)
    [claim] = of(actions, Send)
    assert (claim.tag, type(claim.instruction.msg), claim.instruction.msg.preimage) == (("claim", 0), Claim, SECRET)
    s, actions = answer(s, claim, receipt(claim), T0 + 20)
    [note] = of(actions, Save)
    assert (note.record.claimed, note.gates) == (1, False), "leg 1's claim does not wait for the note"
    [claim_1] = of(actions, Send)
    s, actions = answer(s, claim_1, receipt(claim_1), T0 + 30)
    assert phases(actions) == ["settled"] and of(actions, Done)[0].record.claimed == 2
    assert s.settlements == {}


def test_a_claims_reply_lost_it_is_sent_again_then_its_lock_asked_and_never_rolled_back():
    s, actions = locked()
    [claim] = of(actions, Send)
    s, actions = answer(s, claim, NO_ANSWER, T0 + 600)
    assert actions == [core.Wake("dvp-1", T0 + 600 + RETRY_MS)]
    s, actions = core.step(s, [Due("dvp-1")], T0 + 600 + RETRY_MS)
    assert of(actions, Send) == [claim], "the same claim, the same id, again"
    s, actions = core.step(s, [Due("dvp-1")], T0 + 10 + TIMING.claim_deadline_ms)  # unanswered for good
    [ask] = of(actions, Ask)
    assert ask.tag == ("state", 0) and isinstance(ask.query, QueryLock)
    s, actions = answer(s, ask, {"state": "claimed"}, T0 + 3_000)
    assert [save.record.claimed for save in of(actions, Save)] == [1]
    assert [send.tag for send in of(actions, Send)] == [("claim", 1)]
    assert not any(isinstance(a.instruction.msg, Cancel) for a in of(actions, Send))


def test_restarted_between_the_two_claims_it_claims_leg_1_only():
    _s, actions = locked()
    claiming = of(actions, Save)[-1].record
    _restarted, actions = core.step(state(), [Start(attrs.evolve(claiming, claimed=1), b"x" * 32, b"y" * 32)], T0 + 99)
    assert of(actions, Save) == [], "nothing new to journal: the secrets are those first drawn"
    [announce] = of(actions, Announce)
    assert announce.decision.preimage == SECRET
    [claim] = of(actions, Send)
    assert claim.tag == ("claim", 1) and claim.instruction.msg.preimage == SECRET


def test_restarted_before_the_note_of_leg_0_claimed_it_claims_leg_0_again_then_leg_1():
    """Leg 1's claim left with the note of leg 0 still uncommitted: a restart from the
    journal without it claims leg 0 again (its ledger answers the same), then leg 1."""
    _s, actions = locked()
    claiming = of(actions, Save)[-1].record
    s, actions = core.step(state(), [Start(claiming, b"x" * 32, b"y" * 32)], T0 + 99)
    [claim_0] = of(actions, Send)
    assert claim_0.tag == ("claim", 0) and claim_0.instruction.msg.preimage == SECRET
    s, actions = answer(s, claim_0, receipt(claim_0, applied=False, code=Code.LOCK_NOT_HELD), T0 + 100)
    [ask] = of(actions, Ask)
    s, actions = answer(s, ask, {"state": "claimed"}, T0 + 101)
    assert [send.tag for send in of(actions, Send)] == [("claim", 1)]


def test_a_lock_expiring_as_its_claim_is_sent_waits_for_the_other_leg_to_end():
    """Leg 0's claim refused (its lock refunded at its backstop): leg 1 is not claimed,
    and the settlement ends when leg 1 ends too, rolled back, not one-legged."""
    s, actions = locked()
    [claim] = of(actions, Send)
    s, actions = answer(s, claim, receipt(claim, applied=False), T0 + 20)
    [ask] = of(actions, Ask)
    s, actions = answer(s, ask, {"state": "refunded"}, T0 + 30)
    [other] = of(actions, Ask)
    assert other.tag == ("other", 1) and other.ledger == "csd"
    backstop_ms = T0 + TIMING.backstop_ms + TIMING.margin_ms
    s, actions = answer(s, other, {"state": "held", "backstop_ms": backstop_ms, "expiry_ms": T0}, T0 + 40)
    assert of(actions, core.Wake) == [core.Wake("dvp-1", backstop_ms)] and of(actions, Send) == []
    s, actions = core.step(s, [Due("dvp-1")], backstop_ms)
    [other] = of(actions, Ask)
    s, actions = answer(s, other, {"state": "refunded"}, backstop_ms + 1)
    [done] = of(actions, Done)
    assert done.record.phase is Phase.ROLLED_BACK and "leg 0 was refunded" in done.record.reason


def test_leg_1_found_refunded_after_leg_0_was_claimed_is_one_legged_and_says_so():
    s, actions = locked()
    [claim] = of(actions, Send)
    s, actions = answer(s, claim, receipt(claim), T0 + 20)
    [claim_1] = of(actions, Send)
    s, actions = answer(s, claim_1, receipt(claim_1, applied=False), T0 + 30)
    s, actions = answer(s, of(actions, Ask)[0], {"state": "refunded"}, T0 + 40)
    [done] = of(actions, Done)
    assert (done.record.phase, done.record.reason) == (Phase.ONE_LEGGED, "leg 0 claimed but leg 1 is refunded")


def test_a_lock_refused_aborts_and_cancels_both_waiting_for_a_lock_not_yet_placed():
    s, actions = start(settlement())
    lock_0, _lock_1 = of(actions, Send)
    s, _ = answer(s, lock_0, receipt(lock_0, applied=False, code=Code.INSUFFICIENT_FUNDS), T0 + 5)
    s, actions = core.step(s, [Due("dvp-1")], T0 + TIMING.lock_wait_ms)  # lock 1 unanswered in time
    assert phases(actions) == ["rolling_back"]
    assert of(actions, Save)[0].record.reason_code == Code.INSUFFICIENT_FUNDS.value
    [announce] = of(actions, Announce)
    assert (announce.decision.outcome, announce.decision.preimage) == ("abort", CANCEL)
    cancels = of(actions, Send)
    assert [(c.tag, type(c.instruction.msg)) for c in cancels] == [(("release", 0), Cancel), (("release", 1), Cancel)]
    s, actions = answer(s, cancels[0], receipt(cancels[0], applied=False, code=Code.UNKNOWN_LOCK), T0 + 1_010)
    s, actions = answer(s, of(actions, Ask)[0], ABSENT, T0 + 1_020)
    [placed] = of(actions, Ask)
    assert placed.tag == ("placed", 0) and isinstance(placed.query, QueryReceipt)
    s, actions = answer(s, placed, receipt(lock_0, applied=False), T0 + 1_030)  # refused: never placed
    s, actions = answer(s, cancels[1], receipt(cancels[1], applied=False, code=Code.UNKNOWN_LOCK), T0 + 1_040)
    s, actions = answer(s, of(actions, Ask)[0], ABSENT, T0 + 1_050)
    s, actions = answer(s, of(actions, Ask)[0], None, T0 + 1_060)  # no receipt: it may yet be placed
    placed_by_ms = T0 + TIMING.decide_ms + TIMING.clock_skew_ms_max
    assert of(actions, Send) == [] and of(actions, core.Wake) == [core.Wake("dvp-1", placed_by_ms + RETRY_MS)]
    s, actions = core.step(s, [Due("dvp-1")], placed_by_ms + RETRY_MS)
    [again] = of(actions, Send)
    s, actions = answer(s, again, receipt(again), placed_by_ms + RETRY_MS + 5)  # placed late after all: cancelled
    [done] = of(actions, Done)
    assert done.record.phase is Phase.FAILED and done.record.decision is Decision.ABORT


def test_both_locks_confirmed_too_late_to_commit_abort():
    s, actions = start(settlement())
    lock_0, lock_1 = of(actions, Send)
    late = T0 + TIMING.decide_ms
    s, _ = answer(s, lock_0, receipt(lock_0), late - 10)
    s, actions = answer(s, lock_1, receipt(lock_1), late)
    assert phases(actions) == ["locked", "rolling_back"]
    assert of(actions, Save)[-1].record.reason == "the locks were confirmed too late to commit"


def test_resumed_at_locking_past_the_lock_wait_it_sends_nothing_and_aborts():
    _, actions = start(settlement())
    locking = of(actions, Save)[-1].record
    s, actions = core.step(state(), [Start(locking, b"x" * 32, b"y" * 32)], T0 + TIMING.lock_wait_ms)
    assert of(actions, Send) == [] and of(actions, core.Wake) == [core.Wake("dvp-1", T0 + TIMING.lock_wait_ms)]
    s, actions = core.step(s, [Due("dvp-1")], T0 + TIMING.lock_wait_ms)
    assert phases(actions) == ["rolling_back"] and of(actions, Save)[0].record.secret == SECRET


def test_a_same_ledger_settlement_is_one_settle_and_silence_asks_for_its_receipt():
    s, actions = start(settlement(SAME))
    [send] = of(actions, Send)
    assert isinstance(send.instruction.msg, Settle)
    assert of(actions, Save)[-1].record.sent == (send.instruction.encode(),)
    deadline_ms = T0 + 60_000 + TIMING.clock_skew_ms_max
    s, actions = core.step(s, [Due("dvp-1")], deadline_ms)
    [ask] = of(actions, Ask)
    assert isinstance(ask.query, QueryReceipt) and ask.query.instruction_id == "dvp-1:settle"
    s, actions = answer(s, ask, receipt(send), deadline_ms + 5)
    assert phases(actions) == ["settled"]


def test_a_settlement_for_a_later_time_waits_for_it_journaled():
    s, actions = start(settlement(not_before_ms=T0 + 5_000))
    assert phases(actions) == ["pending"] and of(actions, Send) == []
    assert of(actions, core.Wake) == [core.Wake("dvp-1", T0 + 5_000)]
    s, actions = core.step(s, [Due("dvp-1")], T0 + 4_999)
    assert of(actions, Send) == []
    s, actions = core.step(s, [Due("dvp-1")], T0 + 5_000)
    assert phases(actions) == ["locking"] and len(of(actions, Send)) == 2


def test_answers_for_settlements_no_longer_driven_change_nothing():
    s, actions = locked()
    [claim] = of(actions, Send)
    again, actions = core.step(s, [Answer("dvp-9", ("claim", 0), NO_ANSWER), Due("dvp-9")], T0)
    assert (again, actions) == (s, [])
    stale, actions = answer(s, attrs.evolve(claim, tag=("lock", 0)), receipt(claim), T0 + 20)
    assert (stale, actions) == (s, [])


# -- any order of events ------------------------------------------------------------------

LEDGER_VIEWS = ("held", "claimed", "refunded", "cancelled", ABSENT)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_order_of_answers_decides_once_and_reveals_only_what_was_decided(data):
    """Answers (applied, refused, silent), lock states and wake-ups in any order: every
    step's saves are transitions; a claim secret leaves only after the commit is saved,
    a cancellation only after the abort is; no settlement is decided twice; and while
    not final, something is always awaited or due."""
    s, actions = start(settlement())
    now_ms, decision, journaled = T0, Decision.NONE, Phase.PENDING
    out: dict[tuple[str, int], object] = {}
    for _ in range(60):
        for action in actions:
            if isinstance(action, Save):
                journaled = action.record.phase
                if action.record.decision is not Decision.NONE:
                    assert decision in (Decision.NONE, action.record.decision), "decided twice"
                    decision = action.record.decision
            elif isinstance(action, (Send, Ask)):
                msg = getattr(action, "instruction", None)
                if msg is not None and isinstance(msg.msg, Claim):
                    assert decision is Decision.COMMIT and msg.msg.preimage == SECRET
                if msg is not None and isinstance(msg.msg, Cancel):
                    assert decision is Decision.ABORT and msg.msg.preimage == CANCEL
                out[action.tag] = action
            elif isinstance(action, Announce):
                assert action.decision.outcome == decision.value
        if not s.settlements:
            assert journaled in (Phase.SETTLED, Phase.FAILED, Phase.ROLLED_BACK, Phase.ONE_LEGGED)
            return
        driving = s.settlements["dvp-1"]
        assert driving.out or driving.begin_at_ms is not None, "stuck: nothing awaited, nothing due"
        awaited = [o for o in driving.out if o.send_at_ms is None and o.tag in out]
        now_ms += data.draw(st.integers(0, 3_000))
        if awaited and data.draw(st.booleans()):
            request = out.pop(data.draw(st.sampled_from([o.tag for o in awaited])))
            if isinstance(request, Send):
                value = data.draw(st.sampled_from([NO_ANSWER, receipt(request), receipt(request, applied=False)]))
            elif isinstance(request.query, QueryReceipt):
                value = data.draw(st.sampled_from([NO_ANSWER, None]))
            else:
                state = data.draw(st.sampled_from(LEDGER_VIEWS))
                value = state if state == ABSENT else {"state": state, "backstop_ms": now_ms, "expiry_ms": now_ms}
            s, actions = answer(s, request, value, now_ms)
        else:
            now_ms = max(now_ms, driving.wake_ms() or now_ms)
            s, actions = core.step(s, [Due("dvp-1")], now_ms)
