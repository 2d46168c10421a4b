"""Every instruction a ledger applies, and every refusal with the code and field it gives.
A refused instruction changes nothing: balances, locks, supply and the journal stay as
they were. Tests drive one ledger engine with plain calls and a time they set."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import pytest

from protocols.canonical import INT_MAX, decode, encode
from protocols.errors import Code, Rejected
from protocols.htlc import HeldLock, LockState
from protocols.htlc import abort as htlc_abort
from protocols.htlc import claim as htlc_claim
from protocols.htlc import refund as htlc_refund
from protocols.identifiers import make_isin
from protocols.messages import (
    Abort,
    Claim,
    CreateInstrument,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    QueryBalances,
    QueryJournal,
    QueryLock,
    QueryLocks,
    QueryReceipt,
    Receipt,
    Redeem,
    Refund,
    Settle,
    Transfer,
)
from protocols.signing import decode_signed, signing_bytes, unsigned
from tests.harness import BOND, T0, Harness

SECRET = bytes(range(32))
HASHLOCK = hashlib.sha256(SECRET).digest()
WRONG_SECRET = bytes(32)
MINUTE_MS = 60_000
OTHER_BOND = make_isin("XS000000002")

ACCOUNTS = {"acc-a": "bank-a", "acc-b": "bank-b", "acc-t": "treasury", "acc-ecb": "ecb", "acc-fed": "fed"}


# -- helpers ----------------------------------------------------------------------------


def applied(receipt: Receipt) -> Receipt:
    assert receipt.status == "applied", receipt
    assert (receipt.code, receipt.field, receipt.reason) == (None, None, None)
    return receipt


def refused(receipt: Receipt, code: Code, field: str) -> Receipt:
    assert receipt.status == "rejected", receipt
    assert (receipt.code, receipt.field) == (code.value, field), receipt
    assert receipt.reason
    assert receipt.seq is None and receipt.entry_hash is None
    return receipt


def state(h: Harness) -> tuple:
    """Everything an instruction may change, as the store holds it."""
    return (
        h.store.all_balances(),
        h.store.all_locks(),
        h.store.assets(),
        {account: h.store.account_owner(account) for account in ACCOUNTS},
        h.ledger.seq,
        h.ledger.prev_hash,
    )


@contextmanager
def unchanged(h: Harness):
    before = state(h)
    yield
    assert state(h) == before


def populate(h: Harness) -> Harness:
    """acc-a holds 10 000 EUR; acc-b 400 BOND and 5 000 USD; acc-t (the issuer's) 600 BOND."""
    for account, owner in ACCOUNTS.items():
        applied(h.send(OpenAccount, "csd-op", account=account, owner=owner))
    applied(
        h.send(
            CreateInstrument,
            "csd-op",
            isin=BOND,
            issuer="treasury",
            currency="EUR",
            face_value_minor=100_000,
            coupon_rate_bp=250,
            maturity_date="2030-06-15",
        )
    )
    applied(h.send(Issue, "csd-op", asset=BOND, account="acc-t", amount=1_000))
    applied(h.send(Transfer, "treasury", from_account="acc-t", to_account="acc-b", asset=BOND, amount=400))
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-a", amount=10_000))
    applied(h.send(Issue, "fed", asset="USD", account="acc-b", amount=5_000))
    return h


@pytest.fixture
def h(harness) -> Harness:
    return populate(harness("unified"))


def place_lock(
    h: Harness,
    *,
    amount: int = 1_000,
    expiry_ms: int | None = None,
    abort_by=("coordinator",),
    lock_id: str | None = None,
    owner: str = "acc-a",
    beneficiary: str = "acc-b",
    asset: str = "EUR",
    signer: str = "bank-a",
) -> str:
    lock_id = lock_id or h.next_id("lock-")
    applied(
        h.send(
            Lock,
            signer,
            id=lock_id,
            owner_account=owner,
            beneficiary_account=beneficiary,
            asset=asset,
            amount=amount,
            hashlock=HASHLOCK,
            expiry_ms=expiry_ms or h.now_ms + MINUTE_MS,
            abort_by=tuple(abort_by),
        )
    )
    return lock_id


def lock_state(h: Harness, lock_id: str) -> str:
    return h.query(QueryLock, lock_id=lock_id)["state"]


def receipt_of(h: Harness, instruction_id: str) -> Receipt:
    """The receipt query's answer: the instruction's own receipt, not a Result."""
    return h.raw(unsigned(QueryReceipt(h.next_id("q"), h.ledger_id, instruction_id)).encode())


def resigned(h: Harness, body: dict, *signers: str) -> bytes:
    """A wire message with any body we choose, correctly signed: for what the message
    classes would refuse to build."""
    data = signing_bytes(body)
    return encode({**body, "sigs": {party: h.world.keys[party].sign(data).hex() for party in signers}})


# -- open_account ---------------------------------------------------------------------------


def test_operator_opens_an_account_for_a_participant(harness):
    h = harness("unified")
    seq = h.ledger.seq
    receipt = applied(h.send(OpenAccount, "csd-op", account="acc-a", owner="bank-a"))
    assert receipt.seq == seq and h.ledger.seq == seq + 1
    assert h.store.account_owner("acc-a") == "bank-a"
    assert h.query(QueryBalances, account="acc-a") == {"account": "acc-a", "owner": "bank-a", "balances": {}}


def test_participant_opens_its_own_account(harness):
    h = harness("unified")
    applied(h.send(OpenAccount, "bank-a", account="acc-a", owner="bank-a"))
    assert h.store.account_owner("acc-a") == "bank-a"


def test_third_party_cannot_open_an_account_for_another(harness):
    h = harness("unified")
    with unchanged(h):
        refused(h.send(OpenAccount, "bank-b", account="acc-a", owner="bank-a"), Code.NOT_AUTHORISED, "sigs")
    assert h.store.account_owner("acc-a") is None


def test_opening_an_existing_account_is_refused(h):
    with unchanged(h):
        refused(h.send(OpenAccount, "csd-op", account="acc-a", owner="bank-b"), Code.ACCOUNT_EXISTS, "account")
    assert h.store.account_owner("acc-a") == "bank-a"


def test_account_for_an_unregistered_owner_is_refused(harness):
    h = harness("unified")
    with unchanged(h):
        refused(h.send(OpenAccount, "csd-op", account="acc-x", owner="mallory"), Code.UNKNOWN_SIGNER, "owner")
    assert h.store.account_owner("acc-x") is None


# -- create_instrument ------------------------------------------------------------------------


def instrument(**changes) -> dict:
    fields = dict(
        isin=OTHER_BOND,
        issuer="treasury",
        currency="EUR",
        face_value_minor=100_000,
        coupon_rate_bp=0,
        maturity_date="2031-01-01",
    )
    fields.update(changes)
    return fields


def test_operator_creates_an_instrument_with_its_reference_data(h):
    applied(h.send(CreateInstrument, "csd-op", **instrument(coupon_rate_bp=375)))
    asset = h.store.asset(OTHER_BOND)
    assert (asset.kind, asset.issuer, asset.issued, asset.redeemed) == ("security", "treasury", 0, 0)
    assert asset.reference == {
        "currency": "EUR",
        "face_value_minor": 100_000,
        "coupon_rate_bp": 375,
        "maturity_date": "2031-01-01",
        "coupon_frequency": 1,
        "day_count": "30/360",
    }


def test_only_the_operator_creates_an_instrument(h):
    with unchanged(h):
        refused(h.send(CreateInstrument, "treasury", **instrument()), Code.NOT_AUTHORISED, "sigs")
    assert h.store.asset(OTHER_BOND) is None


def test_a_cbdc_ledger_refuses_to_create_an_instrument(harness):
    h = harness("cbdc-eur")
    with unchanged(h):
        refused(h.send(CreateInstrument, "ecb", **instrument()), Code.NOT_AUTHORISED, "type")
    assert h.store.asset(OTHER_BOND) is None


def test_a_securities_ledger_creates_an_instrument(harness):
    h = harness("csd")
    applied(h.send(CreateInstrument, "csd-op", **instrument()))
    assert h.store.asset(OTHER_BOND).kind == "security"


def test_a_duplicate_isin_is_refused(h):
    with unchanged(h):
        refused(h.send(CreateInstrument, "csd-op", **instrument(isin=BOND, issuer="bank-a")), Code.ASSET_EXISTS, "isin")
    assert h.store.asset(BOND).issuer == "treasury"


def test_an_instrument_of_an_unregistered_issuer_is_refused(h):
    with unchanged(h):
        refused(h.send(CreateInstrument, "csd-op", **instrument(issuer="mallory")), Code.UNKNOWN_SIGNER, "issuer")


def test_an_isin_with_a_bad_check_digit_is_refused_at_decode(h):
    body = dict(h.make(CreateInstrument, "csd-op", **instrument()).body)
    bad_isin = OTHER_BOND[:11] + str((int(OTHER_BOND[11]) + 1) % 10)
    body["isin"] = bad_isin
    with unchanged(h):
        receipt = refused(h.raw(resigned(h, body, "csd-op")), Code.INVALID_FIELD, "isin")
    assert "check digit" in receipt.reason
    assert receipt.instruction_id == body["id"]
    assert h.store.asset(bad_isin) is None


# -- issue ------------------------------------------------------------------------------------


def test_operator_issues_an_instrument_into_its_issuers_account(h):
    applied(h.send(Issue, "csd-op", asset=BOND, account="acc-t", amount=250))
    assert h.balance("acc-t", BOND) == (850, 0)
    assert (h.store.asset(BOND).issued, h.store.asset(BOND).outstanding) == (1_250, 1_250)


def test_an_instrument_is_not_issued_into_a_non_issuer_account(h):
    with unchanged(h):
        refused(h.send(Issue, "csd-op", asset=BOND, account="acc-a", amount=250), Code.NOT_AUTHORISED, "account")


def test_an_issuer_cannot_issue_its_own_instrument_without_the_operator(h):
    with unchanged(h):
        refused(h.send(Issue, "treasury", asset=BOND, account="acc-t", amount=250), Code.NOT_AUTHORISED, "sigs")


def test_a_central_bank_issues_its_currency_into_any_account(h):
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-b", amount=700))
    assert h.balance("acc-b", "EUR") == (700, 0)
    assert h.store.asset("EUR").issued == 10_700


def test_a_central_bank_cannot_issue_another_central_banks_currency(h):
    with unchanged(h):
        refused(h.send(Issue, "fed", asset="EUR", account="acc-b", amount=700), Code.NOT_AUTHORISED, "sigs")
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-b", amount=700))


def test_the_ledger_operator_cannot_issue_money(h):
    with unchanged(h):
        refused(h.send(Issue, "csd-op", asset="EUR", account="acc-a", amount=1), Code.NOT_AUTHORISED, "sigs")


def test_a_currency_the_ledger_does_not_carry_cannot_be_issued(h):
    with unchanged(h):
        refused(h.send(Issue, "snb", asset="CHF", account="acc-a", amount=1), Code.UNKNOWN_ASSET, "asset")
        refused(h.send(Issue, "csd-op", asset=OTHER_BOND, account="acc-t", amount=1), Code.UNKNOWN_ASSET, "asset")


def test_issue_into_an_unknown_account_is_refused(h):
    with unchanged(h):
        refused(h.send(Issue, "ecb", asset="EUR", account="acc-nobody", amount=1), Code.UNKNOWN_ACCOUNT, "account")


def test_issue_up_to_2_63_minus_1_is_accepted_and_beyond_is_refused(h):
    issued = h.store.asset("EUR").issued
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-b", amount=INT_MAX - issued))
    assert h.store.asset("EUR").issued == INT_MAX
    with unchanged(h):
        receipt = refused(h.send(Issue, "ecb", asset="EUR", account="acc-b", amount=1), Code.INVALID_FIELD, "amount")
    assert "2^63-1" in receipt.reason


# -- redeem -----------------------------------------------------------------------------------


def test_a_central_bank_redeems_from_its_own_account(h):
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-ecb", amount=500))
    applied(h.send(Redeem, "ecb", asset="EUR", account="acc-ecb", amount=300))
    assert h.balance("acc-ecb", "EUR") == (200, 0)
    asset = h.store.asset("EUR")
    assert (asset.issued, asset.redeemed, asset.outstanding) == (10_500, 300, 10_200)


def test_the_operator_redeems_an_instrument_from_its_issuers_account(h):
    applied(h.send(Redeem, "csd-op", asset=BOND, account="acc-t", amount=600))
    assert h.balance("acc-t", BOND) == (0, 0)
    assert h.store.asset(BOND).outstanding == 400


def test_redeem_from_a_non_issuer_account_is_refused(h):
    with unchanged(h):
        refused(h.send(Redeem, "ecb", asset="EUR", account="acc-a", amount=1), Code.NOT_AUTHORISED, "account")
        refused(h.send(Redeem, "csd-op", asset=BOND, account="acc-b", amount=1), Code.NOT_AUTHORISED, "account")


def test_redeem_by_another_central_bank_is_refused(h):
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-ecb", amount=500))
    with unchanged(h):
        refused(h.send(Redeem, "fed", asset="EUR", account="acc-ecb", amount=1), Code.NOT_AUTHORISED, "sigs")


def test_redeem_more_than_available_is_refused(h):
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-ecb", amount=500))
    with unchanged(h):
        refused(h.send(Redeem, "ecb", asset="EUR", account="acc-ecb", amount=501), Code.INSUFFICIENT_FUNDS, "amount")
    applied(h.send(Redeem, "ecb", asset="EUR", account="acc-ecb", amount=500))


def test_redeem_cannot_take_locked_units(h):
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-ecb", amount=500))
    place_lock(h, owner="acc-ecb", signer="ecb", amount=400)
    with unchanged(h):
        refused(h.send(Redeem, "ecb", asset="EUR", account="acc-ecb", amount=101), Code.INSUFFICIENT_FUNDS, "amount")
    applied(h.send(Redeem, "ecb", asset="EUR", account="acc-ecb", amount=100))


# -- transfer ---------------------------------------------------------------------------------


def transfer(h: Harness, signer: str = "bank-a", **changes) -> Receipt:
    fields = dict(from_account="acc-a", to_account="acc-b", asset="EUR", amount=2_500)
    fields.update(changes)
    return h.send(Transfer, signer, **fields)


def test_the_owner_transfers_from_its_account(h):
    seq = h.ledger.seq
    receipt = applied(transfer(h))
    assert (receipt.seq, h.ledger.seq) == (seq, seq + 1)
    assert (h.balance("acc-a", "EUR"), h.balance("acc-b", "EUR")) == ((7_500, 0), (2_500, 0))
    assert h.store.asset("EUR").outstanding == 10_000


def test_the_whole_available_balance_can_be_transferred(h):
    applied(transfer(h, amount=10_000))
    assert h.balance("acc-a", "EUR") == (0, 0)


@pytest.mark.parametrize("signer", ["bank-b", "csd-op", "ecb"])
def test_a_transfer_signed_by_anyone_but_the_owner_is_refused(h, signer):
    with unchanged(h):
        receipt = refused(transfer(h, signer), Code.NOT_AUTHORISED, "sigs")
    assert "bank-a" in receipt.reason


@pytest.mark.parametrize(
    "changes, code, field",
    [
        ({"from_account": "acc-nobody"}, Code.UNKNOWN_ACCOUNT, "from_account"),
        ({"to_account": "acc-nobody"}, Code.UNKNOWN_ACCOUNT, "to_account"),
        ({"asset": "CHF"}, Code.UNKNOWN_ASSET, "asset"),
        ({"asset": OTHER_BOND}, Code.UNKNOWN_ASSET, "asset"),
        ({"to_account": "acc-a"}, Code.INVALID_FIELD, "to_account"),
        ({"amount": 10_001}, Code.INSUFFICIENT_FUNDS, "amount"),
        ({"asset": "USD", "amount": 1}, Code.INSUFFICIENT_FUNDS, "amount"),
    ],
)
def test_a_transfer_that_cannot_be_applied_is_refused(h, changes, code, field):
    with unchanged(h):
        refused(transfer(h, **changes), code, field)


def test_a_cbdc_ledger_knows_only_its_currencies(harness):
    h = harness("cbdc-multi")
    applied(h.send(OpenAccount, "fed", account="acc-a", owner="bank-a"))
    applied(h.send(OpenAccount, "fed", account="acc-b", owner="bank-b"))
    applied(h.send(Issue, "snb", asset="CHF", account="acc-a", amount=100))
    with unchanged(h):
        refused(
            h.send(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1),
            Code.UNKNOWN_ASSET,
            "asset",
        )
    applied(h.send(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="CHF", amount=100))


# -- lock -------------------------------------------------------------------------------------


def test_a_lock_moves_the_amount_from_available_to_locked(h):
    lock_id = place_lock(h, amount=1_000, expiry_ms=T0 + MINUTE_MS)
    assert h.balance("acc-a", "EUR") == (9_000, 1_000)
    assert h.balance("acc-b", "EUR") == (0, 0)
    assert h.query(QueryLock, lock_id=lock_id) == {
        "lock_id": lock_id,
        "owner_account": "acc-a",
        "beneficiary_account": "acc-b",
        "asset": "EUR",
        "amount": 1_000,
        "hashlock": HASHLOCK.hex(),
        "expiry_ms": T0 + MINUTE_MS,
        "abort_by": ["coordinator"],
        "state": "held",
        "cancel_hashlock": None,
        "backstop_ms": None,
    }
    assert h.query(QueryBalances, account="acc-a")["balances"]["EUR"] == {"available": 9_000, "locked": 1_000}


def test_a_locked_amount_cannot_be_spent_twice(h):
    place_lock(h, amount=6_000)
    with unchanged(h):
        short = refused(transfer(h, amount=4_001), Code.INSUFFICIENT_FUNDS, "amount")
        assert short.reason == "acc-a has EUR 40.00 available, needs EUR 40.01"  # money as a person reads it
        refused(
            h.send(
                Lock,
                "bank-a",
                owner_account="acc-a",
                beneficiary_account="acc-b",
                asset="EUR",
                amount=4_001,
                hashlock=HASHLOCK,
                expiry_ms=h.now_ms + MINUTE_MS,
                abort_by=(),
            ),
            Code.INSUFFICIENT_FUNDS,
            "amount",
        )
        refused(
            h.send(Settle, "bank-a", "bank-b", legs=(Leg("acc-a", "acc-b", "EUR", 4_001),)),
            Code.INSUFFICIENT_FUNDS,
            "legs[0].amount",
        )
    applied(transfer(h, amount=4_000))
    assert h.balance("acc-a", "EUR") == (0, 6_000)


def test_a_lock_signed_by_someone_but_the_owner_is_refused(h):
    with unchanged(h):
        refused(
            h.send(
                Lock,
                "bank-b",
                owner_account="acc-a",
                beneficiary_account="acc-b",
                asset="EUR",
                amount=1,
                hashlock=HASHLOCK,
                expiry_ms=h.now_ms + MINUTE_MS,
                abort_by=(),
            ),
            Code.NOT_AUTHORISED,
            "sigs",
        )


@pytest.mark.parametrize(
    "changes, code, field",
    [
        ({"owner_account": "acc-nobody"}, Code.UNKNOWN_ACCOUNT, "owner_account"),
        ({"beneficiary_account": "acc-nobody"}, Code.UNKNOWN_ACCOUNT, "beneficiary_account"),
        ({"beneficiary_account": "acc-a"}, Code.INVALID_FIELD, "beneficiary_account"),
        ({"asset": "CHF"}, Code.UNKNOWN_ASSET, "asset"),
        ({"abort_by": ("coordinator", "mallory")}, Code.UNKNOWN_SIGNER, "abort_by"),
        ({"expiry_ms": T0}, Code.EXPIRY_OUT_OF_RANGE, "expiry_ms"),
        ({"expiry_ms": T0 - 1}, Code.EXPIRY_OUT_OF_RANGE, "expiry_ms"),
        ({"expiry_ms": T0 + 7 * 24 * 3600 * 1000 + 1}, Code.EXPIRY_OUT_OF_RANGE, "expiry_ms"),
        ({"amount": 10_001}, Code.INSUFFICIENT_FUNDS, "amount"),
    ],
)
def test_a_lock_that_cannot_be_placed_is_refused(h, changes, code, field):
    fields = dict(
        owner_account="acc-a",
        beneficiary_account="acc-b",
        asset="EUR",
        amount=1_000,
        hashlock=HASHLOCK,
        expiry_ms=T0 + MINUTE_MS,
        abort_by=("coordinator",),
    )
    fields.update(changes)
    with unchanged(h):
        refused(h.send(Lock, "bank-a", **fields), code, field)


def test_a_lock_may_expire_one_ms_after_now_or_at_the_longest_allowed(h):
    place_lock(h, expiry_ms=T0 + 1)
    place_lock(h, expiry_ms=T0 + h.config.limits.lock_expiry_ms_max)


# -- claim ------------------------------------------------------------------------------------


def claim(h: Harness, lock_id: str, signer: str = "bank-b", preimage: bytes = SECRET) -> Receipt:
    return h.send(Claim, signer, lock_id=lock_id, preimage=preimage)


def test_a_claim_with_the_secret_pays_the_beneficiary(h):
    lock_id = place_lock(h, amount=1_000)
    applied(claim(h, lock_id))
    assert h.balance("acc-a", "EUR") == (9_000, 0)
    assert h.balance("acc-b", "EUR") == (1_000, 0)
    assert lock_state(h, lock_id) == "claimed"


def test_a_claim_with_the_wrong_preimage_is_refused(h):
    lock_id = place_lock(h)
    with unchanged(h):
        refused(claim(h, lock_id, preimage=WRONG_SECRET), Code.WRONG_PREIMAGE, "preimage")
    assert lock_state(h, lock_id) == "held"


def test_a_claim_by_a_third_party_succeeds_and_pays_only_the_beneficiary(h):
    lock_id = place_lock(h, amount=1_000)
    treasury_before = h.store.balances_of("acc-t")
    applied(claim(h, lock_id, signer="treasury"))
    assert h.balance("acc-b", "EUR") == (1_000, 0)
    assert h.balance("acc-a", "EUR") == (9_000, 0)
    assert h.store.balances_of("acc-t") == treasury_before
    assert h.store.asset("EUR").outstanding == 10_000


def test_an_unsigned_claim_is_refused(h):
    lock_id = place_lock(h)
    with unchanged(h):
        refused(h.send(Claim, lock_id=lock_id, preimage=SECRET), Code.MISSING_SIGNATURE, "sigs")


def test_a_claim_one_ms_before_expiry_is_accepted(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS - 1
    applied(claim(h, lock_id))
    assert h.balance("acc-b", "EUR") == (1_000, 0)


def test_a_claim_at_expiry_is_refused_as_expired_and_the_lock_is_back_with_its_owner(h):
    # The ledger refunds every due lock at the start of each batch, so the claim finds
    # the lock already refunded; it is refused as expired, not as merely "not held".
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS
    receipt = refused(claim(h, lock_id), Code.LOCK_EXPIRED, "lock_id")
    assert "at or after expiry" in receipt.reason
    assert lock_state(h, lock_id) == "refunded"
    assert h.balance("acc-a", "EUR") == (10_000, 0)
    assert h.balance("acc-b", "EUR") == (0, 0)


def test_a_claim_of_an_unknown_lock_is_refused(h):
    with unchanged(h):
        refused(claim(h, "lock-nobody"), Code.UNKNOWN_LOCK, "lock_id")


@pytest.mark.parametrize("end", ["claim", "abort"])
def test_a_claim_of_a_claimed_or_aborted_lock_is_refused_as_not_held(h, end):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    if end == "claim":
        applied(claim(h, lock_id))
    else:
        applied(h.send(Abort, "coordinator", lock_id=lock_id))
    with unchanged(h):
        receipt = refused(claim(h, lock_id), Code.LOCK_NOT_HELD, "lock_id")
    assert receipt.reason.endswith(f"is {end}ed")


@pytest.mark.parametrize("late_ms", [0, 1, MINUTE_MS])
def test_a_claim_of_a_refunded_lock_is_refused_as_expired(h, late_ms):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS
    h.tick()
    assert lock_state(h, lock_id) == "refunded"
    h.now_ms += late_ms
    with unchanged(h):
        refused(claim(h, lock_id), Code.LOCK_EXPIRED, "lock_id")


# -- refund -----------------------------------------------------------------------------------


def test_a_refund_before_expiry_is_refused(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS - 1
    with unchanged(h):
        refused(h.send(Refund, "bank-a", lock_id=lock_id), Code.LOCK_NOT_EXPIRED, "lock_id")
    assert lock_state(h, lock_id) == "held"


def test_a_lock_is_refunded_at_expiry(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS
    h.tick()
    assert lock_state(h, lock_id) == "refunded"
    assert h.balance("acc-a", "EUR") == (10_000, 0)


def test_a_refund_request_for_a_lock_the_ledger_already_refunded_is_refused_and_changes_nothing(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS
    h.tick()
    with unchanged(h):
        refused(h.send(Refund, "bank-a", lock_id=lock_id), Code.LOCK_NOT_HELD, "lock_id")
    assert h.balance("acc-a", "EUR") == (10_000, 0)


def test_a_refund_of_a_claimed_lock_is_refused(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS)
    applied(claim(h, lock_id))
    h.now_ms = T0 + MINUTE_MS
    with unchanged(h):
        refused(h.send(Refund, "bank-a", lock_id=lock_id), Code.LOCK_NOT_HELD, "lock_id")
    assert h.balance("acc-b", "EUR") == (1_000, 0)


def test_a_refund_of_an_unknown_lock_is_refused(h):
    with unchanged(h):
        refused(h.send(Refund, "bank-a", lock_id="lock-nobody"), Code.UNKNOWN_LOCK, "lock_id")


# -- the expiry boundary for a lock still held (an expiry backlog) ------------------------------
# The ledger refunds at most batch_size_max due locks per batch. Under a backlog a due
# lock is still held while the batch's instructions run, and the HTLC rules alone decide:
# a claim at expiry is refused lock_expired and a refund at expiry is applied.


@pytest.fixture
def backlog(world, harness) -> Harness:
    """The unified ledger refunding one due lock per batch; lock-1 and lock-2 expire at
    T0 + 1 minute, lock-1 (first by id) is refunded first."""
    path = world.ledger_configs["unified"]
    path.write_text(path.read_text() + "\n[limits]\nbatch_size_max = 1\n")
    h = populate(harness("unified"))
    place_lock(h, lock_id="lock-1", expiry_ms=T0 + MINUTE_MS)
    place_lock(h, lock_id="lock-2", expiry_ms=T0 + MINUTE_MS)
    h.now_ms = T0 + MINUTE_MS
    return h


def test_a_claim_at_expiry_of_a_lock_still_held_is_refused_lock_expired(backlog):
    h = backlog
    receipt = refused(claim(h, "lock-2"), Code.LOCK_EXPIRED, "lock_id")
    assert "at or after expiry" in receipt.reason
    assert lock_state(h, "lock-1") == "refunded"
    assert h.balance("acc-b", "EUR") == (0, 0)


def test_a_refund_at_expiry_of_a_lock_still_held_is_applied(backlog):
    h = backlog
    applied(h.send(Refund, "bank-b", lock_id="lock-2"))
    assert (lock_state(h, "lock-1"), lock_state(h, "lock-2")) == ("refunded", "refunded")
    assert h.balance("acc-a", "EUR") == (10_000, 0)


def test_an_abort_at_expiry_of_a_lock_still_held_is_refused_lock_expired(backlog):
    h = backlog
    refused(h.send(Abort, "coordinator", lock_id="lock-2"), Code.LOCK_EXPIRED, "lock_id")


def test_the_htlc_core_splits_time_at_expiry_with_no_gap_and_no_overlap():
    lock = HeldLock("l", "acc-a", "acc-b", "EUR", 5, HASHLOCK, T0, ())
    assert htlc_claim(lock, SECRET, T0 - 1).state is LockState.CLAIMED
    with pytest.raises(Rejected) as at_expiry:
        htlc_claim(lock, SECRET, T0)
    assert (at_expiry.value.code, at_expiry.value.field) == (Code.LOCK_EXPIRED, "lock_id")
    with pytest.raises(Rejected) as early:
        htlc_refund(lock, T0 - 1)
    assert early.value.code is Code.LOCK_NOT_EXPIRED
    assert htlc_refund(lock, T0).state is LockState.REFUNDED
    with pytest.raises(Rejected) as late_abort:
        htlc_abort(lock, "bank-b", "bank-b", T0)
    assert late_abort.value.code is Code.LOCK_EXPIRED


# -- abort ------------------------------------------------------------------------------------


def test_the_beneficiary_may_abort_a_lock(h):
    lock_id = place_lock(h, abort_by=())
    applied(h.send(Abort, "bank-b", lock_id=lock_id))
    assert lock_state(h, lock_id) == "aborted"
    assert h.balance("acc-a", "EUR") == (10_000, 0)


def test_a_party_named_in_abort_by_may_abort_a_lock(h):
    lock_id = place_lock(h, abort_by=("coordinator",))
    applied(h.send(Abort, "coordinator", lock_id=lock_id))
    assert lock_state(h, lock_id) == "aborted"
    assert h.balance("acc-a", "EUR") == (10_000, 0)


def test_the_owner_may_not_abort_its_own_lock(h):
    lock_id = place_lock(h, abort_by=("coordinator",))
    with unchanged(h):
        refused(h.send(Abort, "bank-a", lock_id=lock_id), Code.NOT_AUTHORISED, "sigs")
        refused(h.send(Abort, "treasury", lock_id=lock_id), Code.NOT_AUTHORISED, "sigs")
    assert lock_state(h, lock_id) == "held"


def test_one_allowed_signer_among_others_suffices_to_abort(h):
    lock_id = place_lock(h, abort_by=("coordinator",))
    applied(h.send(Abort, "bank-a", "coordinator", lock_id=lock_id))
    assert lock_state(h, lock_id) == "aborted"


def test_an_abort_at_or_after_expiry_is_refused_as_expired(h):
    lock_id = place_lock(h, expiry_ms=T0 + MINUTE_MS, abort_by=("coordinator",))
    h.now_ms = T0 + MINUTE_MS
    refused(h.send(Abort, "coordinator", lock_id=lock_id), Code.LOCK_EXPIRED, "lock_id")
    h.now_ms += MINUTE_MS
    with unchanged(h):
        refused(h.send(Abort, "bank-b", lock_id=lock_id), Code.LOCK_EXPIRED, "lock_id")
    assert lock_state(h, lock_id) == "refunded"


def test_an_abort_of_a_claimed_lock_is_refused(h):
    lock_id = place_lock(h)
    applied(claim(h, lock_id))
    with unchanged(h):
        refused(h.send(Abort, "bank-b", lock_id=lock_id), Code.LOCK_NOT_HELD, "lock_id")


# -- settle -----------------------------------------------------------------------------------


def test_same_ledger_dvp_moves_the_bond_and_the_cash_together(h):
    applied(
        h.send(Settle, "bank-a", "bank-b", legs=(Leg("acc-b", "acc-a", BOND, 100), Leg("acc-a", "acc-b", "EUR", 9_950)))
    )
    assert h.balance("acc-a", BOND) == (100, 0) and h.balance("acc-b", BOND) == (300, 0)
    assert h.balance("acc-a", "EUR") == (50, 0) and h.balance("acc-b", "EUR") == (9_950, 0)


def test_same_ledger_pvp_moves_both_currencies_together(h):
    seq = h.ledger.seq
    applied(
        h.send(
            Settle, "bank-a", "bank-b", legs=(Leg("acc-a", "acc-b", "EUR", 1_000), Leg("acc-b", "acc-a", "USD", 1_100))
        )
    )
    assert h.ledger.seq == seq + 1
    assert h.balance("acc-a", "USD") == (1_100, 0) and h.balance("acc-b", "USD") == (3_900, 0)
    assert h.balance("acc-a", "EUR") == (9_000, 0) and h.balance("acc-b", "EUR") == (1_000, 0)


def test_a_settlement_with_one_leg_short_of_funds_moves_nothing(h):
    with unchanged(h):
        refused(
            h.send(
                Settle,
                "bank-a",
                "bank-b",
                legs=(Leg("acc-b", "acc-a", BOND, 100), Leg("acc-a", "acc-b", "EUR", 10_001)),
            ),
            Code.INSUFFICIENT_FUNDS,
            "legs[1].amount",
        )


def test_a_settlement_missing_one_legs_owner_signature_moves_nothing(h):
    with unchanged(h):
        receipt = refused(
            h.send(Settle, "bank-a", legs=(Leg("acc-a", "acc-b", "EUR", 1_000), Leg("acc-b", "acc-a", BOND, 100))),
            Code.NOT_AUTHORISED,
            "sigs",
        )
    assert "bank-b" in receipt.reason


@pytest.mark.parametrize(
    "bad_leg, code, field",
    [
        (Leg("acc-b", "acc-nobody", BOND, 1), Code.UNKNOWN_ACCOUNT, "legs[1].to_account"),
        (Leg("acc-nobody", "acc-a", BOND, 1), Code.UNKNOWN_ACCOUNT, "legs[1].from_account"),
        (Leg("acc-b", "acc-a", OTHER_BOND, 1), Code.UNKNOWN_ASSET, "legs[1].asset"),
        (Leg("acc-b", "acc-b", BOND, 1), Code.INVALID_FIELD, "legs[1].to_account"),
    ],
)
def test_a_settlement_with_one_bad_leg_moves_nothing(h, bad_leg, code, field):
    with unchanged(h):
        refused(h.send(Settle, "bank-a", "bank-b", legs=(Leg("acc-a", "acc-b", "EUR", 1_000), bad_leg)), code, field)


def test_a_later_leg_may_spend_what_an_earlier_leg_delivered(h):
    applied(
        h.send(
            Settle, "bank-a", "bank-b", legs=(Leg("acc-a", "acc-b", "EUR", 1_000), Leg("acc-b", "acc-t", "EUR", 1_000))
        )
    )
    assert h.balance("acc-b", "EUR") == (0, 0) and h.balance("acc-t", "EUR") == (1_000, 0)


def test_settlement_legs_cannot_together_spend_more_than_available(h):
    with unchanged(h):
        refused(
            h.send(Settle, "bank-a", legs=(Leg("acc-a", "acc-b", "EUR", 6_000), Leg("acc-a", "acc-t", "EUR", 4_001))),
            Code.INSUFFICIENT_FUNDS,
            "legs[1].amount",
        )


# -- idempotency ------------------------------------------------------------------------------


def test_the_same_signed_bytes_twice_give_identical_receipt_bytes_and_apply_once(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).encode()
    seq = h.ledger.seq
    (first,), entries = h.ledger.process([payload], h.now_ms)
    h.now_ms += 1_000
    (again,), no_entries = h.ledger.process([payload], h.now_ms)
    assert again == first
    assert (len(entries), no_entries, h.ledger.seq) == (1, [], seq + 1)
    assert h.balance("acc-b", "EUR") == (100, 0)


def test_the_same_instruction_twice_in_one_batch_applies_once(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).encode()
    seq = h.ledger.seq
    (first, again), _ = h.ledger.process([payload, payload], h.now_ms)
    assert again == first
    assert h.ledger.seq == seq + 1
    assert h.balance("acc-b", "EUR") == (100, 0)


def test_a_retry_after_the_freshness_window_still_gets_its_first_receipt(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).encode()
    (first,), _ = h.ledger.process([payload], h.now_ms)
    h.now_ms += 24 * 3600 * 1000
    (again,), _ = h.ledger.process([payload], h.now_ms)
    assert again == first


def test_the_same_id_with_different_content_is_refused_naming_the_field(h):
    applied(transfer(h, id="t-1", amount=100))
    with unchanged(h):
        receipt = refused(transfer(h, id="t-1", amount=101), Code.ID_REUSED, "amount")
        refused(transfer(h, id="t-1", amount=100, to_account="acc-t"), Code.ID_REUSED, "to_account")
        refused(h.send(Refund, "bank-a", id="t-1", lock_id="lock-x"), Code.ID_REUSED, "amount")
    assert receipt.instruction_id == "t-1"


def test_the_same_id_with_a_later_timestamp_is_refused_naming_ts_ms(h):
    applied(transfer(h, id="t-1"))
    h.now_ms += 1
    with unchanged(h):
        refused(transfer(h, id="t-1"), Code.ID_REUSED, "ts_ms")


def test_an_instruction_refused_for_funds_gets_the_same_refusal_when_sent_again(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=20_000).encode()
    (first,), _ = h.ledger.process([payload], h.now_ms)
    refused(decode_signed(first).msg, Code.INSUFFICIENT_FUNDS, "amount")
    applied(h.send(Issue, "ecb", asset="EUR", account="acc-a", amount=20_000))
    with unchanged(h):
        (again,), _ = h.ledger.process([payload], h.now_ms)
    assert again == first


def test_an_unauthenticated_instruction_does_not_use_up_its_id(h):
    forged = h.make(Transfer, "bank-b", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100)
    wire = forged.wire()
    wire["sigs"] = {"bank-a": wire["sigs"].pop("bank-b")}
    refused(h.raw(encode(wire)), Code.BAD_SIGNATURE, "sigs")
    applied(transfer(h, id="t-1", amount=100))


def test_a_stale_instruction_does_not_use_up_its_id(h):
    refused(transfer(h, id="t-1", ts_ms=T0 - 10 * MINUTE_MS), Code.STALE, "ts_ms")
    applied(transfer(h, id="t-1"))


def test_the_receipt_query_returns_the_receipt_bytes_of_an_instruction(h):
    payload = h.make(
        Transfer, "bank-a", id="t-1", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100
    ).encode()
    (reply,), _ = h.ledger.process([payload], h.now_ms)
    query = unsigned(QueryReceipt("q-1", "unified", "t-1")).encode()
    (answer,), _ = h.ledger.process([query], h.now_ms)
    assert answer == reply


# -- signatures -------------------------------------------------------------------------------


def test_a_signature_by_the_wrong_key_is_refused(h):
    wire = h.make(Transfer, "bank-b", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).wire()
    wire["sigs"] = {"bank-a": wire["sigs"]["bank-b"]}
    with unchanged(h):
        refused(h.raw(encode(wire)), Code.BAD_SIGNATURE, "sigs")


@pytest.mark.parametrize("signature", ["", "00", "3006020101020101", "30" * 36])
def test_a_signature_that_is_not_a_valid_der_signature_is_refused(h, signature):
    wire = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).wire()
    wire["sigs"]["bank-a"] = signature
    with unchanged(h):
        refused(h.raw(encode(wire)), Code.BAD_SIGNATURE, "sigs")


def test_one_bad_signature_among_good_ones_is_refused(h):
    wire = h.make(
        Transfer, "bank-a", "bank-b", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100
    ).wire()
    wire["sigs"]["bank-b"] = wire["sigs"]["bank-a"]
    with unchanged(h):
        refused(h.raw(encode(wire)), Code.BAD_SIGNATURE, "sigs")


def test_a_signature_by_an_unregistered_party_is_refused(h):
    wire = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).wire()
    wire["sigs"]["mallory"] = wire["sigs"]["bank-a"]
    with unchanged(h):
        receipt = refused(h.raw(encode(wire)), Code.UNKNOWN_SIGNER, "sigs")
    assert "mallory" in receipt.reason


def test_an_instruction_without_signatures_is_refused(h):
    with unchanged(h):
        refused(
            h.send(Transfer, from_account="acc-a", to_account="acc-b", asset="EUR", amount=100),
            Code.MISSING_SIGNATURE,
            "sigs",
        )


def test_an_instruction_signed_for_one_ledger_is_refused_by_another(harness):
    cbdc = harness("cbdc-eur")
    unified = populate(harness("unified"))
    for ledger in (cbdc, unified):
        applied(ledger.send(OpenAccount, "bank-a", id="open-x", account="acc-x", owner="bank-a"))
    signed = cbdc.make(
        Transfer, "bank-a", id="t-cross", from_account="acc-a", to_account="acc-x", asset="EUR", amount=100
    )
    with unchanged(unified):
        receipt = refused(unified.submit(signed), Code.WRONG_LEDGER, "ledger")
    assert receipt.ledger == "unified"
    body = dict(signed.body, ledger="unified")
    tampered = encode({**body, "sigs": {party: sig.hex() for party, sig in signed.sigs.items()}})
    with unchanged(unified):
        refused(unified.raw(tampered), Code.BAD_SIGNATURE, "sigs")


def test_an_instruction_with_one_body_byte_changed_is_refused(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=100).encode()
    tampered = payload.replace(b'"amount":100', b'"amount":900')
    assert tampered != payload and len(tampered) == len(payload)
    with unchanged(h):
        refused(h.raw(tampered), Code.BAD_SIGNATURE, "sigs")
    applied(h.raw(payload))


# -- freshness, version, type ----------------------------------------------------------------


def test_an_instruction_signed_too_long_ago_or_too_far_ahead_is_stale(h):
    limits = h.config.limits
    with unchanged(h):
        refused(transfer(h, ts_ms=T0 - limits.ts_age_ms_max - 1), Code.STALE, "ts_ms")
        refused(transfer(h, ts_ms=T0 + limits.ts_ahead_ms_max + 1), Code.STALE, "ts_ms")
    applied(transfer(h, ts_ms=T0 - limits.ts_age_ms_max, amount=1))
    applied(transfer(h, ts_ms=T0 + limits.ts_ahead_ms_max, amount=1))


def test_an_instruction_of_another_protocol_version_is_refused(h):
    body = dict(h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1).body)
    body["v"] = 2
    with unchanged(h):
        refused(h.raw(resigned(h, body, "bank-a")), Code.UNSUPPORTED_VERSION, "v")


@pytest.mark.parametrize("type_name", ["mint", "receipt", "entry", "result"])
def test_an_instruction_of_an_unknown_type_is_refused(h, type_name):
    body = dict(h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1).body)
    body["type"] = type_name
    with unchanged(h):
        receipt = refused(h.raw(resigned(h, body, "bank-a")), Code.UNKNOWN_TYPE, "type")
    assert receipt.instruction_id == body["id"]


# -- queries ----------------------------------------------------------------------------------


def test_the_balances_query_shows_available_and_locked_per_asset(h):
    place_lock(h, owner="acc-b", beneficiary="acc-a", asset="USD", amount=1_500, signer="bank-b")
    assert h.query(QueryBalances, account="acc-b") == {
        "account": "acc-b",
        "owner": "bank-b",
        "balances": {BOND: {"available": 400, "locked": 0}, "USD": {"available": 3_500, "locked": 1_500}},
    }


def test_queries_of_unknown_things_are_refused(h):
    for query, fields, code, field in [
        (QueryBalances, {"account": "acc-nobody"}, Code.UNKNOWN_ACCOUNT, "account"),
        (QueryLock, {"lock_id": "lock-nobody"}, Code.UNKNOWN_LOCK, "lock_id"),
        (QueryReceipt, {"instruction_id": "t-nobody"}, Code.UNKNOWN_INSTRUCTION, "instruction_id"),
    ]:
        with pytest.raises(Rejected) as caught:
            h.query(query, **fields)
        assert (caught.value.code, caught.value.field) == (code, field)


def test_the_expiring_locks_query_lists_held_locks_soonest_first(h):
    late = place_lock(h, amount=1, expiry_ms=T0 + 3 * MINUTE_MS)
    early = place_lock(h, amount=1, expiry_ms=T0 + 1 * MINUTE_MS)
    claimed = place_lock(h, amount=1, expiry_ms=T0 + 2 * MINUTE_MS)
    applied(claim(h, claimed))
    listed = h.query(QueryLocks, expiring_before_ms=T0 + 10 * MINUTE_MS, limit=10)
    assert [lock["lock_id"] for lock in listed] == [early, late]
    assert [lock["lock_id"] for lock in h.query(QueryLocks, expiring_before_ms=T0 + 10 * MINUTE_MS, limit=1)] == [early]
    assert list(h.query(QueryLocks, expiring_before_ms=T0 + 1 * MINUTE_MS, limit=10)) == []
    assert [lock["lock_id"] for lock in h.query(QueryLocks, expiring_before_ms=T0 + MINUTE_MS + 1, limit=10)] == [early]


@pytest.mark.parametrize("limit", [0, 1001])
def test_the_expiring_locks_query_refuses_a_limit_outside_1_to_1000(h, limit):
    with pytest.raises(Rejected) as caught:
        h.query(QueryLocks, expiring_before_ms=T0, limit=limit)
    assert (caught.value.code, caught.value.field) == (Code.INVALID_FIELD, "limit")


def test_the_journal_query_pages_through_signed_entries(h):
    receipt = applied(transfer(h, amount=1))
    page = h.query(QueryJournal, from_seq=receipt.seq, limit=5)
    assert page["head"] == h.ledger.seq == receipt.seq + 1
    (entry,) = page["entries"]
    assert (entry["seq"], entry["kind"], entry["ledger"]) == (receipt.seq, "transfer", "unified")
    assert entry["instruction"]["id"] == receipt.instruction_id
    assert entry["effects"]["balances"] == [["acc-a", "EUR", -1, 0], ["acc-b", "EUR", 1, 0]]
    assert "unified" in entry["sigs"]
    first_two = h.query(QueryJournal, from_seq=0, limit=2)["entries"]
    assert [e["seq"] for e in first_two] == [0, 1]
    assert first_two[1]["prev_hash"] != first_two[0]["prev_hash"]
    with pytest.raises(Rejected) as caught:
        h.query(QueryJournal, from_seq=0, limit=201)
    assert (caught.value.code, caught.value.field) == (Code.INVALID_FIELD, "limit")


def test_queries_change_nothing(h):
    lock_id = place_lock(h)
    with unchanged(h):
        h.query(QueryBalances, account="acc-a")
        h.query(QueryLock, lock_id=lock_id)
        h.query(QueryLocks, expiring_before_ms=T0 + MINUTE_MS + 1, limit=10)
        h.query(QueryJournal, from_seq=0, limit=10)
        assert receipt_of(h, lock_id).applied


def test_a_query_for_another_ledger_is_refused(h):
    with pytest.raises(Rejected) as caught:
        h.query(QueryBalances, ledger="csd", account="acc-a")
    assert (caught.value.code, caught.value.field) == (Code.WRONG_LEDGER, "ledger")


def test_a_receipt_is_signed_by_the_ledger(h):
    payload = h.make(Transfer, "bank-a", from_account="acc-a", to_account="acc-b", asset="EUR", amount=1).encode()
    (reply,), _ = h.ledger.process([payload], h.now_ms)
    signed = decode_signed(reply)
    h.world.registry.verify_all(signed)
    assert set(signed.sigs) == {"unified"}
    assert decode(reply)["type"] == "receipt"


# -- ids cannot be spent by a party without authority -------------------------------------


def test_a_party_without_authority_cannot_spend_another_partys_instruction_id(h):
    """bank-b signs bank-a's transfer: refused, and not recorded, so bank-a's own
    properly signed instruction with that id is still applied."""
    fields = dict(id="t-planned", from_account="acc-a", to_account="acc-b", asset="EUR", amount=10)
    with unchanged(h):
        refused(h.send(Transfer, "bank-b", **fields), Code.NOT_AUTHORISED, "sigs")
    applied(h.send(Transfer, "bank-a", **fields))


def test_abort_by_may_not_name_the_locks_own_owner(h):
    with unchanged(h):
        refused(
            h.send(
                Lock,
                "bank-a",
                owner_account="acc-a",
                beneficiary_account="acc-b",
                asset="EUR",
                amount=10,
                hashlock=HASHLOCK,
                expiry_ms=h.now_ms + MINUTE_MS,
                abort_by=("bank-a",),
            ),
            Code.INVALID_FIELD,
            "abort_by",
        )
