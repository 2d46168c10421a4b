"""engine.desks.offsetting: the waiting trades that fund one another, found and split
into sets that each settle as one linked settlement.

Checked against random payment graphs (every released set fundable on its own and
together, disjoint, of a size one linked settlement carries), against brute force
over every subset of a small graph (the exact search), and on worked gridlocks."""

import itertools
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.desks import offsetting
from engine.desks.offsetting import EXACT_MAX, Candidate, Released, components, fundable, search
from protocols import netting
from protocols.identifiers import make_isin
from protocols.messages import LINKED_PAIRS_MAX, SettlementLeg

BOND = make_isin("XS000000000")
EURO, DOLLAR, CSD = "cbdc-eur", "cbdc-usd", "csd"
ASSET = {EURO: "EUR", DOLLAR: "USD", CSD: BOND}
A, B, C, D, E, F = (f"bank-{name}" for name in "abcdef")


def pay(payer, payee, amount, ledger=EURO):
    return SettlementLeg(ledger, payer, payee, ASSET[ledger], amount)


def trade(id, *legs, priority=4, since_ms=0):
    return Candidate(id, tuple(legs), priority, since_ms)


def eur(**balances):
    """Euro balances by bank letter: eur(a=10) is bank-a holding 10 EUR."""
    return {(EURO, f"bank-{name}", "EUR"): amount for name, amount in balances.items()}


def ids(candidates):
    return sorted(c.id for c in candidates)


def legs_of(candidates):
    return [leg for c in candidates for leg in c.legs]


def accounts_of(candidates):
    return {(leg.ledger, account) for leg in legs_of(candidates) for account in (leg.from_account, leg.to_account)}


# ---------------------------------------------------------------------------------------
# Random payment graphs


@st.composite
def graphs(draw, min_trades=1, max_trades=8):
    """3-6 participants, trades of one or two legs between distinct participants on one
    or two ledgers, and balances (often zero) for every participant on every ledger."""
    participants = [f"bank-{name}" for name in "abcdef"[: draw(st.integers(3, 6))]]
    ledgers = draw(st.lists(st.sampled_from([EURO, DOLLAR, CSD]), min_size=1, max_size=2, unique=True))
    amounts = st.one_of(st.sampled_from([10, 20, 50, 100]), st.integers(1, 10**9))
    candidates = []
    for number in range(draw(st.integers(min_trades, max_trades))):
        legs = []
        for _ in range(draw(st.integers(1, 2))):
            ledger = draw(st.sampled_from(ledgers))
            payer, payee = draw(st.lists(st.sampled_from(participants), min_size=2, max_size=2, unique=True))
            legs.append(pay(payer, payee, draw(amounts), ledger))
        candidates.append(Candidate(f"t{number}", tuple(legs), draw(st.integers(0, 4)), draw(st.integers(0, 3)) * 1000))
    balance = st.one_of(st.just(0), st.sampled_from([10, 20, 50, 100]), st.integers(0, 10**9))
    held = {(ledger, account, ASSET[ledger]): draw(balance) for ledger in ledgers for account in participants}
    return candidates, held


def assert_released_well(released, candidates, held):
    """What every search result must be, whichever path found it."""
    assert isinstance(released, Released)
    given_ids = {c.id for c in candidates}
    seen = set()
    for each in released.sets:
        assert 2 <= len(each) <= LINKED_PAIRS_MAX
        assert fundable(each, held), [c.id for c in each]
        assert {c.id for c in each} <= given_ids
        assert not seen & {c.id for c in each}, "a trade in two sets"
        seen |= {c.id for c in each}
    everything = [c for each in released.sets for c in each]
    assert fundable(everything, held)
    assert released.count == len(everything) == len(seen)
    # the sets settle apart, in any order: together their net outflows are covered, none
    # counting on another's proceeds (sets from apart share no account at all)
    taken: dict = {}
    for each in released.sets:
        for position, amount in netting.outflows(leg for c in each for leg in c.legs).items():
            taken[position] = taken.get(position, 0) + amount
    assert all(amount <= held.get(position, 0) for position, amount in taken.items()), taken


@settings(deadline=None, max_examples=200)
@given(graphs())
def test_every_released_set_is_fundable_alone_and_together_and_disjoint(graph):
    candidates, held = graph
    assert_released_well(search(candidates, held), candidates, held)


@settings(deadline=None)
@given(graphs())
def test_the_released_value_is_the_released_trades_gross(graph):
    candidates, held = graph
    released = search(candidates, held)
    gross = {}
    for leg in legs_of(c for each in released.sets for c in each):
        gross[leg.asset] = gross.get(leg.asset, 0) + leg.amount
    assert released.value() == gross
    assert set(released.saved()) == set(gross)
    for asset, saved in released.saved().items():
        assert 0 <= saved <= gross[asset]


# ---------------------------------------------------------------------------------------
# The exact search against brute force


def brute_force_best(candidates, held):
    """The best (count, cash) any fundable subset scores."""
    return max(
        (len(subset), sum(c.cash for c in subset))
        for size in range(len(candidates) + 1)
        for subset in itertools.combinations(candidates, size)
        if fundable(subset, held)
    )


@settings(deadline=None, max_examples=120)
@given(graphs(max_trades=8))
def test_the_exact_search_finds_the_best_fundable_subset(graph):
    candidates, held = graph
    chosen = offsetting._exact(candidates, held)
    assert fundable(chosen, held)
    assert len({c.id for c in chosen}) == len(chosen)
    assert {c.id for c in chosen} <= {c.id for c in candidates}
    assert (len(chosen), sum(c.cash for c in chosen)) == brute_force_best(candidates, held)


@settings(deadline=None)
@given(graphs(max_trades=8))
def test_search_releases_what_the_exact_search_chose_in_sets(graph):
    candidates, held = graph
    chosen = {c.id for c in offsetting._exact(candidates, held)}
    released = search(candidates, held)
    assert {c.id for each in released.sets for c in each} <= chosen


@settings(deadline=None)
@given(graphs(max_trades=16))
def test_the_greedy_search_chooses_only_what_is_fundable(graph):
    candidates, held = graph
    chosen = offsetting._greedy(candidates, held)
    assert fundable(chosen, held)
    assert len({c.id for c in chosen}) == len(chosen)
    assert {c.id for c in chosen} <= {c.id for c in candidates}


# The greedy add-back is one pass, most urgent first: a dropped trade that does not fit
# when its turn comes is not tried again once a later (less urgent) trade it needs has
# been added back. Here e (most urgent) makes the deselection drop d, then c, then e; the
# add-back rejects e (B short 50), rejects c (A short 100), adds d (B holds 100), and
# ends with [d], though c with d nets to nothing and is fundable.
GREEDY_NOT_MAXIMAL = (
    [
        trade("c", pay(A, B, 100), priority=1),
        trade("d", pay(B, A, 100), priority=2),
        trade("e", pay(B, C, 150), priority=0),
    ],
    eur(b=100),
)


@settings(deadline=None, max_examples=200)
@example(GREEDY_NOT_MAXIMAL)
@given(graphs(max_trades=16))
def test_the_greedy_search_leaves_out_only_what_would_not_fit(graph):
    candidates, held = graph
    chosen = offsetting._greedy(candidates, held)
    assert fundable(chosen, held)
    chosen_ids = {c.id for c in chosen}
    for left_out in (c for c in candidates if c.id not in chosen_ids):
        assert not fundable([*chosen, left_out], held), f"{left_out.id} fits but was left out"


def test_the_greedy_search_keeps_everything_when_everything_fits():
    candidates = [trade("t1", pay(A, B, 100)), trade("t2", pay(B, C, 100)), trade("t3", pay(C, A, 100))]
    assert ids(offsetting._greedy(candidates, eur())) == ["t1", "t2", "t3"]


def test_the_greedy_search_drops_the_least_urgent_trade_of_the_account_most_short():
    """A holds 100 and pays 100 twice: the newer of the two same-priority trades goes."""
    candidates = [
        trade("old", pay(A, B, 100), since_ms=1),
        trade("new", pay(A, C, 100), since_ms=2),
    ]
    assert ids(offsetting._greedy(candidates, eur(a=100))) == ["old"]
    urgent = [trade("old", pay(A, B, 100), priority=4, since_ms=1), trade("new", pay(A, C, 100), priority=0)]
    assert ids(offsetting._greedy(urgent, eur(a=100))) == ["new"]


def test_the_greedy_search_keeps_a_gridlock_once_the_short_trade_is_gone():
    """A gridlock A -> B -> C -> A of 100 and a newer A -> D 500 A cannot fund: the newer
    one is dropped first, and the cycle stays."""
    candidates = [
        trade("t1", pay(A, B, 100)),
        trade("t2", pay(B, C, 100)),
        trade("t3", pay(C, A, 100)),
        trade("t4", pay(A, D, 500), since_ms=1),
    ]
    assert ids(offsetting._greedy(candidates, eur(a=50))) == ["t1", "t2", "t3"]


def test_the_greedy_search_keeps_a_gridlock_next_to_an_urgent_unfundable_trade():
    """The same, but the A -> D 500 is urgent: the deselection drops t1 (A's least urgent
    payment) before it, which leaves B, then C short, so the whole cycle goes; the add-back
    tries t4, t1, t2, t3 one at a time and none fits alone. The exact search keeps the cycle."""
    candidates = [
        trade("t1", pay(A, B, 100)),
        trade("t2", pay(B, C, 100)),
        trade("t3", pay(C, A, 100)),
        trade("t4", pay(A, D, 500), priority=0),
    ]
    assert ids(offsetting._exact(candidates, eur(a=50))) == ["t1", "t2", "t3"]
    assert ids(offsetting._greedy(candidates, eur(a=50))) == ["t1", "t2", "t3"]


# ---------------------------------------------------------------------------------------
# Worked examples


def test_a_gridlock_cycle_is_released_as_one_set():
    candidates = [trade("t1", pay(A, B, 100)), trade("t2", pay(B, C, 100)), trade("t3", pay(C, A, 100))]
    held = eur(a=0, b=0, c=0)
    assert not any(fundable([c], held) for c in candidates), "none settles alone"
    released = search(candidates, held)
    assert [ids(each) for each in released.sets] == [["t1", "t2", "t3"]]
    assert released.count == 3
    assert released.value() == {"EUR": 300}
    assert released.saved()["EUR"] == 300


def test_a_broken_cycle_releases_nothing():
    candidates = [trade("t1", pay(A, B, 100)), trade("t2", pay(B, C, 100))]
    released = search(candidates, eur(a=0, b=0, c=0))
    assert released.sets == ()
    assert released.count == 0
    assert released.value() == {}
    assert released.saved() == {}


def test_two_independent_cycles_are_released_as_two_sets():
    candidates = [
        trade("t1", pay(A, B, 100)),
        trade("t2", pay(B, C, 100)),
        trade("t3", pay(C, A, 100)),
        trade("u1", pay(D, E, 70)),
        trade("u2", pay(E, D, 70)),
    ]
    released = search(candidates, eur())
    assert [ids(each) for each in released.sets] == [["t1", "t2", "t3"], ["u1", "u2"]]
    assert released.count == 5
    assert released.saved() == {"EUR": 440}
    assert_released_well(released, candidates, eur())


def test_trades_unfundable_even_netted_are_not_released():
    """A pays B 100 and B pays A 50: A must still find 50, and holds 10."""
    as_two = [trade("t1", pay(A, B, 100)), trade("t2", pay(B, A, 50))]
    assert not fundable(as_two, eur(a=10))
    assert search(as_two, eur(a=10)).sets == ()
    as_one = [trade("t1", pay(A, B, 100), pay(B, A, 50)), trade("t2", pay(C, A, 10))]
    assert search(as_one, eur(a=10)).sets == ()


def test_a_partly_funded_gridlock_is_released_on_what_the_payers_hold():
    """A pays B 100 and B pays A 50: A holds 50, its net; B holds nothing."""
    candidates = [trade("t1", pay(A, B, 100)), trade("t2", pay(B, A, 50))]
    held = eur(a=50)
    assert not fundable(candidates[:1], held)
    released = search(candidates, held)
    assert [ids(each) for each in released.sets] == [["t1", "t2"]]
    assert released.saved() == {"EUR": 100}


def test_back_to_back_dvps_release_each_other():
    """B buys the bond from A and sells it on to C, holding neither bond nor cash: neither
    DvP settles alone, both together do, A delivering to C and C paying A."""
    buy = trade("buy", pay(A, B, 10, CSD), pay(B, A, 100, EURO))
    sell = trade("sell", pay(B, C, 10, CSD), pay(C, B, 100, EURO))
    held = {(CSD, A, BOND): 10, (EURO, C, "EUR"): 100}
    assert not fundable([buy], held) and not fundable([sell], held)
    released = search([buy, sell], held)
    assert [ids(each) for each in released.sets] == [["buy", "sell"]]
    assert released.value() == {"EUR": 200, BOND: 20}
    assert released.saved() == {"EUR": 100, BOND: 10}
    assert buy.cash == 100


def test_a_trade_that_settles_alone_is_not_a_linked_set():
    released = search([trade("t1", pay(A, B, 100))], eur(a=100))
    assert released.sets == ()


def test_no_trades_release_nothing():
    assert search([], {}).sets == ()
    assert offsetting._exact([], {}) == []
    assert offsetting._greedy([], {}) == []


def test_the_exact_search_prefers_more_trades_then_more_cash():
    """A holds 100: it can fund t1 (100) alone, or t2 and t3 (40 and 50) together."""
    candidates = [
        trade("t1", pay(A, B, 100), priority=0),
        trade("t2", pay(A, C, 40)),
        trade("t3", pay(A, D, 50)),
    ]
    assert ids(offsetting._exact(candidates, eur(a=100))) == ["t2", "t3"]
    more_cash = [trade("t1", pay(A, B, 60)), trade("t2", pay(A, C, 30)), trade("t3", pay(A, D, 40))]
    assert ids(offsetting._exact(more_cash, eur(a=100))) == ["t1", "t3"]


# ---------------------------------------------------------------------------------------
# components


def test_trades_sharing_no_account_are_apart():
    candidates = [trade("t2", pay(C, D, 5)), trade("t1", pay(A, B, 5)), trade("t3", pay(E, F, 5))]
    assert [ids(each) for each in components(candidates)] == [["t1"], ["t2"], ["t3"]]


def test_trades_sharing_an_account_are_together():
    candidates = [
        trade("t3", pay(A, B, 5)),
        trade("t1", pay(C, D, 5)),
        trade("t2", pay(B, C, 5)),
        trade("t4", pay(E, F, 5)),
    ]
    groups = components(candidates)
    assert [[c.id for c in each] for each in groups] == [["t1", "t2", "t3"], ["t4"]]


def test_the_same_name_on_another_ledger_is_another_account():
    cash = trade("cash", pay(A, B, 5, EURO))
    bond = trade("bond", pay(A, B, 5, CSD))
    assert [ids(each) for each in components([cash, bond])] == [["bond"], ["cash"]]
    dvp = trade("dvp", pay(C, A, 5, CSD), pay(B, D, 5, EURO))
    assert [ids(each) for each in components([cash, bond, dvp])] == [["bond", "cash", "dvp"]]


@given(graphs(max_trades=12))
def test_components_partition_the_trades_by_account(graph):
    candidates, _ = graph
    groups = components(candidates)
    assert sorted(c.id for each in groups for c in each) == ids(candidates)
    for first, second in itertools.combinations(groups, 2):
        assert not accounts_of(first) & accounts_of(second)
    for each in groups:
        # connected: growing from one trade through shared accounts reaches all
        reached, frontier = {each[0].id}, accounts_of(each[:1])
        grew = True
        while grew:
            grew = False
            for c in each:
                if c.id not in reached and accounts_of([c]) & frontier:
                    reached.add(c.id)
                    frontier |= accounts_of([c])
                    grew = True
        assert reached == {c.id for c in each}


# ---------------------------------------------------------------------------------------
# Above EXACT_MAX: the greedy path


def large_graph(seed, trades=40, participants=12):
    rng = random.Random(seed)
    banks = [f"bank-{number:02}" for number in range(participants)]
    candidates = []
    for number in range(trades):
        legs = []
        for _ in range(rng.choice((1, 1, 2))):
            ledger = rng.choice((EURO, EURO, CSD))
            payer, payee = rng.sample(banks, 2)
            legs.append(pay(payer, payee, rng.choice((10, 20, 50, 100)), ledger))
        candidates.append(Candidate(f"t{number:02}", tuple(legs), rng.randrange(5), rng.randrange(10_000)))
    held = {(ledger, bank, ASSET[ledger]): rng.choice((0, 0, 10, 50, 100)) for ledger in (EURO, CSD) for bank in banks}
    return candidates, held


def test_a_large_graph_goes_the_greedy_way_and_releases_only_fundable_sets(monkeypatch):
    exact = offsetting._exact

    def no_exact(candidates, *args, **kwargs):  # on the few left out, or a cut's window: no more
        assert len(candidates) <= EXACT_MAX, "the exact search ran above EXACT_MAX"
        return exact(candidates, *args, **kwargs)

    monkeypatch.setattr(offsetting, "_exact", no_exact)
    released_anything = 0
    for seed in range(20):
        candidates, held = large_graph(seed)
        assert len(candidates) > EXACT_MAX
        chosen = offsetting._greedy(candidates, held)
        assert fundable(chosen, held)
        released = search(candidates, held)
        assert_released_well(released, candidates, held)
        assert {c.id for each in released.sets for c in each} <= {c.id for c in chosen}
        released_anything += released.count
    assert released_anything > 0, "the graphs are meant to hold some gridlock"


def test_a_large_gridlock_is_released_by_the_greedy_way():
    """Twenty 2-cycles (40 trades, none fundable alone): all released, as twenty sets."""
    candidates = []
    for number in range(20):
        x, y = f"bank-x{number:02}", f"bank-y{number:02}"
        candidates += [trade(f"p{number:02}", pay(x, y, 100)), trade(f"q{number:02}", pay(y, x, 100))]
    assert len(candidates) > EXACT_MAX
    released = search(candidates, {})
    assert released.count == 40
    assert len(released.sets) == 20
    assert_released_well(released, candidates, {})
    assert released.saved() == {"EUR": 4000}


def test_a_large_graph_releases_a_pair_the_greedy_add_back_passed_over():
    """GREEDY_NOT_MAXIMAL padded above EXACT_MAX with trades that each settle alone: c and d
    net to nothing and search() on the three alone releases them; on all it does not."""
    candidates, held = GREEDY_NOT_MAXIMAL
    assert [ids(each) for each in search(candidates, held).sets] == [["c", "d"]]
    padding = [trade(f"z{number:02}", pay(f"bank-p{number:02}", f"bank-q{number:02}", 1)) for number in range(12)]
    padded_held = {**held, **{(EURO, f"bank-p{number:02}", "EUR"): 1 for number in range(12)}}
    released = search([*candidates, *padding], padded_held)
    assert [ids(each) for each in released.sets] == [["c", "d"]]


def test_a_set_too_large_for_one_linked_settlement_is_cut_into_sets_that_each_fund_themselves():
    """Twenty trades back and forth between two banks (each pays the other 100 ten times),
    neither holding anything: one set of twenty, cut into sets of at most eight, each
    netting to nothing, so each settles on its own; a ring of ten, which no cut leaves
    fundable, is left to wait."""
    back_and_forth = [trade(f"ab{n:02}", pay(A, B, 100), since_ms=n) for n in range(10)]
    back_and_forth += [trade(f"ba{n:02}", pay(B, A, 100), since_ms=n) for n in range(10)]
    released = search(back_and_forth, {})
    assert released.count >= 16 and all(2 <= len(each) <= LINKED_PAIRS_MAX for each in released.sets)
    left: dict = {}
    for each in released.sets:
        assert fundable(each, left)  # on its own, from nothing: the sets settle apart
    assert len({c.id for each in released.sets for c in each}) == released.count
    ring = [trade(f"r{n}", pay(f"bank-r{n}", f"bank-r{(n + 1) % 10}", 100)) for n in range(10)]
    assert search(ring, {}).count == 0
