"""What each instruction may do and what it changes: authority (who must have signed),
existence (accounts, assets, locks), sufficiency (available balance) and the HTLC rules.

`apply` either records the instruction's changes in `Changes` or raises `Rejected`;
it reads the store only through `Changes` and writes nothing itself."""

from __future__ import annotations

from collections.abc import Callable, Collection

import attrs

from protocols import htlc
from protocols.authority import Terms, earlier_payer_lock, terms_of
from protocols.canonical import INT_MAX
from protocols.errors import Code, Rejected
from protocols.identifiers import CURRENCIES
from protocols.messages import (
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Fence,
    Issue,
    Lock,
    OpenAccount,
    Redeem,
    Refund,
    RotateKey,
    Settle,
    Transfer,
)
from protocols.money import format_amount
from protocols.registry import Registry, Role
from protocols.settlement import lock_id, settle_id, utc_date
from protocols.signing import Signed, public_point

from .changes import Changes
from .config import LedgerConfig
from .store import Asset


@attrs.frozen
class Context:
    config: LedgerConfig
    registry: Registry
    now_ms: int


def apply(signed: Signed, ctx: Context, changes: Changes) -> None:
    """Apply one authenticated instruction (its signatures already verified)."""
    msg = signed.msg
    age_ms = ctx.now_ms - msg.ts_ms
    if age_ms > ctx.config.limits.ts_age_ms_max or -age_ms > ctx.config.limits.ts_ahead_ms_max:
        raise Rejected(
            Code.STALE,
            "ts_ms",
            f"signed at {msg.ts_ms}, ledger time is {ctx.now_ms}: "
            f"outside the window of -{ctx.config.limits.ts_ahead_ms_max}/+{ctx.config.limits.ts_age_ms_max} ms",
        )
    if getattr(msg, "epoch", 0):
        _fenced(msg.epoch, signed, ctx, changes)
    _RULES[type(msg)](msg, signed, ctx, changes)


def _fenced(epoch: int, signed: Signed, ctx: Context, changes: Changes) -> None:
    """An epoch is a coordinator instance's (Fence): one below the ledger's fence for it
    is an instance since replaced, refused; a higher one raises the fence."""
    coordinator = next(iter(signed.sigs))
    if len(signed.sigs) != 1 or not ctx.registry.has_role(coordinator, Role.COORDINATOR):
        raise Rejected(Code.NOT_AUTHORISED, "epoch", "an epoch is a coordinator's: signed by one coordinator alone")
    fence = changes.fence(coordinator)
    if epoch < fence:
        raise Rejected(
            Code.FENCED,
            "epoch",
            f"coordinator {coordinator} is at epoch {fence} on this ledger: "
            f"epoch {epoch} is an instance of it since replaced",
        )
    if epoch > fence:
        changes.raise_fence(coordinator, epoch)


def _signed_by(signers: Collection[str], party: str, why: str) -> None:
    if party not in signers:
        raise Rejected(Code.NOT_AUTHORISED, "sigs", f"needs the signature of {party!r}: {why}")


def _owner(changes: Changes, account: str, field: str) -> str:
    owner = changes.owner(account)
    if owner is None:
        raise Rejected(Code.UNKNOWN_ACCOUNT, field, f"no account {account!r} on this ledger")
    return owner


def _asset(changes: Changes, code: str, field: str = "asset") -> Asset:
    asset = changes.asset(code)
    if asset is None:
        raise Rejected(Code.UNKNOWN_ASSET, field, f"this ledger carries no asset {code!r}")
    return asset


def _debit_available(changes: Changes, account: str, asset: str, amount: int, field: str) -> None:
    available, _ = changes.balance(account, asset)
    if available < amount:
        raise Rejected(
            Code.INSUFFICIENT_FUNDS,
            field,
            f"{account} has {format_amount(asset, available)} available, needs {format_amount(asset, amount)}",
        )


def _open_account(msg: OpenAccount, signed: Signed, ctx: Context, changes: Changes) -> None:
    if msg.owner not in ctx.registry:
        raise Rejected(Code.UNKNOWN_SIGNER, "owner", f"{msg.owner!r} is not a registered party")
    if ctx.config.operator not in signed.sigs and msg.owner not in signed.sigs:
        raise Rejected(Code.NOT_AUTHORISED, "sigs", "an account is opened by the ledger's operator or its owner")
    if changes.owner(msg.account) is not None:
        raise Rejected(Code.ACCOUNT_EXISTS, "account", f"account {msg.account!r} already exists")
    changes.add_account(msg.account, msg.owner)


def _create_instrument(msg: CreateInstrument, signed: Signed, ctx: Context, changes: Changes) -> None:
    if not ctx.config.holds_securities:
        raise Rejected(Code.NOT_AUTHORISED, "type", f"{ctx.config.role} ledger holds no instruments")
    _signed_by(signed.sigs, ctx.config.operator, "only the depository creates an instrument")
    if msg.issuer not in ctx.registry:
        raise Rejected(Code.UNKNOWN_SIGNER, "issuer", f"{msg.issuer!r} is not a registered party")
    if changes.asset(msg.isin) is not None:
        raise Rejected(Code.ASSET_EXISTS, "isin", f"instrument {msg.isin} already exists")
    reference = {
        "currency": msg.currency,
        "face_value_minor": msg.face_value_minor,
        "coupon_rate_bp": msg.coupon_rate_bp,
        "maturity_date": msg.maturity_date,
        "coupon_frequency": msg.coupon_frequency,
        "day_count": msg.day_count,
    }
    changes.add_asset(Asset(msg.isin, "security", msg.issuer, 0, reference))


def _issuer_signed(asset: Asset, signed: Signed, ctx: Context) -> None:
    if asset.kind == "security":
        _signed_by(signed.sigs, ctx.config.operator, "only the depository issues and redeems an instrument")
    else:
        _signed_by(signed.sigs, asset.issuer, f"only {asset.issuer} issues and redeems {asset.code}")


def _issue(msg: Issue, signed: Signed, ctx: Context, changes: Changes) -> None:
    asset = _asset(changes, msg.asset)
    _issuer_signed(asset, signed, ctx)
    owner = _owner(changes, msg.account, "account")
    if asset.kind == "security" and owner != asset.issuer:
        raise Rejected(
            Code.NOT_AUTHORISED, "account", f"{msg.asset} is issued into an account of its issuer {asset.issuer}"
        )
    if asset.issued + msg.amount > INT_MAX:
        raise Rejected(Code.INVALID_FIELD, "amount", f"would take the issued total of {msg.asset} beyond 2^63-1")
    changes.supply(msg.asset, msg.amount, 0)
    changes.move(msg.account, msg.asset, msg.amount, 0)


def _redeem(msg: Redeem, signed: Signed, ctx: Context, changes: Changes) -> None:
    asset = _asset(changes, msg.asset)
    _issuer_signed(asset, signed, ctx)
    if _owner(changes, msg.account, "account") != asset.issuer:
        raise Rejected(
            Code.NOT_AUTHORISED, "account", f"{msg.asset} is redeemed from an account of its issuer {asset.issuer}"
        )
    _debit_available(changes, msg.account, msg.asset, msg.amount, "amount")
    changes.supply(msg.asset, 0, msg.amount)
    changes.move(msg.account, msg.asset, -msg.amount, 0)


def _movement(
    changes: Changes,
    signers: Collection[str],
    from_account: str,
    to_account: str,
    asset: str,
    amount: int,
    prefix: str = "",
) -> None:
    """Checks shared by a transfer and a settlement leg; the owner of the source signs."""
    owner = _owner(changes, from_account, prefix + "from_account")
    _owner(changes, to_account, prefix + "to_account")
    if from_account == to_account:
        raise Rejected(Code.INVALID_FIELD, prefix + "to_account", "source and destination are the same account")
    _asset(changes, asset, prefix + "asset")
    _signed_by(signers, owner, f"{from_account} belongs to {owner}")
    _debit_available(changes, from_account, asset, amount, prefix + "amount")
    changes.move(from_account, asset, -amount, 0)
    changes.move(to_account, asset, amount, 0)


def _transfer(msg: Transfer, signed: Signed, ctx: Context, changes: Changes) -> None:
    _movement(changes, signed.sigs, msg.from_account, msg.to_account, msg.asset, msg.amount)


def _settle(msg: Settle, signed: Signed, ctx: Context, changes: Changes) -> None:
    signers: Collection[str] = signed.sigs
    payers: dict[int, str] = {}
    if msg.auth is not None:
        terms = _terms(msg.auth, signed, ctx)
        if msg.id != settle_id(terms.id):
            raise Rejected(
                Code.NOT_AUTHORISED, "id", f"a settle on behalf of settlement {terms.id} has id {settle_id(terms.id)}"
            )
        if any(leg.ledger != ctx.config.ledger_id for leg in terms.legs) or msg.legs != tuple(
            leg.as_leg() for leg in terms.legs
        ):
            raise Rejected(Code.NOT_AUTHORISED, "legs", "legs differ from those the counterparties signed")
        for index in range(len(terms.legs)):
            _party_owns(changes, terms, index, ctx)
        _pairs_own(changes, terms, ctx)
        payers = dict(enumerate(terms.payers))
    for index, leg in enumerate(msg.legs):
        _movement(
            changes,
            (payers[index],) if payers else signers,
            leg.from_account,
            leg.to_account,
            leg.asset,
            leg.amount,
            prefix=f"legs[{index}].",
        )


def _terms(auth: dict, signed: Signed, ctx: Context) -> Terms:
    """The authority a coordinator's instruction carries (protocols.authority): signed by
    whoever pays, within its window, naming as coordinator the party that signed this."""
    terms = terms_of(auth, ctx.registry)
    if ctx.now_ms > terms.deadline_ms:
        raise Rejected(
            Code.EXPIRY_OUT_OF_RANGE, "auth.deadline_ms", f"settlement deadline {terms.deadline_ms} has passed"
        )
    if ctx.now_ms < terms.not_before_ms:
        raise Rejected(Code.NOT_YET, "auth.not_before_ms", f"no leg of {terms.id} moves before {terms.not_before_ms}")
    if terms.coordinator not in signed.sigs or not ctx.registry.has_role(terms.coordinator, Role.COORDINATOR):
        raise Rejected(
            Code.NOT_AUTHORISED, "sigs", f"needs the signature of the settlement's coordinator {terms.coordinator!r}"
        )
    return terms


def _party_owns(changes: Changes, terms: Terms, index: int, ctx: Context) -> None:
    """Leg i is paid from an account of its payer into an account of its payee; a
    redemption's units go back to the instrument's issuer, at face value, once matured; a
    face amount is counted in the instrument's own denomination."""
    leg = terms.legs[index]
    payer, payee = terms.payers[index], terms.payees[index]
    if _owner(changes, leg.from_account, f"auth.legs[{index}].from_account") != payer:
        raise Rejected(
            Code.NOT_AUTHORISED, f"auth.legs[{index}].from_account", f"{leg.from_account} is not an account of {payer}"
        )
    if _owner(changes, leg.to_account, f"auth.legs[{index}].to_account") != payee:
        raise Rejected(
            Code.NOT_AUTHORISED, f"auth.legs[{index}].to_account", f"{leg.to_account} is not an account of {payee}"
        )
    if terms.kind == "redemption" and index == 0:
        _matured(changes, terms, ctx)
    if terms.kind == "matched" and terms.face_value_minor is not None and index == 0:
        _denominated(changes, terms)


def _pairs_own(changes: Changes, terms: Terms, ctx: Context) -> None:
    """A linked settlement's pairs, each checked on this ledger as if it settled alone:
    the netted legs are only as good as the legs they stand for."""
    for number, pair in enumerate(terms.pairs):
        for index, leg in enumerate(pair.legs):
            if leg.ledger == ctx.config.ledger_id:
                try:
                    _party_owns(changes, pair, index, ctx)
                except Rejected as error:
                    raise Rejected(
                        error.code, f"auth.pairs[{number}].{error.field.removeprefix('auth.')}", error.reason
                    ) from None


def _denominated(changes: Changes, terms: Terms) -> None:
    """A face amount was counted in units of the denomination the pair carries: the one
    in this instrument's reference data."""
    units = terms.legs[0]
    reference = _asset(changes, units.asset, "auth.legs[0].asset").reference or {}
    denomination = (reference.get("currency"), reference.get("face_value_minor"))
    if (terms.face_currency, terms.face_value_minor) != denomination:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "auth.face_value_minor",
            f"{units.asset} is denominated in {denomination[0]} {denomination[1]} (minor units), "
            f"not {terms.face_currency} {terms.face_value_minor}",
        )


def _matured(changes: Changes, terms: Terms, ctx: Context) -> None:
    """A redemption moves a holder's units without the holder's signature: only an
    instrument's own issuer may ask, only at or after maturity, only at face value."""
    units, cash = terms.legs
    instrument = _asset(changes, units.asset, "auth.legs[0].asset")
    reference = instrument.reference
    if instrument.kind != "security" or instrument.issuer != terms.issuer:
        raise Rejected(Code.NOT_AUTHORISED, "auth.action.issuer", f"{terms.issuer} is not the issuer of {units.asset}")
    if utc_date(ctx.now_ms) < reference["maturity_date"]:
        raise Rejected(
            Code.NOT_YET, "auth.action.payment_date", f"{units.asset} matures on {reference['maturity_date']}"
        )
    if (cash.asset, terms.face_value_minor) != (reference["currency"], reference["face_value_minor"]):
        raise Rejected(
            Code.NOT_AUTHORISED,
            "auth.amount_minor",
            f"{units.asset} redeems at {format_amount(reference['currency'], reference['face_value_minor'])} a unit",
        )


def _lock_authorised(msg: Lock, signed: Signed, ctx: Context, changes: Changes) -> Collection[str]:
    """Who counts as having signed the lock: its own signers, or, for a coordinator's
    lock, the payer of the leg its `auth` allows, if the lock is exactly that leg on
    this ledger."""
    if msg.auth is None:
        return signed.sigs
    terms = _terms(msg.auth, signed, ctx)
    if terms.same_ledger:  # else one settlement could move its legs twice
        raise Rejected(
            Code.NOT_AUTHORISED,
            "auth",
            f"settlement {terms.id} has all legs on one ledger: "
            f"it settles by one settle, {settle_id(terms.id)}, never by locks",
        )
    index = next((i for i in range(len(terms.legs)) if lock_id(terms.id, i) == msg.id), None)
    if index is None:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "id",
            f"a lock for settlement {terms.id} has an id from {lock_id(terms.id, 0)} "
            f"to {lock_id(terms.id, len(terms.legs) - 1)}",
        )
    leg = terms.legs[index]
    if (leg.ledger, leg.from_account, leg.to_account, leg.asset, leg.amount) != (
        ctx.config.ledger_id,
        msg.owner_account,
        msg.beneficiary_account,
        msg.asset,
        msg.amount,
    ):
        raise Rejected(Code.NOT_AUTHORISED, "auth", f"lock terms differ from leg {index} the counterparties signed")
    if msg.expiry_ms > terms.deadline_ms:
        raise Rejected(
            Code.EXPIRY_OUT_OF_RANGE, "expiry_ms", f"expiry is after the settlement deadline {terms.deadline_ms}"
        )
    if set(msg.abort_by) - {terms.coordinator}:
        raise Rejected(Code.NOT_AUTHORISED, "abort_by", "a settlement's lock may name only its coordinator in abort_by")
    if terms.backstops and msg.backstop_ms != terms.backstops[index]:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "backstop_ms",
            f"leg {index}'s intermediaries signed for a decision lock with backstop {terms.backstops[index]}",
        )
    earlier = earlier_payer_lock(terms, index, msg.owner_account, changes.lock)
    if earlier is not None:
        raise Rejected(
            Code.NOT_AUTHORISED, "auth.payment", f"the payer's order was locked already, by {earlier}: it settles once"
        )
    _party_owns(changes, terms, index, ctx)
    _pairs_own(changes, terms, ctx)
    return (terms.payers[index],)


def _lock(msg: Lock, signed: Signed, ctx: Context, changes: Changes) -> None:
    owner = _owner(changes, msg.owner_account, "owner_account")
    _owner(changes, msg.beneficiary_account, "beneficiary_account")
    if msg.owner_account == msg.beneficiary_account:
        raise Rejected(Code.INVALID_FIELD, "beneficiary_account", "owner and beneficiary are the same account")
    _asset(changes, msg.asset)
    _signed_by(_lock_authorised(msg, signed, ctx, changes), owner, f"{msg.owner_account} belongs to {owner}")
    for party in msg.abort_by:
        if party not in ctx.registry:
            raise Rejected(Code.UNKNOWN_SIGNER, "abort_by", f"{party!r} is not a registered party")
        if party == owner:
            raise Rejected(
                Code.INVALID_FIELD, "abort_by", "the owner may not abort its own lock: it would hold a free option"
            )
    if msg.expiry_ms <= ctx.now_ms:
        raise Rejected(
            Code.EXPIRY_OUT_OF_RANGE, "expiry_ms", f"expiry {msg.expiry_ms} is not after ledger time {ctx.now_ms}"
        )
    last_ms, field = (msg.expiry_ms, "expiry_ms") if msg.backstop_ms is None else (msg.backstop_ms, "backstop_ms")
    if last_ms - ctx.now_ms > ctx.config.limits.lock_expiry_ms_max:
        raise Rejected(
            Code.EXPIRY_OUT_OF_RANGE,
            field,
            f"{field} is more than {ctx.config.limits.lock_expiry_ms_max} ms after ledger time {ctx.now_ms}",
        )
    if changes.lock(msg.id) is not None:
        raise Rejected(Code.LOCK_EXISTS, "id", f"lock {msg.id} already exists")
    _debit_available(changes, msg.owner_account, msg.asset, msg.amount, "amount")
    changes.put_lock(htlc.placed(msg))
    changes.move(msg.owner_account, msg.asset, -msg.amount, msg.amount)


def _held_lock(changes: Changes, lock_id: str) -> htlc.HeldLock:
    lock = changes.lock(lock_id)
    if lock is None:
        raise Rejected(Code.UNKNOWN_LOCK, "lock_id", f"no lock {lock_id!r} on this ledger")
    return lock


def _lock_to_end_early(changes: Changes, lock_id: str, now_ms: int, action: str) -> htlc.HeldLock:
    """The lock a claim, cancel or abort names. The ledger refunds each lock at its refund
    time (a time-lock's expiry, a decision lock's backstop) before a batch's instructions
    run, so one at or after that time finds the lock refunded: it is refused as expired,
    as the HTLC rules refuse it on a lock still held."""
    lock = _held_lock(changes, lock_id)
    if lock.state is htlc.LockState.REFUNDED and now_ms >= lock.refund_at_ms:
        when = "backstop" if lock.decides else "expiry"
        raise Rejected(
            Code.LOCK_EXPIRED,
            "lock_id",
            f"{action} at {now_ms} is at or after {when} {lock.refund_at_ms}: the lock was refunded to its owner",
        )
    return lock


def _claim(msg: Claim, signed: Signed, ctx: Context, changes: Changes) -> None:
    lock = htlc.claim(_lock_to_end_early(changes, msg.lock_id, ctx.now_ms, "claim"), msg.preimage, ctx.now_ms)
    changes.put_lock(lock)
    changes.move(lock.owner_account, lock.asset, 0, -lock.amount)
    changes.move(lock.beneficiary_account, lock.asset, lock.amount, 0)


def _cancel(msg: Cancel, signed: Signed, ctx: Context, changes: Changes) -> None:
    release(
        htlc.cancel(_lock_to_end_early(changes, msg.lock_id, ctx.now_ms, "cancel"), msg.preimage, ctx.now_ms), changes
    )


def release(lock: htlc.HeldLock, changes: Changes) -> None:
    """Return a lock's asset to its owner (refund, cancel or abort: `lock` in its end state)."""
    changes.put_lock(lock)
    changes.move(lock.owner_account, lock.asset, lock.amount, -lock.amount)


def _refund(msg: Refund, signed: Signed, ctx: Context, changes: Changes) -> None:
    release(htlc.refund(_held_lock(changes, msg.lock_id), ctx.now_ms), changes)


def _abort(msg: Abort, signed: Signed, ctx: Context, changes: Changes) -> None:
    lock = _lock_to_end_early(changes, msg.lock_id, ctx.now_ms, "abort")
    beneficiary_owner = changes.owner(lock.beneficiary_account)
    assert beneficiary_owner is not None, f"lock {lock.lock_id} names an account that does not exist"
    failure = None
    for party in signed.sigs:  # any one allowed signer suffices
        try:
            release(htlc.abort(lock, party, beneficiary_owner, ctx.now_ms), changes)
            return
        except Rejected as error:
            failure = error
    assert failure is not None
    raise failure


def add_currencies(config: LedgerConfig, changes: Changes) -> None:
    """Make every configured currency known (at first start, or when one is added)."""
    for currency in config.currencies:
        if changes.asset(currency.code) is None:
            changes.add_asset(Asset(currency.code, "currency", currency.issuer, CURRENCIES[currency.code]))


def _fence(msg: Fence, signed: Signed, ctx: Context, changes: Changes) -> None:
    """Raised by `apply`, as any epoch is: here only the epoch's checks."""


def _rotate_key(msg: RotateKey, signed: Signed, ctx: Context, changes: Changes) -> None:
    """The operator vouches for a participant's new key; the old key may be the one
    lost. Only a participant's: with a central bank's, a coordinator's or another
    operator's key the operator would take their powers (minting, say); those keys are
    the consortium's to change, in its registry."""
    _signed_by(signed.sigs, ctx.config.operator, "a key is registered through the ledger's operator")
    party = ctx.registry.get(msg.party)
    if party is None:
        raise Rejected(Code.UNKNOWN_SIGNER, "party", f"{msg.party!r} is not a registered party")
    powers = party.roles - {Role.PARTICIPANT, Role.OBSERVER}
    if powers:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "party",
            f"{msg.party} is a {', '.join(sorted(r.value for r in powers))}: "
            "only a participant's key is registered through a ledger's operator; this one changes in the registry",
        )
    if public_point(party.public_key) == msg.public_key:
        raise Rejected(Code.INVALID_FIELD, "public_key", f"is already {msg.party}'s key")
    changes.set_key(msg.party, msg.public_key)


_RULES: dict[type, Callable] = {
    OpenAccount: _open_account,
    CreateInstrument: _create_instrument,
    Issue: _issue,
    Redeem: _redeem,
    Transfer: _transfer,
    Settle: _settle,
    Lock: _lock,
    Claim: _claim,
    Cancel: _cancel,
    Refund: _refund,
    Abort: _abort,
    RotateKey: _rotate_key,
    Fence: _fence,
}
