"""ISINs and ISO 4217 codes: real identifiers pass, anything else is refused with a reason."""

import pytest

from protocols.identifiers import CURRENCIES, currency_problem, isin_problem, make_isin

# Published ISINs: Apple, the AU example of ISO 6166, BAE Systems, Bayer, Alphabet.
REAL_ISINS = ["US0378331005", "AU0000XVGZA3", "GB0002634946", "DE000BAY0017", "US02079K3059"]


@pytest.mark.parametrize("isin", REAL_ISINS)
def test_real_isins_are_accepted(isin):
    assert isin_problem(isin) is None


@pytest.mark.parametrize("digit", [d for d in "0123456789" if d != "5"])
def test_every_wrong_check_digit_is_refused(digit):
    assert isin_problem("US037833100" + digit) == f"ISIN check digit is {digit}, expected 5"


@pytest.mark.parametrize("isin", ["US037833100", "US03783310055", ""])
def test_wrong_length_is_refused(isin):
    assert isin_problem(isin) == f"ISIN must be 12 characters, not {len(isin)}"


@pytest.mark.parametrize("isin", ["us0378331005", "Us0378331005", "US037833100a"])
def test_lower_case_is_refused(isin):
    assert isin_problem(isin) is not None


@pytest.mark.parametrize("isin", ["1S0378331005", "U-0378331005", "ÜS0378331005"])
def test_country_prefix_must_be_two_letters(isin):
    assert isin_problem(isin).startswith("ISIN must start with two upper-case letters")


def test_national_part_must_be_alphanumeric():
    assert isin_problem("US03783-1005").startswith("ISIN characters 3 to 11")


def test_last_character_must_be_a_digit():
    assert isin_problem("AU0000XVGZAA") == "ISIN must end with a check digit, not 'A'"


def test_a_swap_of_adjacent_digits_is_caught():
    assert isin_problem("US0378313005") is not None


@pytest.mark.parametrize("isin", REAL_ISINS)
def test_make_isin_gives_back_the_published_check_digit(isin):
    assert make_isin(isin[:11]) == isin


def test_make_isin_output_is_accepted():
    assert isin_problem(make_isin("XS000000001")) is None


def test_make_isin_refuses_a_malformed_prefix():
    with pytest.raises(AssertionError):
        make_isin("us000000001")


@pytest.mark.parametrize(
    "code, exponent",
    [
        ("EUR", 2),
        ("USD", 2),
        ("CHF", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("CLF", 4),
        ("UYW", 4),
    ],
)
def test_currency_exponents(code, exponent):
    assert CURRENCIES[code] == exponent
    assert currency_problem(code) is None


@pytest.mark.parametrize("code", ["EUX", "eur", "", "EURO", "XAU", "XXX", "HRK"])
def test_unknown_currency_is_refused(code):
    assert currency_problem(code) == f"{code!r} is not an ISO 4217 currency code"


def test_every_code_is_three_upper_case_letters_with_a_known_exponent():
    for code, exponent in CURRENCIES.items():
        assert len(code) == 3 and code.isascii() and code.isalpha() and code.isupper(), code
        assert exponent in {0, 2, 3, 4}, code


def test_the_list_is_complete():
    assert len(CURRENCIES) >= 150


def test_currencies_are_read_only():
    with pytest.raises(TypeError):
        CURRENCIES["EUX"] = 2
