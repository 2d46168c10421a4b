"""The matching desk in one process on the memory bus, with a mock clock: sese.023 and
pacs.009 instructions from each counterparty, matched, settled and confirmed (sese.025,
pacs.002); unmatched ones reported with their ISO reason and cancelled past their date;
refusals with the element path; a restart between matching and settling; the
ledgers refusing a pair that does not match, whoever signs the lock; and the supervisor
reading every party's advices of a settlement, which nobody else may."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
import trio
import trio.testing
from lxml import etree

from engine.audit.journals import audit
from engine.audit.observer import Observer
from engine.coordinator.metrics import CoordinatorMetrics
from engine.desks.calendar import Calendars
from engine.desks.matching import MatchingDesk
from engine.world.local import BOND, COORDINATOR, PLACES, Local, standard_world
from protocols.authority import terms_of
from protocols.bus import service_of_coordinator
from protocols.bus.clock import ServiceClock
from protocols.bus.memory import MemoryBus
from protocols.canonical import decode
from protocols.errors import Code, Rejected
from protocols.htlc import hashlock_of
from protocols.iso20022 import pacs009, reasons, sese023
from protocols.iso20022.model import PACS_009, SESE_023, OneSided
from protocols.matching import DAY_MS, attempt_id
from protocols.messages import (
    Advices,
    HoldInstruction,
    Lock,
    Matched,
    QueryAdvices,
    QuerySettlementAdvices,
    SettlementAdvices,
    SettlementInstruction,
    SettlementStatus,
    Transfer,
    to_body,
)
from protocols.settlement import Phase, Timing, utc_date
from protocols.signing import from_wire, sign
from tests.test_coordinator import World
from tests.test_metrics import of, value

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def dvp(
    today: str, *, units: int = 100, price: int = 99_000, seller_date: str | None = None
) -> tuple[OneSided, OneSided]:
    """bank-a sells `units` of the bond to bank-b for `price` EUR cents, each side as its back office states it."""
    seller = OneSided(
        SESE_023,
        "A-REF-1",
        "dvp",
        "deliver",
        "bank-a",
        "bank-b",
        today,
        seller_date or today,
        BOND,
        units,
        "a-sec",
        "EUR",
        99_000,
        "a-eur",
    )
    buyer = OneSided(
        SESE_023,
        "B-REF-1",
        "dvp",
        "receive",
        "bank-b",
        "bank-a",
        today,
        today,
        "EUR",
        price,
        "b-eur",
        BOND,
        100,
        "b-sec",
    )
    return seller, buyer


def pvp(today: str) -> tuple[OneSided, OneSided]:
    """bank-b pays 500.00 EUR for bank-a's 540.00 USD."""
    a = OneSided(
        PACS_009,
        "A-FX-1",
        "pvp",
        "pay",
        "bank-a",
        "bank-b",
        None,
        today,
        "USD",
        54_000,
        "a-usd",
        "EUR",
        50_000,
        "a-eur",
    )
    b = OneSided(
        PACS_009,
        "B-FX-1",
        "pvp",
        "pay",
        "bank-b",
        "bank-a",
        None,
        today,
        "EUR",
        50_000,
        "b-eur",
        "USD",
        54_000,
        "b-usd",
    )
    return a, b


class Desk:
    """A world with a coordinator and its matching desk; each party's back office."""

    def __init__(self, local: Local) -> None:
        self.local = local
        self.now_ms = local.clock.now_ms

    async def start_coordinator(self, skew_ms: int = 0):
        return await self.local.start_coordinator(TIMING, desks=(lambda c: MatchingDesk(c, PLACES),), skew_ms=skew_ms)

    def instruction(self, one: OneSided, instruction_id: str | None = None, document: bytes | None = None) -> bytes:
        if document is None:
            document = sese023.write(one) if one.format == SESE_023 else pacs009.write(one, now_ms=self.now_ms())
        msg = SettlementInstruction(
            instruction_id or one.reference, COORDINATOR, one.party, self.now_ms(), one.format, document.decode()
        )
        return sign(msg, (one.party, self.local.world.keys[one.party])).encode()

    async def send(self, raw: bytes):
        reply = await self.local.bus.request(service_of_coordinator(COORDINATOR), raw, timeout_s=30)
        return from_wire(decode(reply), allowed=(Advices, SettlementAdvices, SettlementStatus)).msg

    async def advices(self, party: str) -> list[dict]:
        query = sign(
            QueryAdvices(f"q-{self.now_ms()}", COORDINATOR, party, 0, 100), (party, self.local.world.keys[party])
        )
        return list((await self.send(query.encode())).items)

    async def until(self, party: str, status: str) -> list[dict]:
        with trio.fail_after(120):
            while True:
                found = await self.advices(party)
                if any(item["status"] == status for item in found):
                    return found
                await trio.sleep(0.2)

    async def balances(self) -> dict:
        return {
            (ledger, account): await self.local.balances(ledger, account)
            for ledger, account in (
                ("csd", "a-sec"),
                ("csd", "b-sec"),
                ("cbdc-eur", "a-eur"),
                ("cbdc-eur", "b-eur"),
                ("cbdc-multi", "a-usd"),
                ("cbdc-multi", "b-usd"),
            )
        }

    async def held_locks(self) -> list:
        return await World(self.local).held_locks()

    async def audit(self):
        from engine.audit.journals import read_over_bus

        journals = await read_over_bus(self.local.bus, self.local.world.registry, list(self.local.services))
        return audit(journals, grace_ms=60_000)


async def start(nursery, tmp_path, skew_ms: int = 0) -> Desk:
    """The world, every clock in it `skew_ms` off."""
    local = Local(standard_world(tmp_path), MemoryBus(), nursery, clock=ServiceClock(skew_ms))
    for ledger in ("csd", "cbdc-eur", "cbdc-multi", "unified"):
        await local.start_ledger(ledger, skew_ms=skew_ms)
    await local.fund_standard()
    return Desk(local)


async def move(
    local: Local, ledger: str, owner: str, from_account: str, to_account: str, asset: str, amount=0, *, leave=None
) -> None:
    """`owner` moves `amount` of `asset` between two accounts, or all of what
    `from_account` holds but `leave`."""
    if leave is not None:
        amount = (await local.balances(ledger, from_account)).get(asset, 0) - leave
    await local.instruct(
        Transfer, ledger, owner, from_account=from_account, to_account=to_account, asset=asset, amount=amount
    )


def element_text(document: str, name: str) -> list[str]:
    return [node.text for node in etree.fromstring(document.encode()).iter() if etree.QName(node).localname == name]


async def test_sese023_pair_is_matched_settled_and_confirmed_with_sese025(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        before = await desk.balances()

        first = await desk.send(desk.instruction(seller))
        assert [(i["status"], i["format"]) for i in first.items] == [("unmatched", "sese.024.001.12")]
        assert element_text(first.items[0]["document"], "AcctOwnrTxId") == ["A-REF-1"]
        assert "CMIS" in element_text(first.items[0]["document"], "Cd")

        second = await desk.send(desk.instruction(buyer))
        assert [i["status"] for i in second.items] == ["matched"]
        for party, reference in (("bank-a", "A-REF-1"), ("bank-b", "B-REF-1")):
            advices = await desk.until(party, "settled")
            confirmation = advices[-1]
            assert confirmation["format"] == "sese.025.001.11"
            assert element_text(confirmation["document"], "AcctOwnrTxId") == [reference]
            assert element_text(confirmation["document"], "ISIN") == [BOND]

        assert [i["status"] for i in await desk.advices("bank-a")] == ["unmatched", "matched", "settled"]
        assert [i["status"] for i in await desk.advices("bank-b")] == ["matched", "settled"]
        after = await desk.balances()
        assert after[("csd", "a-sec")][BOND] == before[("csd", "a-sec")][BOND] - 100
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert after[("cbdc-eur", "a-eur")].get("EUR", 0) == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 99_000
        assert after[("cbdc-eur", "b-eur")]["EUR"] == before[("cbdc-eur", "b-eur")]["EUR"] - 99_000
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


def free_of_payment(seller: OneSided, buyer: OneSided) -> tuple[OneSided, OneSided]:
    """The same delivery with no cash: a collateral move or a portfolio transfer."""
    return (
        attrs.evolve(seller, payment="FREE", takes_asset=None, takes_amount=0, takes_account=None),
        attrs.evolve(buyer, payment="FREE", gives_asset=None, gives_amount=0, gives_account=None),
    )


async def test_a_delivery_free_of_payment_settles_on_the_securities_ledger_alone(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = free_of_payment(*dvp(utc_date(desk.now_ms())))
        before = await desk.balances()
        await desk.send(desk.instruction(seller))
        against_payment = dvp(utc_date(desk.now_ms()))[1]  # a receipt against payment does not match it
        reply = await desk.send(desk.instruction(attrs.evolve(against_payment, reference="B-REF-0")))
        assert [i["status"] for i in reply.items] == ["unmatched"]
        assert "DMON payment: APMT against FREE" in element_text(reply.items[0]["document"], "AddtlRsnInf")
        await desk.send(desk.instruction(buyer))
        for party in ("bank-a", "bank-b"):
            confirmation = (await desk.until(party, "settled"))[-1]
            assert element_text(confirmation["document"], "Pmt") == ["FREE"]
            assert element_text(confirmation["document"], "SttldAmt") == []
        after = await desk.balances()
        assert after[("csd", "a-sec")][BOND] == before[("csd", "a-sec")][BOND] - 100
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert {k: v for k, v in after.items() if k[0] != "csd"} == {k: v for k, v in before.items() if k[0] != "csd"}
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


async def test_pacs009_pair_settles_a_pvp_confirmed_by_pacs002(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        a, b = pvp(utc_date(desk.now_ms()))
        before = await desk.balances()
        await desk.send(desk.instruction(a))
        await desk.send(desk.instruction(b))
        for party in ("bank-a", "bank-b"):
            settled = (await desk.until(party, "settled"))[-1]
            assert settled["format"] == "pacs.002.001.14"
            assert "ACSC" in element_text(settled["document"], "TxSts")
        after = await desk.balances()
        assert after[("cbdc-multi", "b-usd")].get("USD", 0) == before[("cbdc-multi", "b-usd")].get("USD", 0) + 54_000
        assert after[("cbdc-eur", "a-eur")].get("EUR", 0) == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 50_000
        nursery.cancel_scope.cancel()


def legs(a: OneSided, b: OneSided, shared: str = "FX-TRADE-9") -> tuple[OneSided, OneSided]:
    """The PvP as real senders write it: each its own payment alone, into the account the
    other holds, pairing by their shared EndToEndId."""
    return tuple(  # type: ignore[return-value]
        attrs.evolve(
            mine,
            side="leg",
            common_id=shared,
            pays_into=theirs.takes_account,
            takes_asset=None,
            takes_amount=0,
            takes_account=None,
        )
        for mine, theirs in ((a, b), (b, a))
    )


async def test_pvp_legs_sent_one_each_pair_by_their_shared_reference_and_settle(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        a, b = legs(*pvp(utc_date(desk.now_ms())))
        before = await desk.balances()
        other_trade = attrs.evolve(b, reference="B-FX-0", common_id="FX-TRADE-8")
        reply = await desk.send(desk.instruction(a))
        assert [i["status"] for i in reply.items] == ["unmatched"]
        reply = await desk.send(desk.instruction(other_trade))  # another trade's leg does not pair with it
        assert [i["status"] for i in reply.items] == ["unmatched"]
        document = reply.items[0]["document"]
        assert element_text(document, "TxSts") == ["PDNG"] and element_text(document, "Prtry") == ["DCMX"]
        assert "common_id: FX-TRADE-8 against FX-TRADE-9" in "".join(element_text(document, "AddtlInf"))
        await desk.send(desk.instruction(b))
        for party, reference in (("bank-a", "A-FX-1"), ("bank-b", "B-FX-1")):
            settled = (await desk.until(party, "settled"))[-1]
            assert element_text(settled["document"], "TxSts") == ["ACSC"]
            assert element_text(settled["document"], "OrgnlMsgId") == [reference]
            assert element_text(settled["document"], "OrgnlEndToEndId") == ["FX-TRADE-9"]
        after = await desk.balances()
        assert after[("cbdc-multi", "b-usd")].get("USD", 0) == before[("cbdc-multi", "b-usd")].get("USD", 0) + 54_000
        assert after[("cbdc-eur", "a-eur")].get("EUR", 0) == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 50_000
        assert after[("cbdc-multi", "a-usd")]["USD"] == before[("cbdc-multi", "a-usd")]["USD"] - 54_000
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


async def test_instructions_that_differ_stay_unmatched_with_the_iso_reason_then_are_cancelled(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        now_ms = desk.now_ms()
        to_midnight_ms = DAY_MS - now_ms % DAY_MS
        coordinator, _ = await desk.start_coordinator(skew_ms=to_midnight_ms - 5_000)  # its day ends in 5 s
        seller, buyer = dvp(utc_date(coordinator.clock.now_ms()), price=98_500)  # the buyer states another price
        before = await desk.balances()
        await desk.send(desk.instruction(seller))
        reply = await desk.send(desk.instruction(buyer))
        assert [i["status"] for i in reply.items] == ["unmatched"]
        assert "DMON" in element_text(reply.items[0]["document"], "Cd")
        assert any(
            ("gives EUR 985.00" in text and "takes EUR 990.00" in text)
            or ("gives EUR 990.00" in text and "takes EUR 985.00" in text)
            for text in element_text(reply.items[0]["document"], "AddtlRsnInf")
        )

        await trio.sleep(6)  # the settlement date passes
        for party in ("bank-a", "bank-b"):
            advices = await desk.until(party, "cancelled")
            assert "CANS" in element_text(advices[-1]["document"], "Cd")
        assert await desk.balances() == before
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "change, reasons",
    [
        (
            lambda d: d.replace(b"<TradDt><Dt><Dt>", b"<TradDt><Dt><Dt>20x"),
            [("OTHR", "document:/Document/SctiesSttlmTxInstr/TradDtls/TradDt/Dt/Dt: ")],
        ),
        (
            lambda d: d.replace(BOND.encode(), (BOND[:11] + str((int(BOND[11]) + 1) % 10)).encode()),
            [("DSEC", "document:/Document/SctiesSttlmTxInstr/FinInstrmId/ISIN: ")],
        ),
        (
            lambda d: d.replace(b"<Unit>100</Unit>", b"<Unit>100.5</Unit>").replace(b">APMT<", b">FREE<"),
            [
                ("DQUA", "document:/Document/SctiesSttlmTxInstr/QtyAndAcctDtls/SttlmQty/Qty/Unit: "),
                ("DMON", "document:/Document/SctiesSttlmTxInstr/SttlmAmt: a delivery free of payment"),
            ],
        ),
        (
            lambda d: (
                b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
                + d.split(b"?>", 1)[1].replace(b"A-REF-1", b"&lol2;")
            ),
            [("OTHR", "document: !DOCTYPE is not allowed")],
        ),
    ],
    ids=["bad-date", "bad-isin", "free-and-fractional", "entity-bomb"],
)
async def test_a_document_lockstep_cannot_settle_earns_a_rejected_advice_with_every_problem(
    tmp_path, autojump_clock, change, reasons
):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, _ = dvp(utc_date(desk.now_ms()))
        before = await desk.balances()
        instruction = desk.instruction(seller, document=change(sese023.write(seller)))
        reply = await desk.send(instruction)
        assert isinstance(reply, Advices) and [i["status"] for i in reply.items] == ["rejected"]
        document = reply.items[0]["document"]
        rejected = [
            (r.findtext("{*}Cd/{*}Cd"), r.findtext("{*}AddtlRsnInf"))
            for r in etree.fromstring(document.encode()).iter("{*}Rsn")
        ]
        assert len(rejected) == len(reasons), rejected
        for (code, text), (expected_code, prefix) in zip(rejected, reasons, strict=True):
            assert code == expected_code and text.startswith(prefix), (code, text)
        again = await desk.send(instruction)  # the same instruction: the same answer, nothing new kept
        assert again.items == reply.items and await desk.advices("bank-a") == list(reply.items)
        assert await desk.balances() == before
        nursery.cancel_scope.cancel()


async def test_a_coordinator_restarted_between_matching_and_settling_settles_once(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator, scope = await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        before = await desk.balances()
        killed = trio.Event()

        def kill_on_locking(record):
            if record.phase.value == "locking":
                scope.cancel()
                killed.set()

        coordinator.on_phase = kill_on_locking
        await desk.send(desk.instruction(seller))
        async with trio.open_nursery() as sending:  # the reply is lost with the coordinator
            sending.start_soon(desk.local.send_settlement, desk.instruction(buyer), 5)
            await killed.wait()
        await trio.sleep(TIMING.lock_wait_ms / 2000)  # back before the locks' wait is over
        await desk.start_coordinator()
        for party in ("bank-a", "bank-b"):
            statuses = [i["status"] for i in await desk.until(party, "settled")]
            assert statuses.count("settled") == 1 and statuses.count("matched") == 1
        after = await desk.balances()
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert after[("cbdc-eur", "b-eur")]["EUR"] == before[("cbdc-eur", "b-eur")]["EUR"] - 99_000
        nursery.cancel_scope.cancel()


async def test_ledgers_refuse_a_lock_whose_matched_pair_does_not_match(tmp_path, autojump_clock):
    """A coordinator pairing the seller's instruction with a buyer's at another price:
    the securities ledger matches the two again and refuses to lock the seller's bonds."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        today = utc_date(desk.now_ms())
        seller, buyer = dvp(today, price=1)
        auth = to_body(
            Matched(
                COORDINATOR, ("csd", "cbdc-eur"), (decode(desk.instruction(seller)), decode(desk.instruction(buyer)))
            )
        )
        with pytest.raises(Rejected):  # the price differs: our own matching refuses the pair
            terms_of(auth, desk.local.world.registry)
        now = desk.now_ms()
        lock = Lock(
            "m-forged:0",
            "csd",
            now,
            "a-sec",
            "b-sec",
            BOND,
            100,
            hashlock_of(b"s" * 32),
            now + 5_000,
            (COORDINATOR,),
            auth=auth,
        )
        receipt = await desk.local.client("csd").submit(sign(lock, (COORDINATOR, desk.local.world.keys[COORDINATOR])))
        assert not receipt.applied
        assert receipt.code == Code.NOT_AUTHORISED.value and receipt.field == "auth.instructions"
        assert "DMON" in receipt.reason
        nursery.cancel_scope.cancel()


async def test_a_face_amount_is_counted_in_the_bonds_denomination_and_matches_units(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        by_face = attrs.evolve(seller, gives_amount=0, face_amount=Decimal("100000.00"))  # 100 x EUR 1,000.00
        uneven = attrs.evolve(seller, reference="A-REF-0", gives_amount=0, face_amount=Decimal("100500"))
        before = await desk.balances()

        refused = await desk.send(desk.instruction(uneven))
        assert [i["status"] for i in refused.items] == ["rejected"]
        assert [code for code in element_text(refused.items[0]["document"], "Cd") if code] == ["DQUA"]
        assert "100500 is not a whole number of units of EUR 1,000.00" in refused.items[0]["document"]

        await desk.send(desk.instruction(by_face))
        await desk.send(desk.instruction(buyer))  # in units: the same quantity
        for party in ("bank-a", "bank-b"):
            assert element_text((await desk.until(party, "settled"))[-1]["document"], "Unit") == ["100"]
        after = await desk.balances()
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        report = await desk.audit()
        assert not report.violations, report.violations

        now = desk.now_ms()
        forged = to_body(  # the pair counted in a denomination of EUR 500.00: 200 units
            Matched(
                COORDINATOR,
                ("csd", "cbdc-eur"),
                (
                    decode(desk.instruction(by_face, "A-2")),
                    decode(desk.instruction(attrs.evolve(buyer, takes_amount=200), "B-2")),
                ),
                "EUR",
                50_000,
            )
        )
        lock = Lock(
            f"{terms_of(forged, None).id}:0",
            "csd",
            now,
            "a-sec",
            "b-sec",
            BOND,
            200,
            hashlock_of(b"s" * 32),
            now + 5_000,
            (COORDINATOR,),
            auth=forged,
        )
        receipt = await desk.local.client("csd").submit(sign(lock, (COORDINATOR, desk.local.world.keys[COORDINATOR])))
        assert (receipt.applied, receipt.code, receipt.field) == (
            False,
            Code.NOT_AUTHORISED.value,
            "auth.face_value_minor",
        )
        nursery.cancel_scope.cancel()


async def test_camt053_statement_books_the_settled_cash_leg_and_balances_close(tmp_path, autojump_clock):
    from engine.client.statement import read_entries, statement_of
    from protocols.iso20022 import camt053

    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        head = len(await read_entries(desk.local.client("cbdc-eur")))
        await desk.send(desk.instruction(seller))
        await desk.send(desk.instruction(buyer))
        await desk.until("bank-b", "settled")
        entries = await read_entries(desk.local.client("cbdc-eur"))
        statement = statement_of(entries, "cbdc-eur", "b-eur", "EUR", from_seq=head, to_seq=None, now_ms=desk.now_ms())
        assert statement.owner == "bank-b"
        assert [(e.kind, e.amount_minor) for e in statement.entries] == [("claim", -99_000)]  # the lock was a hold
        assert statement.closing_minor == statement.opening_minor - 99_000
        assert statement.closing_minor == (await desk.local.balances("cbdc-eur", "b-eur"))["EUR"]
        document = camt053.write(statement).decode()
        assert "DBIT" in element_text(document, "CdtDbtInd")
        assert [ref[:26] for ref in element_text(document, "AcctSvcrRef")] == [statement.entries[0].reference[:26]]
        nursery.cancel_scope.cancel()


async def test_the_desk_refuses_what_is_not_its_partys_own_and_keeps_working(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        keys = desk.local.world.keys
        document = sese023.write(seller).decode()

        def signed_by(signer: str, **fields) -> bytes:
            msg = SettlementInstruction(
                **{
                    "id": "X-1",
                    "coordinator": COORDINATOR,
                    "party": "bank-a",
                    "ts_ms": desk.now_ms(),
                    "format": SESE_023,
                    "document": document,
                    **fields,
                }
            )
            return sign(msg, (signer, keys[signer])).encode()

        refusals = {
            "signed by the counterparty": (signed_by("bank-b"), Code.MISSING_SIGNATURE.value, "sigs"),
            "for another coordinator": (
                signed_by("bank-a", coordinator="bank-b"),
                Code.WRONG_LEDGER.value,
                "coordinator",
            ),
            "bank-b claiming bank-a's document": (
                signed_by("bank-b", party="bank-b"),
                Code.NOT_AUTHORISED.value,
                "document",
            ),
        }
        for case, (raw, code, field) in refusals.items():
            reply = await desk.send(raw)
            assert isinstance(reply, SettlementStatus) and reply.phase == "rejected", case
            assert (reply.reason_code, reply.reason.split(":")[0] + (":" if field.endswith(":") else "")) == (
                code,
                field,
            ), (case, reply.reason_code, reply.reason)

        mislabelled = await desk.send(signed_by("bank-a", id="X-0", format=PACS_009))  # its own, but unreadable
        assert [i["status"] for i in mislabelled.items] == ["rejected"]
        assert mislabelled.items[0]["format"] == "pacs.002.001.14"
        narrative = "".join(element_text(mislabelled.items[0]["document"], "AddtlInf"))
        assert narrative.endswith("expected urn:iso:std:iso:20022:tech:xsd:pacs.009.001.11"), narrative

        await desk.send(signed_by("bank-a"))
        reused = await desk.send(signed_by("bank-a", document=sese023.write(seller).decode().replace("100", "101")))
        assert (reused.phase, reused.reason_code) == ("rejected", Code.ID_REUSED.value)
        snooping = sign(QueryAdvices("q-1", COORDINATOR, "bank-a", 0, 10), ("bank-b", keys["bank-b"]))
        assert (await desk.send(snooping.encode())).reason_code == Code.MISSING_SIGNATURE.value

        await desk.send(desk.instruction(buyer))  # the desk still matches and settles
        assert [i["status"] for i in await desk.until("bank-b", "settled")] == ["matched", "settled"]
        nursery.cancel_scope.cancel()


async def test_the_supervisor_reads_every_partys_advices_of_a_settlement_and_nobody_else_may(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        settlement_id = matched["settlement_id"]
        await desk.until("bank-a", "settled")
        await desk.until("bank-b", "settled")
        keys = desk.local.world.keys

        def query(party: str, signer: str | None = None, settlement: str = settlement_id) -> bytes:
            msg = QuerySettlementAdvices(f"q-{desk.now_ms()}", COORDINATOR, party, settlement)
            return sign(msg, (signer or party, keys[signer or party])).encode()

        seen = await desk.send(query("supervisor"))
        assert isinstance(seen, SettlementAdvices) and seen.settlement_id == settlement_id
        assert [(i["party"], i["status"]) for i in seen.items] == [
            ("bank-a", "unmatched"),
            ("bank-a", "matched"),
            ("bank-b", "matched"),
            ("bank-a", "settled"),
            ("bank-b", "settled"),
        ]
        assert [i["seq"] for i in seen.items] == sorted(i["seq"] for i in seen.items)
        own = {party: {i["seq"]: i for i in await desk.advices(party)} for party in ("bank-a", "bank-b")}
        assert all(own[i["party"]][i["seq"]] == {k: v for k, v in i.items() if k != "party"} for i in seen.items)
        assert (await desk.send(query("supervisor", settlement="m-unknown"))).items == ()

        refusals = {
            "a participant, even one of its parties": (query("bank-a"), Code.NOT_AUTHORISED.value, "party"),
            "signed by someone else than it names": (
                query("supervisor", "bank-b"),
                Code.MISSING_SIGNATURE.value,
                "sigs",
            ),
        }
        for case, (raw, code, field) in refusals.items():
            reply = await desk.send(raw)
            assert isinstance(reply, SettlementStatus) and reply.phase == "rejected", case
            assert (reply.reason_code, reply.reason.split(":")[0]) == (code, field), (case, reply.reason)
        nursery.cancel_scope.cancel()


async def test_a_pair_lacking_cash_waits_in_the_queue_and_settles_once_the_cash_arrives(tmp_path, autojump_clock):
    """Recycling: the first attempt fails for want of cash, nothing moves, both parties
    are told it is pending (MONY); cash credited to the buyer's account is seen on the
    ledger's stream and the pair settles as its next attempt, once."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        local = desk.local
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", leave=50_000)  # 500.00 left, 990.00 due
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        pair_id = matched["settlement_id"]
        for party in ("bank-a", "bank-b"):
            pending = (await desk.until(party, "pending"))[-1]
            assert reasons(pending["document"])[0] == ("MONY", "TRAD"), pending["document"]
            assert pending["settlement_id"] == pair_id
        before = await desk.balances()
        await trio.sleep(30)  # nothing provided: it waits, and nothing moves
        assert await desk.balances() == before
        assert [i["status"] for i in await desk.advices("bank-b")] == ["matched", "pending"]
        samples = of(CoordinatorMetrics(desk.local.coordinator).registry)
        assert value(samples, "lockstep_coordinator_instructions", state="queued") == 2  # both sides
        assert value(samples, "lockstep_coordinator_instructions", state="settled") == 0

        await move(local, "cbdc-eur", "bank-a", "a-eur", "b-eur", "EUR", 60_000)
        for party in ("bank-a", "bank-b"):
            assert [i["status"] for i in await desk.until(party, "settled")][-2:] == ["pending", "settled"]
        after = await desk.balances()
        samples = of(CoordinatorMetrics(desk.local.coordinator).registry)
        assert value(samples, "lockstep_coordinator_instructions", state="queued") == 0
        assert value(samples, "lockstep_coordinator_instructions", state="settled") == 2
        assert after[("cbdc-eur", "b-eur")]["EUR"] == 50_000 + 60_000 - 99_000
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        coordinator = desk.local.coordinator
        assert coordinator.journal.get(attempt_id(pair_id, 1)).phase is Phase.SETTLED
        assert coordinator.journal.get(pair_id).phase is Phase.FAILED  # the first attempt: nothing moved
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


async def test_pairs_still_short_or_held_at_their_cut_off_fail_with_lack_or_prea(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        now_ms = ServiceClock().now_ms()
        skew_ms = DAY_MS - now_ms % DAY_MS - 120_000  # the day ends in two minutes
        desk = await start(nursery, tmp_path, skew_ms)
        await desk.start_coordinator(skew_ms=skew_ms)
        local = desk.local
        await move(local, "csd", "bank-a", "a-sec", "b-sec", BOND, leave=40)  # 40 left, 100 due
        today = utc_date(desk.local.coordinator.clock.now_ms())
        seller, buyer = dvp(today)
        await desk.send(desk.instruction(seller))
        await desk.send(desk.instruction(buyer))
        for party in ("bank-a", "bank-b"):
            assert reasons((await desk.until(party, "pending"))[-1]["document"])[0] == ("LACK", "TRAD")
        a_fx, b_fx = pvp(today)  # an FX trade bank-a holds, by a message, before bank-b's side comes
        await desk.send(desk.instruction(a_fx))
        held = HoldInstruction("h-1", COORDINATOR, "bank-a", desk.now_ms(), "A-FX-1", True)
        assert [
            i["status"] for i in (await desk.send(sign(held, ("bank-a", local.world.keys["bank-a"])).encode())).items
        ] == ["unmatched"]
        await desk.send(desk.instruction(b_fx))
        assert reasons((await desk.advices("bank-b"))[-1]["document"]) == (("PRCY",), "held by bank-a")
        before = await desk.balances()
        await trio.sleep(120)  # the cut-off passes
        for party in ("bank-a", "bank-b"):
            failed = [i for i in await desk.until(party, "failed") if i["status"] == "failed"]
            assert len(failed) == 2, failed
            codes, narrative = reasons(failed[0]["document"])
            assert codes == ("LACK", "TRAD")
            assert "not settled by its cut-off" in narrative and "a-sec on csd lacked" in narrative, narrative
            codes, narrative = reasons(failed[1]["document"])
            assert codes == ("PREA" if party == "bank-a" else "PRCY",) and narrative.endswith("held by bank-a")
        assert await desk.balances() == before
        assert await desk.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_a_held_instruction_waits_until_its_party_releases_it_and_only_its_party(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        keys = desk.local.world.keys
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(attrs.evolve(seller, hold=True)))  # sese.023 HldInd
        await desk.send(desk.instruction(buyer))
        for party, code in (("bank-a", "PREA"), ("bank-b", "PRCY")):
            (pending,) = [i for i in await desk.advices(party) if i["status"] == "pending"]
            assert reasons(pending["document"]) == ((code, "TRAD"), "held by bank-a")
        before = await desk.balances()
        await trio.sleep(30)
        assert await desk.balances() == before  # funded, but held
        assert (
            value(of(CoordinatorMetrics(desk.local.coordinator).registry), "lockstep_coordinator_instructions_held")
            == 1
        )

        def hold(signer: str, hold: bool, hold_id: str = "h-1", party: str = "bank-a", instruction: str = "A-REF-1"):
            msg = HoldInstruction(hold_id, COORDINATOR, party, desk.now_ms(), instruction, hold)
            return sign(msg, (signer, keys[signer])).encode()

        refused = {
            "released by the counterparty": (hold("bank-b", False), Code.MISSING_SIGNATURE.value, "sigs"),
            "its own, but none such": (
                hold("bank-a", False, instruction="A-REF-9"),
                "unknown_instruction",
                "instruction_id",
            ),
        }
        for case, (raw, code, field) in refused.items():
            reply = await desk.send(raw)
            assert (reply.phase, reply.reason_code, reply.reason.split(":")[0]) == ("rejected", code, field), case
        assert await desk.balances() == before

        release = hold("bank-a", False)
        assert [i["status"] for i in (await desk.send(release)).items] == ["matched"]  # released
        for party in ("bank-a", "bank-b"):
            assert [i["status"] for i in await desk.until(party, "settled")][-2:] == ["matched", "settled"]
        after = await desk.balances()
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert [i["status"] for i in (await desk.send(release)).items] == ["settled"]  # again: its latest, no change
        reused = await desk.send(hold("bank-a", True))
        assert (reused.reason_code, reused.reason.split(":")[0]) == (Code.ID_REUSED.value, "id")
        too_late = await desk.send(hold("bank-a", True, "h-2"))
        assert (too_late.reason_code, too_late.reason) == (
            Code.INVALID_FIELD.value,
            "instruction_id: instruction A-REF-1 is settled already",
        )
        nursery.cancel_scope.cancel()


async def test_the_queue_serves_the_more_urgent_priority_first_when_the_cash_covers_one(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        local = desk.local
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", leave=0)
        seller, buyer = dvp(utc_date(desk.now_ms()))
        urgent = (  # sese.023 Prty 0002, queued after the first
            attrs.evolve(seller, reference="A-REF-2", priority=2),
            attrs.evolve(buyer, reference="B-REF-2"),
        )
        for count, pair in enumerate(((seller, buyer), urgent), 1):
            for side in pair:
                await desk.send(desk.instruction(side))
            with trio.fail_after(60):
                while [i["status"] for i in await desk.advices("bank-b")].count("pending") < count:
                    await trio.sleep(0.1)
        assert [i["status"] for i in await desk.advices("bank-b")] == ["matched", "pending", "matched", "pending"]
        await move(local, "cbdc-eur", "bank-a", "a-eur", "b-eur", "EUR", 99_000)  # enough for one of them
        settled = [i for i in await desk.until("bank-b", "settled") if i["status"] == "settled"]
        assert [i["instruction_id"] for i in settled] == ["B-REF-2"]
        await trio.sleep(30)
        statuses = {i["instruction_id"]: i["status"] for i in await desk.advices("bank-b")}
        assert statuses == {"B-REF-1": "pending", "B-REF-2": "settled"}
        assert (await local.balances("cbdc-eur", "b-eur")).get("EUR", 0) == 0
        nursery.cancel_scope.cancel()


async def test_a_queued_pair_survives_restarts_queued_and_mid_try_and_settles_once(tmp_path, autojump_clock):
    """The coordinator killed while the pair waits (the cash paid in while it is down),
    and again as the released try places its locks: each restart takes the pair up where
    its journal left it, and the trade settles once, by its second try."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator, scope = await desk.start_coordinator()
        local = desk.local
        await move(local, "cbdc-eur", "bank-b", "b-eur", "a-eur", "EUR", leave=0)
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        await desk.until("bank-b", "pending")
        scope.cancel()  # killed while the pair waits
        await move(local, "cbdc-eur", "bank-a", "a-eur", "b-eur", "EUR", 99_000)
        before = await desk.balances()
        killed = trio.Event()
        coordinator, scope = await desk.start_coordinator()

        def kill_on_locking(record):
            if record.phase.value == "locking" and not killed.is_set():
                scope.cancel()
                killed.set()

        coordinator.on_phase = kill_on_locking
        await killed.wait()
        await trio.sleep(TIMING.lock_wait_ms / 2000)
        coordinator, _ = await desk.start_coordinator()
        for party in ("bank-a", "bank-b"):
            statuses = [i["status"] for i in await desk.until(party, "settled")]
            assert statuses.count("settled") == 1 and statuses.count("pending") == 1, statuses
        after = await desk.balances()
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
        assert after[("cbdc-eur", "b-eur")]["EUR"] == before[("cbdc-eur", "b-eur")]["EUR"] - 99_000
        pair_id = matched["settlement_id"]
        assert coordinator.journal.get(attempt_id(pair_id, 1)).phase is Phase.SETTLED
        assert coordinator.journal.get(attempt_id(pair_id, 2)) is None
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        nursery.cancel_scope.cancel()


async def watching(desk: Desk, nursery: trio.Nursery) -> Observer:
    """An observer following every ledger live, from the start."""
    ledgers = ["csd", "cbdc-eur", "cbdc-multi", "unified"]
    observer = Observer(desk.local.world.registry, desk.local.bus, ledgers, 1_000, ServiceClock(), publish=False)
    await nursery.start(observer.run)
    return observer


async def alerted(observer: Observer, violation) -> None:
    """The observer raises the audit's violation live, once."""
    with trio.fail_after(30):
        while not observer.alerted[violation.kind]:
            await trio.sleep(0.1)
    assert [alert.reason for alert in observer.alerts] == [violation.reason]


async def test_the_audit_catches_a_matched_pair_settled_by_two_tries(tmp_path, autojump_clock):
    """What the queue must never do, done on purpose with the coordinator's own hands: a
    second try of a pair that had settled. The ledgers each see a valid try; the audit,
    reading them together, names the pair and both tries, and the observer alerts it live."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        observer = await watching(desk, nursery)
        coordinator, _ = await desk.start_coordinator()
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        await desk.until("bank-b", "settled")
        pair_id = matched["settlement_id"]
        assert not (await desk.audit()).violations
        again = {**decode(coordinator.journal.get(pair_id).instruction), "attempt": 1}
        assert (await coordinator.settle(again)).phase is Phase.SETTLED
        (violation,) = (await desk.audit()).violations
        assert violation.kind.value == "settled_twice" and violation.settlement == pair_id
        assert violation.reason == f"matched pair {pair_id} moved by 2 tries: {pair_id}, {attempt_id(pair_id, 1)}"
        await alerted(observer, violation)
        nursery.cancel_scope.cancel()


async def test_a_trade_both_sides_allow_to_settle_in_parts_settles_what_the_seller_holds_then_the_rest(
    tmp_path, autojump_clock
):
    """sese.023 PrtlSttlmInd PART on both sides: with 40 of the 100 bonds, the queue
    settles units 0-40 and their cash at once (sese.025 PAIN), tells both parties what
    remains (pending, PART), and settles the other 60 when the seller has them (PARC).
    The parts add up to the trade to the cent, and the audit and the observer find them
    one after another."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        observer = await watching(desk, nursery)
        await desk.start_coordinator()
        local = desk.local
        await move(local, "csd", "bank-a", "a-sec", "b-sec", BOND, leave=40)
        before = await desk.balances()
        seller, buyer = (attrs.evolve(one, partial=True) for one in dvp(utc_date(desk.now_ms())))
        await desk.send(desk.instruction(seller))
        (matched,) = (await desk.send(desk.instruction(buyer))).items
        with trio.fail_after(60):
            while "settled" not in [i["status"] for i in await desk.advices("bank-a")]:
                await trio.sleep(0.1)
        statuses = [(i["status"], reasons(i["document"])) for i in await desk.advices("bank-b")]
        assert statuses[:2] == [("matched", (("TRAD",), "")), ("pending", (("LACK", "TRAD"), statuses[1][1][1]))]
        assert statuses[2:] == [
            ("settled", (("TRAD",), "")),
            ("pending", (("PART", "TRAD"), "40 of 100 units settled, 60 remain")),
        ]
        first = next(i for i in await desk.advices("bank-a") if i["status"] == "settled")["document"]
        assert element_text(first, "PrtlSttlm") == ["PAIN"] and element_text(first, "Unit") == ["40", "60"]
        middle = await desk.balances()
        assert middle[("csd", "b-sec")][BOND] == before[("csd", "b-sec")][BOND] + 40
        assert middle[("cbdc-eur", "a-eur")].get("EUR", 0) == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 39_600

        await move(local, "csd", "bank-b", "b-sec", "a-sec", BOND, 60)  # the seller has the rest
        with trio.fail_after(60):
            while [i["status"] for i in await desk.advices("bank-a")].count("settled") < 2:
                await trio.sleep(0.1)
        last = [i for i in await desk.advices("bank-a") if i["status"] == "settled"][-1]["document"]
        assert element_text(last, "PrtlSttlm") == ["PARC"] and element_text(last, "Unit") == ["60", "40"]
        after = await desk.balances()
        assert after[("cbdc-eur", "a-eur")].get("EUR", 0) == before[("cbdc-eur", "a-eur")].get("EUR", 0) + 99_000
        assert after[("cbdc-eur", "b-eur")]["EUR"] == before[("cbdc-eur", "b-eur")]["EUR"] - 99_000
        assert after[("csd", "b-sec")][BOND] == before[("csd", "b-sec")][BOND] + 100 - 60
        pair_id = matched["settlement_id"]
        coordinator = local.coordinator
        assert [coordinator.journal.get(attempt_id(pair_id, n)).phase for n in range(3)] == [
            Phase.FAILED,
            Phase.SETTLED,
            Phase.SETTLED,
        ]
        assert await desk.held_locks() == []
        report = await desk.audit()
        assert not report.violations, report.violations
        await observer.check()
        assert observer.alerts == []
        nursery.cancel_scope.cancel()


async def test_a_part_below_the_least_the_queue_settles_waits_for_more(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        calendars = Calendars(partial_min_units=50)
        await desk.local.start_coordinator(TIMING, desks=(lambda c: MatchingDesk(c, PLACES, calendars),))
        local = desk.local
        await move(local, "csd", "bank-a", "a-sec", "b-sec", BOND, leave=40)
        before = await desk.balances()
        for side in dvp(utc_date(desk.now_ms())):
            await desk.send(desk.instruction(attrs.evolve(side, partial=True)))
        await desk.until("bank-b", "pending")
        await trio.sleep(30)
        assert [i["status"] for i in await desk.advices("bank-b")] == ["matched", "pending"]
        assert await desk.balances() == before
        nursery.cancel_scope.cancel()


async def test_the_audit_catches_a_pair_settled_twice_on_one_ledger_too(tmp_path, autojump_clock):
    """The same on the unified ledger, where a try is one `settle`."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        observer = await watching(desk, nursery)
        unified = {BOND: "unified", "EUR": "unified"}
        coordinator, _ = await desk.local.start_coordinator(TIMING, desks=(lambda c: MatchingDesk(c, unified),))
        seller, buyer = dvp(utc_date(desk.now_ms()))
        await desk.send(desk.instruction(attrs.evolve(seller, gives_account="a", takes_account="a")))
        (matched,) = (
            await desk.send(desk.instruction(attrs.evolve(buyer, gives_account="b", takes_account="b")))
        ).items
        await desk.until("bank-b", "settled")
        pair_id = matched["settlement_id"]
        assert not (await desk.audit()).violations
        again = {**decode(coordinator.journal.get(pair_id).instruction), "attempt": 1}
        assert (await coordinator.settle(again)).phase is Phase.SETTLED
        (violation,) = (await desk.audit()).violations
        assert violation.kind.value == "settled_twice" and violation.ledgers == ("unified",)
        await alerted(observer, violation)
        nursery.cancel_scope.cancel()


async def test_a_trade_settled_in_part_and_short_of_the_rest_at_its_cut_off_fails_saying_what_settled(
    tmp_path, autojump_clock
):
    now_ms = ServiceClock().now_ms()
    skew_ms = DAY_MS - now_ms % DAY_MS - 120_000  # the day ends in two minutes
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path, skew_ms)
        await desk.start_coordinator(skew_ms=skew_ms)
        await move(desk.local, "csd", "bank-a", "a-sec", "b-sec", BOND, leave=40)
        for side in dvp(utc_date(desk.local.coordinator.clock.now_ms())):
            await desk.send(desk.instruction(attrs.evolve(side, partial=True)))
        await trio.sleep(120)  # the first part settles at once; the cut-off passes
        for party in ("bank-a", "bank-b"):
            advices = await desk.until(party, "failed")
            assert [i["status"] for i in advices][-3:] == ["settled", "pending", "failed"]
            codes, narrative = reasons(advices[-1]["document"])
            assert codes == ("LACK", "TRAD"), codes
            assert "(40 of 100 units settled in parts before it)" in narrative, narrative
            assert "a-sec on csd lacked XS2700000016 60 units" in narrative, narrative
        nursery.cancel_scope.cancel()
