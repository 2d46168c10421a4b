"""The auditor's second reading of a journal entry: what its instruction vouches for.

A ledger signs its own entries, so whoever holds its key could rewrite its history and
sign it again: change an amount, pay another account, invent an instruction. The hash
chain cannot see that; conservation sees only value created or destroyed. So, for each
entry, the auditor derives from the signed instruction alone (and the state replayed
before it) what the entry must have done, and checks that:

- the instruction verifies with the keys of its signers (the registry, and the keys
  rotated on this ledger), and is of the entry's kind, for this ledger;
- its signers include whom the asset's move needs (the owner of a debited account, a
  currency's central bank; for a coordinator, the authority it carries, read by
  protocols.authority: a settlement both parties signed, a matched pair of their ISO
  20022 instructions or an issuer's entitlement, whose leg it is, paid by its payer; a
  redemption only by the instrument's issuer, at face value, after maturity);
- its effects are exactly those the instruction implies, row for row;
- a claim's secret matches the hashlock and a cancel's the cancel hashlock, each before
  the lock's refund time (a time-lock's expiry, a decision lock's backstop); an abort
  only of a time-lock, before its expiry and by a party the lock allows; a refund or the
  ledger's own expiry at or after the refund time.

Written apart from the ledger's rules (ledgers/rules.py) on purpose: two readings of the
protocol that must agree. What it cannot check, since the journal does not record it:
who the ledger's operator is (open_account, create_instrument, a bond's issue and
redemption, rotate_key are taken as the ledger signed them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from protocols.authority import Terms, earlier_payer_lock, terms_of
from protocols.errors import Rejected
from protocols.htlc import HeldLock, LockState, hashlock_of
from protocols.journal import Replay
from protocols.messages import (
    INSTRUCTIONS,
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Entry,
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
from protocols.money import format_amount, format_balance
from protocols.registry import Registry
from protocols.settlement import lock_id, settle_id, utc_date
from protocols.signing import Signed, from_wire, load_public_point

Rows = dict[str, list[list[Any]]]


class Unvouched(Exception):
    """The entry is not what its instruction vouches for; the message says how."""


def check(entry: Entry, replay: Replay, registry: Registry | None) -> None:
    """Raise Unvouched unless `entry` follows from its instruction and `replay` (the
    state before it). With no registry, signatures are not checked (nor authority)."""
    if entry.instruction is None:
        expected = _configure(entry) if entry.kind == "configure" else _expire(entry, replay)
    else:
        try:
            signed = from_wire(entry.instruction, allowed=INSTRUCTIONS)
        except Rejected as error:
            raise Unvouched(f"its instruction does not decode: {error}") from None
        msg = signed.msg
        if entry.kind != msg.TYPE or msg.ledger != entry.ledger:
            raise Unvouched(f"a {entry.kind} entry of {entry.ledger} holds a {msg.TYPE} for {msg.ledger}")
        keys = _keys(registry, replay) if registry is not None else None
        if keys is not None:
            _verify(signed, keys, "its instruction's")
        expected = _DERIVE[type(msg)](msg, signed, entry, replay, keys)
    _compare(expected, entry.effects)


def _keys(registry: Registry, replay: Replay) -> Registry:
    """The registry as this ledger verifies at this entry: with the keys rotated on it."""
    rotated = {party: load_public_point(key) for party, key in replay.keys.items() if party in registry}
    return registry.with_keys(rotated) if rotated else registry


def _verify(signed: Signed, keys: Registry, whose: str) -> None:
    try:
        keys.verify_all(signed)
    except Rejected as error:
        raise Unvouched(f"{whose} signatures do not verify: {error.reason}") from None


def _compare(expected: Rows, effects: dict) -> None:
    for member in sorted(expected.keys() | effects.keys()):
        want, got = _multiset(expected.get(member, [])), _multiset(effects.get(member, []))
        if want != got:
            raise Unvouched(
                f"effects {member} are {_shown(member, effects.get(member, []))}, "
                f"its instruction implies {_shown(member, expected.get(member, []))}"
            )


def _multiset(rows: list) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def _shown(member: str, rows: list) -> str:
    """Rows as a person reads them: the amounts of balances and supply in their asset's form."""
    try:
        if member == "balances":
            shown = [
                f"{account}: {format_balance(asset, available, locked)}" for account, asset, available, locked in rows
            ]
        elif member == "supply":
            shown = [
                f"{format_amount(asset, issued)} issued, {format_amount(asset, redeemed)} redeemed"
                for asset, issued, redeemed in rows
            ]
        else:
            return str(rows)
    except (AttributeError, TypeError, ValueError):  # a row a forger shaped otherwise: shown as it is
        return str(rows)
    return "[" + "; ".join(shown) + "]"


def _needs(signers: Any, party: str | None, why: str, keys: Registry | None) -> None:
    """`party` signed, when signatures are checked at all."""
    if keys is not None and party is not None and party not in signers:
        raise Unvouched(f"not signed by {party}: {why}")


def _owner(replay: Replay, account: str) -> str:
    owner = replay.accounts.get(account)
    if owner is None:
        raise Unvouched(f"moves account {account}, which was never opened")
    return owner


def _move(account: str, asset: str, available: int, locked: int) -> list[Any]:
    return [account, asset, available, locked]


# -- each kind ---------------------------------------------------------------------------


def _configure(entry: Entry) -> Rows:
    return {"assets": [row for row in entry.effects.get("assets", ()) if len(row) == 5 and row[1] == "currency"]}


def _expire(entry: Entry, replay: Replay) -> Rows:
    if entry.kind != "expire":
        raise Unvouched(f"a {entry.kind} entry without an instruction")
    ended = [_held(replay, lock) for lock, _ in entry.effects.get("locks", ())]
    for lock in ended:
        _due(lock, entry)
    return {
        "locks": [[lock.lock_id, LockState.REFUNDED.value] for lock in ended],
        "balances": [_move(lock.owner_account, lock.asset, lock.amount, -lock.amount) for lock in ended],
    }


def _when(lock: HeldLock) -> str:
    return f"its {'backstop' if lock.decides else 'expiry'} {lock.refund_at_ms}"


def _due(lock: HeldLock, entry: Entry) -> None:
    if entry.time_ms < lock.refund_at_ms:
        raise Unvouched(f"refunds lock {lock.lock_id} at {entry.time_ms}, before {_when(lock)}")


def _not_due(lock: HeldLock, entry: Entry, action: str) -> None:
    if entry.time_ms >= lock.refund_at_ms:
        raise Unvouched(f"{action} lock {lock.lock_id} at {entry.time_ms}, at or after {_when(lock)}")


def _held(replay: Replay, lock: str) -> HeldLock:
    held = replay.locks.get(lock)
    if held is None or held.state is not LockState.HELD:
        raise Unvouched(f"ends lock {lock}, which is {'not in the journal' if held is None else held.state.value}")
    return held


def _open_account(msg: OpenAccount, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    if msg.account in replay.accounts:
        raise Unvouched(f"opens account {msg.account} a second time")
    return {"accounts": [[msg.account, msg.owner]]}


def _create_instrument(
    msg: CreateInstrument, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None
) -> Rows:
    reference = {
        "currency": msg.currency,
        "face_value_minor": msg.face_value_minor,
        "coupon_rate_bp": msg.coupon_rate_bp,
        "maturity_date": msg.maturity_date,
        "coupon_frequency": msg.coupon_frequency,
        "day_count": msg.day_count,
    }
    return {"assets": [[msg.isin, "security", msg.issuer, 0, reference]]}


def _issuer(replay: Replay, asset: str, signed: Signed, keys: Registry | None) -> None:
    """A currency's central bank signs its issue and redemption (a bond's: the operator)."""
    known = replay.assets.get(asset)
    if known is None:
        raise Unvouched(f"moves asset {asset}, which this ledger never carried")
    kind, issuer = known[0], known[1]
    _needs(signed.sigs, issuer if kind == "currency" else None, f"only {issuer} issues and redeems {asset}", keys)


def _issue(msg: Issue, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    _issuer(replay, msg.asset, signed, keys)
    return {"supply": [[msg.asset, msg.amount, 0]], "balances": [_move(msg.account, msg.asset, msg.amount, 0)]}


def _redeem(msg: Redeem, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    _issuer(replay, msg.asset, signed, keys)
    return {"supply": [[msg.asset, 0, msg.amount]], "balances": [_move(msg.account, msg.asset, -msg.amount, 0)]}


def _transfer(msg: Transfer, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    _needs(signed.sigs, _owner(replay, msg.from_account), f"{msg.from_account} is debited", keys)
    return {
        "balances": [
            _move(msg.from_account, msg.asset, -msg.amount, 0),
            _move(msg.to_account, msg.asset, msg.amount, 0),
        ]
    }


def _terms(auth: dict, signed: Signed, keys: Registry | None) -> Terms:
    """What a coordinator acts on: signed by whoever pays, and it by its coordinator."""
    try:
        terms = terms_of(auth, keys)
    except Rejected as error:
        raise Unvouched(f"its auth does not vouch for it: {error}") from None
    _needs(signed.sigs, terms.coordinator, "its settlement's coordinator acts for it", keys)
    return terms


def _payers(terms: Terms, replay: Replay, index: int, ledger: str, entry_ms: int) -> None:
    leg = terms.legs[index]
    if leg.ledger != ledger or _owner(replay, leg.from_account) != terms.payers[index]:
        raise Unvouched(f"leg {index} of settlement {terms.id} is not paid on {ledger} by {terms.payers[index]}")
    if _owner(replay, leg.to_account) != terms.payees[index]:
        raise Unvouched(f"leg {index} of settlement {terms.id} does not pay {terms.payees[index]}")
    if terms.kind == "redemption" and index == 0:
        _matured(terms, replay, entry_ms)
    if terms.kind == "matched" and terms.face_value_minor is not None and index == 0:
        reference = replay.assets.get(terms.legs[0].asset, (None, None, None, {}))[3] or {}
        if (terms.face_currency, terms.face_value_minor) != (
            reference.get("currency"),
            reference.get("face_value_minor"),
        ):
            raise Unvouched(f"settlement {terms.id} counts a face amount in another denomination than its instrument's")


def _pairs(terms: Terms, replay: Replay, ledger: str, entry_ms: int) -> None:
    """A linked settlement's pairs, each as if it settled alone, on this ledger."""
    for pair in terms.pairs:
        for index, leg in enumerate(pair.legs):
            if leg.ledger == ledger:
                _payers(pair, replay, index, ledger, entry_ms)


def _matured(terms: Terms, replay: Replay, entry_ms: int) -> None:
    """A holder's units taken without its signature: by the instrument's issuer, at
    face value, at or after maturity."""
    units, cash = terms.legs
    kind, issuer, _, reference = replay.assets.get(units.asset, (None, None, None, {}))
    if (
        kind != "security"
        or issuer != terms.issuer
        or utc_date(entry_ms) < reference["maturity_date"]
        or (cash.asset, terms.face_value_minor) != (reference["currency"], reference["face_value_minor"])
    ):
        raise Unvouched(f"redemption {terms.id} is not {units.asset}'s issuer's, at face value, after maturity")


def _settle(msg: Settle, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    if msg.auth is not None:
        terms = _terms(msg.auth, signed, keys)
        if msg.id != settle_id(terms.id) or msg.legs != tuple(leg.as_leg() for leg in terms.legs):
            raise Unvouched(f"its legs or id are not those of settlement {terms.id}")
        for index in range(len(terms.legs)):
            _payers(terms, replay, index, entry.ledger, entry.time_ms)
        _pairs(terms, replay, entry.ledger, entry.time_ms)
    else:
        for leg in msg.legs:
            _needs(signed.sigs, _owner(replay, leg.from_account), f"{leg.from_account} is debited", keys)
    return {
        "balances": [
            row
            for leg in msg.legs
            for row in (
                _move(leg.from_account, leg.asset, -leg.amount, 0),
                _move(leg.to_account, leg.asset, leg.amount, 0),
            )
        ]
    }


def _lock(msg: Lock, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    if msg.auth is not None:
        terms = _terms(msg.auth, signed, keys)
        index = next((i for i in range(len(terms.legs)) if lock_id(terms.id, i) == msg.id), None)
        leg = terms.legs[index] if index is not None else None
        if (
            terms.same_ledger
            or index is None
            or leg is None
            or (leg.from_account, leg.to_account, leg.asset, leg.amount)
            != (msg.owner_account, msg.beneficiary_account, msg.asset, msg.amount)
        ):
            raise Unvouched(f"lock {msg.id} is not a leg of settlement {terms.id} as its payers signed it")
        if terms.backstops and msg.backstop_ms != terms.backstops[index]:
            raise Unvouched(f"lock {msg.id} has backstop {msg.backstop_ms}, not the {terms.backstops[index]} signed")
        earlier = earlier_payer_lock(terms, index, msg.owner_account, replay.locks.get)
        if earlier is not None:
            raise Unvouched(f"lock {msg.id} locks the payer's order a second time: {earlier} locked it already")
        _payers(terms, replay, index, entry.ledger, entry.time_ms)
        _pairs(terms, replay, entry.ledger, entry.time_ms)
    else:
        _needs(signed.sigs, _owner(replay, msg.owner_account), f"{msg.owner_account} is locked", keys)
    return {
        "locks": [[msg.id, LockState.HELD.value]],
        "balances": [_move(msg.owner_account, msg.asset, -msg.amount, msg.amount)],
    }


def _claim(msg: Claim, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    lock = _held(replay, msg.lock_id)
    if hashlock_of(msg.preimage) != lock.hashlock:
        raise Unvouched(f"claims lock {lock.lock_id} with a secret that does not match its hashlock")
    _not_due(lock, entry, "claims")
    return {
        "locks": [[lock.lock_id, LockState.CLAIMED.value]],
        "balances": [
            _move(lock.owner_account, lock.asset, 0, -lock.amount),
            _move(lock.beneficiary_account, lock.asset, lock.amount, 0),
        ],
    }


def _released(lock: HeldLock, state: LockState) -> Rows:
    return {
        "locks": [[lock.lock_id, state.value]],
        "balances": [_move(lock.owner_account, lock.asset, lock.amount, -lock.amount)],
    }


def _cancel(msg: Cancel, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    lock = _held(replay, msg.lock_id)
    if lock.cancel_hashlock is None or hashlock_of(msg.preimage) != lock.cancel_hashlock:
        raise Unvouched(f"cancels lock {lock.lock_id} with a preimage that does not match a cancel hashlock of it")
    _not_due(lock, entry, "cancels")
    return _released(lock, LockState.CANCELLED)


def _refund(msg: Refund, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    lock = _held(replay, msg.lock_id)
    _due(lock, entry)
    return _released(lock, LockState.REFUNDED)


def _abort(msg: Abort, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    lock = _held(replay, msg.lock_id)
    if lock.decides:
        raise Unvouched(f"aborts lock {lock.lock_id}, a decision lock: it ends early only by claim or cancel")
    if entry.time_ms >= lock.expiry_ms:
        raise Unvouched(f"aborts lock {lock.lock_id} at {entry.time_ms}, at or after its expiry {lock.expiry_ms}")
    allowed = {_owner(replay, lock.beneficiary_account), *lock.abort_by}
    if keys is not None and not allowed & set(signed.sigs):
        raise Unvouched(f"aborts lock {lock.lock_id} without a signature of {', '.join(sorted(allowed))}")
    return _released(lock, LockState.ABORTED)


def _rotate_key(msg: RotateKey, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    return {"keys": [[msg.party, msg.public_key]]}


def _fence(msg: Fence, signed: Signed, entry: Entry, replay: Replay, keys: Registry | None) -> Rows:
    return {}


_DERIVE: dict[type, Callable[..., Rows]] = {
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
assert set(_DERIVE) == set(INSTRUCTIONS), "every instruction type has its derivation"
