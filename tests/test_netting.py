"""protocols.netting: the legs a linked settlement locks, netted per ledger and asset.

The properties every party relies on: the netted legs leave each account where the
gross legs would, they are few (no account both pays and is paid in one book), and
they are canonical (the same legs, in the same order, whoever nets them)."""

from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from protocols.identifiers import make_isin
from protocols.messages import SettlementLeg
from protocols.netting import net, outflows, positions, shortfalls

BOND = make_isin("XS000000000")
LEDGERS = ("cbdc-eur", "csd", "bank-a-ledger")
ACCOUNTS = ("bank-a-eur", "bank-b-eur", "bank-c-eur", "bank-d-eur", "fund-e")
ASSETS = ("EUR", "USD", BOND)

A, B, C = "bank-a-eur", "bank-b-eur", "bank-c-eur"
LEDGER = "cbdc-eur"


def leg(from_account, to_account, amount, asset="EUR", ledger=LEDGER):
    return SettlementLeg(ledger, from_account, to_account, asset, amount)


@st.composite
def legs_(draw, ledgers=LEDGERS, accounts=ACCOUNTS, assets=ASSETS, max_size=24):
    """Random gross legs over a few ledgers, accounts and assets; never from an account to itself."""
    count = draw(st.integers(0, max_size))
    drawn = []
    for _ in range(count):
        payer, payee = draw(st.lists(st.sampled_from(accounts), min_size=2, max_size=2, unique=True))
        drawn.append(
            SettlementLeg(
                draw(st.sampled_from(ledgers)),
                payer,
                payee,
                draw(st.sampled_from(assets)),
                draw(st.integers(1, 10**9)),
            )
        )
    return drawn


def by_book(legs):
    books = defaultdict(list)
    for each in legs:
        books[(each.ledger, each.asset)].append(each)
    return books


# Dense graphs (two accounts, one book) cancel often; sparse ones rarely do: draw both.
legs_strategy = st.one_of(
    legs_(),
    legs_(ledgers=LEDGERS[:1], accounts=ACCOUNTS[:3], assets=ASSETS[:1]),
    legs_(ledgers=LEDGERS[:1], accounts=ACCOUNTS[:2], assets=ASSETS[:1], max_size=6),
)


@given(legs_strategy)
def test_netting_leaves_every_account_where_the_gross_legs_do(legs):
    assert positions(net(legs)) == positions(legs)


@given(legs_strategy)
def test_netted_legs_each_move_something_between_two_accounts(legs):
    for each in net(legs):
        assert each.amount > 0
        assert each.from_account != each.to_account


@given(legs_strategy)
def test_no_account_both_pays_and_is_paid_in_one_book(legs):
    for book, netted in by_book(net(legs)).items():
        payers = {each.from_account for each in netted}
        payees = {each.to_account for each in netted}
        assert not payers & payees, book


@given(legs_strategy)
def test_each_book_nets_to_at_most_payers_plus_payees_less_one_legs(legs):
    gross = positions(legs)
    books = by_book(net(legs))
    assert set(books) == {(ledger, asset) for (ledger, _, asset) in gross}
    for (ledger, asset), netted in books.items():
        payers = sum(1 for (lg, _, at), amount in gross.items() if (lg, at) == (ledger, asset) and amount < 0)
        payees = sum(1 for (lg, _, at), amount in gross.items() if (lg, at) == (ledger, asset) and amount > 0)
        assert payers >= 1 and payees >= 1
        assert len(netted) <= payers + payees - 1


@given(legs_strategy.flatmap(lambda legs: st.tuples(st.just(legs), st.permutations(legs))))
def test_netting_is_canonical_whatever_the_order_of_the_legs(drawn):
    legs, shuffled = drawn
    assert net(shuffled) == net(legs)
    assert net(tuple(reversed(legs))) == net(legs)


@given(legs_strategy)
def test_netted_legs_come_by_ledger_then_asset_then_accounts_by_name(legs):
    netted = net(legs)
    keys = [(each.ledger, each.asset, each.from_account, each.to_account) for each in netted]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys), "one leg per payer and payee in a book"


@given(legs_strategy)
def test_netting_netted_legs_changes_nothing(legs):
    assert net(net(legs)) == net(legs)


def test_nothing_nets_to_nothing():
    assert net([]) == ()
    assert positions([]) == {}
    assert outflows([]) == {}
    assert shortfalls([], {}) == {}


def test_a_cycle_of_equal_amounts_nets_to_nothing():
    legs = [leg(A, B, 100), leg(B, C, 100), leg(C, A, 100)]
    assert positions(legs) == {}
    assert net(legs) == ()


def test_a_payment_and_its_return_net_to_nothing():
    assert net([leg(A, B, 10), leg(B, A, 10)]) == ()


def test_back_to_back_payments_net_to_one_leg():
    assert net([leg(A, B, 10), leg(B, C, 10)]) == (leg(A, C, 10),)


def test_a_partly_passed_on_payment_nets_to_two_legs_in_order():
    netted = net([leg(A, B, 10), leg(B, C, 4)])
    assert netted == (leg(A, B, 6), leg(A, C, 4))


def test_a_payment_and_a_smaller_return_net_to_the_difference():
    assert net([leg(A, B, 100), leg(B, A, 30)]) == (leg(A, B, 70),)


def test_books_net_apart_and_come_by_ledger_then_asset():
    legs = [
        leg(A, B, 5, asset="USD", ledger="cbdc-usd"),
        leg(B, A, 7, asset=BOND, ledger="csd"),
        leg(A, B, 3, asset="USD", ledger="cbdc-eur"),
        leg(A, B, 2, asset="EUR", ledger="cbdc-eur"),
        leg(B, A, 2, asset="EUR", ledger="csd"),
    ]
    assert net(legs) == (
        leg(A, B, 2, asset="EUR", ledger="cbdc-eur"),
        leg(A, B, 3, asset="USD", ledger="cbdc-eur"),
        leg(A, B, 5, asset="USD", ledger="cbdc-usd"),
        leg(B, A, 2, asset="EUR", ledger="csd"),
        leg(B, A, 7, asset=BOND, ledger="csd"),
    )


def test_the_same_account_on_two_ledgers_is_two_positions():
    legs = [leg(A, B, 10, ledger="cbdc-eur"), leg(B, A, 10, ledger="bank-a-ledger")]
    assert positions(legs) == {
        ("cbdc-eur", A, "EUR"): -10,
        ("cbdc-eur", B, "EUR"): 10,
        ("bank-a-ledger", B, "EUR"): -10,
        ("bank-a-ledger", A, "EUR"): 10,
    }
    assert net(legs) == (legs[1], legs[0])


def test_outflows_are_what_each_payer_pays_net():
    legs = [leg(A, B, 10), leg(B, C, 4), leg(C, A, 1)]
    assert outflows(legs) == {(LEDGER, A, "EUR"): 9}
    assert positions(legs) == {(LEDGER, A, "EUR"): -9, (LEDGER, B, "EUR"): 6, (LEDGER, C, "EUR"): 3}


def test_an_account_paying_more_than_it_holds_is_short_the_difference():
    legs = [leg(A, B, 10)]
    assert shortfalls(legs, {(LEDGER, A, "EUR"): 7}) == {(LEDGER, A, "EUR"): 3}
    assert shortfalls(legs, {}) == {(LEDGER, A, "EUR"): 10}


def test_an_account_holding_what_it_pays_is_not_short():
    legs = [leg(A, B, 10)]
    assert shortfalls(legs, {(LEDGER, A, "EUR"): 10}) == {}
    assert shortfalls(legs, {(LEDGER, A, "EUR"): 11}) == {}


def test_an_account_paying_net_is_short_only_its_net():
    """A pays 10 and is paid 3 back: it needs 7, not 10."""
    legs = [leg(A, B, 10), leg(B, A, 3)]
    assert shortfalls(legs, {(LEDGER, A, "EUR"): 7}) == {}
    assert shortfalls(legs, {(LEDGER, A, "EUR"): 6}) == {(LEDGER, A, "EUR"): 1}


def test_an_account_only_receiving_never_pays_nor_is_short():
    legs = [leg(A, C, 10), leg(B, C, 5)]
    assert (LEDGER, C, "EUR") not in outflows(legs)
    assert (LEDGER, C, "EUR") not in shortfalls(legs, {})
    assert shortfalls(legs, {}) == {(LEDGER, A, "EUR"): 10, (LEDGER, B, "EUR"): 5}


def test_what_is_held_elsewhere_does_not_fund_a_payment():
    """Held on another ledger, or in another asset: still short."""
    legs = [leg(A, B, 10)]
    held = {("csd", A, "EUR"): 100, (LEDGER, A, "USD"): 100, (LEDGER, B, "EUR"): 100}
    assert shortfalls(legs, held) == {(LEDGER, A, "EUR"): 10}


@given(legs_strategy, st.data())
def test_shortfalls_are_the_outflows_not_held(legs, data):
    paid = outflows(legs)
    assert all(amount > 0 for amount in paid.values())
    assert paid == {position: -amount for position, amount in positions(legs).items() if amount < 0}
    held = {position: data.draw(st.integers(0, 2 * amount)) for position, amount in paid.items()}
    short = shortfalls(legs, held)
    assert short == {p: amount - held[p] for p, amount in paid.items() if amount > held[p]}
    assert shortfalls(legs, paid) == {}
    assert shortfalls(net(legs), held) == short
