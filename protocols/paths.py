"""Multi-hop payments: the path a coordinator chooses from intermediaries' quotes, the
hop each intermediary accepts, and the backstops that let every one of them collect.

A payment from a payer's EUR to a payee's CHF through intermediaries runs hop by hop:
the payer pays the first intermediary, each intermediary pays the next, the last pays
the payee, each hop its own decision lock on its own ledger, all under one claim secret
and one cancellation secret. The legs are numbered from the payee's back to the payer's
(leg 0 pays the payee, and is claimed first), and the backstops rise along them: the leg
an intermediary is paid by outlives the leg it pays by its margin at least, so that once
its outgoing leg is claimed, whenever that is, the claim secret is public on that
ledger's journal and it has its margin to claim its incoming leg (docs/SAFETY.md).

Every hop is checked here, the same way by the intermediary that signs it, the
coordinator that chooses it, the ledgers that lock it and the auditor."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence

import attrs

from .errors import Code, Rejected
from .messages import PATH_HOPS_MAX, Hop, PathPayment, Quote, SettlementLeg

PATH_PREFIX = "p-"  # a multi-hop payment's settlement id: PATH_PREFIX and 40 hex digits


def path_id(payment: PathPayment) -> str:
    """The settlement id of a payer's payment, whatever path carries it: one payment,
    one settlement, so the coordinator's journal drives at most one path for it."""
    return PATH_PREFIX + hashlib.sha256(f"{payment.payer} {payment.id}".encode()).hexdigest()[:40]


@attrs.frozen
class Route:
    """A path chosen from quotes: the quotes from the payer's side to the payee's, and
    the amount of each hop's leg, the payer's first (one more than the quotes)."""

    quotes: tuple[Quote, ...]
    amounts: tuple[int, ...]


def takes_for(quote: Quote, gives: int) -> int:
    """The least an intermediary must take to give `gives` at its quoted rate."""
    return -(-gives * quote.rate_den // quote.rate_num)


def usable(quote: Quote, payment: PathPayment, coordinator: str, decide_by_ms: int) -> bool:
    """A quote this payment may be carried under, if it is decided by `decide_by_ms`."""
    return (
        quote.payment == path_id(payment)
        and quote.coordinator == coordinator
        and quote.valid_until_ms > decide_by_ms
        and quote.intermediary not in (payment.payer, payment.payee, coordinator)
        and (quote.takes_ledger, quote.takes_asset) != (quote.gives_ledger, quote.gives_asset)
        and quote.takes_ledger != quote.gives_ledger
    )


def choose(payment: PathPayment, quotes: Iterable[Quote], coordinator: str, decide_by_ms: int) -> Route | None:
    """The path that costs the payer least of its source asset, through 1 to
    PATH_HOPS_MAX intermediaries, each at most once, every hop within its quote and its
    quote holding until `decide_by_ms`; of equal costs the shortest, then the first by
    quote ids. None if there is none."""
    into: dict[tuple[str, str], list[Quote]] = {}
    for quote in quotes:
        if usable(quote, payment, coordinator, decide_by_ms):
            into.setdefault((quote.gives_ledger, quote.gives_asset), []).append(quote)
    best: tuple[int, int, tuple[str, ...]] | None = None
    chosen: Route | None = None

    def search(needed: int, at: tuple[str, str], account: str, path: tuple[Quote, ...], amounts: tuple[int, ...]):
        nonlocal best, chosen
        if path and at == (payment.from_ledger, payment.source_asset) and needed <= payment.source_max:
            rank = (needed, len(path), tuple(q.id for q in path))
            if best is None or rank < best:
                best, chosen = rank, Route(path, (needed, *amounts))
        if len(path) == PATH_HOPS_MAX:
            return
        for quote in into.get(at, ()):
            if needed > quote.gives_max or quote.gives_account == account:
                continue
            if any(q.intermediary == quote.intermediary for q in path):
                continue
            search(
                takes_for(quote, needed),
                (quote.takes_ledger, quote.takes_asset),
                quote.takes_account,
                (quote, *path),
                (needed, *amounts),
            )

    search(payment.amount, (payment.to_ledger, payment.asset), payment.to_account, (), ())
    return chosen


def hops(
    payment: PathPayment, route: Route, first_backstop_ms: int, margin_ms: int, decide_by_ms: int
) -> tuple[Hop, ...]:
    """The hops to ask each intermediary of `route` to accept: the payee's leg backstopped
    at `first_backstop_ms`, each leg before it later by its intermediary's margin, or by
    `margin_ms` (the coordinator's Δ) where that is more."""
    quotes = route.quotes
    payers = (payment.from_account, *(q.gives_account for q in quotes))
    payees = (*(q.takes_account for q in quotes), payment.to_account)
    places = (*((q.takes_ledger, q.takes_asset) for q in quotes), (payment.to_ledger, payment.asset))
    legs = [
        SettlementLeg(ledger, payer, payee, asset, amount)
        for (ledger, asset), payer, payee, amount in zip(places, payers, payees, route.amounts, strict=True)
    ]
    backstops = [first_backstop_ms]
    for quote in reversed(quotes):
        backstops.insert(0, backstops[0] + max(quote.margin_ms, margin_ms))
    return tuple(
        Hop(
            path_id(payment),
            quote.coordinator,
            quote.intermediary,
            quote.id,
            (legs[index], legs[index + 1]),
            (backstops[index], backstops[index + 1]),
            min(decide_by_ms, quote.valid_until_ms),
        )
        for index, quote in enumerate(quotes)
    )


def check_hop(quote: Quote, hop: Hop, now_ms: int) -> None:
    """What an intermediary accepts under its quote: its own accounts and assets, no
    more given than its rate and its limit allow, its margin between the backstops, and
    decided while its quote holds. Refusals name the hop's field."""
    takes, gives = hop.legs
    for field, ours, quoted in (
        ("payment", hop.payment, quote.payment),
        ("coordinator", hop.coordinator, quote.coordinator),
        ("intermediary", hop.intermediary, quote.intermediary),
        ("quote", hop.quote, quote.id),
        ("legs[0].ledger", takes.ledger, quote.takes_ledger),
        ("legs[0].to_account", takes.to_account, quote.takes_account),
        ("legs[0].asset", takes.asset, quote.takes_asset),
        ("legs[1].ledger", gives.ledger, quote.gives_ledger),
        ("legs[1].from_account", gives.from_account, quote.gives_account),
        ("legs[1].asset", gives.asset, quote.gives_asset),
    ):
        if ours != quoted:
            raise Rejected(Code.INVALID_FIELD, field, f"is {ours}; quote {quote.id} says {quoted}")
    if gives.amount > quote.gives_max:
        raise Rejected(
            Code.INVALID_FIELD, "legs[1].amount", f"{gives.amount} is more than the {quote.gives_max} quoted"
        )
    if gives.amount * quote.rate_den > takes.amount * quote.rate_num:
        raise Rejected(
            Code.INVALID_FIELD,
            "legs[0].amount",
            f"{takes.amount} buys at most {takes.amount * quote.rate_num // quote.rate_den} at the rate quoted, "
            f"not {gives.amount}",
        )
    incoming, outgoing = hop.backstops_ms
    if incoming - outgoing < quote.margin_ms:
        raise Rejected(
            Code.INVALID_FIELD,
            "backstops_ms",
            f"the incoming lock outlives the outgoing one by {incoming - outgoing} ms, "
            f"less than the {quote.margin_ms} quoted",
        )
    if not now_ms <= hop.decide_by_ms <= quote.valid_until_ms:
        raise Rejected(
            Code.EXPIRY_OUT_OF_RANGE, "decide_by_ms", f"quote {quote.id} holds from now until {quote.valid_until_ms}"
        )
    if outgoing <= hop.decide_by_ms:
        raise Rejected(Code.INVALID_FIELD, "backstops_ms", "a backstop comes after the time to decide by")


@attrs.frozen
class Chain:
    """A payment's hops read as one chain, from the payer's side: each leg, whose lock
    its backstop, who pays it and who is paid."""

    legs: tuple[SettlementLeg, ...]
    backstops: tuple[int, ...]
    payers: tuple[str, ...]
    payees: tuple[str, ...]


def chain(payment: PathPayment, path: Sequence[Hop]) -> Chain:
    """Check that the hops join the payer's order to its payee, each intermediary
    paying exactly what the next one takes, under the same backstop. Refusals name the
    field under `hops[i].` or `payment.`."""
    if len(path) > PATH_HOPS_MAX:
        raise Rejected(Code.INVALID_FIELD, "hops", f"{len(path)} intermediaries, more than {PATH_HOPS_MAX}")
    first = path[0].legs[0]
    for field, ours, ordered in (
        ("ledger", first.ledger, payment.from_ledger),
        ("from_account", first.from_account, payment.from_account),
        ("asset", first.asset, payment.source_asset),
    ):
        if ours != ordered:
            raise Rejected(Code.NOT_AUTHORISED, f"hops[0].legs[0].{field}", f"is {ours}; the payer ordered {ordered}")
    if first.amount > payment.source_max:
        raise Rejected(
            Code.NOT_AUTHORISED,
            "hops[0].legs[0].amount",
            f"{first.amount} is more than the {payment.source_max} the payer allowed",
        )
    last = path[-1].legs[1]
    ends: tuple[tuple[str, str | int, str | int], ...] = (
        ("ledger", last.ledger, payment.to_ledger),
        ("to_account", last.to_account, payment.to_account),
        ("asset", last.asset, payment.asset),
        ("amount", last.amount, payment.amount),
    )
    for name, given, wanted in ends:
        if given != wanted:
            raise Rejected(
                Code.NOT_AUTHORISED, f"hops[{len(path) - 1}].legs[1].{name}", f"is {given}; the payer ordered {wanted}"
            )
    for index, (hop, following) in enumerate(itertools.pairwise(path), start=1):
        if following.legs[0] != hop.legs[1]:
            raise Rejected(Code.NOT_AUTHORISED, f"hops[{index}].legs[0]", f"is not what hops[{index - 1}] gives")
        if following.backstops_ms[0] != hop.backstops_ms[1]:
            raise Rejected(
                Code.NOT_AUTHORISED, f"hops[{index}].backstops_ms", f"differ from hops[{index - 1}]'s for the same leg"
            )
    intermediaries = [hop.intermediary for hop in path]
    parties = [payment.payer, *intermediaries, payment.payee]
    if len(set(intermediaries)) != len(intermediaries) or set(intermediaries) & {payment.payer, payment.payee}:
        raise Rejected(Code.INVALID_FIELD, "hops", "each intermediary carries one hop, and is neither payer nor payee")
    return Chain(
        (path[0].legs[0], *(hop.legs[1] for hop in path)),
        (path[0].backstops_ms[0], *(hop.backstops_ms[1] for hop in path)),
        tuple(parties[:-1]),
        tuple(parties[1:]),
    )
