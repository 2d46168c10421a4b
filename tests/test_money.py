"""Amounts shown to people: one form for money and one for securities."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.identifiers import CURRENCIES, make_isin
from protocols.journal import Replay
from protocols.money import format_amount

BOND = make_isin("DE000LOCK00")


@pytest.mark.parametrize(
    ("asset", "amount", "text"),
    [
        ("EUR", 999_753_000_000, "EUR 9,997,530,000.00"),
        ("EUR", 5, "EUR 0.05"),
        ("EUR", -123_456, "EUR -1,234.56"),
        ("JPY", 1_000_000, "JPY 1,000,000"),
        ("KWD", 1_234_567, "KWD 1,234.567"),
        (BOND, 1_000, f"{BOND} 1,000 units"),
        (BOND, 1, f"{BOND} 1 unit"),
    ],
)
def test_amounts_read_in_major_units_with_grouping(asset, amount, text):
    assert format_amount(asset, amount) == text


@given(st.sampled_from(sorted(CURRENCIES)), st.integers(-(10**18), 10**18))
def test_the_shown_amount_reads_back_to_the_minor_units(code, amount):
    text = format_amount(code, amount)
    assert text.startswith(f"{code} ")
    digits = text.removeprefix(f"{code} ").replace(",", "").replace(".", "")
    assert int(digits) == amount


def test_a_replay_names_a_broken_balance_and_supply_in_money():
    """The start-up check's and the audit's conservation texts, in the same form."""
    replay = Replay(balances={("a", "EUR"): [-150, 25], ("b", "EUR"): [100, 0]}, supply={"EUR": [1_000, 0]})
    assert replay.conservation_problems() == [
        "a/EUR is negative: EUR -1.50 available, EUR 0.25 locked",
        "EUR: balances sum to EUR -0.25, issued minus redeemed is EUR 10.00",
    ]
