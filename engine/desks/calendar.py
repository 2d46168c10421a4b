"""Settlement days and cut-offs: when the matching desk settles a pair on each ledger.

A ledger's calendar says which UTC dates are its settlement days (every day, for a CBDC
open 24/7; else weekdays less its holidays) and the time of day, UTC, after which no try
of a pair begins there (its cut-off; the day's end unless configured). A pair settles on
a day that is a settlement day of every ledger it pays on, before the earliest of their
cut-offs that day. Past that cut-off, a pair still waiting in the queue is failed, or,
where the desk recycles, waits for the next such day, up to `recycle_days` of them
(docs/PROTOCOL.md, section 17).

Ledgers know nothing of this: each checks only that a try falls within its day (the
settlement date it carries). The cut-off is the desk's rule."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping

import attrs

from protocols.matching import DAY_MS, LATE_DAYS_MAX, day_window

FAIL, RECYCLE = "fail", "recycle"  # what becomes of a pair still queued at its cut-off


@attrs.frozen
class Calendar:
    """One ledger's settlement days and cut-off."""

    weekends: bool = True  # settles on Saturdays and Sundays too (24/7 with the default cut-off)
    holidays: frozenset[str] = frozenset()  # YYYY-MM-DD
    cutoff_ms: int = DAY_MS  # after midnight UTC; DAY_MS: the end of the day

    def settles_on(self, date: str) -> bool:
        day = datetime.date.fromisoformat(date)
        return (self.weekends or day.weekday() < 5) and date not in self.holidays


ALWAYS = Calendar()


@attrs.frozen
class Calendars:
    """Every ledger's calendar (ALWAYS where none is configured), and the desk's rule
    for a pair still queued at its cut-off."""

    ledgers: Mapping[str, Calendar] = attrs.field(factory=dict)
    past_cutoff: str = attrs.field(default=FAIL, validator=attrs.validators.in_((FAIL, RECYCLE)))
    recycle_days: int = 20  # settlement days after its first that a recycled pair may wait
    partial_min_units: int = 1  # the least part of a trade the queue settles where both sides allow parts
    offset_interval_ms: int = 1_000  # how often the queue looks for trades that fund one another; 0: never

    def day_of(self, ledgers: Iterable[str], date: str) -> str | None:
        """The first day from `date` on that every one of `ledgers` settles on; None
        if there is none within LATE_DAYS_MAX."""
        ledgers = tuple(ledgers)
        day = datetime.date.fromisoformat(date)
        for late in range(LATE_DAYS_MAX + 1):
            candidate = (day + datetime.timedelta(days=late)).isoformat()
            if all(self._of(ledger).settles_on(candidate) for ledger in ledgers):
                return candidate
        return None

    def cutoff_ms(self, ledgers: Iterable[str], date: str) -> int:
        """The last millisecond a try may begin on `date`: the earliest of its ledgers' cut-offs."""
        start_ms, last_ms = day_window(date)
        return min((start_ms + self._of(ledger).cutoff_ms - 1 for ledger in ledgers), default=last_ms)

    def next_day(self, ledgers: Iterable[str], intended: str, date: str) -> str | None:
        """Where the queue recycles a pair at the cut-off of `date`: the next day its
        ledgers all settle on, if the desk recycles and the pair has waited fewer than
        `recycle_days` such days since `intended`; else None, and it fails."""
        if self.past_cutoff == FAIL:
            return None
        ledgers = tuple(ledgers)
        following = self.day_of(ledgers, (datetime.date.fromisoformat(date) + datetime.timedelta(days=1)).isoformat())
        first = self.day_of(ledgers, intended)
        if following is None or first is None or self.days_between(ledgers, first, following) > self.recycle_days:
            return None
        return following

    def days_between(self, ledgers: tuple[str, ...], first: str, last: str) -> int:
        """Settlement days of every one of `ledgers` after `first`, up to and including `last`."""
        start, end = datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
        days = (start + datetime.timedelta(days=late) for late in range(1, (end - start).days + 1))
        return sum(all(self._of(ledger).settles_on(day.isoformat()) for ledger in ledgers) for day in days)

    def _of(self, ledger: str) -> Calendar:
        return self.ledgers.get(ledger, ALWAYS)
