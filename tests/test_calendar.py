"""Settlement days and cut-offs (engine/desks/calendar.py): which days each ledger
settles on, when its day's tries must have begun, and what the settlement queue does
with a pair still waiting at the cut-off: fail it, or recycle it to its next settlement
day, never to settle before that day begins. The desk runs in one process on the memory
bus with a mock clock, every clock in the world set to just before midnight UTC."""

from __future__ import annotations

import datetime

import pytest
import trio

from engine.config import CoordinatorConfig
from engine.desks.calendar import FAIL, RECYCLE, Calendar, Calendars
from engine.desks.matching import MatchingDesk
from engine.world.local import BOND, PLACES
from protocols.bus.clock import ServiceClock
from protocols.failures import ExpectedFailure
from protocols.matching import DAY_MS, attempt_id, day_window
from protocols.settlement import Phase, utc_date
from tests.test_matching import TIMING, dvp, move, start

FRIDAY, SATURDAY, MONDAY, TUESDAY = "2026-12-04", "2026-12-05", "2026-12-07", "2026-12-08"
CSD = Calendar(weekends=False, holidays=frozenset({MONDAY}), cutoff_ms=16 * 3_600_000)


def test_a_pair_settles_on_days_every_ledger_it_pays_on_settles_and_before_the_earliest_cut_off():
    calendars = Calendars({"csd": CSD, "cbdc-eur": Calendar(cutoff_ms=17 * 3_600_000)})
    assert calendars.day_of(["csd", "cbdc-eur"], SATURDAY) == TUESDAY  # the weekend, then a holiday
    assert calendars.day_of(["cbdc-eur"], SATURDAY) == SATURDAY  # 24/7
    assert calendars.day_of(["csd"], FRIDAY) == FRIDAY
    assert calendars.cutoff_ms(["csd", "cbdc-eur"], FRIDAY) == day_window(FRIDAY)[0] + 16 * 3_600_000 - 1
    assert calendars.cutoff_ms(["cbdc-multi"], FRIDAY) == day_window(FRIDAY)[1]  # no calendar: the day's end
    assert calendars.next_day(["csd"], FRIDAY, FRIDAY) is None  # the desk fails by default
    recycling = Calendars({"csd": CSD}, RECYCLE, recycle_days=1)
    assert recycling.next_day(["csd"], FRIDAY, FRIDAY) == TUESDAY
    assert recycling.next_day(["csd"], FRIDAY, TUESDAY) is None  # its one day spent
    assert recycling.days_between(("csd",), FRIDAY, TUESDAY) == 1


@pytest.mark.parametrize(
    "setting, reason",
    [
        ("[settlement_queue]\npast_cutoff = 'later'", "settlement_queue.past_cutoff: 'fail' or 'recycle'"),
        ("[settlement_queue]\nrecycle_days = 41", "settlement_queue.recycle_days: a whole number from 0 to 40"),
        ("[calendars.csd]\ncutoff = '16h'", "calendars.csd.cutoff: a time of day HH:MM, UTC, up to 24:00"),
        ("[calendars.csd]\nholidays = ['2026-13-01']", "calendars.csd.holidays: a list of dates YYYY-MM-DD"),
        ("[calendars.csd]\nopen = true", "calendars.csd: a table of cutoff, weekends and holidays"),
    ],
)
def test_a_calendar_setting_that_cannot_serve_is_named(tmp_path, setting, reason):
    config = tmp_path / "coordinator.toml"
    base = 'coordinator_id = "c"\nkey_file = "k.pem"\nregistry = "r.toml"\njournal = "c.db"\n'
    config.write_text(base + setting + "\n")
    with pytest.raises(ExpectedFailure) as failure:
        CoordinatorConfig.load(config)
    assert failure.value.reason == reason
    config.write_text(base + "[settlement_queue]\npast_cutoff = 'recycle'\n[calendars.csd]\ncutoff = '16:30'\n")
    loaded = CoordinatorConfig.load(config).calendars
    assert loaded == Calendars({"csd": Calendar(cutoff_ms=(16 * 60 + 30) * 60_000)}, RECYCLE, 20)


def before_midnight(ms: int) -> int:
    """The skew that puts every clock `ms` before the end of today, UTC."""
    now_ms = ServiceClock().now_ms()
    return DAY_MS - now_ms % DAY_MS - ms


async def test_a_pair_short_at_the_cut_off_is_recycled_to_the_next_day_and_settles_only_then(tmp_path, autojump_clock):
    skew_ms = before_midnight(180_000)  # 23:57
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path, skew_ms)
        cutoff = Calendar(cutoff_ms=DAY_MS - 120_000)  # 23:58 on csd
        calendars = Calendars({"csd": cutoff}, RECYCLE)
        coordinator, _ = await desk.local.start_coordinator(
            TIMING, desks=(lambda c: MatchingDesk(c, PLACES, calendars),), skew_ms=skew_ms
        )
        local = desk.local
        today = utc_date(local.clock.now_ms())
        tomorrow = (datetime.date.fromisoformat(today) + datetime.timedelta(days=1)).isoformat()
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", leave=0)
        seller, buyer = dvp(today)
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        await desk.until("bank-b", "pending")
        await trio.sleep(90)  # 23:58:30: past csd's cut-off, recycled
        await move(local, "cbdc-eur", "bank-a", "a-eur", "b-eur", "EUR", 99_000)
        await trio.sleep(60)  # 23:59:30: provided, but its day is tomorrow
        assert (await local.balances("csd", "b-sec")).get(BOND, 0) == 0
        assert [i["status"] for i in await desk.advices("bank-b")] == ["matched", "pending"]
        settled = (await desk.until("bank-b", "settled"))[-1]
        pair_id = matched["settlement_id"]
        record = coordinator.journal.get(attempt_id(pair_id, 1))
        assert record.phase is Phase.SETTLED and utc_date(record.steps[-1][1]) == tomorrow
        assert settled["settlement_id"] == pair_id
        assert (await local.balances("csd", "b-sec"))[BOND] == 100
        nursery.cancel_scope.cancel()


async def test_a_pair_whose_date_is_a_holiday_of_its_securities_ledger_settles_the_next_settlement_day(
    tmp_path, autojump_clock
):
    skew_ms = before_midnight(60_000)
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path, skew_ms)
        local = desk.local
        today = utc_date(local.clock.now_ms())
        calendars = Calendars({"csd": Calendar(holidays=frozenset({today}))}, FAIL)
        coordinator, _ = await local.start_coordinator(
            TIMING, desks=(lambda c: MatchingDesk(c, PLACES, calendars),), skew_ms=skew_ms
        )
        seller, buyer = dvp(today)
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        await trio.sleep(30)
        assert (await local.balances("csd", "b-sec")).get(BOND, 0) == 0  # funded, but csd is closed today
        await desk.until("bank-b", "settled")
        record = coordinator.journal.get(matched["settlement_id"])
        assert record.phase is Phase.SETTLED and utc_date(record.steps[-1][1]) > today
        nursery.cancel_scope.cancel()
