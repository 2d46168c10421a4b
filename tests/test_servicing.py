"""Asset servicing: the coupon and redemption arithmetic as plain calls, then the paying
agent in a world on the memory bus with a mock clock (days pass at once): every holder
paid exactly once, across a coordinator restart too; redemption at maturity; refusals."""

from __future__ import annotations

import datetime
from fractions import Fraction

import pytest
import trio
import trio.testing

from engine.audit.journals import audit, read_database
from engine.coordinator import Coordinator
from engine.coordinator.journal import Journal
from engine.desks.servicing import ServicingDesk
from engine.world.layout import lay_out
from engine.world.local import COORDINATOR, LEDGERS, PARTIES, Local
from protocols.authority import entitlement_id
from protocols.bus import service_of_coordinator
from protocols.bus.clock import ServiceClock
from protocols.bus.memory import MemoryBus
from protocols.canonical import decode
from protocols.errors import Code, Rejected
from protocols.identifiers import make_isin
from protocols.matching import day_window
from protocols.messages import (
    CorporateAction,
    CorporateActionStatus,
    CreateInstrument,
    Entitlement,
    Issue,
    QueryAccounts,
    QueryCorporateAction,
    QueryHolders,
    QueryJournal,
    QueryLocks,
    Transfer,
    to_body,
)
from protocols.registry import Role
from protocols.servicing import (
    DueState,
    Period,
    accrual_fraction,
    cash_account,
    coupon_dates,
    coupon_minor,
    coupon_period,
    dues,
    redemption_minor,
)
from protocols.settlement import Phase, Timing
from protocols.signing import from_wire, sign, unsigned

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
NOTE = make_isin("XS000000777")
FACE_MINOR = 10_000_000  # 100,000.00 EUR
SEMI_ANNUAL = {
    "currency": "EUR",
    "face_value_minor": FACE_MINOR,
    "coupon_rate_bp": 250,
    "maturity_date": "2028-06-30",
    "coupon_frequency": 2,
    "day_count": "30/360",
}
COUPON_DATE = "2026-12-31"  # the first coupon date after the clock's start (2026-11-25)
HOLDINGS = {"a-sec": 100, "a-sec2": 7, "b-sec": 250, "c-sec": 50}  # the issuer keeps the rest
UNIT_COUPON_MINOR = 125_000  # 1,250.00 EUR a unit a half-year


# -- the arithmetic ---------------------------------------------------------------------------------


def d(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


def test_semi_annual_schedule_counts_back_from_maturity_on_month_ends():
    assert coupon_dates(SEMI_ANNUAL, "2026-06-30", "2028-12-31") == [
        "2026-12-31",
        "2027-06-30",
        "2027-12-31",
        "2028-06-30",
    ]
    february = dict(SEMI_ANNUAL, maturity_date="2029-02-28")  # end of month: every date is a month end
    assert coupon_dates(february, "2027-01-01", "2029-12-31") == [
        "2027-02-28",
        "2027-08-31",
        "2028-02-29",
        "2028-08-31",
        "2029-02-28",
    ]
    mid_month = dict(SEMI_ANNUAL, maturity_date="2029-03-15", coupon_frequency=4)
    assert coupon_dates(mid_month, "2028-01-01", "2029-12-31") == [
        "2028-03-15",
        "2028-06-15",
        "2028-09-15",
        "2028-12-15",
        "2029-03-15",
    ]
    thirty_first = dict(SEMI_ANNUAL, maturity_date="2029-03-31", coupon_frequency=12)  # not month end: clamped
    assert coupon_dates(thirty_first, "2029-01-01", "2029-03-31")[:2] == ["2029-01-31", "2029-02-28"]
    assert coupon_dates(dict(SEMI_ANNUAL, coupon_frequency=0), "2020-01-01", "2030-01-01") == []


def test_coupon_period_is_the_one_ending_on_the_payment_date():
    assert coupon_period(SEMI_ANNUAL, "2027-06-30") == Period(d("2026-12-31"), d("2027-06-30"))
    for not_a_coupon_date in ("2027-06-29", "2028-12-31", "2027-03-31"):
        with pytest.raises(Rejected) as refusal:
            coupon_period(SEMI_ANNUAL, not_a_coupon_date)
        assert (refusal.value.code, refusal.value.field) == (Code.INVALID_FIELD, "payment_date")


def test_day_counts_give_their_known_fractions():
    half = Period(d("2030-12-31"), d("2031-06-30"))  # 181 actual days
    assert accrual_fraction(half, "30/360", 2) == Fraction(1, 2)
    assert accrual_fraction(half, "ACT/360", 2) == Fraction(181, 360)
    assert accrual_fraction(half, "ACT/365", 2) == Fraction(181, 365)
    assert accrual_fraction(half, "ACT/ACT", 2) == Fraction(1, 2)
    # bond basis: the 31st at the end counts as the 30th only after a start on the 30th or 31st
    assert accrual_fraction(Period(d("2031-02-28"), d("2031-08-31")), "30/360", 2) == Fraction(183, 360)
    assert accrual_fraction(Period(d("2031-01-31"), d("2031-07-31")), "30/360", 2) == Fraction(180, 360)


def test_coupon_amounts_are_floored_per_holder_with_no_floats():
    assert coupon_minor(1, SEMI_ANNUAL, "2027-06-30") == 125_000  # 1,250.00 EUR
    act_360 = dict(SEMI_ANNUAL, maturity_date="2031-06-30", day_count="ACT/360")
    assert coupon_minor(1, act_360, "2031-06-30") == 125_694  # 125,694.44 floored
    assert coupon_minor(3, act_360, "2031-06-30") == 377_083  # per holder: not 3 x 125,694
    odd = dict(SEMI_ANNUAL, face_value_minor=1, coupon_rate_bp=1)
    assert coupon_minor(1, odd, "2027-06-30") == 0  # less than a cent: nothing
    assert redemption_minor(7, SEMI_ANNUAL) == 70_000_000


def test_dues_exclude_the_issuer_and_report_a_holder_without_a_cash_account():
    holders = [("a-sec", "bank-a", 100), ("c-sec", "bank-c", 50), ("t-sec", "treasury", 600)]
    found = {
        due.holder_account: due
        for due in dues("coupon", SEMI_ANNUAL, "2027-06-30", "treasury", holders, {"bank-a": "a-eur", "bank-c": None})
    }
    assert (found["a-sec"].state, found["a-sec"].amount_minor) == (DueState.DUE, 100 * UNIT_COUPON_MINOR)
    assert (found["c-sec"].state, found["c-sec"].reason_code) == (DueState.UNPAID, "unknown_account")
    assert found["t-sec"].state is DueState.EXCLUDED


def test_cash_account_prefers_one_that_has_held_the_currency_then_the_first_by_id():
    accounts = [
        {"account": "a1", "balances": {}},
        {"account": "b2", "balances": {"EUR": {}}},
        {"account": "a3", "balances": {"EUR": {}}},
    ]
    assert cash_account(accounts, "EUR") == "a3"
    assert cash_account(accounts, "USD") == "a1"
    assert cash_account([], "EUR") is None


# -- the world --------------------------------------------------------------------------------------


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class Agent:
    """The standard world plus bank-c (securities but no EUR account), the treasury's
    note, and a coordinator with its desks that a test can kill and restart."""

    def __init__(self, local: Local) -> None:
        self.local = local
        self.coordinator: Coordinator | None = None
        self.scope: trio.CancelScope | None = None
        self.stopped: trio.Event | None = None

    async def start_coordinator(self, *desks) -> Coordinator:
        """The coordinator with a servicing desk and each of `desks` (desk classes)."""
        local = self.local
        journal = Journal(local.world.directory / f"{COORDINATOR}.db")
        coordinator = Coordinator(
            COORDINATOR, local.world.keys[COORDINATOR], local.world.registry, local.bus, journal, ServiceClock(), TIMING
        )
        made = [desk(coordinator) for desk in (ServicingDesk, *desks)]
        for desk in made:
            coordinator.add_desk(desk)
        scope, stopped = trio.CancelScope(), trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await coordinator.run(task_status=task_status)
            finally:
                journal.close()
                stopped.set()

        await local.nursery.start(run)
        self.coordinator, self.scope, self.stopped = coordinator, scope, stopped
        return coordinator

    async def kill_and_restart(self, *desks) -> Coordinator:
        """Once the coordinator has been killed (its scope cancelled), start it again."""
        with trio.fail_after(3 * 365 * 86_400):  # days pass at once under the mock clock
            await self.stopped.wait()
        return await self.start_coordinator(*desks)

    def action(
        self,
        kind: str,
        payment_date: str,
        *,
        signer: str = "treasury",
        issuer: str = "treasury",
        action_id: str = "ca-1",
        isin: str = NOTE,
    ) -> bytes:
        start_ms, _ = day_window(payment_date)
        msg = CorporateAction(
            action_id,
            COORDINATOR,
            issuer,
            kind,
            isin,
            "csd",
            "cbdc-eur",
            "treasury",
            "t-eur",
            "EUR",
            payment_date,
            start_ms + 3_600_000,
        )
        return sign(msg, (signer, self.local.world.keys[signer])).encode()

    async def send(self, raw: bytes) -> CorporateActionStatus:
        reply = await self.local.bus.request(service_of_coordinator(COORDINATOR), raw, timeout_s=10)
        signed = from_wire(decode(reply))
        assert signed.signed_by(COORDINATOR, self.local.world.registry[COORDINATOR].public_key)
        return signed.msg

    async def status(self, action_id: str = "ca-1") -> CorporateActionStatus:
        return await self.send(unsigned(QueryCorporateAction("q-" + action_id, COORDINATOR, action_id)).encode())

    async def wait_done(self, payment_date: str, action_id: str = "ca-1") -> CorporateActionStatus:
        """The action's status once final: asked from its payment date on."""
        await trio.sleep_until(self.coordinator.clock.trio_time_at(day_window(payment_date)[0]))
        with trio.fail_after(86_400):
            while (status := await self.status(action_id)).state not in ("done", "failed"):
                await trio.sleep(1)
        return status

    async def cash(self, account: str) -> int:
        return (await self.local.balances("cbdc-eur", account)).get("EUR", 0)

    async def units(self, account: str) -> int:
        return (await self.local.balances("csd", account)).get(NOTE, 0)

    async def journal(self, ledger: str) -> list[dict]:
        client = self.local.client(ledger)
        entries: list[dict] = []
        while True:
            page = await client.query(QueryJournal(client.next_query_id(), ledger, len(entries), 200))
            if not page["entries"]:
                return entries
            entries += page["entries"]

    def audit_clean(self) -> None:
        directory = self.local.world.directory
        report = audit(
            [read_database(directory / f"{ledger}.db", self.local.world.registry) for ledger in ("csd", "cbdc-eur")]
        )
        assert report.clean, report.text()


async def start(nursery, tmp_path) -> Agent:
    world = lay_out(tmp_path, LEDGERS, {**PARTIES, "bank-c": (Role.PARTICIPANT,)})
    local = Local(world, MemoryBus(), nursery)
    for ledger in ("csd", "cbdc-eur"):
        await local.start_ledger(ledger)
    await local.open_accounts(
        "csd",
        "csd-op",
        {"treasury": "treasury", "a-sec": "bank-a", "a-sec2": "bank-a", "b-sec": "bank-b", "c-sec": "bank-c"},
    )
    await local.instruct(
        CreateInstrument,
        "csd",
        "csd-op",
        isin=NOTE,
        issuer="treasury",
        currency="EUR",
        face_value_minor=FACE_MINOR,
        coupon_rate_bp=250,
        maturity_date="2028-06-30",
        coupon_frequency=2,
        day_count="30/360",
    )
    await local.instruct(Issue, "csd", "csd-op", asset=NOTE, account="treasury", amount=1_000)
    for account, units in HOLDINGS.items():
        await local.instruct(
            Transfer, "csd", "treasury", from_account="treasury", to_account=account, asset=NOTE, amount=units
        )
    await local.open_accounts("cbdc-eur", "ecb", {"t-eur": "treasury", "a-eur": "bank-a", "b-eur": "bank-b"})
    await local.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="t-eur", amount=10**12)
    return Agent(local)


async def test_holders_and_accounts_queries_list_holdings_and_a_partys_accounts(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        csd = agent.local.client("csd")
        first = await csd.query(QueryHolders(csd.next_query_id(), "csd", NOTE, 2))
        assert [h["account"] for h in first["holders"]] == ["a-sec", "a-sec2"] and first["next_after"] == "a-sec2"
        rest = await csd.query(QueryHolders(csd.next_query_id(), "csd", NOTE, 10, first["next_after"]))
        assert [(h["account"], h["owner"], h["available"]) for h in rest["holders"]] == [
            ("b-sec", "bank-b", 250),
            ("c-sec", "bank-c", 50),
            ("treasury", "treasury", 593),
        ]
        assert rest["next_after"] is None
        cash = agent.local.client("cbdc-eur")
        assert (await cash.query(QueryAccounts(cash.next_query_id(), "cbdc-eur", "bank-c")))["accounts"] == []
        assert [
            a["account"]
            for a in (await cash.query(QueryAccounts(cash.next_query_id(), "cbdc-eur", "bank-a")))["accounts"]
        ] == ["a-eur"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kill", ["before-the-date", "after-the-first-payment"])
async def test_coupon_pays_every_holder_once_across_a_coordinator_restart(tmp_path, autojump_clock, kill):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        coordinator = await agent.start_coordinator()
        killed = []

        def kill_after_first_payment(record):
            if record.phase is Phase.SETTLED and record.settlement_id.startswith("c-") and not killed:
                killed.append(record.settlement_id)
                agent.scope.cancel()

        if kill == "after-the-first-payment":
            coordinator.on_phase = kill_after_first_payment
        issuer_before = await agent.cash("t-eur")
        accepted = await agent.send(agent.action("coupon", COUPON_DATE))
        assert (accepted.state, accepted.entitlements) == ("accepted", ())
        if kill == "before-the-date":
            agent.scope.cancel()
        await agent.kill_and_restart()
        status = await agent.wait_done(COUPON_DATE)
        assert killed or kill == "before-the-date"

        due = {e["holder_account"]: e for e in status.entitlements}
        assert {account: (e["state"], e["amount_minor"]) for account, e in due.items()} == {
            "a-sec": ("paid", 100 * UNIT_COUPON_MINOR),
            "a-sec2": ("paid", 7 * UNIT_COUPON_MINOR),
            "b-sec": ("paid", 250 * UNIT_COUPON_MINOR),
            "c-sec": ("unpaid", 50 * UNIT_COUPON_MINOR),
            "treasury": ("excluded", 0),
        }
        assert due["c-sec"]["reason_code"] == "unknown_account" and "bank-c" in due["c-sec"]["reason"]
        assert due["treasury"]["reason"] == "the issuer's own holding"
        assert await agent.cash("a-eur") == 107 * UNIT_COUPON_MINOR
        assert await agent.cash("b-eur") == 250 * UNIT_COUPON_MINOR
        assert await agent.cash("t-eur") == issuer_before - 357 * UNIT_COUPON_MINOR
        settles = [e for e in await agent.journal("cbdc-eur") if e["kind"] == "settle"]
        assert sorted(e["instruction"]["id"].split(":")[0] for e in settles) == sorted(
            due[account]["settlement_id"] for account in ("a-sec", "a-sec2", "b-sec")
        )
        assert min(e["time_ms"] for e in settles) >= day_window(COUPON_DATE)[0]  # not before the payment date
        again = await agent.send(agent.action("coupon", COUPON_DATE))  # the same mandate again: nothing more
        assert again.state == "done" and await agent.cash("t-eur") == issuer_before - 357 * UNIT_COUPON_MINOR
        other_id = await agent.send(agent.action("coupon", COUPON_DATE, action_id="ca-2"))
        assert (other_id.state, other_id.reason_code) == ("rejected", "invalid_field") and "ca-1" in other_id.reason
        agent.audit_clean()
        nursery.cancel_scope.cancel()


async def test_redemption_at_maturity_returns_every_holders_units_for_face_value(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        await agent.local.open_accounts("cbdc-eur", "ecb", {"c-eur": "bank-c"})
        await agent.start_coordinator()
        issuer_cash, issuer_units = await agent.cash("t-eur"), await agent.units("treasury")
        accepted = await agent.send(agent.action("redemption", "2028-06-30"))
        assert accepted.state == "accepted"
        status = await agent.wait_done("2028-06-30")
        assert {e["holder_account"]: e["state"] for e in status.entitlements} == {
            "a-sec": "paid",
            "a-sec2": "paid",
            "b-sec": "paid",
            "c-sec": "paid",
            "treasury": "excluded",
        }
        for account in HOLDINGS:
            assert await agent.units(account) == 0
        assert await agent.units("treasury") == issuer_units + sum(HOLDINGS.values())
        assert (await agent.cash("a-eur"), await agent.cash("b-eur"), await agent.cash("c-eur")) == (
            107 * FACE_MINOR,
            250 * FACE_MINOR,
            50 * FACE_MINOR,
        )
        assert await agent.cash("t-eur") == issuer_cash - sum(HOLDINGS.values()) * FACE_MINOR
        for ledger in ("csd", "cbdc-eur"):
            client = agent.local.client(ledger)
            assert await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 10)) == []
        agent.audit_clean()
        nursery.cancel_scope.cancel()


async def test_redemption_before_maturity_is_refused_by_the_desk_and_by_the_ledger(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        coordinator = await agent.start_coordinator()
        refused = await agent.send(agent.action("redemption", "2027-06-30"))
        assert (refused.state, refused.reason_code) == ("rejected", "not_yet")
        # past the paying agent, straight to the driver: the securities ledger refuses it
        action = from_wire(decode(agent.action("redemption", "2027-06-30"))).wire()
        record = await coordinator.settle(
            to_body(Entitlement(action, "bank-b", "b-sec", "b-eur", 250, 250 * FACE_MINOR))
        )
        assert (record.phase, record.reason_code) == (Phase.FAILED, "not_yet")
        assert "matures on 2028-06-30" in record.reason
        assert await agent.units("b-sec") == 250 and await agent.cash("b-eur") == 0
        nursery.cancel_scope.cancel()


async def test_a_redemption_below_face_value_is_refused_by_the_ledger_in_money(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        coordinator = await agent.start_coordinator()
        await trio.sleep_until(coordinator.clock.trio_time_at(day_window("2028-06-30")[0]))
        action = from_wire(decode(agent.action("redemption", "2028-06-30"))).wire()
        record = await coordinator.settle(
            to_body(Entitlement(action, "bank-b", "b-sec", "b-eur", 250, 250 * (FACE_MINOR - 1)))
        )
        assert (record.phase, record.reason_code) == (Phase.FAILED, "not_authorised")
        assert f"{NOTE} redeems at EUR 100,000.00 a unit" in record.reason
        assert await agent.units("b-sec") == 250 and await agent.cash("b-eur") == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "signer, issuer, code",
    [("bank-a", "treasury", "missing_signature"), ("bank-a", "bank-a", "not_authorised")],
    ids=["not-signed-by-the-issuer", "signed-by-another-issuer"],
)
async def test_a_forged_action_is_refused_and_pays_nobody(tmp_path, autojump_clock, signer, issuer, code):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        coordinator = await agent.start_coordinator()
        refused = await agent.send(agent.action("coupon", COUPON_DATE, signer=signer, issuer=issuer))
        assert (refused.state, refused.reason_code) == ("rejected", code)
        # an entitlement forged past the desk is refused by the driver as well
        action = from_wire(decode(agent.action("coupon", COUPON_DATE, signer=signer, issuer="treasury"))).wire()
        with pytest.raises(Rejected) as refusal:
            await coordinator.settle(to_body(Entitlement(action, "bank-a", "a-sec", "a-eur", 1, 1)))
        assert refusal.value.code is Code.MISSING_SIGNATURE
        await trio.sleep(60 * 86_400)
        assert await agent.cash("a-eur") == 0
        nursery.cancel_scope.cancel()


async def test_a_coupon_on_a_date_that_is_not_a_coupon_date_is_refused(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        agent = await start(nursery, tmp_path)
        await agent.start_coordinator()
        refused = await agent.send(agent.action("coupon", "2027-01-15"))
        assert (refused.state, refused.reason_code) == ("rejected", "invalid_field")
        assert "not a coupon date" in refused.reason
        unknown = await agent.status("ca-nothing")
        assert unknown.state == "rejected"
        nursery.cancel_scope.cancel()


def test_entitlement_ids_differ_with_any_term():
    action = {"type": "corporate_action", "kind": "coupon"}
    one = Entitlement(action, "bank-a", "a-sec", "a-eur", 1, 125_000)
    assert entitlement_id(one) != entitlement_id(Entitlement(action, "bank-a", "a-sec", "a-eur", 1, 125_001))
