"""Asset-servicing arithmetic, pure: an instrument's coupon dates, the accrual fraction
of a period under its day count, and what a holder is due on a coupon or redemption
date. The paying agent (engine/desks/servicing.py) computes each holder's due here; the cash
ledger cannot see holdings, so it pays what it is shown and this is the one place the
amount comes from.

Schedule: regular periods of 12/frequency months counted back from maturity, no stub
(the first period is taken as regular too). End-of-month rule: when maturity is the
last day of its month every coupon date is the last day of its month (2031-02-28 gives
2030-08-31); otherwise each falls on maturity's day of month, or its month's last day
when the month is shorter (the 31st gives 30 June). Dates are not moved for holidays.

Rounding: amounts are exact fractions, floored once per holder (units x face x rate x
fraction, never per unit); the remainder stays with the issuer. A zero-coupon bond
(frequency 0) has no coupon dates.

Also here: a corporate action's states, and each holder's due as the paying agent
journals it before paying anyone."""

from __future__ import annotations

import calendar
import datetime
import enum
from fractions import Fraction

import attrs

from .errors import Code, Rejected

BASIS_POINTS = 10_000
COUPON_PERIODS_MAX = 12 * 100  # the longest schedule walked back from maturity: 100 years monthly
DEADLINE_MS_DEFAULT = 12 * 3_600_000  # a mandate's payments, unless it says otherwise: within the date's first 12 hours


@attrs.frozen
class Period:
    """One coupon period, from the previous coupon date (exclusive) to its payment date."""

    start: datetime.date
    end: datetime.date


def _months_before(maturity: datetime.date, months: int) -> datetime.date:
    year, month = divmod(maturity.year * 12 + maturity.month - 1 - months, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    end_of_month = maturity.day == calendar.monthrange(maturity.year, maturity.month)[1]
    return datetime.date(year, month, last if end_of_month else min(maturity.day, last))


def _schedule(reference: dict):
    """Coupon dates from maturity backwards, at most COUPON_PERIODS_MAX of them."""
    frequency = reference["coupon_frequency"]
    if frequency == 0:
        return
    maturity = datetime.date.fromisoformat(reference["maturity_date"])
    for n in range(COUPON_PERIODS_MAX):
        yield _months_before(maturity, n * 12 // frequency)


def coupon_dates(reference: dict, after: str, until: str) -> list[str]:
    """The instrument's coupon dates in (after, until], earliest first; maturity is the last."""
    first, last = datetime.date.fromisoformat(after), datetime.date.fromisoformat(until)
    found = []
    for day in _schedule(reference):
        if day <= first:
            break
        if day <= last:
            found.append(day.isoformat())
    return found[::-1]


def coupon_period(reference: dict, payment_date: str) -> Period:
    """The period a coupon paid on `payment_date` covers; refused unless the date is one
    of the instrument's coupon dates."""
    if reference["coupon_frequency"] == 0:
        raise Rejected(Code.INVALID_FIELD, "kind", "a zero-coupon instrument pays no coupon")
    months = 12 // reference["coupon_frequency"]
    day = datetime.date.fromisoformat(payment_date)
    later: datetime.date | None = None
    for earlier in _schedule(reference):
        if later is not None and later == day:
            return Period(earlier, later)
        if earlier < day:
            break
        later = earlier
    raise Rejected(
        Code.INVALID_FIELD,
        "payment_date",
        f"{payment_date} is not a coupon date (every {months} months back from {reference['maturity_date']})",
    )


def accrual_fraction(period: Period, day_count: str, frequency: int) -> Fraction:
    """The fraction of a year's coupon a period earns.

    30/360 is the bond basis (ISDA 2006 4.16(f)): a start on the 31st counts as the
    30th, and an end on the 31st as the 30th when the start is on the 30th or 31st.
    ACT/360 and ACT/365 (fixed) count actual days. ACT/ACT is ICMA's: days in the period
    over frequency times days in the period, so a regular period earns 1/frequency."""
    start, end = period.start, period.end
    assert start < end, f"a period ends after it starts: {start} to {end}"
    days = (end - start).days
    if day_count == "30/360":
        d1 = min(start.day, 30)
        d2 = 30 if end.day == 31 and d1 == 30 else end.day
        return Fraction(360 * (end.year - start.year) + 30 * (end.month - start.month) + d2 - d1, 360)
    if day_count == "ACT/360":
        return Fraction(days, 360)
    if day_count == "ACT/365":
        return Fraction(days, 365)
    if day_count == "ACT/ACT":
        return Fraction(days, frequency * days)
    raise AssertionError(f"no day count {day_count!r}: CreateInstrument allows only the four")


def coupon_minor(units: int, reference: dict, payment_date: str) -> int:
    """A holder's coupon on `payment_date`, in minor units of the instrument's currency:
    floor(units x face x rate x fraction), the remainder left with the issuer."""
    assert units > 0, f"a holder holds units: {units}"
    if reference["coupon_rate_bp"] == 0:
        raise Rejected(Code.INVALID_FIELD, "kind", "the instrument's coupon rate is zero")
    fraction = accrual_fraction(
        coupon_period(reference, payment_date), reference["day_count"], reference["coupon_frequency"]
    )
    exact = units * reference["face_value_minor"] * Fraction(reference["coupon_rate_bp"], BASIS_POINTS) * fraction
    return exact.numerator // exact.denominator


def redemption_minor(units: int, reference: dict) -> int:
    """What a holder's units repay at maturity: face value each, exactly."""
    assert units > 0, f"a holder holds units: {units}"
    return units * reference["face_value_minor"]


class ActionState(enum.Enum):
    ACCEPTED = "accepted"  # journaled; waits for the payment date
    ENTITLED = "entitled"  # every holder's due journaled from the holders of record; paying
    DONE = "done"  # every due paid, or reported unpaid with its reason
    FAILED = "failed"  # the holders of record could not be read before the deadline


ACTION_NEXT: dict[ActionState, frozenset[ActionState]] = {
    ActionState.ACCEPTED: frozenset({ActionState.ENTITLED, ActionState.FAILED}),
    ActionState.ENTITLED: frozenset({ActionState.DONE}),
    ActionState.DONE: frozenset(),
    ActionState.FAILED: frozenset(),
}


class DueState(enum.Enum):
    DUE = "due"  # journaled, to be paid (again after a restart: payment is idempotent)
    PAID = "paid"
    UNPAID = "unpaid"  # with the reason: no cash account, a refusal, a rollback...
    EXCLUDED = "excluded"  # the issuer's own holding


DUE_NEXT: dict[DueState, frozenset[DueState]] = {
    DueState.DUE: frozenset({DueState.PAID, DueState.UNPAID}),
    DueState.PAID: frozenset(),
    DueState.UNPAID: frozenset(),
    DueState.EXCLUDED: frozenset(),
}


def check_action(current: ActionState, following: ActionState) -> None:
    assert following in ACTION_NEXT[current], f"corporate action {current.name} -> {following.name} is not a transition"


def check_due(current: DueState, following: DueState) -> None:
    assert following in DUE_NEXT[current], f"entitlement {current.name} -> {following.name} is not a transition"


@attrs.frozen
class Due:
    """One holding's due under an action, as journaled before any payment."""

    holder_account: str
    holder: str
    cash_account: str  # "" when the holder has none in the currency
    units: int
    amount_minor: int
    state: DueState
    reason_code: str = ""
    reason: str = ""


def cash_account(accounts: list[dict], currency: str) -> str | None:
    """The account a holder is paid into, from its accounts on the cash ledger (as
    query_accounts lists them): one that has held the currency before any that has not,
    then the first by account id. None: the holder has no account there."""
    ranked = sorted(accounts, key=lambda a: (currency not in a["balances"], a["account"]))
    return ranked[0]["account"] if ranked else None


def dues(
    kind: str,
    reference: dict,
    payment_date: str,
    issuer: str,
    holders: list[tuple[str, str, int]],
    cash_accounts: dict[str, str | None],
) -> list[Due]:
    """Each holding's due: `holders` are (account, owner, units held: available plus
    locked) of record; `cash_accounts` maps each owner to its cash account or None."""
    found = []
    for account, owner, units in holders:
        if owner == issuer:
            found.append(Due(account, owner, "", units, 0, DueState.EXCLUDED, "", "the issuer's own holding"))
            continue
        amount = (
            coupon_minor(units, reference, payment_date) if kind == "coupon" else redemption_minor(units, reference)
        )
        cash = cash_accounts.get(owner)
        if cash is None:
            found.append(
                Due(
                    account,
                    owner,
                    "",
                    units,
                    amount,
                    DueState.UNPAID,
                    Code.UNKNOWN_ACCOUNT.value,
                    f"{owner} has no account on the cash ledger",
                )
            )
        elif amount == 0:
            found.append(
                Due(
                    account,
                    owner,
                    cash,
                    units,
                    0,
                    DueState.UNPAID,
                    Code.INVALID_FIELD.value,
                    f"{units} units earn less than one minor unit: rounded down to nothing",
                )
            )
        else:
            found.append(Due(account, owner, cash, units, amount, DueState.DUE))
    return found
