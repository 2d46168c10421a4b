"""The rules of multi-hop payments, as plain function calls where they can be: the path
`choose` picks from random quote graphs, checked against a brute force; each hop within
its quote (`check_hop`); the `path` auth read by `terms_of`, legs from the payee's back;
a ledger locking a path's leg only under the backstop its parties signed (and the
auditor reading it so); an intermediary signing one hop per payment, under its own quote,
for a coordinator only."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from types import SimpleNamespace

import attrs
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.audit import effects
from engine.audit.journals import read_over_bus
from engine.client.intermediary import Intermediary, Offer, Side
from engine.world import paths as world
from engine.world.local import COORDINATOR
from protocols.authority import terms_of
from protocols.bus import service_of_intermediary
from protocols.bus.memory import MemoryBus
from protocols.errors import Code, Rejected
from protocols.messages import (
    PATH_HOPS_MAX,
    Entry,
    Hop,
    HopRefused,
    HopRequest,
    Lock,
    PathPayment,
    PaymentPath,
    QueryBalances,
    QueryJournal,
    Quote,
    QuoteRequest,
    Quotes,
    Settlement,
    SettlementLeg,
    from_body,
    to_body,
)
from protocols.paths import Route, chain, check_hop, choose, hops, path_id, takes_for
from protocols.settlement import lock_id
from protocols.signing import decode_signed, from_wire, sign
from tests.test_paths import TIMING, autojump_clock, start  # noqa: F401  (a fixture)

NOW_MS = 1_750_000_000_000
FIRST_BACKSTOP_MS = NOW_MS + 3_600_000  # the payee's leg's
DECIDE_BY_MS = NOW_MS + 20_000
MARGIN_MS = 10_000  # each intermediary's
DELTA_MS = 5_000  # the coordinator's
STOPPED = SimpleNamespace(now_ms=lambda: NOW_MS)  # an intermediary's clock outside a trio run


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    """The path world's parties, keys and registry (no service started)."""
    return world.path_world(tmp_path_factory.mktemp("parties"))


def order(*, payer=world.PAYER, payee=world.PAYEE, source="EUR", asset="CHF", amount=100_000, source_max=110_000):
    """The payer's "pay-1": `amount` of `asset` to the payee, for at most `source_max` of its `source`."""
    return PathPayment(
        *("pay-1", COORDINATOR, payer, NOW_MS, world.PLACES[source][0], world.account(payer, source), source),
        *(source_max, payee, world.PLACES[asset][0], world.account(payee, asset), asset, amount, NOW_MS + 60_000),
    )


def quote(party: str, payment: PathPayment, offer: Offer | None = None, number: int = 0) -> Quote:
    """The quote `party` gives for `payment` under its offer in the path world, or `offer`."""
    offer = offer or world.offers(party)[0]
    takes, gives = offer.takes, offer.gives
    return Quote(
        *(f"{party}-q{number}", COORDINATOR, party, path_id(payment)),
        *(takes.ledger, takes.account, takes.asset, gives.ledger, gives.account, gives.asset),
        *(offer.rate.numerator, offer.rate.denominator, offer.gives_max, MARGIN_MS, NOW_MS + 30_000),
    )


def offer_between(party: str, takes: str, gives: str, rate: Fraction) -> Offer:
    """An offer between two of the path world's currencies, from `party`'s accounts in them."""
    return Offer(*(Side(world.PLACES[c][0], c, world.account(party, c)) for c in (takes, gives)), rate, 10**9)


def through(
    payment: PathPayment, *quotes: Quote, first_backstop_ms: int = FIRST_BACKSTOP_MS, decide_by_ms: int = DECIDE_BY_MS
) -> tuple[Hop, ...]:
    """The hops of the route through `quotes` in that order, whether `choose` would take it or not."""
    amounts = [payment.amount]
    for each in reversed(quotes):
        amounts.insert(0, takes_for(each, amounts[0]))
    return hops(payment, Route(quotes, tuple(amounts)), first_backstop_ms, DELTA_MS, decide_by_ms)


def path_auth(parties, payment: PathPayment, path, *, payer=None, signers=None) -> dict:
    """`payment` signed by `payer` (its payer) and each hop by its signer (its intermediary),
    a signer a (name, owner of the key) pair."""
    payer = payer or (payment.payer, payment.payer)
    signers = signers or [(hop.intermediary, hop.intermediary) for hop in path]
    signed = [sign(hop, (name, parties.keys[owner])).wire() for hop, (name, owner) in zip(path, signers, strict=True)]
    return to_body(PaymentPath(COORDINATOR, sign(payment, (payer[0], parties.keys[payer[1]])).wire(), tuple(signed)))


# -- choosing a path: against a brute force over random quote graphs ---------------------

CURRENCIES = ("EUR", "USD", "CHF", "GBP", "JPY")
FLAWS = {  # what makes a quote unusable for the payment, and the fields it changes
    "expired": {},  # its valid_until_ms is drawn in the past
    "another payment": {"payment": "pay-2"},
    "another coordinator": {"coordinator": "coordinator-2"},
    "the payer": {"intermediary": "payer"},
}


@st.composite
def quote_graphs(draw) -> tuple[PathPayment, list[Quote], int]:
    """A payment between two of 3-5 one-currency ledgers, 1-6 intermediaries quoting 1-3
    hops each (a few quotes unusable), and the coordinator's margin Δ."""
    places = [(f"l{n}", CURRENCIES[n]) for n in range(draw(st.integers(3, 5)))]
    two_places = st.lists(st.sampled_from(places), min_size=2, max_size=2, unique=True)
    (from_ledger, source), (to_ledger, asset) = ends = draw(two_places)
    amount = draw(st.integers(1, 10**6))
    source_max = draw(st.integers(1, 16 * amount + 9))
    payment = PathPayment(
        *("pay-1", COORDINATOR, "payer", NOW_MS, from_ledger, "payer-acct", source, source_max),
        *("payee", to_ledger, "payee-acct", asset, amount, NOW_MS + 120_000),
    )
    quotes = []
    for party in (f"mm-{n}" for n in range(draw(st.integers(1, 6)))):
        for _ in range(draw(st.integers(1, 3))):
            takes_ledger, takes = draw(st.sampled_from([ends[0], *places]))  # the ends twice as likely
            gives_ledger, gives = draw(st.sampled_from([p for p in (ends[1], *places) if p[0] != takes_ledger]))
            flaw = draw(st.sampled_from(("",) * 12 + tuple(FLAWS)))
            lapsed = flaw == "expired"
            valid_until_ms = NOW_MS - draw(st.integers(0, 1_000)) if lapsed else NOW_MS + draw(st.integers(1, 60_000))
            offered = Quote(
                *(f"q{len(quotes)}", COORDINATOR, party, path_id(payment)),
                *(takes_ledger, f"{party}-{takes.lower()}", takes, gives_ledger, f"{party}-{gives.lower()}", gives),
                *(draw(st.integers(1, 8)), draw(st.integers(1, 8)), amount * draw(st.integers(1, 20)) // 4 + 1),
                *(draw(st.integers(1, 30_000)), valid_until_ms),
            )
            quotes.append(attrs.evolve(offered, **FLAWS.get(flaw, {})))
    return payment, quotes, draw(st.integers(0, 30_000))


def cost(payment: PathPayment, path: tuple[Quote, ...]) -> int | None:
    """What the payer pays along `path`: each hop takes the least whose worth at its rate is
    what it gives; None if a hop gives more than its limit or into its own account."""
    gives, into = payment.amount, payment.to_account
    for each in reversed(path):
        if gives > each.gives_max or each.gives_account == into:
            return None
        gives, into = math.ceil(Fraction(gives * each.rate_den, each.rate_num)), each.takes_account
    return gives


def cheapest(payment: PathPayment, quotes: list[Quote]) -> tuple[int, int, tuple[str, ...]] | None:
    """By brute force from the payer's side: (cost, hops, quote ids) of the cheapest path
    within source_max, through 1 to PATH_HOPS_MAX distinct intermediaries."""
    wanted = (path_id(payment), COORDINATOR)
    fit = [q for q in quotes if (q.payment, q.coordinator) == wanted and q.valid_until_ms > NOW_MS]
    fit = [q for q in fit if q.intermediary not in (payment.payer, payment.payee)]
    found = []

    def extend(path: tuple[Quote, ...], at: tuple[str, str]) -> None:
        if path and at == (payment.to_ledger, payment.asset):
            paid = cost(payment, path)
            if paid is not None and paid <= payment.source_max:
                found.append((paid, len(path), tuple(q.id for q in path)))
        for q in fit if len(path) < PATH_HOPS_MAX else ():
            if (q.takes_ledger, q.takes_asset) == at and all(q.intermediary != p.intermediary for p in path):
                extend((*path, q), (q.gives_ledger, q.gives_asset))

    extend((), (payment.from_ledger, payment.source_asset))
    return min(found, default=None)


def tied() -> tuple[PathPayment, list[Quote], int]:
    """Three paths of one cost: through mm-0 then mm-1, through mm-2, through mm-3."""
    payment = order(asset="USD")
    hops_at_par = (("mm-0", "EUR", "CHF"), ("mm-1", "CHF", "USD"), ("mm-3", "EUR", "USD"), ("mm-2", "EUR", "USD"))
    return payment, [quote(p, payment, offer_between(p, *pair, Fraction(1))) for p, *pair in hops_at_par], 0


@settings(max_examples=300)
@given(quote_graphs())
@example(tied())
def test_the_path_chosen_costs_least_keeps_within_every_quote_and_staggers_backstops_by_every_margin(graph):
    payment, quotes, delta_ms = graph
    route = choose(payment, quotes, COORDINATOR, NOW_MS)
    best = cheapest(payment, quotes)
    if route is None:
        assert best is None
        return
    assert best == (route.amounts[0], len(route.quotes), tuple(q.id for q in route.quotes))
    assert 1 <= len(route.quotes) <= PATH_HOPS_MAX
    assert len({q.intermediary for q in route.quotes}) == len(route.quotes)
    assert route.amounts[-1] == payment.amount and route.amounts[0] <= payment.source_max
    path = hops(payment, route, FIRST_BACKSTOP_MS, delta_ms, DECIDE_BY_MS)
    for each, hop, amounts in zip(route.quotes, path, itertools.pairwise(route.amounts), strict=True):
        check_hop(each, hop, NOW_MS)
        assert (hop.legs[0].amount, hop.legs[1].amount) == amounts
    joined = chain(payment, path)
    assert joined.payers == (payment.payer, *(q.intermediary for q in route.quotes))
    assert joined.backstops[-1] == FIRST_BACKSTOP_MS
    for each, (later, earlier) in zip(route.quotes, itertools.pairwise(joined.backstops), strict=True):
        assert later - earlier >= max(each.margin_ms, delta_ms) > 0


# -- one hop under its quote ---------------------------------------------------------------


def hop_as(hop: Hop, *, takes=None, gives=None, **changes) -> Hop:
    """`hop` with some fields of each leg, and of the hop, changed."""
    legs = (attrs.evolve(hop.legs[0], **(takes or {})), attrs.evolve(hop.legs[1], **(gives or {})))
    return attrs.evolve(hop, legs=legs, **changes)


REFUSED_HOPS = {  # a change to mm-1's hop (EUR 926 for USD 1 000 at 1.08), and the field refused
    "a cent less taken than the rate needs": ({"takes": {"amount": 925}}, "legs[0].amount"),
    "more given than its limit": ({"takes": {"amount": 10**9}, "gives": {"amount": 10**9 + 1}}, "legs[1].amount"),
    "a margin 1 ms short": ({"backstops_ms": (FIRST_BACKSTOP_MS + MARGIN_MS - 1, FIRST_BACKSTOP_MS)}, "backstops_ms"),
    "decided after the quote lapses": ({"decide_by_ms": NOW_MS + 30_001}, "decide_by_ms"),
    "paid into another account": ({"takes": {"to_account": "mm-2-eur"}}, "legs[0].to_account"),
    "paying from another account": ({"gives": {"from_account": "mm-2-usd"}}, "legs[1].from_account"),
}


@pytest.mark.parametrize("change", REFUSED_HOPS.values(), ids=REFUSED_HOPS.keys())
def test_a_hop_beyond_its_quote_is_refused_naming_the_field(change):
    payment = order(asset="USD", amount=1_000)
    offered = quote("mm-1", payment)
    [hop] = through(payment, offered)
    assert (hop.legs[0].amount, hop.legs[1].amount) == (926, 1_000)
    assert hop.backstops_ms == (FIRST_BACKSTOP_MS + MARGIN_MS, FIRST_BACKSTOP_MS)
    assert offered.gives_max == 10**9
    check_hop(offered, hop, NOW_MS)
    check_hop(offered, hop_as(hop, takes={"amount": 10**9}, gives={"amount": 10**9}), NOW_MS)
    check_hop(offered, hop_as(hop, decide_by_ms=offered.valid_until_ms), NOW_MS)
    changes, field = change
    with pytest.raises(Rejected) as refused:
        check_hop(offered, hop_as(hop, **changes), NOW_MS)
    assert refused.value.field == field
    assert refused.value.code is (Code.EXPIRY_OUT_OF_RANGE if field == "decide_by_ms" else Code.INVALID_FIELD)


# -- the path auth -----------------------------------------------------------------------


def test_a_path_reads_as_legs_from_the_payees_back_to_the_payers_with_rising_backstops(parties):
    payment = order()
    offered = [quote(party, payment) for party in world.RATES]
    route = choose(payment, offered, COORDINATOR, NOW_MS)
    assert route is not None and [q.intermediary for q in route.quotes] == ["mm-1", "mm-2"]
    path = through(payment, *route.quotes)
    terms = terms_of(path_auth(parties, payment, path), parties.registry)
    assert (terms.id, terms.kind, terms.coordinator) == (path_id(payment), "path", COORDINATOR)
    assert terms.legs == (
        SettlementLeg("cbdc-chf", "mm-2-chf", "bank-c-chf", "CHF", 100_000),
        SettlementLeg("cbdc-usd", "mm-1-usd", "mm-2-usd", "USD", 113_637),
        SettlementLeg("cbdc-eur", "bank-a-eur", "mm-1-eur", "EUR", 105_220),
    )
    assert (terms.payers, terms.payees) == (("mm-2", "mm-1", "bank-a"), ("bank-c", "mm-2", "mm-1"))
    assert terms.backstops == (FIRST_BACKSTOP_MS, FIRST_BACKSTOP_MS + MARGIN_MS, FIRST_BACKSTOP_MS + 2 * MARGIN_MS)
    assert terms.deadline_ms == DECIDE_BY_MS
    assert terms_of(path_auth(parties, payment, path), None) == terms
    alone = terms_of(path_auth(parties, payment, through(payment, offered[2])), parties.registry)
    assert alone.id == terms.id  # one payment, one settlement, whichever path carries it
    assert alone.legs == (
        SettlementLeg("cbdc-chf", "mm-3-chf", "bank-c-chf", "CHF", 100_000),
        SettlementLeg("cbdc-eur", "bank-a-eur", "mm-3-eur", "EUR", 107_527),
    )
    assert (alone.payers, alone.payees) == (("mm-3", "bank-a"), ("bank-c", "mm-3"))
    assert alone.backstops == (FIRST_BACKSTOP_MS, FIRST_BACKSTOP_MS + MARGIN_MS)


def refusal(parties, auth: dict) -> str:
    """Why `terms_of` refuses `auth`: its code and its field under `auth.`."""
    with pytest.raises(Rejected) as refused:
        terms_of(auth, parties.registry)
    assert refused.value.field.startswith("auth.")
    return f"{refused.value.code.value} {refused.value.field.removeprefix('auth.')}"


def test_a_path_is_refused_where_a_signature_or_a_join_is_wrong(parties):
    payment = order()
    first, second = path = through(payment, quote("mm-1", payment), quote("mm-2", payment))
    source = first.legs[0].amount
    terms_of(path_auth(parties, attrs.evolve(payment, source_max=source), path), parties.registry)
    unjoined = [first, hop_as(second, takes={"amount": second.legs[0].amount - 1})]
    short = attrs.evolve(payment, source_max=source - 1)
    for auth, refused in (
        (path_auth(parties, payment, path, signers=[("mm-1",) * 2, ("mm-3",) * 2]), "missing_signature hops[1].sigs"),
        (path_auth(parties, payment, path, signers=[("mm-1",) * 2, ("mm-2", "mm-3")]), "bad_signature hops[1].sigs"),
        (path_auth(parties, payment, path, payer=(world.PAYEE,) * 2), "missing_signature payment.sigs"),
        (path_auth(parties, payment, unjoined), "not_authorised hops[1].legs[0]"),
        (path_auth(parties, short, path), "not_authorised hops[0].legs[0].amount"),
        (path_auth(parties, attrs.evolve(payment, amount=100_001), path), "not_authorised hops[1].legs[1].amount"),
    ):
        assert refusal(parties, auth) == refused


def test_a_path_through_one_intermediary_twice_is_neither_chosen_nor_authorised(parties):
    payment = order()
    usd_to_chf = offer_between("mm-1", "USD", "CHF", Fraction("0.88"))
    twice = (quote("mm-1", payment), quote("mm-1", payment, usd_to_chf, number=1))
    assert choose(payment, twice, COORDINATOR, NOW_MS) is None
    assert refusal(parties, path_auth(parties, payment, through(payment, *twice))) == "invalid_field hops"


def test_a_settlement_may_not_take_a_payments_id(parties):
    """A payment's id is guessable (its payer and order id): a settlement under it could
    take the payment's lock ids first, so ids beginning p- are payments' only."""
    taken = path_id(order())
    legs = (
        SettlementLeg("cbdc-eur", "bank-a-eur", "mm-1-eur", "EUR", 100),
        SettlementLeg("cbdc-usd", "mm-1-usd", "bank-c-usd", "USD", 100),
    )
    settlement = Settlement(taken, "pvp", NOW_MS, COORDINATOR, NOW_MS + 60_000, ("bank-a", "mm-1"), legs)
    signers = [(party, parties.keys[party]) for party in settlement.parties]
    assert refusal(parties, sign(settlement, *signers).wire()) == "invalid_field id"
    other = attrs.evolve(settlement, id="q-" + taken[2:])
    assert terms_of(sign(other, *signers).wire(), parties.registry).id == other.id  # any other id is its own


# -- a ledger locking a path's leg, and the auditor reading it ---------------------------


async def paths_of(local, *routes: tuple[str, ...]) -> list[dict]:
    """The `path` auth of each route (its intermediaries, the payer's side first) of the
    payer's "pay-1", each hop quoted and signed by the world's running intermediaries, as
    the path desk gets them."""
    key, now_ms = local.world.keys[COORDINATOR], local.clock.now_ms()
    raw = world.payment(local, "pay-1", 100_000, 110_000, now_ms + 60_000)
    signed_payment = decode_signed(raw, allowed=(PathPayment,))
    payment = signed_payment.msg

    async def ask(party: str, request, answer: type):
        raw = sign(request, (COORDINATOR, key)).encode()
        reply = await local.bus.request(service_of_intermediary(party), raw, timeout_s=2)
        return decode_signed(reply, allowed=(answer,))

    quote_request = QuoteRequest("quotes-1", COORDINATOR, signed_payment.wire())
    offered = {party: await ask(party, quote_request, Quotes) for party in world.RATES}
    auths = []
    for parties in routes:
        quotes = [from_body(offered[party].msg.quotes[0], allowed=(Quote,)) for party in parties]
        route = through(payment, *quotes, first_backstop_ms=now_ms + TIMING.backstop_ms, decide_by_ms=now_ms + 20_000)
        signed_hops = []
        for hop in route:
            request = HopRequest(f"h-{hop.intermediary}", COORDINATOR, offered[hop.intermediary].wire(), to_body(hop))
            signed_hops.append((await ask(hop.intermediary, request, Hop)).wire())
        auths.append(to_body(PaymentPath(COORDINATOR, signed_payment.wire(), tuple(signed_hops))))
    return auths


@pytest.mark.usefixtures("autojump_clock")
async def test_a_ledger_locks_a_path_leg_only_under_the_backstop_its_intermediaries_signed(tmp_path):
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path)
        registry, key = local.world.registry, local.world.keys[COORDINATOR]
        now_ms = local.clock.now_ms()
        [auth] = await paths_of(local, ("mm-1", "mm-2"))
        terms = terms_of(auth, registry)
        index = len(terms.legs) - 1  # the payer's leg: EUR to mm-1
        leg, signed_ms = terms.legs[index], terms.backstops[index]
        assert (leg.ledger, leg.from_account, leg.to_account) == ("cbdc-eur", "bank-a-eur", "mm-1-eur")
        client = local.client(leg.ledger)
        [before] = await read_over_bus(local.bus, registry, [leg.ledger])

        def lock(backstop_ms: int):
            fields = (leg.from_account, leg.to_account, leg.asset, leg.amount, b"\x01" * 32, terms.deadline_ms, ())
            msg = Lock(lock_id(terms.id, index), leg.ledger, now_ms, *fields, auth, b"\x02" * 32, backstop_ms)
            return sign(msg, (COORDINATOR, key))

        async def balances() -> list[dict]:  # the payer's and the payee's of the leg
            queries = [QueryBalances(client.next_query_id(), leg.ledger, a) for a in (leg.from_account, leg.to_account)]
            return [(await client.query(query))["balances"][leg.asset] for query in queries]

        held = await balances()
        for backstop_ms in (signed_ms - 1, signed_ms + 1, signed_ms + TIMING.backstop_ms):
            receipt = await client.submit(lock(backstop_ms))
            assert (receipt.status, receipt.code, receipt.field) == ("rejected", "not_authorised", "backstop_ms")
            assert await balances() == held
        receipt = await client.submit(lock(signed_ms))
        assert receipt.applied and receipt.seq == before.entries
        locked = {"available": held[0]["available"] - leg.amount, "locked": held[0]["locked"] + leg.amount}
        assert await balances() == [locked, held[1]]
        page = await client.query(QueryJournal(client.next_query_id(), leg.ledger, receipt.seq, 1))
        entry = from_wire(page["entries"][0], allowed=(Entry,)).msg
        effects.check(entry, before.replay, registry)
        with pytest.raises(effects.Unvouched, match=f"backstop {signed_ms + 1}, not the {signed_ms} signed"):
            effects.check(attrs.evolve(entry, instruction=lock(signed_ms + 1).wire()), before.replay, registry)
        nursery.cancel_scope.cancel()


# -- the intermediary's answers ----------------------------------------------------------


@pytest.fixture
def mm_1(parties) -> Intermediary:
    key, offers = parties.keys["mm-1"], world.offers("mm-1")
    return Intermediary("mm-1", key, parties.registry, MemoryBus(), STOPPED, offers, MARGIN_MS)


def asked(parties, request, signer: str = COORDINATOR, key_of: str | None = None) -> bytes:
    return sign(request, (signer, parties.keys[key_of or signer])).encode()


def quoted(parties, mm_1: Intermediary, payment: PathPayment) -> tuple[dict, Hop]:
    """mm-1's signed quotes for `payment` (EUR to USD), and the hop a coordinator proposes under them."""
    signed_payment = sign(payment, (payment.payer, parties.keys[payment.payer]))
    raw = mm_1.answer(asked(parties, QuoteRequest("quotes-1", COORDINATOR, signed_payment.wire())))
    answer = decode_signed(raw, allowed=(Quotes,))
    assert answer.signed_by("mm-1", parties.keys["mm-1"].public)
    route = choose(payment, [from_body(body, allowed=(Quote,)) for body in answer.msg.quotes], COORDINATOR, NOW_MS)
    [hop] = hops(payment, route, FIRST_BACKSTOP_MS, DELTA_MS, DECIDE_BY_MS)
    return answer.wire(), hop


def hop_request(quotes: dict, hop: Hop) -> HopRequest:
    return HopRequest("hop-1", COORDINATOR, quotes, to_body(hop))


def answered(parties, raw: bytes) -> Hop | HopRefused:
    signed = decode_signed(raw, allowed=(Hop, HopRefused))
    assert signed.signed_by("mm-1", parties.keys["mm-1"].public)
    return signed.msg


def test_an_intermediary_signs_a_hop_only_for_a_coordinator(parties, mm_1):
    quotes, hop = quoted(parties, mm_1, order(asset="USD"))
    request = hop_request(quotes, hop)
    for raw, code, field in (
        (asked(parties, request, world.PAYER), Code.MISSING_SIGNATURE, "sigs"),
        (asked(parties, request, COORDINATOR, key_of=world.PAYER), Code.BAD_SIGNATURE, "sigs"),
        (asked(parties, attrs.evolve(request, coordinator="mm-2"), "mm-2"), Code.NOT_AUTHORISED, "coordinator"),
    ):
        refused = answered(parties, mm_1.answer(raw))
        assert isinstance(refused, HopRefused) and (refused.code, refused.field) == (code.value, field)
    assert answered(parties, mm_1.answer(asked(parties, request))) == hop


def test_an_intermediary_signs_a_hop_only_under_a_quote_it_signed(parties, mm_1):
    quotes, hop = quoted(parties, mm_1, order(asset="USD"))
    its_own = from_wire(quotes, allowed=(Quotes,)).msg
    better = [{**its_own.quotes[0], "rate_num": 2 * its_own.quotes[0]["rate_num"]}]
    for given_quotes, changed_hop, code, said in (
        (sign(its_own, ("mm-2", parties.keys["mm-2"])).wire(), hop, Code.MISSING_SIGNATURE, "of 'mm-1'"),
        ({**quotes, "quotes": better}, hop, Code.BAD_SIGNATURE, "of 'mm-1' does not verify"),
        (quotes, attrs.evolve(hop, quote="elsewhere-0"), Code.INVALID_FIELD, "hop.quote: elsewhere-0 is not among"),
    ):
        refused = answered(parties, mm_1.answer(asked(parties, hop_request(given_quotes, changed_hop))))
        assert isinstance(refused, HopRefused) and refused.code == code.value, refused
        assert said in f"{refused.field}: {refused.reason}"
    assert answered(parties, mm_1.answer(asked(parties, hop_request(quotes, hop)))) == hop


def test_an_intermediary_signs_a_hop_once_the_same_bytes_however_often_asked(parties, mm_1):
    """The same hop asked again, under another request id, gets the same signed bytes; a
    second hop of the same payment (another path: the payer's ledger lets one settle) is
    signed too, and a hop naming a coordinator other than the one asking is refused."""
    quotes, hop = quoted(parties, mm_1, order(asset="USD"))
    first = mm_1.answer(asked(parties, hop_request(quotes, hop)))
    again = mm_1.answer(asked(parties, attrs.evolve(hop_request(quotes, hop), id="hop-2")))
    assert answered(parties, first) == hop and again == first
    smaller = hop_as(hop, takes={"amount": 925}, gives={"amount": 999})  # as 1.08 allows
    second = answered(parties, mm_1.answer(asked(parties, hop_request(quotes, smaller))))
    assert second == smaller
    assert mm_1.answer(asked(parties, hop_request(quotes, hop))) == first
    elsewhere = attrs.evolve(hop, coordinator="other-coordinator")
    refused = answered(parties, mm_1.answer(asked(parties, hop_request(quotes, elsewhere))))
    assert isinstance(refused, HopRefused) and (refused.code, refused.field) == ("not_authorised", "hop.coordinator")
    assert refused.payment == hop.payment


def test_two_payers_may_each_pay_through_one_intermediary_under_the_same_order_id(parties, mm_1):
    """Path ids are per payer (path_id hashes the payer with the order's id): bank-c's
    "pay-1" is another payment than bank-a's, and mm-1 carries both."""
    mine = order(asset="USD")
    theirs = order(payer=world.PAYEE, payee=world.PAYER, asset="USD")
    assert path_id(mine) != path_id(theirs)
    for payment in (mine, theirs):
        quotes, hop = quoted(parties, mm_1, payment)
        assert answered(parties, mm_1.answer(asked(parties, hop_request(quotes, hop)))) == hop


@pytest.mark.usefixtures("autojump_clock")
async def test_a_payers_order_is_locked_once_on_its_ledger_whatever_path_carries_it(tmp_path):
    """Two paths of one payment, of two lengths (mm-1 and mm-2; mm-3 alone), each hop
    signed by its intermediary: their payer's legs have other lock ids. The EUR ledger
    locks the payer's order under the first and refuses it under the second, so at most
    one path can settle; the audit's second reading refuses such a lock too."""
    async with trio.open_nursery() as nursery:
        local, _ = await start(nursery, tmp_path)
        registry, key = local.world.registry, local.world.keys[COORDINATOR]
        now_ms = local.clock.now_ms()
        auths = await paths_of(local, ("mm-1", "mm-2"), ("mm-3",))
        client = local.client("cbdc-eur")
        [before] = await read_over_bus(local.bus, registry, ["cbdc-eur"])
        locks = []
        for auth in auths:
            terms = terms_of(auth, registry)
            index = len(terms.legs) - 1  # the payer's leg
            leg = terms.legs[index]
            fields = (leg.from_account, leg.to_account, leg.asset, leg.amount, b"\x01" * 32, terms.deadline_ms, ())
            lock = Lock(
                lock_id(terms.id, index), leg.ledger, now_ms, *fields, auth, b"\x02" * 32, terms.backstops[index]
            )
            locks.append(sign(lock, (COORDINATOR, key)))
        assert [lock.msg.id.rsplit(":", 1)[1] for lock in locks] == ["2", "1"]
        first = await client.submit(locks[0])
        assert first.applied
        second = await client.submit(locks[1])
        assert (second.status, second.code, second.field) == ("rejected", "not_authorised", "auth.payment")
        assert f"locked already, by {locks[0].msg.id}" in second.reason
        balance = (await client.query(QueryBalances(client.next_query_id(), "cbdc-eur", "bank-a-eur")))["balances"]
        assert balance["EUR"]["locked"] == locks[0].msg.amount
        [after] = await read_over_bus(local.bus, registry, ["cbdc-eur"])
        page = await client.query(QueryJournal(client.next_query_id(), "cbdc-eur", first.seq, 1))
        entry = from_wire(page["entries"][0], allowed=(Entry,)).msg
        effects.check(entry, before.replay, registry)
        with pytest.raises(effects.Unvouched, match="locks the payer's order a second time"):
            effects.check(attrs.evolve(entry, seq=after.entries, instruction=locks[1].wire()), after.replay, registry)
        nursery.cancel_scope.cancel()
