"""What lets a coordinator move other parties' assets: the `auth` its lock or settle
carries, read as `Terms`.

Six kinds of authority, each signed by whoever pays:
- `settlement`: one Settlement body signed by both counterparties;
- `matched`: two one-sided ISO 20022 instructions, each signed by its party, which
  match (protocols.matching): the legs are what the two documents state together;
- `linked`: matched pairs that settle together or not at all, their legs netted
  (protocols.netting); every instruction a party linked to one of them (sese.023 Lnkgs
  WITH) is among them, and an instruction so linked settles in no other way;
- `path`: a payer's signed `path_payment` and the `hop` each intermediary signed to
  carry it (protocols.paths): a multi-hop payment, its legs from the payee's back to
  the payer's, each lock held to the backstop its payer and its payee signed;
- `coupon`, `redemption`: an `entitlement` computed by the paying agent under an
  issuer's signed `corporate_action`; the issuer pays, and at maturity the holder's
  units go back to the issuer (a redemption is mandatory: the instrument's terms, which
  the securities ledger checks, stand in for the holder's signature).

The ledger's rules, the auditor's second reading and the coordinator all read an
`auth` here, so they cannot disagree on what it allows. Each ledger still checks what
only it knows: who owns each account, and an instrument's issuer and maturity."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import attrs

from . import matching, netting, paths
from .canonical import encode
from .errors import Code, Rejected
from .iso20022 import read
from .iso20022.model import Denomination, OneSided
from .iso20022.sese023 import in_units
from .messages import (
    LEGS_MAX,
    PATH_HOPS_MAX,
    CorporateAction,
    Entitlement,
    Hop,
    Linked,
    Matched,
    PathPayment,
    PaymentPath,
    Settlement,
    SettlementInstruction,
    SettlementLeg,
    from_body,
    to_body,
)
from .registry import Registry
from .settlement import lock_id
from .signing import Signed, from_wire

LINKED_PREFIX = "l-"  # a linked settlement's id: LINKED_PREFIX and 40 hex digits


@attrs.frozen
class Terms:
    """The legs an `auth` allows, who pays and who is paid on each, and when."""

    id: str  # the settlement id: locks are `{id}:{leg}`, a settle `settle_id(id)`
    kind: str  # settlement | matched | linked | path | coupon | redemption
    coordinator: str
    not_before_ms: int
    deadline_ms: int
    legs: tuple[SettlementLeg, ...]  # two; one for a coupon
    payers: tuple[str, ...]  # payers[i] owns legs[i].from_account
    payees: tuple[str, ...]  # payees[i] owns legs[i].to_account
    issuer: str | None = None  # a redemption's: the instrument's issuer, checked where it is kept
    face_value_minor: int | None = None  # a redemption pays units x face value; a matched pair's
    # face amount counts units of it (checked likewise)
    face_currency: str | None = None  # a matched pair's face amount's currency (checked likewise)
    pairs: tuple[Terms, ...] = ()  # a linked settlement's: each pair's own terms, whose legs
    # were netted into `legs` (each ledger checks the accounts of every one on it)
    backstops: tuple[int, ...] = ()  # a path's: each leg's lock's backstop, as its parties signed
    # it (otherwise the coordinator's Timing sets them)

    @property
    def same_ledger(self) -> bool:
        return len({leg.ledger for leg in self.legs}) == 1


def terms_of(auth: Any, registry: Registry | None) -> Terms:
    """Decode and authenticate an `auth`; with no registry, signatures are not checked
    (the auditor reading without keys). Refusals name the field under `auth.`."""
    try:
        kind = auth.get("type") if isinstance(auth, dict) else None
        if kind == Settlement.TYPE:
            return _settlement(auth, registry)
        if kind == Matched.TYPE:
            return _matched(auth, registry)
        if kind == Linked.TYPE:
            return _linked(auth, registry)
        if kind == PaymentPath.TYPE:
            return _path(auth, registry)
        if kind == Entitlement.TYPE:
            return _entitlement(auth, registry)
        raise Rejected(
            Code.UNKNOWN_TYPE, "type", f"an auth is a settlement, matched, linked, path or entitlement, not {kind!r}"
        )
    except Rejected as error:
        raise Rejected(error.code, f"auth.{error.field}", error.reason) from None


def _settlement(auth: dict, registry: Registry | None) -> Terms:
    return settlement_terms(from_wire(auth, allowed=(Settlement,)), registry)


def settlement_terms(signed: Signed[Settlement], registry: Registry | None) -> Terms:
    """The terms of a settlement already read from the wire: authenticated as
    `terms_of` does, its refusals named without `auth.`."""
    settlement = signed.msg
    if settlement.id.startswith(paths.PATH_PREFIX):  # else one could take a payer's payment's locks first
        raise Rejected(
            Code.INVALID_FIELD, "id", f"ids beginning {paths.PATH_PREFIX} are multi-hop payments' (protocols.paths)"
        )
    if registry is not None:
        registry.verify_all(signed)
        for party in settlement.parties:
            if party not in signed.sigs:
                raise Rejected(
                    Code.MISSING_SIGNATURE, "sigs", f"both counterparties sign a settlement; {party!r} did not"
                )
    return Terms(
        settlement.id,
        "settlement",
        settlement.coordinator,
        settlement.not_before_ms,
        settlement.deadline_ms,
        settlement.legs,
        settlement.parties,
        settlement.parties[::-1],
    )


def pair_terms(auth: dict, registry: Registry | None) -> Terms:
    """A matched pair's terms as one pair of a linked settlement reads them: its links
    allowed (an auth of its own would be refused for them)."""
    try:
        return _pair(from_body(auth, allowed=(Matched,)), registry)[0]
    except Rejected as error:
        raise Rejected(error.code, f"auth.{error.field}", error.reason) from None


def _matched(auth: dict, registry: Registry | None) -> Terms:
    terms, sides = _pair(from_body(auth, allowed=(Matched,)), registry)
    for index, one in enumerate(sides):
        if one.settle_with:
            raise Rejected(
                Code.NOT_AUTHORISED,
                f"instructions[{index}].document",
                f"{one.party} linked {one.reference} to {', '.join(one.settle_with)}: "
                "it settles only together with them, in a linked settlement",
            )
    return terms


def _linked(auth: dict, registry: Registry | None) -> Terms:
    """The pairs' legs netted, once each pair is read as `matched` would read it, and
    every link a party made from one of them leads to another of them."""
    linked: Linked = from_body(auth, allowed=(Linked,))
    pairs: list[Terms] = []
    references: dict[tuple[str, str], int] = {}  # (party, its TxId) -> the pair that holds it
    links: list[tuple[int, str, str]] = []  # (pair, party, the TxId it must settle with)
    for index, body in enumerate(linked.pairs):
        try:
            if not isinstance(body, dict) or body.get("type") != Matched.TYPE:
                raise Rejected(Code.UNKNOWN_TYPE, "type", "each of a linked settlement's pairs is a matched pair")
            matched = from_body(body, allowed=(Matched,))
            if matched.coordinator != linked.coordinator:
                raise Rejected(Code.NOT_AUTHORISED, "coordinator", f"names {matched.coordinator}")
            if matched.part_to is not None or matched.part_from:
                raise Rejected(Code.INVALID_FIELD, "part_to", "a linked pair settles whole")
            terms, sides = _pair(matched, registry)
        except Rejected as error:
            raise Rejected(error.code, f"pairs[{index}].{error.field}", error.reason) from None
        pairs.append(terms)
        for one in sides:
            references[(one.party, one.reference)] = index
            links += [(index, one.party, reference) for reference in one.settle_with]
    if len({matching.pair_of(terms.id) for terms in pairs}) != len(pairs):
        raise Rejected(Code.INVALID_FIELD, "pairs", "a pair is linked twice (two of its tries count as one pair)")
    for index, party, reference in links:
        if (party, reference) not in references:
            raise Rejected(
                Code.NOT_AUTHORISED,
                f"pairs[{index}]",
                f"{party} linked it to its instruction {reference}, which is not in this linked settlement",
            )
    not_before_ms = max(terms.not_before_ms for terms in pairs)
    deadline_ms = min(terms.deadline_ms for terms in pairs)
    if not_before_ms > deadline_ms:
        raise Rejected(Code.INVALID_FIELD, "pairs", "the pairs settle on different days")
    legs = netting.net(leg for terms in pairs for leg in terms.legs)
    if len(legs) > LEGS_MAX:
        raise Rejected(Code.INVALID_FIELD, "pairs", f"net to {len(legs)} legs, more than {LEGS_MAX}")
    owners = _owners(pairs)
    return Terms(
        linked_id(pairs),
        "linked",
        linked.coordinator,
        not_before_ms,
        deadline_ms,
        legs,
        tuple(owners[(leg.ledger, leg.from_account)] for leg in legs),
        tuple(owners[(leg.ledger, leg.to_account)] for leg in legs),
        pairs=tuple(pairs),
    )


def _owners(pairs: list[Terms]) -> dict[tuple[str, str], str]:
    """Whose each account is, as the pairs' parties state it: one party an account."""
    owners: dict[tuple[str, str], str] = {}
    for terms in pairs:
        for leg, payer, payee in zip(terms.legs, terms.payers, terms.payees, strict=True):
            for account, party in ((leg.from_account, payer), (leg.to_account, payee)):
                if owners.setdefault((leg.ledger, account), party) != party:
                    raise Rejected(
                        Code.NOT_AUTHORISED,
                        "pairs",
                        f"{account} on {leg.ledger} is named as {owners[(leg.ledger, account)]}'s and as {party}'s",
                    )
    return owners


def earlier_payer_lock(terms: Terms, index: int, owner_account: str, lock_of: Callable[[str], Any]) -> str | None:
    """A payer's order settles once, whatever path carries it. Two paths of one payment
    have one settlement id but, of other lengths, put the payer's leg (the last) at
    another index, so under another lock id: on the payer's ledger, the id of a lock of
    the same payment from the payer's account at another index, or None. (No other leg
    of a path is paid from the payer's account: its intermediaries are other parties.)"""
    if terms.kind != "path" or index != len(terms.legs) - 1:
        return None
    for other in range(1, PATH_HOPS_MAX + 1):
        found = lock_of(lock_id(terms.id, other)) if other != index else None
        if found is not None and found.owner_account == owner_account:
            return found.lock_id
    return None


def linked_id(pairs: list[Terms]) -> str:
    """A linked settlement's id, from its pairs' tries: the same whoever computes it,
    and another for each try of the pairs."""
    return LINKED_PREFIX + hashlib.sha256(" ".join(sorted(terms.id for terms in pairs)).encode()).hexdigest()[:40]


def _path(auth: dict, registry: Registry | None) -> Terms:
    """The payer's order and every intermediary's hop, each signed by its party, joined
    into one chain (protocols.paths.chain); the legs from the payee's back to the payer's."""
    path: PaymentPath = from_body(auth, allowed=(PaymentPath,))
    try:
        signed_payment = from_wire(path.payment, allowed=(PathPayment,))
        payment: PathPayment = signed_payment.msg
        if registry is not None:
            registry.verify_all(signed_payment)
            registry.signed_by(signed_payment, (payment.payer,))
        if payment.coordinator != path.coordinator:
            raise Rejected(Code.NOT_AUTHORISED, "coordinator", f"names {payment.coordinator}")
    except Rejected as error:
        raise Rejected(error.code, f"payment.{error.field}", error.reason) from None
    hops: list[Hop] = []
    for index, body in enumerate(path.hops):
        try:
            signed = from_wire(body, allowed=(Hop,))
            hop: Hop = signed.msg
            if registry is not None:
                registry.verify_all(signed)
                registry.signed_by(signed, (hop.intermediary,))
            for field, value, expected in (
                ("payment", hop.payment, paths.path_id(payment)),
                ("coordinator", hop.coordinator, path.coordinator),
            ):
                if value != expected:
                    raise Rejected(Code.NOT_AUTHORISED, field, f"names {value}, not {expected}")
        except Rejected as error:
            raise Rejected(error.code, f"hops[{index}].{error.field}", error.reason) from None
        hops.append(hop)
    joined = paths.chain(payment, hops)
    return Terms(
        paths.path_id(payment),
        "path",
        path.coordinator,
        0,
        min(payment.deadline_ms, *(hop.decide_by_ms for hop in hops)),
        joined.legs[::-1],
        joined.payers[::-1],
        joined.payees[::-1],
        backstops=joined.backstops[::-1],
    )


def _pair(matched: Matched, registry: Registry | None) -> tuple[Terms, tuple[OneSided, OneSided]]:
    signed_sides: list[Signed] = []
    for index, value in enumerate(matched.instructions):
        try:
            signed = from_wire(value, allowed=(SettlementInstruction,))
            if registry is not None:
                registry.verify_all(signed)
                registry.signed_by(signed, (signed.msg.party,))
        except Rejected as error:
            raise Rejected(error.code, f"instructions[{index}].{error.field}", error.reason) from None
        signed_sides.append(signed)
    sides: list[tuple[Signed, OneSided]] = []
    for index, signed in enumerate(signed_sides):
        instruction: SettlementInstruction = signed.msg
        try:
            one = read(instruction.format, instruction.document, registry.identified_by if registry else None)
        except Rejected as error:
            raise Rejected(error.code, f"instructions[{index}].{error.field}", error.reason) from None
        if registry is None:  # read without the directory: each side is the party that signed it
            one = attrs.evolve(one, party=instruction.party, counterparty=signed_sides[1 - index].msg.party)
        if one.party != instruction.party:
            raise Rejected(
                Code.NOT_AUTHORISED,
                f"instructions[{index}].document",
                f"the document instructs for {one.party}, signed by {instruction.party}",
            )
        if instruction.coordinator != matched.coordinator:
            raise Rejected(
                Code.NOT_AUTHORISED,
                f"instructions[{index}].coordinator",
                f"sent to {instruction.coordinator}, not {matched.coordinator}",
            )
        sides.append((signed, one))
    denomination = _denomination(matched, [one for _, one in sides])
    if denomination is not None:
        try:
            sides = [(signed, in_units(one, denomination)) for signed, one in sides]
        except Rejected as error:
            raise Rejected(error.code, "instructions", f"{error.field}: {error.reason}") from None
    (_, a), (_, b) = sides
    matching.require_match(a, b, "instructions")
    first, second = matching.leg_order(a, b)
    if (first, second) != (a, b):
        raise Rejected(
            Code.INVALID_FIELD, "instructions", f"leg 0 is paid by {first.party}: its instruction comes first"
        )
    paying = (first, second) if second.gives_asset is not None else (first,)  # free of payment: one leg
    if len(matched.ledgers) != len(paying):
        raise Rejected(
            Code.INVALID_FIELD, "ledgers", f"names {len(matched.ledgers)} ledgers for the {len(paying)} legs matched"
        )
    matching.check_part(a, b, matched.part_from, matched.part_to, "part_to")
    legs = []
    for ledger, mine, theirs in zip(matched.ledgers, paying, (second, first), strict=False):
        into = mine.pays_into or theirs.takes_account  # a PvP leg names the account it pays into
        assert mine.gives_asset and mine.gives_account and into, "read and matched"
        amount = mine.gives_amount
        if matched.part_to is not None:
            amount = matching.part_of(mine, matched.part_from, matched.part_to)
        legs.append(SettlementLeg(ledger, mine.gives_account, into, mine.gives_asset, amount))
    not_before_ms, deadline_ms = matching.day_window(
        matching.settlement_day(a.settlement_date, matched.settle_on, "settle_on")
    )
    settlement_id = matching.attempt_id(matching.matched_id(sides[0][0].digest, sides[1][0].digest), matched.attempt)
    terms = Terms(
        settlement_id,
        "matched",
        matched.coordinator,
        not_before_ms,
        deadline_ms,
        tuple(legs),
        (first.party, second.party)[: len(legs)],
        (second.party, first.party)[: len(legs)],
        face_value_minor=denomination.face_value_minor if denomination else None,
        face_currency=denomination.currency if denomination else None,
    )
    return terms, (a, b)


def _denomination(matched: Matched, sides: list[OneSided]) -> Denomination | None:
    """The denomination a face amount is counted in: given with the pair if, and only
    if, a side gives its quantity as a face amount."""
    given = (matched.face_currency, matched.face_value_minor)
    needed = any(one.face_amount is not None for one in sides)
    if needed != (given != (None, None)) or (needed and None in given):
        raise Rejected(
            Code.INVALID_FIELD,
            "face_value_minor",
            "a face amount needs the instrument's face_currency and face_value_minor, and only a face amount does",
        )
    if not needed:
        return None
    assert matched.face_currency is not None and matched.face_value_minor is not None
    return Denomination(matched.face_currency, matched.face_value_minor)


def _entitlement(auth: dict, registry: Registry | None) -> Terms:
    entitlement: Entitlement = from_body(auth, allowed=(Entitlement,))
    try:
        signed = from_wire(entitlement.action, allowed=(CorporateAction,))
        action: CorporateAction = signed.msg
        if registry is not None:
            registry.verify_all(signed)
            registry.signed_by(signed, (action.issuer,))
    except Rejected as error:
        raise Rejected(error.code, f"action.{error.field}", error.reason) from None
    not_before_ms, _ = matching.day_window(action.payment_date)
    terms_id = entitlement_id(entitlement)
    cash = SettlementLeg(
        action.cash_ledger,
        action.issuer_cash_account,
        entitlement.holder_cash_account,
        action.currency,
        entitlement.amount_minor,
    )
    if action.kind == "coupon":
        return Terms(
            terms_id,
            "coupon",
            action.coordinator,
            not_before_ms,
            action.deadline_ms,
            (cash,),
            (action.issuer,),
            (entitlement.holder,),
        )
    units = SettlementLeg(
        action.securities_ledger,
        entitlement.holder_account,
        action.issuer_securities_account,
        action.isin,
        entitlement.units,
    )
    if entitlement.amount_minor % entitlement.units:
        raise Rejected(Code.INVALID_FIELD, "amount_minor", "a redemption pays a whole face value for each unit")
    return Terms(
        terms_id,
        "redemption",
        action.coordinator,
        not_before_ms,
        action.deadline_ms,
        (units, cash),
        (entitlement.holder, action.issuer),
        (action.issuer, entitlement.holder),
        issuer=action.issuer,
        face_value_minor=entitlement.amount_minor // entitlement.units,
    )


def entitlement_id(entitlement: Entitlement) -> str:
    """A holder's payment id, bound to every term of it: two ledgers shown different
    amounts under one action would see different lock ids."""
    prefix = "c-" if entitlement.action.get("kind") == "coupon" else "r-"
    return prefix + hashlib.sha256(encode(to_body(entitlement))).hexdigest()[:40]
