"""Linked settlements through the matching desk, in one process on the memory bus with a
mock clock: back-to-back trades a bank links (sese.023 Lnkgs WITH) settle together,
netted, where neither would alone; a gridlock of trades nobody can fund one by one is
found by the queue's liquidity saving and settled as one linked settlement; a set of
linked trades across three ledgers settles whole or not at all with a ledger killed
mid-way; and the ledgers refuse a linked instruction settled without its links."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from engine.coordinator.metrics import CoordinatorMetrics
from engine.world.local import BOND, PLACES
from protocols.authority import terms_of
from protocols.bus.clock import ServiceClock
from protocols.canonical import decode
from protocols.iso20022 import reasons
from protocols.iso20022.model import PACS_009, SESE_023, OneSided
from protocols.matching import DAY_MS
from protocols.messages import Issue, SettlementInstruction
from protocols.settlement import Phase, utc_date
from tests.test_matching import TIMING, Desk, move, start
from tests.test_metrics import of, value

PLACES_3 = {**PLACES, "USD": "cbdc-multi"}


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def trade(
    today: str, seller: tuple[str, str, str], buyer: tuple[str, str, str], units: int, price: int, reference: str
) -> tuple[OneSided, OneSided]:
    """`seller` (party, securities account, cash account) delivers `units` of the bond to
    `buyer` against `price` EUR cents; each side's reference is `reference` and its party."""
    (s, s_sec, s_eur), (b, b_sec, b_eur) = seller, buyer
    deliver = OneSided(
        SESE_023, f"{reference}-{s}", "dvp", "deliver", s, b, today, today, BOND, units, s_sec, "EUR", price, s_eur
    )
    receive = OneSided(
        SESE_023, f"{reference}-{b}", "dvp", "receive", b, s, today, today, "EUR", price, b_eur, BOND, units, b_sec
    )
    return deliver, receive


A = ("bank-a", "a-sec", "a-eur")
B = ("bank-b", "b-sec", "b-eur")
T = ("treasury", "treasury", "t-eur")


async def three_banks(desk: Desk) -> None:
    """The treasury banks too: a EUR account, and the bonds it holds stay its own."""
    local = desk.local
    await local.open_accounts("cbdc-eur", "ecb", {"t-eur": "treasury", "reserve": "ecb"})


async def back_to_back(desk: Desk) -> tuple[OneSided, OneSided, OneSided, OneSided]:
    """bank-b, holding no cash, buys 100 bonds from bank-a for 990.00 and sells them to
    the treasury for 1,000.00, its purchase linked WITH its sale: the four sides."""
    local = desk.local
    await three_banks(desk)
    await move(local, "cbdc-eur", "bank-b", "b-eur", "t-eur", "EUR", 5_000_00)
    await move(local, "cbdc-eur", "bank-b", "b-eur", "reserve", "EUR", leave=0)
    today = utc_date(desk.now_ms())
    a_sells, b_buys = trade(today, A, B, 100, 990_00, "BUY")
    b_sells, t_buys = trade(today, B, T, 100, 1_000_00, "SELL")
    return a_sells, attrs.evolve(b_buys, settle_with=(b_sells.reference,)), b_sells, t_buys


async def statuses(desk: Desk, party: str) -> list[str]:
    return [item["status"] for item in await desk.advices(party)]


async def settled_twice_over(desk: Desk, party: str) -> None:
    """Until both of `party`'s instructions are confirmed."""
    with trio.fail_after(120):
        while (await statuses(desk, party)).count("settled") < 2:
            await trio.sleep(0.5)


async def test_back_to_back_trades_a_bank_links_settle_together_netted_where_neither_would_alone(
    tmp_path, autojump_clock
):
    """bank-b buys 100 bonds from bank-a for 990.00 and sells them on to the treasury for
    1,000.00, holding neither bonds nor cash: it links its two instructions (WITH). Each
    pair matches and waits (LINK) until the other is matched; then both settle as one
    linked settlement, netted: bonds from bank-a to the treasury, cash from the treasury
    to bank-a (990.00) and to bank-b (10.00). bank-b never held anything."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        local = desk.local
        a_sells, b_buys, b_sells, t_buys = await back_to_back(desk)
        b_sells = attrs.evolve(b_sells, settle_with=(b_buys.reference,))  # linked both ways too
        before = await desk.balances()
        t_before = await local.balances("cbdc-eur", "t-eur")
        tsec_before = await local.balances("csd", "treasury")

        await desk.send(desk.instruction(a_sells))
        (first,) = (await desk.send(desk.instruction(b_buys))).items
        pending = (await desk.until("bank-b", "pending"))[-1]
        assert reasons(pending["document"])[0][0] == "LINK", pending["document"]
        await trio.sleep(10)  # its linked instruction is not matched: nothing moves
        assert await desk.balances() == before
        await desk.send(desk.instruction(b_sells))
        await desk.send(desk.instruction(t_buys))
        for party in ("bank-a", "bank-b", "treasury"):
            await desk.until(party, "settled")
        assert (await statuses(desk, "bank-b")).count("settled") == 2

        after = await desk.balances()
        assert after[("csd", "b-sec")].get(BOND, 0) == before[("csd", "b-sec")].get(BOND, 0) == 0
        assert after[("csd", "a-sec")][BOND] == before[("csd", "a-sec")][BOND] - 100
        assert (await local.balances("csd", "treasury"))[BOND] == tsec_before[BOND] + 100
        assert after[("cbdc-eur", "a-eur")]["EUR"] == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 990_00
        assert after[("cbdc-eur", "b-eur")]["EUR"] == 10_00
        assert (await local.balances("cbdc-eur", "t-eur"))["EUR"] == t_before["EUR"] - 1_000_00

        journal = desk.local.coordinator.journal
        (linked,) = [r for r in journal.all() if r.settlement_id.startswith("l-")]
        terms = terms_of(decode(linked.instruction), None)
        assert (
            linked.phase is Phase.SETTLED
            and len(terms.pairs) == 2
            and first["settlement_id"] in {pair.id for pair in terms.pairs}
        )
        assert [(leg.ledger, leg.from_account, leg.to_account, leg.amount) for leg in terms.legs] == [
            ("cbdc-eur", "t-eur", "a-eur", 990_00),
            ("cbdc-eur", "t-eur", "b-eur", 10_00),
            ("csd", "a-sec", "treasury", 100),
        ]
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


async def test_a_gridlock_nobody_can_fund_one_by_one_is_found_by_liquidity_saving_and_settles_netted(
    tmp_path, autojump_clock
):
    """Three trades in a ring: bank-a sells 100 bonds to bank-b for 1,000.00, bank-b 50 to
    the treasury for 1,200.00, the treasury 30 to bank-a for 1,100.00. bank-b holds no
    cash, bank-a and the treasury 99.99 each: each trade waits for cash (MONY). Netted,
    bank-a and the treasury each pay 100.00: still a cent short, nothing is released.
    A cent more for bank-a and the treasury, and the queue's liquidity saving releases
    all three as one linked settlement: 3,300.00 moved for 200.00 of liquidity."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator, _ = await desk.start_coordinator()
        metrics = CoordinatorMetrics(coordinator)
        local = desk.local
        await three_banks(desk)
        await move(local, "cbdc-eur", "bank-b", "b-eur", "t-eur", "EUR", 99_99)
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", 99_99)
        await move(local, "cbdc-eur", "bank-b", "b-eur", "reserve", "EUR", leave=0)
        today = utc_date(desk.now_ms())
        trades = [
            trade(today, A, B, 100, 1_000_00, "R1"),
            trade(today, B, T, 50, 1_200_00, "R2"),
            trade(today, T, A, 30, 1_100_00, "R3"),
        ]
        for deliver, receive in trades:
            await desk.send(desk.instruction(deliver))
            await desk.send(desk.instruction(receive))
        for party in ("bank-a", "bank-b", "treasury"):
            await desk.until(party, "pending")
        before = await desk.balances()
        t_sec = (await local.balances("csd", "treasury"))[BOND]
        await trio.sleep(30)  # looked at again and again: a cent short, nothing moves
        assert await desk.balances() == before
        assert not [r for r in coordinator.journal.all() if r.settlement_id.startswith("l-")]

        await local.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="a-eur", amount=1)
        await local.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="t-eur", amount=1)
        for party in ("bank-a", "bank-b", "treasury"):
            await settled_twice_over(desk, party)

        after = await desk.balances()
        assert after[("cbdc-eur", "a-eur")]["EUR"] == 0
        assert after[("cbdc-eur", "b-eur")]["EUR"] == 200_00
        assert (await local.balances("cbdc-eur", "t-eur"))["EUR"] == 0
        assert after[("csd", "a-sec")][BOND] == before[("csd", "a-sec")][BOND] - 70
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 50
        assert (await local.balances("csd", "treasury"))[BOND] == t_sec + 20
        (linked,) = [r for r in coordinator.journal.all() if r.settlement_id.startswith("l-")]
        assert linked.phase is Phase.SETTLED and len(terms_of(decode(linked.instruction), None).pairs) == 3
        (found,) = coordinator._desks[SettlementInstruction].offsets
        assert found.count == 3 and len(found.sets) == 1
        assert found.value()["EUR"] == 3_300_00 and found.saved()["EUR"] == 3_300_00 - 200_00
        assert found.saved()[BOND] == 180 - 70
        samples = of(metrics.registry)
        assert value(samples, "lockstep_coordinator_offset_settlements_total") == 3
        assert value(samples, "lockstep_coordinator_offset_liquidity_saved_total", asset="EUR") == 3_100_00
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


def fx(today: str, reference: str) -> tuple[OneSided, OneSided]:
    """bank-a pays 1,000.00 EUR for bank-b's 1,100.00 USD, each side's pacs.009."""
    a = OneSided(
        PACS_009,
        f"{reference}-A",
        "pvp",
        "pay",
        "bank-a",
        "bank-b",
        None,
        today,
        "EUR",
        1_000_00,
        "a-eur",
        "USD",
        1_100_00,
        "a-usd",
    )
    b = OneSided(
        PACS_009,
        f"{reference}-B",
        "pvp",
        "pay",
        "bank-b",
        "bank-a",
        None,
        today,
        "USD",
        1_100_00,
        "b-usd",
        "EUR",
        1_000_00,
        "b-eur",
    )
    return a, b


@pytest.mark.parametrize("killed_at", ["locking", "claiming"])
async def test_linked_trades_across_three_ledgers_settle_whole_with_a_ledger_killed_mid_way(
    tmp_path, autojump_clock, killed_at
):
    """bank-b buys 100 bonds for 990.00 EUR, holding no euros, and links the purchase to
    its sale of 1,100.00 USD for 1,000.00 EUR: three ledgers, netted to three legs (the
    bonds, 10.00 EUR to bank-b, the dollars). The USD ledger is killed as the linked
    settlement locks (or as it claims) and started again 20 s later: all of it settles,
    once (a try that timed out having moved nothing is recycled), or nothing had moved
    until then; never one ledger's leg without the others'."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator, _ = await desk.start_coordinator()
        local = desk.local
        await move(local, "cbdc-multi", "bank-a", "a-usd", "b-usd", "USD", 2_000_00)
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", 1_500_00)
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", leave=0)
        today = utc_date(desk.now_ms())
        a_sells, b_buys = trade(today, A, B, 100, 990_00, "BONDS")
        a_pays, b_pays = fx(today, "FX")
        b_buys = attrs.evolve(b_buys, settle_with=(b_pays.reference,))
        before = await desk.balances()
        killed, watching = trio.Event(), {}

        def kill(record):
            if record.settlement_id.startswith("l-") and record.phase.value == killed_at and not killed.is_set():
                watching["id"] = record.settlement_id
                local.stop_ledger("cbdc-multi")
                killed.set()

        coordinator.on_phase = kill
        for one in (a_sells, b_buys, a_pays, b_pays):
            await desk.send(desk.instruction(one))
        await killed.wait()
        await trio.sleep(20)
        await local.start_ledger("cbdc-multi")
        for party in ("bank-a", "bank-b"):
            await settled_twice_over(desk, party)

        after = await desk.balances()
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert after[("cbdc-eur", "b-eur")]["EUR"] == 10_00
        assert after[("cbdc-multi", "b-usd")]["USD"] == before[("cbdc-multi", "b-usd")]["USD"] - 1_100_00
        assert after[("cbdc-multi", "a-usd")]["USD"] == before[("cbdc-multi", "a-usd")]["USD"] + 1_100_00
        linked = [r for r in coordinator.journal.all() if r.settlement_id.startswith("l-")]
        assert [r.phase for r in linked].count(Phase.SETTLED) == 1
        assert {len(terms_of(decode(r.instruction), None).legs) for r in linked} == {3}
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        assert report.settlements.get("settled") == 1 and "one-legged" not in report.settlements
        nursery.cancel_scope.cancel()


async def test_a_pair_whose_linked_instruction_never_matches_fails_at_its_cut_off_with_link(tmp_path, autojump_clock):
    """bank-b links its purchase to a sale the treasury never instructs: the purchase is
    matched, pending LINK, never settles alone though bank-b holds the cash, and fails at
    the day's cut-off naming the instruction it waited for. Nothing moves."""
    async with trio.open_nursery() as nursery:
        skew_ms = DAY_MS - ServiceClock().now_ms() % DAY_MS - 120_000  # the day ends in two minutes
        desk = await start(nursery, tmp_path, skew_ms)
        await desk.start_coordinator(skew_ms=skew_ms)
        await three_banks(desk)
        today = utc_date(desk.local.coordinator.clock.now_ms())
        a_sells, b_buys = trade(today, A, B, 100, 990_00, "BUY")
        b_sells, _ = trade(today, B, T, 100, 1_000_00, "SELL")
        b_buys = attrs.evolve(b_buys, settle_with=(b_sells.reference,))
        await desk.send(desk.instruction(a_sells))
        await desk.send(desk.instruction(b_buys))
        await desk.send(desk.instruction(attrs.evolve(b_sells, settle_with=(b_buys.reference,))))
        before = await desk.balances()
        await trio.sleep(120)  # the cut-off passes
        for party in ("bank-a", "bank-b"):
            failed = [i for i in await desk.until(party, "failed") if i["status"] == "failed"]
            codes, narrative = reasons(failed[0]["document"])
            assert codes == ("LINK", "TRAD") and "not settled by its cut-off" in narrative, narrative
            assert "linked with bank-b's SELL-bank-b" in narrative, narrative
        assert await desk.balances() == before
        assert await desk.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_a_coordinator_killed_as_a_linked_settlement_locks_drives_the_same_one_when_back(
    tmp_path, autojump_clock
):
    """The back-to-back pair of the first test, the coordinator killed as their linked
    settlement places its locks and started again: the desk takes up the set it recorded
    (the same id, the same pairs) and it settles once; no pair is tried alone."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator, scope = await desk.start_coordinator()
        local = desk.local
        a_sells, b_buys, b_sells, t_buys = await back_to_back(desk)
        killed, seen = trio.Event(), []

        def kill(record):
            if record.settlement_id.startswith("l-") and record.phase is Phase.LOCKING and not killed.is_set():
                seen.append(record.settlement_id)
                scope.cancel()
                killed.set()

        coordinator.on_phase = kill
        for one in (a_sells, b_buys, b_sells, t_buys):
            await desk.send(desk.instruction(one))
        await killed.wait()
        await trio.sleep(TIMING.lock_wait_ms / 2000)
        coordinator, _ = await desk.start_coordinator()
        for party in ("bank-a", "treasury"):
            await desk.until(party, "settled")
        await settled_twice_over(desk, "bank-b")
        records = coordinator.journal.all()
        assert [r.settlement_id for r in records if r.settlement_id.startswith("l-")] == seen
        assert coordinator.journal.get(seen[0]).phase is Phase.SETTLED
        assert not [r for r in records if r.settlement_id.startswith("m-")]  # no pair tried alone
        assert (await local.balances("cbdc-eur", "b-eur"))["EUR"] == 10_00
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


def test_a_watchtower_reads_every_leg_of_a_linked_settlement_from_its_lock_ids():
    from engine.watchtower import _leg_of

    assert _leg_of("l-abc:0") == ("l-abc", 0) and _leg_of("l-abc:2") == ("l-abc", 2) and _leg_of("l-abc:15")[1] == 15
    assert _leg_of("l-abc:settle")[1] is None and _leg_of("x:c123")[1] is None
