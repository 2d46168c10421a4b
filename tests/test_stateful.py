"""A unified ledger driven by random instruction sequences, good and bad, time-locks and
decision locks among them, against a model kept beside it. Every receipt is predicted
(applied, or refused with its code), and after every step the ledger's own store must
show: each asset conserved (balances sum to issued minus redeemed), no negative balance,
every lock in the state the model says and never leaving an end state, the held locks of
each (account, asset) summing to its locked amount, the journal as long as the model
counts and intact, and an instruction sent again answered with the very same receipt
bytes without the journal growing."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import attrs
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.world.layout import World, lay_out
from protocols.bus.follow import event_entries
from protocols.canonical import decode
from protocols.errors import Code
from protocols.htlc import hashlock_of
from protocols.journal import Link, Replay, verify_chain
from protocols.messages import (
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    Receipt,
    Redeem,
    Refund,
    Settle,
    Transfer,
)
from protocols.signing import Signed, from_wire, signing_bytes
from tests.harness import BOND, LEDGERS, PARTIES, Harness

# Keys and registry are made once: a state machine cannot use function-scoped fixtures,
# and each example gets its own database directory instead.
_WORLD_DIRECTORY = tempfile.mkdtemp(prefix="lockstep-stateful-world-")
atexit.register(shutil.rmtree, _WORLD_DIRECTORY, ignore_errors=True)
WORLD = lay_out(_WORLD_DIRECTORY, LEDGERS, PARTIES)

OWNERS = {"a": "bank-a", "b": "bank-b", "t": "treasury", "e": "ecb", "f": "fed"}
ACCOUNTS = tuple(OWNERS) + ("ghost",)  # "ghost" is never opened
ASSETS = ("EUR", "USD", BOND)
ISSUER = {"EUR": "ecb", "USD": "fed", BOND: "treasury"}  # who owns issued units
ISSUE_SIGNER = {"EUR": "ecb", "USD": "fed", BOND: "csd-op"}  # who may sign issue/redeem
ISSUER_ACCOUNT = {"EUR": "e", "USD": "f", BOND: "t"}  # the issuer's own account
SIGNERS = ("bank-a", "bank-b", "treasury", "ecb", "fed", "csd-op", "coordinator")
PREIMAGES = tuple(bytes([n]) * 32 for n in range(3))
ABORT_BY = ((), ("coordinator",), ("bank-b", "coordinator"), ("bank-a", "coordinator"))
TS_AGE_MS_MAX = 5 * 60 * 1000

# A claim, cancel or abort that reaches a lock the ledger has refunded at its refund time is
# refused as expired: the time split says a claim is valid while now < refund time and no
# longer after.
LATE = Code.LOCK_EXPIRED
# Refusals that are not recorded: answered afresh each time (a sender without authority
# cannot burn an id; a stale one may be re-signed; a reused id keeps its first answer).
UNRECORDED = {
    Code.BAD_SIGNATURE,
    Code.UNKNOWN_SIGNER,
    Code.MISSING_SIGNATURE,
    Code.NOT_AUTHORISED,
    Code.STALE,
    Code.ID_REUSED,
}

amounts = st.integers(1, 600)
accounts = st.sampled_from(ACCOUNTS)  # "ghost" included: a refused account
assets = st.sampled_from(ASSETS)
signers = st.sampled_from(SIGNERS)


@attrs.define
class ModelLock:
    owner: str
    beneficiary: str
    asset: str
    amount: int
    preimage: bytes
    expiry_ms: int
    abort_by: tuple[str, ...]
    state: str = "held"
    cancel_preimage: bytes | None = None  # a decision lock's
    backstop_ms: int | None = None

    @property
    def refund_at_ms(self) -> int:
        return self.expiry_ms if self.backstop_ms is None else self.backstop_ms


class Refused(Exception):
    def __init__(self, code: Code) -> None:
        self.code = code


class Repeated(Exception):
    """The instruction was answered before: its first receipt again, nothing applied."""


def refused(code: Code):
    def predict():
        raise Refused(code)

    return predict


def repeated():
    raise Repeated()


def applies_nothing_to_balances():
    """The prediction for opening an account or creating an instrument: applied, and
    nothing the model tracks changes."""
    return lambda: None


@attrs.define
class Model:
    """What the ledger should hold."""

    balances: dict = attrs.field(factory=lambda: defaultdict(lambda: [0, 0]))
    supply: dict = attrs.field(factory=lambda: {asset: [0, 0] for asset in ASSETS})
    locks: dict[str, ModelLock] = attrs.field(factory=dict)
    height: int = 1  # the "configure" entry of the first start
    unpublished: int = 1  # written at start, published with the first batch

    def available(self, account: str, asset: str) -> int:
        return self.balances[(account, asset)][0]

    def move(self, account: str, asset: str, available_delta: int, locked_delta: int) -> None:
        balance = self.balances[(account, asset)]
        balance[0] += available_delta
        balance[1] += locked_delta
        assert balance[0] >= 0 and balance[1] >= 0, "the model itself went negative"

    def expire(self, now_ms: int) -> int:
        due = [lock for lock in self.locks.values() if lock.state == "held" and lock.refund_at_ms <= now_ms]
        for lock in due:
            lock.state = "refunded"
            self.move(lock.owner, lock.asset, lock.amount, -lock.amount)
        self.height += len(due)
        return len(due)


def owner_of(account: str) -> str:
    if account not in OWNERS:
        raise Refused(Code.UNKNOWN_ACCOUNT)
    return OWNERS[account]


def need(condition: bool, code: Code) -> None:
    if not condition:
        raise Refused(code)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="lockstep-stateful-"))
        config = self.directory / "unified.toml"
        config.write_text(WORLD.ledger_configs["unified"].read_text())
        world = World(self.directory, WORLD.registry, WORLD.keys, {"unified": config})
        self.h = Harness(world, "unified")
        self.model = Model()
        self.sent: dict[str, tuple[bytes, dict, bytes]] = {}  # id -> (payload, body, receipt)
        self.lock_ids: list[str] = ["no-such-lock"]
        self.ended: dict[str, str] = {}
        for account, owner in OWNERS.items():
            self.one(self.h.make(OpenAccount, "csd-op", account=account, owner=owner), applies_nothing_to_balances)
        self.one(
            self.h.make(
                CreateInstrument,
                "csd-op",
                isin=BOND,
                issuer="treasury",
                currency="EUR",
                face_value_minor=100_000,
                coupon_rate_bp=250,
                maturity_date="2030-01-01",
            ),
            applies_nothing_to_balances,
        )
        for asset, account, amount in (("EUR", "a", 1000), ("USD", "b", 1000), (BOND, "t", 100)):
            self.one(*self.issue_plan(asset, account, amount, ISSUE_SIGNER[asset]))

    def teardown(self) -> None:
        self.h.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- submitting, with every receipt predicted -----------------------------------------

    def batch(self, plans: list) -> list[bytes]:
        """Submit (signed, predict) pairs as one batch. `predict` raises Refused(code) or
        Repeated, or returns a function that applies the instruction to the model; it runs
        against the model as the batch has left it, after the batch's expiry refunds."""
        expired = self.model.expire(self.h.now_ms)
        expected: list = []
        for _, predict in plans:
            try:
                apply = predict()
            except Refused as refusal:
                expected.append(refusal.code)
            except Repeated:
                expected.append(Repeated)
            else:
                apply()
                expected.append(None)
        height = self.model.height
        payloads = [signed.encode() for signed, _ in plans]
        replies, entries = self.h.ledger.process(payloads, self.h.now_ms)
        assert len(replies) == len(plans)
        entries = [entry for event in entries for entry in event_entries(decode(event))]
        kinds = [entry["kind"] for entry in entries]
        assert (
            kinds[: self.model.unpublished + expired] == ["configure"] * self.model.unpublished + ["expire"] * expired
        ), kinds
        for (signed, _), payload, raw, code in zip(plans, payloads, replies, expected, strict=True):
            receipt = from_wire(decode(raw, bytes_max=1 << 22)).msg
            assert isinstance(receipt, Receipt) and receipt.instruction_id == signed.msg.id
            event(f"{signed.msg.TYPE}: {'repeated' if code is Repeated else code.value if code else 'applied'}")
            if code is Repeated:
                assert raw == self.sent[signed.msg.id][2], f"{signed.msg.id} sent again got another receipt"
            elif code is None:
                assert receipt.applied, f"{signed.msg} expected applied, got {receipt}"
                assert receipt.seq == height, (receipt.seq, height)
                height += 1
            else:
                assert (receipt.status, receipt.code) == ("rejected", code.value), (
                    f"{signed.msg} expected {code.value}, got {receipt}"
                )
            if code not in UNRECORDED and code is not Repeated:
                assert signed.msg.id not in self.sent
                self.sent[signed.msg.id] = (payload, signed.body, raw)
            elif code is not Repeated and code is not Code.ID_REUSED:
                assert self.h.store.instruction(signed.msg.id) is None, f"{code.value} spent id {signed.msg.id}"
        self.model.height = height
        assert len(entries) == self.model.unpublished + expired + expected.count(None)
        assert [entry["seq"] for entry in entries] == list(range(height - len(entries), height))
        self.model.unpublished = 0
        assert self.h.ledger.seq == height
        return replies

    def one(self, signed: Signed, predict) -> bytes:
        (reply,) = self.batch([(signed, predict)])
        return reply

    def make(self, cls: type, *signers: str, **fields) -> Signed:
        return self.h.make(cls, *signers, **fields)

    # -- plans: an instruction and the prediction of what it does ------------------------

    def issue_plan(self, asset: str, account: str, amount: int, signer: str):
        def predict():
            need(signer == ISSUE_SIGNER[asset], Code.NOT_AUTHORISED)
            owner = owner_of(account)
            need(asset != BOND or owner == ISSUER[asset], Code.NOT_AUTHORISED)

            def apply():
                self.model.supply[asset][0] += amount
                self.model.move(account, asset, amount, 0)

            return apply

        return self.make(Issue, signer, asset=asset, account=account, amount=amount), predict

    def redeem_plan(self, asset: str, account: str, amount: int, signer: str):
        def predict():
            need(signer == ISSUE_SIGNER[asset], Code.NOT_AUTHORISED)
            need(owner_of(account) == ISSUER[asset], Code.NOT_AUTHORISED)
            need(self.model.available(account, asset) >= amount, Code.INSUFFICIENT_FUNDS)

            def apply():
                self.model.supply[asset][1] += amount
                self.model.move(account, asset, -amount, 0)

            return apply

        return self.make(Redeem, signer, asset=asset, account=account, amount=amount), predict

    def legs_predict(self, legs: list[tuple[str, str, str, int]], signed_by: set[str]):
        """Legs are checked in order, each seeing the ones before it."""
        available = defaultdict(int)
        for from_account, to_account, asset, amount in legs:
            owner = owner_of(from_account)
            owner_of(to_account)
            need(from_account != to_account, Code.INVALID_FIELD)
            need(owner in signed_by, Code.NOT_AUTHORISED)
            key = (from_account, asset)
            need(self.model.available(*key) + available[key] >= amount, Code.INSUFFICIENT_FUNDS)
            available[key] -= amount
            available[(to_account, asset)] += amount

        def apply():
            for from_account, to_account, asset, amount in legs:
                self.model.move(from_account, asset, -amount, 0)
                self.model.move(to_account, asset, amount, 0)

        return apply

    def transfer_plan(self, from_account: str, to_account: str, asset: str, amount: int, signer: str, **fields):
        signed = self.make(
            Transfer, signer, from_account=from_account, to_account=to_account, asset=asset, amount=amount, **fields
        )
        return signed, lambda: self.legs_predict([(from_account, to_account, asset, amount)], {signer})

    def lock_plan(
        self,
        owner_account: str,
        beneficiary: str,
        asset: str,
        amount: int,
        expiry_in_ms: int,
        signer: str,
        preimage: bytes,
        abort_by: tuple[str, ...],
        backstop_after_ms: int | None = None,
    ):
        """A time-lock; with `backstop_after_ms`, a decision lock whose backstop comes that
        long after its expiry (its cancellation preimage the next of PREIMAGES)."""
        expiry_ms = self.h.now_ms + expiry_in_ms
        cancel_preimage = None if backstop_after_ms is None else PREIMAGES[(PREIMAGES.index(preimage) + 1) % 3]
        backstop_ms = None if backstop_after_ms is None else expiry_ms + backstop_after_ms
        signed = self.make(
            Lock,
            signer,
            owner_account=owner_account,
            beneficiary_account=beneficiary,
            asset=asset,
            amount=amount,
            hashlock=hashlock_of(preimage),
            expiry_ms=expiry_ms,
            abort_by=abort_by,
            cancel_hashlock=None if cancel_preimage is None else hashlock_of(cancel_preimage),
            backstop_ms=backstop_ms,
        )
        lock_id = signed.msg.id
        self.lock_ids.append(lock_id)

        def predict():
            owner = owner_of(owner_account)
            owner_of(beneficiary)
            need(owner_account != beneficiary, Code.INVALID_FIELD)
            need(owner == signer, Code.NOT_AUTHORISED)
            need(owner not in abort_by, Code.INVALID_FIELD)  # the owner may not abort its own lock
            need(expiry_ms > self.h.now_ms, Code.EXPIRY_OUT_OF_RANGE)
            need(self.model.available(owner_account, asset) >= amount, Code.INSUFFICIENT_FUNDS)

            def apply():
                self.model.locks[lock_id] = ModelLock(
                    owner_account,
                    beneficiary,
                    asset,
                    amount,
                    preimage,
                    expiry_ms,
                    abort_by,
                    "held",
                    cancel_preimage,
                    backstop_ms,
                )
                self.model.move(owner_account, asset, -amount, amount)

            return apply

        return signed, predict

    def held_lock(self, lock_id: str) -> ModelLock:
        lock = self.model.locks.get(lock_id)
        need(lock is not None, Code.UNKNOWN_LOCK)
        need(lock.state != "refunded" or self.h.now_ms < lock.refund_at_ms, LATE)
        need(lock.state == "held", Code.LOCK_NOT_HELD)
        return lock

    def claim_plan(self, lock_id: str, preimage: bytes, signer: str):
        def predict():
            lock = self.held_lock(lock_id)
            need(preimage == lock.preimage, Code.WRONG_PREIMAGE)

            def apply():
                lock.state = "claimed"
                self.model.move(lock.owner, lock.asset, 0, -lock.amount)
                self.model.move(lock.beneficiary, lock.asset, lock.amount, 0)

            return apply

        return self.make(Claim, signer, lock_id=lock_id, preimage=preimage), predict

    def cancel_plan(self, lock_id: str, preimage: bytes, signer: str):
        def predict():
            lock = self.held_lock(lock_id)
            need(lock.cancel_preimage is not None, Code.NOT_AUTHORISED)  # a time-lock is not cancelled
            need(preimage == lock.cancel_preimage, Code.WRONG_PREIMAGE)

            def apply():
                lock.state = "cancelled"
                self.model.move(lock.owner, lock.asset, lock.amount, -lock.amount)

            return apply

        return self.make(Cancel, signer, lock_id=lock_id, preimage=preimage), predict

    def abort_plan(self, lock_id: str, signer: str):
        def predict():
            lock = self.held_lock(lock_id)
            need(lock.cancel_preimage is None, Code.NOT_AUTHORISED)  # a decision lock is never aborted
            need(signer == OWNERS[lock.beneficiary] or signer in lock.abort_by, Code.NOT_AUTHORISED)

            def apply():
                lock.state = "aborted"
                self.model.move(lock.owner, lock.asset, lock.amount, -lock.amount)

            return apply

        return self.make(Abort, signer, lock_id=lock_id), predict

    def refund_plan(self, lock_id: str, signer: str):
        def predict():
            lock = self.model.locks.get(lock_id)
            need(lock is not None, Code.UNKNOWN_LOCK)
            need(lock.state == "held", Code.LOCK_NOT_HELD)
            need(self.h.now_ms >= lock.refund_at_ms, Code.LOCK_NOT_EXPIRED)
            raise AssertionError("a held lock past its refund time outlived the batch's refunds")

        return self.make(Refund, signer, lock_id=lock_id), predict

    # -- drawing mostly valid instructions from the model's state --------------------------

    def often(self, data, percent: int) -> bool:
        return data.draw(st.integers(0, 99), label="dice") < percent

    def holding(self, data) -> tuple[str, str, int]:
        """Usually an account, an asset it holds and an amount it can pay; sometimes more
        than it has, or anything at all."""
        funded = sorted(key for key, (available, _) in self.model.balances.items() if available > 0)
        if not funded or self.often(data, 10):
            return data.draw(accounts), data.draw(assets), data.draw(amounts)
        account, asset = data.draw(st.sampled_from(funded))
        available = self.model.available(account, asset)
        if self.often(data, 15):
            return account, asset, data.draw(st.integers(available + 1, available + 50))
        return account, asset, data.draw(st.integers(1, available))

    def other_account(self, data, account: str) -> str:
        """Usually a different account that exists; sometimes the same one or a ghost."""
        if self.often(data, 8):
            return data.draw(accounts)
        return data.draw(st.sampled_from(sorted(set(OWNERS) - {account})))

    def signer_for(self, data, rightful: str) -> str:
        return data.draw(signers) if self.often(data, 12) else rightful

    def some_lock(self, data) -> str:
        """Usually a lock that was placed (placing a good one first when there is none, and
        now and then anyway), sometimes one refused or never sent. Now and then the clock
        is first moved to one ms before, at or after a held lock's expiry or refund time."""
        if not self.model.locks or self.often(data, 25):
            owner, asset, amount = self.holding(data)
            beneficiary = data.draw(st.sampled_from(sorted(set(OWNERS) - {owner})))
            signer = OWNERS.get(owner, "bank-a")
            decision = self.often(data, 40)
            abort_by = () if decision else data.draw(st.sampled_from([p for p in ABORT_BY if signer not in p]))
            self.one(
                *self.lock_plan(
                    owner,
                    beneficiary,
                    asset,
                    amount,
                    data.draw(st.integers(1, 3000)),
                    signer,
                    data.draw(st.sampled_from(PREIMAGES)),
                    abort_by,
                    data.draw(st.integers(0, 3000)) if decision else None,
                )
            )
        placed = sorted(self.model.locks)
        if not placed or self.often(data, 8):
            return data.draw(st.sampled_from(self.lock_ids))
        lock_id = data.draw(st.sampled_from(placed))
        lock = self.model.locks[lock_id]
        if lock.state == "held" and self.often(data, 35):
            moment = data.draw(st.sampled_from((lock.expiry_ms, lock.refund_at_ms)))
            self.h.now_ms = max(self.h.now_ms, moment + data.draw(st.integers(-1, 1)))
        return lock_id

    # -- rules ---------------------------------------------------------------------------

    @rule(ms=st.one_of(st.integers(0, 300), st.integers(300, 4000)))
    def time_passes(self, ms):
        self.h.now_ms += ms

    @rule()
    def ledger_wakes_with_nothing_to_do(self):
        self.batch([])

    @rule(data=st.data(), asset=assets, amount=amounts)
    def issue(self, data, asset, amount):
        account = ISSUER_ACCOUNT[asset] if asset == BOND and self.often(data, 80) else data.draw(accounts)
        self.one(*self.issue_plan(asset, account, amount, self.signer_for(data, ISSUE_SIGNER[asset])))

    @rule(data=st.data(), asset=assets)
    def redeem(self, data, asset):
        account = ISSUER_ACCOUNT[asset] if self.often(data, 85) else data.draw(accounts)
        available = self.model.available(account, asset)
        amount = data.draw(st.integers(1, available + 20))
        self.one(*self.redeem_plan(asset, account, amount, self.signer_for(data, ISSUE_SIGNER[asset])))

    @rule(data=st.data())
    def transfer(self, data):
        from_account, asset, amount = self.holding(data)
        to_account = self.other_account(data, from_account)
        signer = self.signer_for(data, OWNERS.get(from_account, "bank-a"))
        self.one(*self.transfer_plan(from_account, to_account, asset, amount, signer))

    @rule(data=st.data(), count=st.integers(1, 3), missing=st.integers(0, 9), extra=st.none() | signers)
    def settle(self, data, count, missing, extra):
        """Signed by the owner of every source account (sometimes one missing, maybe one more)."""
        legs = []
        for _ in range(count):
            from_account, asset, amount = self.holding(data)
            legs.append((from_account, self.other_account(data, from_account), asset, amount))
        signed_by = {OWNERS.get(leg[0], "bank-a") for leg in legs}
        if missing == 0 and len(signed_by) > 1:
            signed_by.discard(min(signed_by))
        signed_by |= {extra} if extra else set()
        signed = self.make(Settle, *sorted(signed_by), legs=tuple(Leg(*leg) for leg in legs))
        self.one(signed, lambda: self.legs_predict(legs, signed_by))

    @rule(data=st.data(), preimage=st.sampled_from(PREIMAGES), abort_by=st.sampled_from(ABORT_BY))
    def lock(self, data, preimage, abort_by):
        """Usually expiring within a few seconds; sometimes already expired. A third are
        decision locks (no abort_by), their backstop a few seconds after their expiry."""
        expiry_in_ms = data.draw(st.integers(-200, 0) if self.often(data, 8) else st.integers(1, 6000))
        owner, asset, amount = self.holding(data)
        beneficiary = self.other_account(data, owner)
        signer = self.signer_for(data, OWNERS.get(owner, "bank-a"))
        backstop_after_ms = data.draw(st.integers(0, 6000)) if self.often(data, 33) else None
        abort_by = () if backstop_after_ms is not None else abort_by
        self.one(
            *self.lock_plan(
                owner, beneficiary, asset, amount, expiry_in_ms, signer, preimage, abort_by, backstop_after_ms
            )
        )

    @rule(data=st.data(), signer=signers)
    def claim(self, data, signer):
        """Anyone may send the secret: usually the lock's own, sometimes a wrong one."""
        lock_id = self.some_lock(data)
        preimage = self.model.locks[lock_id].preimage if lock_id in self.model.locks else PREIMAGES[0]
        if self.often(data, 15):
            preimage = data.draw(st.sampled_from(PREIMAGES))
        self.one(*self.claim_plan(lock_id, preimage, signer))

    @rule(data=st.data(), signer=signers)
    def cancel(self, data, signer):
        """Anyone may send the cancellation preimage: usually the lock's own, sometimes another."""
        lock_id = self.some_lock(data)
        lock = self.model.locks.get(lock_id)
        preimage = lock.cancel_preimage if lock is not None and lock.cancel_preimage else PREIMAGES[1]
        if self.often(data, 15):
            preimage = data.draw(st.sampled_from(PREIMAGES))
        self.one(*self.cancel_plan(lock_id, preimage, signer))

    @rule(data=st.data(), signer=signers, claim_first=st.booleans())
    def claim_and_cancel_race_in_one_batch(self, data, signer, claim_first):
        """Both preimages in one batch: whichever comes first ends the lock, the other finds it ended."""
        lock_id = self.some_lock(data)
        lock = self.model.locks.get(lock_id)
        preimage = lock.preimage if lock else PREIMAGES[0]
        cancel_preimage = lock.cancel_preimage if lock is not None and lock.cancel_preimage else PREIMAGES[1]
        plans = [self.claim_plan(lock_id, preimage, signer), self.cancel_plan(lock_id, cancel_preimage, signer)]
        self.batch(plans if claim_first else plans[::-1])

    @rule(data=st.data())
    def abort(self, data):
        """Usually by the beneficiary or a party the lock names; sometimes by anyone."""
        lock_id = self.some_lock(data)
        lock = self.model.locks.get(lock_id)
        allowed = (OWNERS[lock.beneficiary],) + lock.abort_by if lock else ("coordinator",)
        signer = data.draw(signers) if self.often(data, 30) else data.draw(st.sampled_from(allowed))
        self.one(*self.abort_plan(lock_id, signer))

    @rule(data=st.data(), signer=signers)
    def refund(self, data, signer):
        self.one(*self.refund_plan(self.some_lock(data), signer))

    @rule(data=st.data(), signer=signers, claim_first=st.booleans())
    def claim_and_abort_race_in_one_batch(self, data, signer, claim_first):
        lock_id = self.some_lock(data)
        lock = self.model.locks.get(lock_id)
        preimage = lock.preimage if lock else PREIMAGES[0]
        aborter = OWNERS[lock.beneficiary] if lock else signer
        plans = [self.claim_plan(lock_id, preimage, signer), self.abort_plan(lock_id, aborter)]
        self.batch(plans if claim_first else plans[::-1])

    @rule(data=st.data())
    def same_instruction_twice_in_one_batch(self, data):
        from_account, asset, amount = self.holding(data)
        to_account = self.other_account(data, from_account)
        signed, predict = self.transfer_plan(
            from_account, to_account, asset, amount, OWNERS.get(from_account, "bank-a")
        )
        first, again = self.batch([(signed, predict), (signed, repeated)])
        assert first == again

    @rule(data=st.data())
    @precondition(lambda self: self.sent)
    def earlier_instruction_sent_again(self, data):
        self.resend(data.draw(st.sampled_from(sorted(self.sent))))

    @rule(data=st.data(), amount=amounts)
    @precondition(lambda self: self.sent)
    def id_reused_with_other_content(self, data, amount):
        instruction_id = data.draw(st.sampled_from(sorted(self.sent)))
        _, first_body, first_receipt = self.sent[instruction_id]
        signed = self.make(
            Transfer, "bank-a", id=instruction_id, from_account="a", to_account="b", asset="EUR", amount=amount
        )
        if signed.body == first_body:
            self.resend(instruction_id)
            return
        missing = object()  # an omitted field and a null one are different bodies
        differing = sorted(
            key
            for key in first_body.keys() | signed.body.keys()
            if first_body.get(key, missing) != signed.body.get(key, missing)
        )
        (reply,) = self.batch([(signed, refused(Code.ID_REUSED))])
        assert from_wire(decode(reply)).msg.field == differing[0]
        assert self.sent[instruction_id][2] == first_receipt

    @rule(data=st.data(), name_unknown=st.booleans())
    def forged_signature_then_genuine_instruction_with_the_same_id(self, data, name_unknown):
        from_account, asset, amount = self.holding(data)
        to_account = self.other_account(data, from_account)
        owner = OWNERS.get(from_account, "bank-a")
        genuine, predict = self.transfer_plan(from_account, to_account, asset, amount, owner)
        forger = "treasury" if owner != "treasury" else "bank-b"
        forged_sig = WORLD.keys[forger].sign(signing_bytes(genuine.body))
        forged = Signed(genuine.msg, {"mallory" if name_unknown else owner: forged_sig}, genuine.body)
        self.one(forged, refused(Code.UNKNOWN_SIGNER if name_unknown else Code.BAD_SIGNATURE))
        self.one(genuine, predict)

    @rule(data=st.data(), skew_ms=st.sampled_from((-TS_AGE_MS_MAX - 1, 60_001)))
    def instruction_signed_outside_the_freshness_window_is_stale(self, data, skew_ms):
        from_account, asset, amount = self.holding(data)
        signed = self.make(
            Transfer,
            OWNERS.get(from_account, "bank-a"),
            from_account=from_account,
            to_account=self.other_account(data, from_account),
            asset=asset,
            amount=amount,
            ts_ms=self.h.now_ms + skew_ms,
        )
        self.one(signed, refused(Code.STALE))

    # -- what must hold after every step -----------------------------------------------

    def resend(self, instruction_id: str) -> None:
        """Sent again, an instruction gets its first receipt, byte for byte, and the journal
        does not grow (beyond the refunds the batch makes at its own expiry)."""
        payload, _, first_receipt = self.sent[instruction_id]
        expired = self.model.expire(self.h.now_ms)
        height = self.model.height
        (reply,), entries = self.h.ledger.process([payload], self.h.now_ms)
        assert reply == first_receipt
        assert [entry["kind"] for event in entries for entry in event_entries(decode(event))] == ["expire"] * expired
        assert self.h.ledger.seq == height

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        if self.sent:
            self.resend(max(self.sent, key=lambda key: int(key.lstrip("i"))))
        store = self.h.store
        balances = store.all_balances()
        for key, (available, locked) in balances.items():
            assert available >= 0 and locked >= 0, f"{key} is negative: {available}, {locked}"
        model_balances = {key: tuple(value) for key, value in self.model.balances.items() if value != [0, 0]}
        assert {key: value for key, value in balances.items() if value != (0, 0)} == model_balances

        totals = defaultdict(int)
        for (_, asset), (available, locked) in balances.items():
            totals[asset] += available + locked
        supply = {asset.code: asset for asset in store.assets()}
        assert set(supply) == set(ASSETS)
        for code, asset in supply.items():
            assert totals[code] == asset.issued - asset.redeemed, f"{code} is not conserved"
            assert [asset.issued, asset.redeemed] == self.model.supply[code]

        locks = {lock.lock_id: lock for lock in store.all_locks()}
        assert {lock_id: lock.state.value for lock_id, lock in locks.items()} == {
            lock_id: lock.state for lock_id, lock in self.model.locks.items()
        }
        for lock_id, state in self.ended.items():
            assert locks[lock_id].state.value == state, f"lock {lock_id} left its end state {state}"
        self.ended.update({lock_id: lock.state.value for lock_id, lock in locks.items() if lock.state.value != "held"})
        held = defaultdict(int)
        for lock in locks.values():
            if lock.state.value == "held":
                held[(lock.owner_account, lock.asset)] += lock.amount
        for key, (_, locked) in balances.items():
            assert locked == held[key], f"{key} has {locked} locked, its held locks sum to {held[key]}"

        journal = store.journal()
        assert len(journal) == self.h.ledger.seq == self.model.height
        replay = Replay()
        links = (Link(seq, stored_hash, raw) for seq, stored_hash, raw in journal)
        for signed, _ in verify_chain(links, "unified", WORLD.keys["unified"].public, signatures="last"):
            replay.apply(signed.msg)
        assert replay.conservation_problems() == []
        assert {key: tuple(value) for key, value in replay.balances.items()} == balances


LedgerMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
test_ledger_matches_its_model_under_random_instructions = pytest.mark.slow(LedgerMachine.TestCase)
