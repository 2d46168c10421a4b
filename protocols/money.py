"""Amounts as a person reads them, in one form everywhere: the asset's code, then the
amount in major units with grouping (`EUR 9,997,530,000.00`, `JPY 1,000`); securities in
nominal units, named as such (`DE000A1B2C3D4 1,000 units`). The wire keeps integers in
minor units; this module is only for what people read (reports, refusal reasons, logs)."""

from __future__ import annotations

from .identifiers import CURRENCIES, isin_problem


def format_amount(asset: str, amount: int) -> str:
    """`amount` minor units (or nominal units) of `asset`, as a person reads it."""
    exponent = CURRENCIES.get(asset)
    if exponent is None:
        unit = "unit" if abs(amount) == 1 else "units"
        return f"{asset} {amount:,} {unit}" if isin_problem(asset) is None else f"{asset} {amount:,}"
    if exponent == 0:
        return f"{asset} {amount:,}"
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    return f"{asset} {sign}{major:,}.{minor:0{exponent}d}"


def parse_amount(asset: str, text: str) -> int:
    """An amount of a currency as a person writes it (`1000.00`, `1,000.5`) in minor
    units; ValueError says why not: a currency not known, more decimals than it has."""
    exponent = CURRENCIES.get(asset)
    if exponent is None:
        raise ValueError(f"{asset!r} is not an ISO 4217 currency")
    cleaned = text.replace(",", "")
    major, _, minor = cleaned.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()) or len(minor) > exponent:
        raise ValueError(f"{text!r} is not an amount of {asset} (at most {exponent} decimals)")
    amount = int(major) * 10**exponent + int(minor.ljust(exponent, "0") or 0)
    if amount <= 0:
        raise ValueError(f"{text!r} is not a positive amount")
    return amount


def format_balance(asset: str, available: int, locked: int) -> str:
    """An account's balance of `asset`: what is available and what locks hold."""
    return f"{format_amount(asset, available)} available, {format_amount(asset, locked)} locked"
