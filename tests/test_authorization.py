"""The authorization matrix of docs/SECURITY.md, cell by cell, and the replay, freshness,
domain-separation and tampering guarantees that the other test files do not already show.

Every instruction type is sent to a ledger signed by each kind of signer in turn (the
owner of the account it takes from, its counterparty, an uninvolved participant, the
currency's central bank, another central bank, the ledger's operator, the coordinator
named in a settlement, another coordinator, the ledger's own key, both counterparties
together, and a key nobody registered); each cell is either applied, with exactly the
effect it should have, or refused with its code and field, changing nothing (balances,
locks, accounts, assets, keys, journal height) and, when the refusal is for want of
authority, not recorded against the instruction id. Then: a coordinator cannot move an
asset other than exactly as the counterparties signed; a captured or mutated message
never applies; a database changed behind a ledger's back is caught, at start and by the
audit; a history rewritten under the ledger's own key is caught by the audit. Six of
these tests first failed, and led to fixes (docs/SECURITY.md, "Gaps found")."""

from __future__ import annotations

import copy
import hashlib
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.audit.journals import audit, read_database
from engine.world.layout import World, lay_out
from protocols.canonical import encode
from protocols.errors import Code
from protocols.identifiers import make_isin
from protocols.messages import (
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Fence,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    Redeem,
    Refund,
    RotateKey,
    Settle,
    Settlement,
    SettlementLeg,
    Transfer,
    to_body,
)
from protocols.registry import Role
from protocols.signing import DOMAIN, PrivateKey, Signed, decode_signed, public_point, sign
from tests.harness import BOND, LEDGERS, PARTIES, T0, Harness
from tests.test_audit import journal, rewrite
from tests.test_instructions import HASHLOCK, MINUTE_MS, SECRET, applied, receipt_of, refused
from tests.test_restart import edit, refusal

OTHER_BOND = make_isin("XS000000002")
MALLORY = "mallory"  # signs with a key that no registry holds
EXTRA_PARTIES = {"bank-c": (Role.PARTICIPANT,), "coord-2": (Role.COORDINATOR,)}
DEADLINE = T0 + 10 * MINUTE_MS
NOT_AUTHORISED_SIGS = (Code.NOT_AUTHORISED, "sigs")
UNKNOWN_SIGNER_SIGS = (Code.UNKNOWN_SIGNER, "sigs")


@pytest.fixture
def world(tmp_path: Path) -> World:
    """The usual world (tests/harness.py) plus a third participant, a second coordinator
    and Mallory's key, which is not in the registry. Overrides the conftest fixture, so
    `harness` lays out its ledgers in this world."""
    world = lay_out(tmp_path, LEDGERS, {**PARTIES, **EXTRA_PARTIES})
    world.keys[MALLORY] = PrivateKey.generate()
    return world


# -- state, and what changed ------------------------------------------------------------------


class State(NamedTuple):
    balances: dict
    locks: list
    assets: list
    accounts: dict
    keys: dict
    seq: int
    head: str


def state(h: Harness) -> State:
    """Everything an instruction may change, as the store holds it, and the journal head."""
    return State(
        h.store.all_balances(),
        h.store.all_locks(),
        h.store.assets(),
        h.store.all_accounts(),
        h.store.all_keys(),
        h.ledger.seq,
        h.ledger.prev_hash,
    )


def deltas(before: State, after: State) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, asset) -> (available, locked) change, for every balance that changed."""
    changed = {}
    for key in before.balances.keys() | after.balances.keys():
        (a0, l0), (a1, l1) = before.balances.get(key, (0, 0)), after.balances.get(key, (0, 0))
        if (a0, l0) != (a1, l1):
            changed[key] = (a1 - a0, l1 - l0)
    return changed


NOT_RECORDED = {Code.NOT_AUTHORISED, Code.MISSING_SIGNATURE, Code.STALE, Code.BAD_SIGNATURE, Code.FENCED}


def is_recorded(code: Code, field: str) -> bool:
    """PROTOCOL.md §12: refusals for want of authentication or authority, stale ones and
    anything about the settlement in `auth` are answered and forgotten."""
    return not (code in NOT_RECORDED or (code is Code.UNKNOWN_SIGNER and field == "sigs") or field.startswith("auth."))


def refused_unchanged(h: Harness, signed: Signed, code: Code, field: str):
    """Send; it is refused with this code and field, nothing changed, and it is
    recorded against its id exactly when the protocol says it is."""
    before = state(h)
    receipt = refused(h.submit(signed), code, field)
    assert state(h) == before
    stored = receipt_of(h, signed.msg.id)
    if code is Code.ID_REUSED:
        assert stored != receipt  # the id keeps the answer it was first recorded with
    elif is_recorded(code, field):
        assert stored == receipt
    else:
        assert stored.code == Code.UNKNOWN_INSTRUCTION.value, stored
    return receipt


# -- a populated unified ledger -----------------------------------------------------------------

ACCOUNTS = {"acc-a": "bank-a", "acc-b": "bank-b", "acc-b2": "bank-b", "acc-c": "bank-c", "acc-ecb": "ecb"}


def populate(h: Harness) -> Harness:
    """On the unified ledger (operator csd-op; EUR by ecb, USD by fed): BOND, issued by
    bank-a, 600 in acc-a and 400 in acc-b; 10 000 EUR in acc-a, 5 000 EUR in the ECB's
    own acc-ecb, 5 000 USD in acc-b."""
    for account, owner in ACCOUNTS.items():
        applied(h.send(OpenAccount, "csd-op", account=account, owner=owner))
    applied(
        h.send(
            CreateInstrument,
            "csd-op",
            isin=BOND,
            issuer="bank-a",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=250,
            maturity_date="2030-06-15",
        )
    )
    applied(h.send(Issue, "csd-op", asset=BOND, account="acc-a", amount=1_000))
    applied(h.send(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset=BOND, amount=400))
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-a", amount=10_000))
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-ecb", amount=5_000))
    applied(h.send(Issue, "fed", asset="USD", account="acc-b", amount=5_000))
    return h


@pytest.fixture
def unified(harness) -> Harness:
    return populate(harness("unified"))


def place_lock(
    h: Harness, lock_id: str, *, abort_by=("coordinator",), expiry_ms: int = T0 + MINUTE_MS, amount: int = 1_000
) -> str:
    applied(
        h.send(
            Lock,
            "bank-a",
            id=lock_id,
            owner_account="acc-a",
            beneficiary_account="acc-b",
            asset="EUR",
            amount=amount,
            hashlock=HASHLOCK,
            expiry_ms=expiry_ms,
            abort_by=tuple(abort_by),
        )
    )
    return lock_id


# -- settlements ---------------------------------------------------------------------------------

CROSS = (
    SettlementLeg("unified", "acc-a", "acc-b", "EUR", 1_000),  # leg 0 here: bank-a pays bank-b
    SettlementLeg("csd", "acc-b", "acc-a", BOND, 10),
)  # leg 1 on another ledger
SAME = (
    SettlementLeg("unified", "acc-a", "acc-b", "EUR", 1_000),  # both legs here: same-ledger DvP
    SettlementLeg("unified", "acc-b", "acc-a", BOND, 10),
)


def settlement(
    h: Harness,
    legs=CROSS,
    *,
    settlement_id: str = "dvp-1",
    coordinator: str = "coordinator",
    deadline_ms: int = DEADLINE,
    parties=("bank-a", "bank-b"),
    signers=None,
) -> dict:
    """The counterparties' signed settlement, as a coordinator carries it in `auth`."""
    msg = Settlement(settlement_id, "dvp", T0, coordinator, deadline_ms, tuple(parties), tuple(legs))
    return sign(msg, *((party, h.world.keys[party]) for party in (signers or parties))).wire()


def coordinator_lock(h: Harness, auth: dict | None = None, signers=("coordinator",), **changes) -> Signed:
    """The coordinator's lock of leg 0 of `auth` (by default dvp-1 across unified and csd)."""
    fields = dict(
        id="dvp-1:0",
        owner_account="acc-a",
        beneficiary_account="acc-b",
        asset="EUR",
        amount=1_000,
        hashlock=HASHLOCK,
        expiry_ms=T0 + MINUTE_MS,
        abort_by=("coordinator",),
        auth=settlement(h) if auth is None else auth,
    )
    fields.update(changes)
    return h.make(Lock, *signers, **fields)


def coordinator_settle(h: Harness, auth: dict | None = None, signers=("coordinator",), legs=None, **changes) -> Signed:
    """The coordinator's settle of the same-ledger DvP `dvp-2` (both legs on unified)."""
    fields = dict(
        id="dvp-2:settle",
        legs=tuple(leg.as_leg() for leg in SAME) if legs is None else tuple(legs),
        auth=settlement(h, SAME, settlement_id="dvp-2") if auth is None else auth,
    )
    fields.update(changes)
    return h.make(Settle, *signers, **fields)


# == 1. The matrix: every instruction type x every kind of signer, on the unified ledger =========

SIGNERS: dict[str, tuple[str, ...]] = {
    "owner": ("bank-a",),  # owns acc-a, the account each instruction takes from
    "counterparty": ("bank-b",),  # owns acc-b, the account paid (a lock's beneficiary)
    "participant": ("bank-c",),  # a participant with no part in it
    "central_bank": ("ecb",),  # issues EUR
    "other_central_bank": ("fed",),  # issues USD, not EUR
    "operator": ("csd-op",),  # the ledger's operator (the depository)
    "coordinator": ("coordinator",),  # named in the settlement / in the lock's abort_by
    "other_coordinator": ("coord-2",),  # a coordinator named nowhere
    "ledger": ("unified",),  # the ledger's own key
    "both_parties": ("bank-a", "bank-b"),  # owner and counterparty together
    "unregistered": (MALLORY,),  # a key no registry holds
}


@attrs.frozen
class Row:
    """One instruction in one situation: `setup(h)` prepares the ledger and returns
    `make(signers) -> Signed` and `effect(before, after)`, which checks an applied cell."""

    setup: Callable
    allowed: frozenset[str]
    refusal: tuple[Code, str] = NOT_AUTHORISED_SIGS  # every other registered signer
    overrides: dict = attrs.field(factory=dict)  # signer -> (code, field)

    def expected(self, signer: str) -> tuple[Code, str] | None:
        if signer in self.allowed:
            return None
        if signer in self.overrides:
            return self.overrides[signer]
        return UNKNOWN_SIGNER_SIGS if signer == "unregistered" else self.refusal


ROWS: dict[str, Row] = {}
EVERY_REGISTERED = frozenset(SIGNERS) - {"unregistered"}


def row(name: str, allowed, refusal=NOT_AUTHORISED_SIGS, **overrides):
    def register(setup: Callable) -> Callable:
        ROWS[name] = Row(setup, frozenset(allowed), refusal, overrides)
        return setup

    return register


def moved(expected: dict):
    """An effect check: exactly these balances changed, by exactly these amounts."""

    def effect(h: Harness, before: State, after: State) -> None:
        assert deltas(before, after) == expected

    return effect


@row("open_account", allowed={"owner", "operator", "both_parties"})
def _(h):
    def effect(h, before, after):
        assert after.accounts == {**before.accounts, "acc-new": "bank-a"} and deltas(before, after) == {}

    return lambda signers: h.make(OpenAccount, *signers, account="acc-new", owner="bank-a"), effect


@row("create_instrument", allowed={"operator"})
def _(h):
    def effect(h, before, after):
        asset = h.store.asset(OTHER_BOND)
        assert (asset.kind, asset.issuer, asset.issued) == ("security", "bank-a", 0) and deltas(before, after) == {}

    return (
        lambda signers: h.make(
            CreateInstrument,
            *signers,
            isin=OTHER_BOND,
            issuer="bank-a",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=0,
            maturity_date="2031-01-01",
        ),
        effect,
    )


@row("issue_currency", allowed={"central_bank"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", "EUR"): (700, 0)})(h, before, after)
        assert h.store.asset("EUR").issued == 15_700

    return lambda signers: h.make(Issue, *signers, asset="EUR", account="acc-a", amount=700), effect


@row("redeem_currency", allowed={"central_bank"})
def _(h):
    def effect(h, before, after):
        moved({("acc-ecb", "EUR"): (-300, 0)})(h, before, after)
        assert h.store.asset("EUR").redeemed == 300

    return lambda signers: h.make(Redeem, *signers, asset="EUR", account="acc-ecb", amount=300), effect


@row("redeem_currency_from_a_participant", allowed=(), central_bank=(Code.NOT_AUTHORISED, "account"))
def _(h):
    return lambda signers: h.make(Redeem, *signers, asset="EUR", account="acc-a", amount=1), None


@row("issue_instrument", allowed={"operator"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", BOND): (250, 0)})(h, before, after)
        assert h.store.asset(BOND).issued == 1_250

    return lambda signers: h.make(Issue, *signers, asset=BOND, account="acc-a", amount=250), effect


@row("issue_instrument_to_a_non_issuer", allowed=(), operator=(Code.NOT_AUTHORISED, "account"))
def _(h):
    return lambda signers: h.make(Issue, *signers, asset=BOND, account="acc-b", amount=1), None


@row("redeem_instrument", allowed={"operator"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", BOND): (-100, 0)})(h, before, after)
        assert h.store.asset(BOND).redeemed == 100

    return lambda signers: h.make(Redeem, *signers, asset=BOND, account="acc-a", amount=100), effect


@row("redeem_instrument_from_a_holder", allowed=(), operator=(Code.NOT_AUTHORISED, "account"))
def _(h):
    return lambda signers: h.make(Redeem, *signers, asset=BOND, account="acc-b", amount=1), None


@row("transfer_currency", allowed={"owner", "both_parties"})
def _(h):
    return (
        lambda signers: h.make(Transfer, *signers, from_account="acc-a", to_account="acc-b", asset="EUR", amount=2_500),
        moved({("acc-a", "EUR"): (-2_500, 0), ("acc-b", "EUR"): (2_500, 0)}),
    )


@row("transfer_instrument", allowed={"owner", "both_parties"})
def _(h):
    return (
        lambda signers: h.make(Transfer, *signers, from_account="acc-a", to_account="acc-b", asset=BOND, amount=100),
        moved({("acc-a", BOND): (-100, 0), ("acc-b", BOND): (100, 0)}),
    )


@row("lock", allowed={"owner", "both_parties"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", "EUR"): (-1_000, 1_000)})(h, before, after)
        assert h.store.lock("lock-1").state.value == "held"

    return (
        lambda signers: h.make(
            Lock,
            *signers,
            id="lock-1",
            owner_account="acc-a",
            beneficiary_account="acc-b",
            asset="EUR",
            amount=1_000,
            hashlock=HASHLOCK,
            expiry_ms=T0 + MINUTE_MS,
            abort_by=("coordinator",),
        ),
        effect,
    )


@row("lock_for_a_settlement", allowed={"coordinator"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", "EUR"): (-1_000, 1_000)})(h, before, after)
        assert h.store.lock("dvp-1:0").abort_by == ("coordinator",)

    auth = settlement(h)
    return lambda signers: coordinator_lock(h, auth, signers), effect


CANCEL_SECRET = bytes(range(32, 64))
BACKSTOP_MS = T0 + 60 * MINUTE_MS


def decision_lock(h: Harness, signers=("coordinator",)) -> Signed:
    """The coordinator's decision lock of leg 0 of dvp-1: a cancel hashlock, a backstop, no abort_by."""
    return coordinator_lock(
        h, signers=signers, abort_by=(), cancel_hashlock=hashlib.sha256(CANCEL_SECRET).digest(), backstop_ms=BACKSTOP_MS
    )


@row("lock_for_a_settlement_decided_by_preimages", allowed={"coordinator"})
def _(h):
    def effect(h, before, after):
        moved({("acc-a", "EUR"): (-1_000, 1_000)})(h, before, after)
        lock = h.store.lock("dvp-1:0")
        assert (lock.abort_by, lock.backstop_ms, lock.decides) == ((), BACKSTOP_MS, True)

    return lambda signers: decision_lock(h, signers), effect


@row("claim", allowed=EVERY_REGISTERED)
def _(h):
    """Whoever sends the secret, the beneficiary is paid and nobody else."""
    place_lock(h, "lock-1")

    def effect(h, before, after):
        moved({("acc-a", "EUR"): (0, -1_000), ("acc-b", "EUR"): (1_000, 0)})(h, before, after)
        assert h.store.lock("lock-1").state.value == "claimed"

    return lambda signers: h.make(Claim, *signers, lock_id="lock-1", preimage=SECRET), effect


def refunded_to_owner(lock_id: str, state_name: str):
    def effect(h, before, after):
        moved({("acc-a", "EUR"): (1_000, -1_000)})(h, before, after)
        assert h.store.lock(lock_id).state.value == state_name

    return effect


@row("refund_at_expiry", allowed=EVERY_REGISTERED)
def _(h):
    """At the expiry exactly, of a lock the ledger has not refunded by itself yet (an
    expiry backlog: it refunds `batch_size_max` due locks per batch; here none)."""
    place_lock(h, "lock-1")
    h.ledger.config = attrs.evolve(h.ledger.config, limits=attrs.evolve(h.ledger.config.limits, batch_size_max=0))
    h.now_ms = T0 + MINUTE_MS
    return lambda signers: h.make(Refund, *signers, lock_id="lock-1"), refunded_to_owner("lock-1", "refunded")


@row("refund_before_expiry", allowed=(), refusal=(Code.LOCK_NOT_EXPIRED, "lock_id"))
def _(h):
    place_lock(h, "lock-1")
    h.now_ms = T0 + MINUTE_MS - 1
    return lambda signers: h.make(Refund, *signers, lock_id="lock-1"), None


@row("abort", allowed={"counterparty", "coordinator", "both_parties"})
def _(h):
    """abort_by = [coordinator]: the beneficiary's owner or the coordinator; never the owner."""
    place_lock(h, "lock-1")
    return lambda signers: h.make(Abort, *signers, lock_id="lock-1"), refunded_to_owner("lock-1", "aborted")


@row("abort_naming_a_participant", allowed={"counterparty", "participant", "both_parties"})
def _(h):
    """abort_by = [bank-c]: being named is what counts, not being a coordinator."""
    place_lock(h, "lock-1", abort_by=("bank-c",))
    return lambda signers: h.make(Abort, *signers, lock_id="lock-1"), refunded_to_owner("lock-1", "aborted")


@row("abort_of_a_settlements_lock", allowed={"counterparty", "coordinator", "both_parties"})
def _(h):
    applied(h.submit(coordinator_lock(h)))
    return lambda signers: h.make(Abort, *signers, lock_id="dvp-1:0"), refunded_to_owner("dvp-1:0", "aborted")


@row("abort_at_expiry", allowed=(), refusal=(Code.LOCK_EXPIRED, "lock_id"))
def _(h):
    place_lock(h, "lock-1")
    h.now_ms = T0 + MINUTE_MS
    h.tick()  # the ledger refunds the lock by itself
    return lambda signers: h.make(Abort, *signers, lock_id="lock-1"), None


@row("claim_of_a_decision_lock_past_its_expiry", allowed=EVERY_REGISTERED)
def _(h):
    """Past the time to decide by, before the backstop: still claimed, by whoever sends the secret."""
    applied(h.submit(decision_lock(h)))
    h.now_ms = BACKSTOP_MS - 1

    def effect(h, before, after):
        moved({("acc-a", "EUR"): (0, -1_000), ("acc-b", "EUR"): (1_000, 0)})(h, before, after)
        assert h.store.lock("dvp-1:0").state.value == "claimed"

    return lambda signers: h.make(Claim, *signers, lock_id="dvp-1:0", preimage=SECRET, ts_ms=h.now_ms), effect


@row("cancel", allowed=EVERY_REGISTERED)
def _(h):
    """Whoever sends the cancellation preimage, the owner gets its asset back and nobody else."""
    applied(h.submit(decision_lock(h)))
    return (
        lambda signers: h.make(Cancel, *signers, lock_id="dvp-1:0", preimage=CANCEL_SECRET),
        refunded_to_owner("dvp-1:0", "cancelled"),
    )


@row("cancel_with_the_claim_secret", allowed=(), refusal=(Code.WRONG_PREIMAGE, "preimage"))
def _(h):
    applied(h.submit(decision_lock(h)))
    return lambda signers: h.make(Cancel, *signers, lock_id="dvp-1:0", preimage=SECRET), None


@row("cancel_of_a_time_lock", allowed=(), refusal=(Code.NOT_AUTHORISED, "lock_id"))
def _(h):
    place_lock(h, "lock-1")
    return lambda signers: h.make(Cancel, *signers, lock_id="lock-1", preimage=CANCEL_SECRET), None


@row("cancel_at_the_backstop", allowed=(), refusal=(Code.LOCK_EXPIRED, "lock_id"))
def _(h):
    applied(h.submit(decision_lock(h)))
    h.now_ms = BACKSTOP_MS
    h.tick()  # the ledger refunds the lock by itself
    return lambda signers: h.make(Cancel, *signers, lock_id="dvp-1:0", preimage=CANCEL_SECRET, ts_ms=h.now_ms), None


@row("abort_of_a_decision_lock", allowed=(), refusal=(Code.NOT_AUTHORISED, "lock_id"))
def _(h):
    """No one-sided release: not the coordinator, not the beneficiary, not both parties."""
    applied(h.submit(decision_lock(h)))
    return lambda signers: h.make(Abort, *signers, lock_id="dvp-1:0"), None


SAME_LEGS_MOVED = {
    ("acc-a", "EUR"): (-1_000, 0),
    ("acc-b", "EUR"): (1_000, 0),
    ("acc-b", BOND): (-10, 0),
    ("acc-a", BOND): (10, 0),
}


@row("settle", allowed={"both_parties"})
def _(h):
    return (lambda signers: h.make(Settle, *signers, legs=tuple(leg.as_leg() for leg in SAME)), moved(SAME_LEGS_MOVED))


@row("settle_for_a_settlement", allowed={"coordinator"})
def _(h):
    auth = settlement(h, SAME, settlement_id="dvp-2")
    return lambda signers: coordinator_settle(h, auth, signers), moved(SAME_LEGS_MOVED)


NOT_AUTHORISED_EPOCH = (Code.NOT_AUTHORISED, "epoch")
FENCED_EPOCH = (Code.FENCED, "epoch")


def fenced_at(h: Harness, epoch: int) -> None:
    applied(h.send(Fence, "coordinator", epoch=epoch))


@row("fence", allowed={"coordinator", "other_coordinator"}, refusal=NOT_AUTHORISED_EPOCH)
def _(h):
    """Any coordinator, alone, raises its own fence: nothing else changes."""
    fenced_at(h, 2)

    def effect(h, before, after):
        assert deltas(before, after) == {} and after.locks == before.locks
        assert {h.store.fence("coordinator"), h.store.fence("coord-2")} in ({3, 0}, {2, 3})

    return lambda signers: h.make(Fence, *signers, epoch=3), effect


@row(
    "fence_going_down", allowed={"other_coordinator"}, refusal=NOT_AUTHORISED_EPOCH, coordinator=(Code.FENCED, "epoch")
)
def _(h):
    fenced_at(h, 5)
    return lambda signers: h.make(Fence, *signers, epoch=4), lambda h, before, after: None


@row(
    "claim_at_an_epoch", allowed={"other_coordinator"}, refusal=NOT_AUTHORISED_EPOCH, coordinator=(Code.FENCED, "epoch")
)
def _(h):
    """An epoch below its signer's fence is an instance since replaced; another coordinator's
    fence is its own; an epoch on anything but one coordinator's signature is refused."""
    place_lock(h, "lock-1")
    fenced_at(h, 5)

    def effect(h, before, after):
        moved({("acc-a", "EUR"): (0, -1_000), ("acc-b", "EUR"): (1_000, 0)})(h, before, after)
        assert (h.store.fence("coordinator"), h.store.fence("coord-2")) == (5, 4)

    return lambda signers: h.make(Claim, *signers, lock_id="lock-1", preimage=SECRET, epoch=4), effect


@row("abort_at_an_epoch", allowed={"coordinator"}, refusal=NOT_AUTHORISED_EPOCH, other_coordinator=NOT_AUTHORISED_SIGS)
def _(h):
    """At or above the fence, an abort is judged as any: the coordinator named may abort."""
    place_lock(h, "lock-1")
    fenced_at(h, 5)
    return lambda signers: h.make(Abort, *signers, lock_id="lock-1", epoch=5), refunded_to_owner("lock-1", "aborted")


@row("rotate_key", allowed={"operator"})
def _(h):
    new = public_point(PrivateKey.generate().public)

    def effect(h, before, after):
        assert after.keys == {"bank-a": new} and deltas(before, after) == {}
        assert public_point(h.ledger.registry["bank-a"].public_key) == new

    return lambda signers: h.make(RotateKey, *signers, party="bank-a", public_key=new), effect


def test_the_matrix_has_a_row_for_every_instruction_type():
    from protocols.messages import INSTRUCTIONS

    prefixes = {
        Abort: "abort",
        Cancel: "cancel",
        Claim: "claim",
        Fence: "fence",
        CreateInstrument: "create_instrument",
        Issue: "issue",
        Lock: "lock",
        OpenAccount: "open_account",
        Redeem: "redeem",
        Refund: "refund",
        RotateKey: "rotate_key",
        Settle: "settle",
        Transfer: "transfer",
    }
    assert set(INSTRUCTIONS) == set(prefixes)
    for cls, prefix in prefixes.items():
        assert any(name.startswith(prefix) for name in ROWS), cls


CELLS = [(name, signer) for name in ROWS for signer in SIGNERS]


@pytest.mark.parametrize(("row_name", "signer"), CELLS, ids=[f"{name}-{signer}" for name, signer in CELLS])
def test_authorization_matrix(unified, row_name, signer):
    h = unified
    spec = ROWS[row_name]
    make, effect = spec.setup(h)
    signed = make(SIGNERS[signer])
    expected = spec.expected(signer)
    if expected is None:
        before = state(h)
        receipt = applied(h.submit(signed))
        after = state(h)
        assert receipt.seq == before.seq and after.seq == before.seq + 1
        effect(h, before, after)
    else:
        refused_unchanged(h, signed, *expected)


# -- the same rules on the other ledger roles ------------------------------------------------------


def role_populate(h: Harness) -> Harness:
    """acc-a (bank-a), acc-b (bank-b) and an own account per currency issuer, opened by the
    ledger's operator; BOND (issuer bank-a) with 100 in acc-a where instruments are held;
    1 000 of each currency in acc-a and in its issuer's account."""
    operator = h.config.operator
    issuers = {currency.issuer for currency in h.config.currencies}
    for account, owner in [("acc-a", "bank-a"), ("acc-b", "bank-b")] + [(f"acc-{cb}", cb) for cb in sorted(issuers)]:
        applied(h.send(OpenAccount, operator, account=account, owner=owner))
    if h.config.holds_securities:
        applied(
            h.send(
                CreateInstrument,
                operator,
                isin=BOND,
                issuer="bank-a",
                currency="EUR",
                face_value_minor=100_000,
                coupon_rate_bp=0,
                maturity_date="2030-06-15",
            )
        )
        applied(h.send(Issue, operator, asset=BOND, account="acc-a", amount=100))
    for currency in h.config.currencies:
        for account in ("acc-a", f"acc-{currency.issuer}"):
            applied(h.send(Issue, currency.issuer, asset=currency.code, account=account, amount=1_000))
    return h


def role_action(h: Harness, action: str, signer: str) -> tuple[Signed, dict | None]:
    """The instruction, and the balances it moves when applied."""
    name, _, asset = action.partition(":")
    if name == "open_account":
        return h.make(OpenAccount, signer, account="acc-new", owner="bank-a"), {}
    if name == "create_instrument":
        return h.make(
            CreateInstrument,
            signer,
            isin=OTHER_BOND,
            issuer="bank-a",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=0,
            maturity_date="2031-01-01",
        ), {}
    if name == "issue":
        return h.make(Issue, signer, asset=asset, account="acc-a", amount=10), {("acc-a", asset): (10, 0)}
    if name == "redeem":
        issuers = {currency.code: currency.issuer for currency in h.config.currencies}
        account = "acc-a" if asset == BOND else f"acc-{issuers[asset]}"  # the issuer's own account
        return h.make(Redeem, signer, asset=asset, account=account, amount=10), {(account, asset): (-10, 0)}
    if name == "transfer":
        return (
            h.make(Transfer, signer, from_account="acc-a", to_account="acc-b", asset=asset, amount=10),
            {("acc-a", asset): (-10, 0), ("acc-b", asset): (10, 0)},
        )
    raise AssertionError(action)


ROLE_CELLS = [
    # securities: the depository (csd-op) runs it; no currency lives here
    ("csd", "open_account", "csd-op", None),
    ("csd", "open_account", "ecb", NOT_AUTHORISED_SIGS),
    ("csd", "create_instrument", "csd-op", None),
    ("csd", "create_instrument", "bank-a", NOT_AUTHORISED_SIGS),
    ("csd", f"issue:{BOND}", "csd-op", None),
    ("csd", f"issue:{BOND}", "bank-a", NOT_AUTHORISED_SIGS),
    ("csd", f"redeem:{BOND}", "csd-op", None),
    ("csd", f"redeem:{BOND}", "bank-a", NOT_AUTHORISED_SIGS),
    ("csd", f"transfer:{BOND}", "bank-a", None),
    ("csd", f"transfer:{BOND}", "csd-op", NOT_AUTHORISED_SIGS),
    ("csd", "issue:EUR", "ecb", (Code.UNKNOWN_ASSET, "asset")),
    # cbdc, one currency, run by its own central bank: no instrument can be created, even by it
    ("cbdc-eur", "open_account", "ecb", None),
    ("cbdc-eur", "open_account", "csd-op", NOT_AUTHORISED_SIGS),
    ("cbdc-eur", "create_instrument", "ecb", (Code.NOT_AUTHORISED, "type")),
    ("cbdc-eur", "create_instrument", "csd-op", (Code.NOT_AUTHORISED, "type")),
    ("cbdc-eur", "issue:EUR", "ecb", None),
    ("cbdc-eur", "issue:EUR", "fed", NOT_AUTHORISED_SIGS),
    ("cbdc-eur", "redeem:EUR", "ecb", None),
    ("cbdc-eur", "redeem:EUR", "bank-a", NOT_AUTHORISED_SIGS),
    ("cbdc-eur", "transfer:EUR", "bank-a", None),
    ("cbdc-eur", "transfer:EUR", "ecb", NOT_AUTHORISED_SIGS),
    ("cbdc-eur", f"issue:{BOND}", "csd-op", (Code.UNKNOWN_ASSET, "asset")),
    # cbdc, two currencies, run by the Fed: the SNB alone mints and burns CHF, the Fed alone USD
    ("cbdc-multi", "open_account", "fed", None),
    ("cbdc-multi", "open_account", "snb", NOT_AUTHORISED_SIGS),
    ("cbdc-multi", "issue:CHF", "snb", None),
    ("cbdc-multi", "issue:CHF", "fed", NOT_AUTHORISED_SIGS),
    ("cbdc-multi", "issue:USD", "fed", None),
    ("cbdc-multi", "issue:USD", "snb", NOT_AUTHORISED_SIGS),
    ("cbdc-multi", "redeem:CHF", "snb", None),
    ("cbdc-multi", "redeem:CHF", "fed", NOT_AUTHORISED_SIGS),
    ("cbdc-multi", "transfer:CHF", "bank-a", None),
    ("cbdc-multi", "transfer:CHF", "fed", NOT_AUTHORISED_SIGS),
    ("cbdc-multi", "transfer:CHF", "snb", NOT_AUTHORISED_SIGS),
]


@pytest.mark.parametrize(
    ("ledger", "action", "signer", "expected"),
    ROLE_CELLS,
    ids=[
        f"{ledger}-{action.split(':')[0]}-{action.partition(':')[2] or 'x'}-{signer}"
        for ledger, action, signer, _ in ROLE_CELLS
    ],
)
def test_authorization_by_ledger_role(harness, ledger, action, signer, expected):
    h = role_populate(harness(ledger))
    signed, moves = role_action(h, action, signer)
    if expected is None:
        before = state(h)
        applied(h.submit(signed))
        assert deltas(before, state(h)) == moves
    else:
        refused_unchanged(h, signed, *expected)


# == 2. A coordinator can never redirect an asset ==================================================
# Each variant is signed by the coordinator unless it says otherwise. After each refusal,
# nothing has changed and (unless the refusal is recorded) the honest lock still applies
# under the same id: a refused attempt does not spend the leg.

LOCK_REFUSALS: list[tuple[str, Callable[[Harness], Signed], tuple[Code, str]]] = [
    ("another beneficiary", lambda h: coordinator_lock(h, beneficiary_account="acc-c"), (Code.NOT_AUTHORISED, "auth")),
    (
        "another account of the beneficiary",
        lambda h: coordinator_lock(h, beneficiary_account="acc-b2"),
        (Code.NOT_AUTHORISED, "auth"),
    ),
    ("a larger amount", lambda h: coordinator_lock(h, amount=1_001), (Code.NOT_AUTHORISED, "auth")),
    ("a smaller amount", lambda h: coordinator_lock(h, amount=999), (Code.NOT_AUTHORISED, "auth")),
    ("another currency", lambda h: coordinator_lock(h, asset="USD"), (Code.NOT_AUTHORISED, "auth")),
    ("another asset", lambda h: coordinator_lock(h, asset=BOND), (Code.NOT_AUTHORISED, "auth")),
    ("another owner", lambda h: coordinator_lock(h, owner_account="acc-c"), (Code.NOT_AUTHORISED, "auth")),
    (
        "the other direction",
        lambda h: coordinator_lock(h, owner_account="acc-b", beneficiary_account="acc-a"),
        (Code.NOT_AUTHORISED, "auth"),
    ),
    ("leg 1, which is on another ledger", lambda h: coordinator_lock(h, id="dvp-1:1"), (Code.NOT_AUTHORISED, "auth")),
    ("an id naming no leg", lambda h: coordinator_lock(h, id="dvp-1:2"), (Code.NOT_AUTHORISED, "id")),
    (
        "a second lock of leg 0 under another id",
        lambda h: coordinator_lock(h, id="dvp-1:0:again"),
        (Code.NOT_AUTHORISED, "id"),
    ),
    ("the settle id", lambda h: coordinator_lock(h, id="dvp-1:settle"), (Code.NOT_AUTHORISED, "id")),
    (
        "an expiry after the deadline",
        lambda h: coordinator_lock(h, expiry_ms=DEADLINE + 1),
        (Code.EXPIRY_OUT_OF_RANGE, "expiry_ms"),
    ),
    (
        "abort_by adding the beneficiary",
        lambda h: coordinator_lock(h, abort_by=("coordinator", "bank-b")),
        (Code.NOT_AUTHORISED, "abort_by"),
    ),
    (
        "abort_by naming another coordinator",
        lambda h: coordinator_lock(h, abort_by=("coord-2",)),
        (Code.NOT_AUTHORISED, "abort_by"),
    ),
    ("signed by another coordinator", lambda h: coordinator_lock(h, signers=("coord-2",)), NOT_AUTHORISED_SIGS),
    ("signed by the paying party", lambda h: coordinator_lock(h, signers=("bank-a",)), NOT_AUTHORISED_SIGS),
    ("signed by both parties", lambda h: coordinator_lock(h, signers=("bank-a", "bank-b")), NOT_AUTHORISED_SIGS),
    (
        "a settlement naming another coordinator",
        lambda h: coordinator_lock(h, settlement(h, coordinator="coord-2")),
        NOT_AUTHORISED_SIGS,
    ),
    (
        "a settlement naming a party without the coordinator role, signed by it",
        lambda h: coordinator_lock(h, settlement(h, coordinator="bank-c"), signers=("bank-c",)),
        NOT_AUTHORISED_SIGS,
    ),
    (
        "a settlement signed by the payer only",
        lambda h: coordinator_lock(h, settlement(h, signers=("bank-a",))),
        (Code.MISSING_SIGNATURE, "auth.sigs"),
    ),
    (
        "a settlement signed by the payee only",
        lambda h: coordinator_lock(h, settlement(h, signers=("bank-b",))),
        (Code.MISSING_SIGNATURE, "auth.sigs"),
    ),
    (
        "a settlement changed after it was signed",
        lambda h: coordinator_lock(h, altered_settlement(h), amount=1_001),
        (Code.BAD_SIGNATURE, "auth.sigs"),
    ),
    (
        "a settlement also signed by an unregistered key",
        lambda h: coordinator_lock(h, settlement(h, signers=("bank-a", "bank-b", MALLORY))),
        (Code.UNKNOWN_SIGNER, "auth.sigs"),
    ),
    (
        "a settlement past its deadline",
        lambda h: coordinator_lock(h, settlement(h, deadline_ms=T0 - 1)),
        (Code.EXPIRY_OUT_OF_RANGE, "auth.deadline_ms"),
    ),
    (
        "a leg paid from a third party's account",
        lambda h: coordinator_lock(
            h, settlement(h, (attrs.evolve(CROSS[0], from_account="acc-c"), CROSS[1])), owner_account="acc-c"
        ),
        (Code.NOT_AUTHORISED, "auth.legs[0].from_account"),
    ),
    (
        "a leg paid into a third party's account",
        lambda h: coordinator_lock(
            h, settlement(h, (attrs.evolve(CROSS[0], to_account="acc-c"), CROSS[1])), beneficiary_account="acc-c"
        ),
        (Code.NOT_AUTHORISED, "auth.legs[0].to_account"),
    ),
    (
        "a settlement whose parties are the other way round",
        lambda h: coordinator_lock(h, settlement(h, parties=("bank-b", "bank-a"))),
        (Code.NOT_AUTHORISED, "auth.legs[0].from_account"),
    ),
    (
        "auth that is not a settlement",
        lambda h: coordinator_lock(
            h, h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1_000).wire()
        ),
        (Code.UNKNOWN_TYPE, "auth.type"),
    ),
]


def altered_settlement(h: Harness) -> dict:
    auth = copy.deepcopy(settlement(h))
    auth["legs"][0]["amount"] = 1_001
    return auth


@pytest.mark.parametrize(
    ("variant", "expected"),
    [(name, expected) for name, _, expected in LOCK_REFUSALS],
    ids=[name for name, _, _ in LOCK_REFUSALS],
)
def test_a_coordinators_lock_other_than_the_signed_leg_is_refused(unified, variant, expected):
    h = unified
    build = next(build for name, build, _ in LOCK_REFUSALS if name == variant)
    signed = build(h)
    refused_unchanged(h, signed, *expected)
    if not (is_recorded(*expected) and signed.msg.id == "dvp-1:0"):
        before = state(h)
        applied(h.submit(coordinator_lock(h)))
        assert deltas(before, state(h)) == {("acc-a", "EUR"): (-1_000, 1_000)}


def test_the_coordinators_lock_exactly_as_signed_is_applied_with_or_without_itself_in_abort_by(unified):
    h = unified
    applied(h.submit(coordinator_lock(h)))
    auth = settlement(h, settlement_id="dvp-3")
    applied(h.submit(coordinator_lock(h, auth, id="dvp-3:0", abort_by=())))
    lock = h.store.lock("dvp-3:0")
    assert (lock.owner_account, lock.beneficiary_account, lock.amount, lock.abort_by) == ("acc-a", "acc-b", 1_000, ())
    assert h.balance("acc-a", "EUR") == (8_000, 2_000)


@pytest.mark.parametrize(
    ("change", "field"), [({"hashlock": bytes(32)}, "hashlock"), ({"expiry_ms": T0 + 2 * MINUTE_MS}, "expiry_ms")]
)
def test_a_placed_lock_cannot_be_placed_again_under_its_id_with_another_hashlock_or_expiry(unified, change, field):
    h = unified
    first = applied(h.submit(coordinator_lock(h)))
    refused_unchanged(h, coordinator_lock(h, **change), Code.ID_REUSED, field)
    assert receipt_of(h, "dvp-1:0") == first
    assert h.store.lock("dvp-1:0").hashlock == HASHLOCK


SETTLE_REFUSALS: list[tuple[str, Callable[[Harness], Signed], tuple[Code, str]]] = [
    (
        "another beneficiary",
        lambda h: coordinator_settle(h, legs=(Leg("acc-a", "acc-c", "EUR", 1_000), SAME[1].as_leg())),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    (
        "a larger amount",
        lambda h: coordinator_settle(h, legs=(Leg("acc-a", "acc-b", "EUR", 1_001), SAME[1].as_leg())),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    (
        "another asset",
        lambda h: coordinator_settle(h, legs=(SAME[0].as_leg(), Leg("acc-b", "acc-a", "USD", 10))),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    (
        "the legs in the other order",
        lambda h: coordinator_settle(h, legs=(SAME[1].as_leg(), SAME[0].as_leg())),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    ("one leg left out", lambda h: coordinator_settle(h, legs=(SAME[0].as_leg(),)), (Code.NOT_AUTHORISED, "legs")),
    (
        "a leg added",
        lambda h: coordinator_settle(h, legs=(*(leg.as_leg() for leg in SAME), Leg("acc-a", "acc-c", "EUR", 1))),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    (
        "a cross-ledger settlement",
        lambda h: coordinator_settle(
            h, settlement(h, CROSS, settlement_id="dvp-2"), legs=tuple(leg.as_leg() for leg in CROSS)
        ),
        (Code.NOT_AUTHORISED, "legs"),
    ),
    ("the settlement id", lambda h: coordinator_settle(h, id="dvp-2"), (Code.NOT_AUTHORISED, "id")),
    ("a lock id", lambda h: coordinator_settle(h, id="dvp-2:0"), (Code.NOT_AUTHORISED, "id")),
    ("signed by another coordinator", lambda h: coordinator_settle(h, signers=("coord-2",)), NOT_AUTHORISED_SIGS),
    ("signed by both parties", lambda h: coordinator_settle(h, signers=("bank-a", "bank-b")), NOT_AUTHORISED_SIGS),
    (
        "a settlement signed by one party",
        lambda h: coordinator_settle(h, settlement(h, SAME, settlement_id="dvp-2", signers=("bank-b",))),
        (Code.MISSING_SIGNATURE, "auth.sigs"),
    ),
    (
        "a settlement past its deadline",
        lambda h: coordinator_settle(h, settlement(h, SAME, settlement_id="dvp-2", deadline_ms=T0 - 1)),
        (Code.EXPIRY_OUT_OF_RANGE, "auth.deadline_ms"),
    ),
    (
        "a leg paid from a third party's account",
        lambda h: coordinator_settle(
            h,
            settlement(h, (attrs.evolve(SAME[0], from_account="acc-c"), SAME[1]), settlement_id="dvp-2"),
            legs=(Leg("acc-c", "acc-b", "EUR", 1_000), SAME[1].as_leg()),
        ),
        (Code.NOT_AUTHORISED, "auth.legs[0].from_account"),
    ),
]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [(name, expected) for name, _, expected in SETTLE_REFUSALS],
    ids=[name for name, _, _ in SETTLE_REFUSALS],
)
def test_a_coordinators_settle_other_than_the_signed_legs_is_refused(unified, variant, expected):
    h = unified
    build = next(build for name, build, _ in SETTLE_REFUSALS if name == variant)
    refused_unchanged(h, build(h), *expected)
    before = state(h)
    applied(h.submit(coordinator_settle(h)))
    assert deltas(before, state(h)) == SAME_LEGS_MOVED


def test_a_coordinators_settle_is_accepted_at_its_deadline_and_refused_one_ms_after(unified):
    h = unified
    auth = settlement(h, SAME, settlement_id="dvp-2", deadline_ms=T0 + 5)
    h.now_ms = T0 + 6
    refused_unchanged(h, coordinator_settle(h, auth), Code.EXPIRY_OUT_OF_RANGE, "auth.deadline_ms")
    h.now_ms = T0 + 5
    applied(h.submit(coordinator_settle(h, auth)))


def test_a_same_ledger_settlement_is_executed_at_most_once_settle_then_locks(unified):
    """Both legs on one ledger: one settle, never locks, so no second execution."""
    h = unified
    auth = settlement(h, SAME, settlement_id="dvp-2")
    applied(h.submit(coordinator_settle(h, auth)))
    for index, leg in enumerate(SAME):
        lock = coordinator_lock(
            h,
            auth,
            id=f"dvp-2:{index}",
            owner_account=leg.from_account,
            beneficiary_account=leg.to_account,
            asset=leg.asset,
            amount=leg.amount,
        )
        refused_unchanged(h, lock, Code.NOT_AUTHORISED, "auth")
    assert h.balance("acc-a", "EUR") == (9_000, 0), "bank-a paid the one settlement twice"


def test_a_same_ledger_settlement_is_executed_at_most_once_locks_then_settle(unified):
    h = unified
    auth = settlement(h, SAME, settlement_id="dvp-2")
    for index, leg in enumerate(SAME):
        refused_unchanged(
            h,
            coordinator_lock(
                h,
                auth,
                id=f"dvp-2:{index}",
                owner_account=leg.from_account,
                beneficiary_account=leg.to_account,
                asset=leg.asset,
                amount=leg.amount,
            ),
            Code.NOT_AUTHORISED,
            "auth",
        )
    applied(h.submit(coordinator_settle(h, auth)))
    assert h.balance("acc-a", "EUR") == (9_000, 0)


@pytest.mark.parametrize(
    ("ledger", "operator", "central_bank", "currency"),
    [("cbdc-multi", "fed", "snb", "CHF"), ("unified", "csd-op", "ecb", "EUR")],
)
def test_a_ledgers_operator_cannot_mint_a_currency_it_does_not_issue_by_rotating_its_central_banks_key(
    harness, ledger, operator, central_bank, currency
):
    h = role_populate(harness(ledger))
    issued = h.store.asset(currency).issued
    stolen = PrivateKey.generate()
    h.send(RotateKey, operator, party=central_bank, public_key=public_point(stolen.public))
    msg = Issue(id=h.next_id(), ledger=ledger, ts_ms=h.now_ms, asset=currency, account="acc-a", amount=10**9)
    h.submit(sign(msg, (central_bank, stolen)))
    assert h.store.asset(currency).issued == issued


# == 3. Replay and freshness (beyond tests/test_instructions.py) ===================================


@pytest.mark.parametrize(
    "resigned_by", [(), ("bank-b",), (MALLORY,)], ids=["unsigned", "another-party", "unregistered"]
)
def test_a_captured_instruction_replayed_under_other_signatures_gets_its_first_receipt_and_applies_nothing(
    unified, resigned_by
):
    h = unified
    original = h.make(Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100)
    (first,), _ = h.ledger.process([original.encode()], h.now_ms)
    after_first = state(h)
    replay = h.make(Transfer, *resigned_by, id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100)
    assert replay.data == original.data and replay.sigs != original.sigs
    h.now_ms += 1_000
    (again,), entries = h.ledger.process([replay.encode()], h.now_ms)
    assert again == first and entries == []
    assert state(h) == after_first


def test_an_id_reused_by_another_party_for_its_own_instruction_is_refused_naming_the_field(unified):
    h = unified
    first = applied(
        h.send(Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100)
    )
    refused_unchanged(
        h,
        h.make(Transfer, "bank-b", id="t-1", from_account="acc-b", to_account="acc-a", asset="EUR", amount=100),
        Code.ID_REUSED,
        "from_account",
    )
    assert receipt_of(h, "t-1") == first


def test_an_instruction_signed_ahead_of_the_ledger_passes_once_its_clock_catches_up_and_a_stale_one_never(unified):
    h = unified
    limits = h.config.limits
    ahead = h.make(
        Transfer,
        "bank-a",
        ts_ms=T0 + limits.ts_ahead_ms_max + 1,
        from_account="acc-a",
        to_account="acc-b",
        asset="EUR",
        amount=1,
    )
    old = h.make(
        Transfer,
        "bank-a",
        ts_ms=T0 - limits.ts_age_ms_max - 1,
        from_account="acc-a",
        to_account="acc-b",
        asset="EUR",
        amount=2,
    )
    refused_unchanged(h, ahead, Code.STALE, "ts_ms")
    refused_unchanged(h, old, Code.STALE, "ts_ms")
    h.now_ms = T0 + 1
    applied(h.submit(ahead))
    for later_ms in (1, MINUTE_MS, 24 * 60 * MINUTE_MS):
        h.now_ms = T0 + later_ms
        refused_unchanged(h, old, Code.STALE, "ts_ms")
    assert h.balance("acc-b", "EUR") == (1, 0)


def test_the_freshness_window_is_the_ledgers_configuration(unified):
    h = unified
    h.ledger.config = attrs.evolve(
        h.config, limits=attrs.evolve(h.config.limits, ts_age_ms_max=1_000, ts_ahead_ms_max=10)
    )
    transfer = dict(from_account="acc-a", to_account="acc-b", asset="EUR", amount=1)
    refused_unchanged(h, h.make(Transfer, "bank-a", ts_ms=T0 - 1_001, **transfer), Code.STALE, "ts_ms")
    refused_unchanged(h, h.make(Transfer, "bank-a", ts_ms=T0 + 11, **transfer), Code.STALE, "ts_ms")
    applied(h.send(Transfer, "bank-a", ts_ms=T0 - 1_000, **transfer))
    applied(h.send(Transfer, "bank-a", ts_ms=T0 + 10, **transfer))


# == 4. Domain separation: another protocol version's signature is worth nothing ===================


@pytest.mark.parametrize(
    "prefix",
    [b"lockstep/2\x00", b"lockstep/0\x00", b"lockstep/1", b"lockstep/1\x00\x00", b"lockstep/v1\x00", b""],
    ids=["v2", "v0", "no-NUL", "two-NULs", "v1-spelled-otherwise", "no-prefix"],
)
def test_a_signature_under_another_domain_prefix_is_refused_by_a_ledger(unified, prefix):
    h = unified
    body = to_body(
        Transfer(
            id="t-1", ledger="unified", ts_ms=T0, from_account="acc-a", to_account="acc-b", asset="EUR", amount=100
        )
    )
    assert prefix != DOMAIN
    forged = encode({**body, "sigs": {"bank-a": h.world.keys["bank-a"].sign(prefix + encode(body)).hex()}})
    before = state(h)
    refused(h.raw(forged), Code.BAD_SIGNATURE, "sigs")
    assert state(h) == before
    genuine = encode({**body, "sigs": {"bank-a": h.world.keys["bank-a"].sign(DOMAIN + encode(body)).hex()}})
    applied(h.raw(genuine))


def test_a_message_of_a_later_version_signed_under_its_own_domain_is_refused(unified):
    h = unified
    body = {
        **to_body(
            Transfer(
                id="t-1", ledger="unified", ts_ms=T0, from_account="acc-a", to_account="acc-b", asset="EUR", amount=100
            )
        ),
        "v": 2,
    }
    message = encode({**body, "sigs": {"bank-a": h.world.keys["bank-a"].sign(b"lockstep/2\x00" + encode(body)).hex()}})
    before = state(h)
    refused(h.raw(message), Code.UNSUPPORTED_VERSION, "v")
    assert state(h) == before


def test_a_counterpartys_signature_on_a_settlement_does_not_authorise_an_instruction(unified):
    """The settlement is signed under the same domain, but it is another message: its
    signatures stand for nothing but a coordinator's lock or settle carrying it."""
    h = unified
    auth = settlement(h, SAME, settlement_id="dvp-2")
    body = to_body(Settle(id="s-1", ledger="unified", ts_ms=T0, legs=tuple(leg.as_leg() for leg in SAME)))
    before = state(h)
    refused(h.raw(encode({**body, "sigs": auth["sigs"]})), Code.BAD_SIGNATURE, "sigs")
    assert state(h) == before


# == 5. Tampering: no changed byte of a signed message is ever applied as something else ============


def tamper_targets(h: Harness) -> dict[str, Callable[[int], Signed]]:
    """Builders of fresh, valid, signed instructions of several kinds (n makes ids unique)."""

    def lock(n: int) -> Signed:
        auth = settlement(h, (attrs.evolve(CROSS[0], amount=1), CROSS[1]), settlement_id=f"s{n}")
        return coordinator_lock(h, auth, id=f"s{n}:0", amount=1)

    def settle(n: int) -> Signed:
        legs = (attrs.evolve(SAME[0], amount=1), attrs.evolve(SAME[1], amount=1))
        return coordinator_settle(
            h, settlement(h, legs, settlement_id=f"s{n}"), id=f"s{n}:settle", legs=tuple(leg.as_leg() for leg in legs)
        )

    def claim(n: int) -> Signed:
        place_lock(h, f"l{n}", amount=1)
        return h.make(Claim, "bank-c", id=f"c{n}", lock_id=f"l{n}", preimage=SECRET)

    return {
        "transfer": lambda n: h.make(
            Transfer, "bank-a", id=f"t{n}", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1
        ),
        "issue": lambda n: h.make(Issue, "ecb", id=f"i{n}", asset="EUR", account="acc-a", amount=1),
        "open_account": lambda n: h.make(OpenAccount, "csd-op", id=f"o{n}", account=f"acc-n{n}", owner="bank-c"),
        "coordinator_lock": lock,
        "coordinator_settle": settle,
        "claim": claim,
    }


def signature_case_only(original: Signed, payload: bytes) -> bool:
    """The one change that leaves a message what it was: a hex digit of a signature in
    the other case (hex is read either way; the signature is not part of what is signed)."""
    try:
        again = decode_signed(payload)
    except Exception:
        return False
    return again.data == original.data and again.sigs == original.sigs


def test_a_signature_written_in_upper_case_hex_is_the_same_instruction_and_applies_once(unified):
    """The only byte change that is not refused: the signature's own spelling. What was
    signed is unchanged, so it is the same instruction: applied once, journaled in the
    canonical lower case, and a second copy gets the first receipt."""
    h = unified
    signed = h.make(Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100)
    payload = signed.encode()
    hex_sig = signed.sigs["bank-a"].hex().encode()
    assert hex_sig in payload and hex_sig != hex_sig.upper()
    shouted = payload.replace(hex_sig, hex_sig.upper())
    assert signature_case_only(signed, shouted)
    (first,), (entry,) = h.ledger.process([shouted], h.now_ms)
    assert hex_sig in entry and hex_sig.upper() not in entry
    (again,), entries = h.ledger.process([payload], h.now_ms)
    assert again == first and entries == []
    assert h.balance("acc-b", "EUR") == (100, 0)


def test_every_single_byte_of_a_signed_message_flipped_is_refused_and_changes_nothing(unified):
    """Each byte of a coordinator's lock (with the settlement and both parties'
    signatures nested in it) and of a transfer, one at a time, with its lowest bit flipped."""
    h = unified
    targets = tamper_targets(h)
    for kind in ("coordinator_lock", "transfer"):
        signed = targets[kind](0)
        payload = signed.encode()
        before = state(h)
        for index in range(len(payload)):
            mutated = payload[:index] + bytes([payload[index] ^ 1]) + payload[index + 1 :]
            receipt = h.raw(mutated)
            assert receipt.status == "rejected", (kind, index, mutated[max(0, index - 20) : index + 20])
        assert state(h) == before
        assert receipt_of(h, signed.msg.id).code == Code.UNKNOWN_INSTRUCTION.value
        applied(h.submit(signed))


def test_any_single_byte_changed_is_refused_or_leaves_the_very_same_instruction(unified):
    h = unified
    targets = tamper_targets(h)
    counter = iter(range(1, 10**6))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        kind = data.draw(st.sampled_from(sorted(targets)), label="kind")
        signed = targets[kind](next(counter))
        payload = signed.encode()
        # drawn independently of the payload (whose length varies with its signatures)
        index = data.draw(st.integers(0, 1 << 16), label="position") % len(payload)
        byte = (payload[index] + data.draw(st.integers(1, 255), label="added")) % 256
        mutated = payload[:index] + bytes([byte]) + payload[index + 1 :]
        before = state(h)
        receipt = h.raw(mutated)
        if receipt.status == "applied":
            assert signature_case_only(signed, mutated), (kind, index, byte)
        else:
            assert state(h) == before, (kind, index, byte, receipt)

    check()


# == 6. A database changed behind a ledger's back ===================================================


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        (
            "UPDATE accounts SET owner = 'bank-c' WHERE account = 'acc-a'",
            "account acc-a is owned by bank-c, journal says bank-a",
        ),
        (
            "INSERT INTO accounts (account, owner) VALUES ('acc-x', 'bank-c')",
            "account acc-x is owned by bank-c, journal says None",
        ),
        ("UPDATE assets SET issuer = 'fed' WHERE code = 'EUR'", "asset EUR differs from the journal"),
        (f"UPDATE assets SET issuer = 'bank-c' WHERE code = '{BOND}'", f"asset {BOND} differs from the journal"),
    ],
    ids=["account-owner-changed", "account-added", "currency-issuer-changed", "instrument-issuer-changed"],
)
def test_a_changed_authority_row_stops_the_ledger_at_start(unified, sql, named):
    """Who owns an account and who issues an asset decide who may move and mint it
    (tests/test_restart.py covers balances, locks, supply and the journal)."""
    h = unified
    h.close()
    edit(h, sql)
    assert named in refusal(h)


def test_a_deleted_idempotency_row_stops_the_ledger_at_start(unified):
    h = unified
    applied(h.send(Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100))
    h.close()
    edit(h, "DELETE FROM instructions WHERE id = 't-1'")
    assert "t-1" in refusal(h)


def audited(h: Harness):
    return audit([read_database(h.config.database, h.world.registry)])


def test_the_untampered_database_audits_clean(unified):
    h = unified
    applied(h.send(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100))
    h.close()
    assert audited(h).clean, audited(h).text()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE balances SET available = available + 1 WHERE account = 'acc-b' AND asset = 'EUR'",
        "UPDATE accounts SET owner = 'bank-c' WHERE account = 'acc-a'",
    ],
    ids=["balance", "account-owner"],
)
def test_lockstep_audit_catches_a_changed_state_row(unified, sql):
    h = unified
    applied(h.send(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100))
    h.close()
    edit(h, sql)
    assert not audited(h).clean


def transfer_entry(path: Path) -> int:
    return next(
        entry["seq"]
        for entry in journal(path)
        if entry["kind"] == "transfer" and entry["instruction"]["id"] == "t-audit"
    )


def claim_more(entry: dict) -> None:
    """The instruction says 900, and so do the effects: only bank-a's signature disagrees."""
    entry["instruction"]["amount"] = 900
    entry["effects"]["balances"] = [["acc-a", "EUR", -900, 0], ["acc-b", "EUR", 900, 0]]


def pay_someone_else(entry: dict) -> None:
    """bank-a's signed instruction untouched; the effects pay acc-c instead of acc-b."""
    entry["effects"]["balances"] = [["acc-a", "EUR", -100, 0], ["acc-c", "EUR", 100, 0]]


@pytest.mark.parametrize("change", [claim_more, pay_someone_else], ids=["instruction-rewritten", "effects-redirected"])
def test_lockstep_audit_catches_history_rewritten_under_the_ledgers_own_key(unified, change):
    h = unified
    applied(h.send(Transfer, "bank-a", id="t-audit", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100))
    h.close()
    rewrite(h.config.database, transfer_entry(h.config.database), change, h.world.keys["unified"])
    assert not audited(h).clean


def test_an_instruction_is_never_applied_twice_unseen_even_with_its_idempotency_row_deleted(unified):
    h = unified
    payload = h.make(
        Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100
    ).encode()
    h.ledger.process([payload], h.now_ms)
    with closing(sqlite3.connect(h.config.database)) as db, db:
        db.execute("DELETE FROM instructions WHERE id = 't-1'")
    h.now_ms += 1_000
    h.ledger.process([payload], h.now_ms)
    h.close()
    ids = [entry["instruction"]["id"] for entry in journal(h.config.database) if entry["instruction"]]
    assert len(ids) == len(set(ids)) or not audited(h).clean
