"""Checks for the identifiers that name what a ledger holds (ISINs for securities, ISO
4217 codes for currencies) and who takes part (BICs and LEIs). An asset is refused at the
boundary if its name is not a real identifier, and a currency's exponent fixes how many
minor units make one unit."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

IDENT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # a Lockstep id: party, account, instruction
ISIN_CHARS = 12

_COUNTRY = re.compile(r"[A-Z]{2}")
_NATIONAL = re.compile(r"[A-Z0-9]{9}")
_PREFIX = re.compile(r"[A-Z]{2}[A-Z0-9]{9}")


@functools.lru_cache(maxsize=65536)  # the same few ISINs arrive in every message
def isin_problem(value: str) -> str | None:
    """None for a valid ISO 6166 ISIN, otherwise why it is not one, for the refusal."""
    if len(value) != ISIN_CHARS:
        return f"ISIN must be {ISIN_CHARS} characters, not {len(value)}"
    if not _COUNTRY.fullmatch(value[:2]):
        return f"ISIN must start with two upper-case letters, not {value[:2]!r}"
    if not _NATIONAL.fullmatch(value[2:11]):
        return f"ISIN characters 3 to 11 must be digits or upper-case letters, not {value[2:11]!r}"
    if value[11] not in "0123456789":
        return f"ISIN must end with a check digit, not {value[11]!r}"
    expected = _check_digit(value[:11])
    if int(value[11]) != expected:
        return f"ISIN check digit is {value[11]}, expected {expected}"
    return None


def make_isin(prefix11: str) -> str:
    """The ISIN with its check digit, so tests and demos can name securities that pass."""
    assert _PREFIX.fullmatch(prefix11), f"not an ISIN without its check digit: {prefix11!r}"
    return f"{prefix11}{_check_digit(prefix11)}"


def _check_digit(prefix11: str) -> int:
    """Luhn over the digit string, letters read as A=10 to Z=35; the digit next to the
    check digit is doubled."""
    digits = "".join(str(int(char, 36)) for char in prefix11)
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return (10 - total % 10) % 10


_BIC = re.compile(r"[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?")
_LEI = re.compile(r"[A-Z0-9]{18}[0-9]{2}")


def bic_problem(value: str) -> str | None:
    """None for an ISO 9362 BIC (8 or 11 characters), otherwise why it is not one."""
    if not _BIC.fullmatch(value):
        return f"{value!r} is not a BIC: 4 letters or digits, a 2-letter country, 2 for the location, 3 optional"
    return None


def bic11(value: str) -> str:
    """A BIC in its 11-character form: an 8-character BIC names the main office, XXX."""
    return value if len(value) == 11 else value + "XXX"


def lei_problem(value: str) -> str | None:
    """None for an ISO 17442 LEI (20 characters, check digits by ISO 7064 mod 97-10)."""
    if not _LEI.fullmatch(value):
        return f"{value!r} is not an LEI: 18 letters or digits and 2 check digits"
    if int("".join(str(int(char, 36)) for char in value)) % 97 != 1:
        return f"{value!r} has wrong LEI check digits"
    return None


# ISO 4217 List One as published 2026-01-01: every code with a minor unit, by exponent.
# Codes whose minor unit is "N.A." (gold XAU, silver XAG, XPD, XPT, XBA-XBD, XDR, XSU,
# XUA, XTS and the no-currency code) are left out: nothing here can say how to count them.
_CODES_BY_EXPONENT = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    2: """AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP
          BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
          EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES
          KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
          MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD
          RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP
          TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XAD XCD XCG YER ZAR ZMW ZWG""",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}

CURRENCIES: Mapping[str, int] = MappingProxyType(
    {code: exponent for exponent, codes in _CODES_BY_EXPONENT.items() for code in codes.split()}
)
assert len(CURRENCIES) == sum(len(codes.split()) for codes in _CODES_BY_EXPONENT.values())


def currency_problem(code: str) -> str | None:
    """None for an ISO 4217 code this module knows the exponent of, otherwise why not."""
    if code not in CURRENCIES:
        return f"{code!r} is not an ISO 4217 currency code"
    return None
