"""Repo: two linked DvPs through the coordinator's repo desk, in one process with a mock
clock. bank-a (the cash taker) delivers bonds to bank-b against EUR now, and takes them
back at term against a little more EUR; checked against the ledgers' balances."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.desks.repo import RepoDesk
from engine.world.local import BOND, COORDINATOR, Local, dvp_legs, standard_world
from protocols.bus.memory import MemoryBus
from protocols.canonical import decode, encode
from protocols.errors import Code, Rejected
from protocols.messages import (
    Issue,
    QueryLock,
    QueryLocks,
    QueryRepo,
    Repo,
    RepoStatus,
    Settlement,
    SettlementLeg,
    Transfer,
)
from protocols.repo import FINAL, check_link
from protocols.settlement import Phase, lock_id
from protocols.signing import decode_signed, from_wire, sign, unsigned

from .test_servicing import Agent

LENT_MINOR, REPAID_MINOR, UNITS = 9_900_000, 9_910_000, 100
TERM_MS = 7 * 86_400_000
START = dvp_legs("csd", "a-sec", "b-sec", UNITS, "cbdc-eur", "EUR", "b-eur", "a-eur", LENT_MINOR)  # bank-b pays cash
REVERSE = (
    SettlementLeg("cbdc-eur", "a-eur", "b-eur", "EUR", REPAID_MINOR),  # bank-a repays
    SettlementLeg("csd", "b-sec", "a-sec", BOND, UNITS),
)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class Desk(Agent):
    """A world with a coordinator running a repo desk, and the two banks' repos."""

    async def start_coordinator(self, *desks):
        return await super().start_coordinator(RepoDesk, *desks)

    def settlement(self, settlement_id: str, legs, parties, *, not_before_ms: int = 0, deadline_ms: int) -> dict:
        keys = self.local.world.keys
        msg = Settlement(
            settlement_id, "dvp", self.local.clock.now_ms(), COORDINATOR, deadline_ms, parties, legs, not_before_ms
        )
        return sign(msg, *((party, keys[party]) for party in parties)).wire()

    def repo(
        self, repo_id: str = "repo-1", *, start_legs=START, reverse_legs=REVERSE, signer: str = "bank-a"
    ) -> tuple[bytes, int]:
        """A signed repo and its term (ms)."""
        now = self.local.clock.now_ms()
        term_ms = now + TERM_MS
        start = self.settlement(f"{repo_id}-start", start_legs, ("bank-b", "bank-a"), deadline_ms=now + 60_000)
        reverse = self.settlement(
            f"{repo_id}-reverse",
            reverse_legs,
            ("bank-a", "bank-b"),
            not_before_ms=term_ms,
            deadline_ms=term_ms + 60_000,
        )
        return sign(
            Repo(repo_id, COORDINATOR, start, reverse), (signer, self.local.world.keys[signer])
        ).encode(), term_ms

    async def repo_status(self, repo_id: str = "repo-1") -> RepoStatus:
        return await self.send(unsigned(QueryRepo("q-" + repo_id, COORDINATOR, repo_id)).encode())

    async def wait_repo(self, *states: str, from_ms: int = 0, repo_id: str = "repo-1") -> RepoStatus:
        """The repo's status once in one of `states` or final, asked from `from_ms` on."""
        await trio.sleep_until(self.coordinator.clock.trio_time_at(from_ms))
        with trio.fail_after(86_400):
            while (status := await self.repo_status(repo_id)).state not in {*states, *(s.value for s in FINAL)}:
                await trio.sleep(1)
        return status

    async def holdings(self) -> dict[str, int]:
        return {
            "a-sec": await self.units("a-sec"),
            "b-sec": await self.units("b-sec"),
            "a-eur": await self.cash("a-eur"),
            "b-eur": await self.cash("b-eur"),
        }

    async def units(self, account: str) -> int:
        return (await self.local.balances("csd", account)).get(BOND, 0)

    async def lock_state(self, ledger: str, lock: str) -> str | None:
        client = self.local.client(ledger)
        try:
            return (await client.query(QueryLock(client.next_query_id(), ledger, lock)))["state"]
        except Rejected:
            return None  # never placed

    async def held_locks(self) -> list:
        held = []
        for ledger in ("csd", "cbdc-eur"):
            client = self.local.client(ledger)
            held += await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 100))
        return held


async def start(nursery, tmp_path) -> Desk:
    local = Local(standard_world(tmp_path), MemoryBus(), nursery)
    for ledger in ("csd", "cbdc-eur"):
        await local.start_ledger(ledger)
    await local.fund_standard(ledgers=("csd", "cbdc-eur"))
    await local.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="a-eur", amount=1_000_000)  # the interest
    return Desk(local)


def moved_by_start(before: dict[str, int]) -> dict[str, int]:
    return {
        "a-sec": before["a-sec"] - UNITS,
        "b-sec": before["b-sec"] + UNITS,
        "a-eur": before["a-eur"] + LENT_MINOR,
        "b-eur": before["b-eur"] - LENT_MINOR,
    }


async def test_both_legs_settle_the_reverse_not_before_its_term(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator = await desk.start_coordinator()
        before = await desk.holdings()
        raw, term_ms = desk.repo()
        accepted = await desk.send(raw)
        assert accepted.state == "pending"
        opened = await desk.wait_repo("open")
        assert (opened.start_phase, opened.reverse_phase) == ("settled", "pending")
        await trio.sleep_until(coordinator.clock.trio_time_at(term_ms - 1_000))
        assert await desk.holdings() == moved_by_start(before)  # just before the term
        closed = await desk.wait_repo("closed", from_ms=term_ms)
        assert (closed.start_phase, closed.reverse_phase) == ("settled", "settled")
        reverse = coordinator.journal.get("repo-1-reverse")
        assert reverse.steps[1][1] >= term_ms  # not before the term
        after = await desk.holdings()
        assert after == {
            **before,
            "a-eur": before["a-eur"] + LENT_MINOR - REPAID_MINOR,
            "b-eur": before["b-eur"] - LENT_MINOR + REPAID_MINOR,
        }
        assert await desk.held_locks() == []
        desk.audit_clean()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "leg, phase",
    [
        ("start", Phase.LOCKED),
        ("start", Phase.SETTLED),
        ("reverse", Phase.PENDING),
        ("reverse", Phase.LOCKED),
        ("reverse", Phase.CLAIMING),
    ],
)
async def test_a_repo_survives_a_coordinator_restart_at_each_step(tmp_path, autojump_clock, leg, phase):
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator = await desk.start_coordinator()

        def crash(record):
            if record.settlement_id == f"repo-1-{leg}" and record.phase is phase:
                desk.scope.cancel()

        coordinator.on_phase = crash
        before = await desk.holdings()
        raw, term_ms = desk.repo()
        await desk.send(raw)
        await desk.kill_and_restart()
        closed = await desk.wait_repo("closed", from_ms=term_ms)
        assert (closed.state, closed.start_phase, closed.reverse_phase) == ("closed", "settled", "settled")
        assert await desk.holdings() == {
            **before,
            "a-eur": before["a-eur"] + LENT_MINOR - REPAID_MINOR,
            "b-eur": before["b-eur"] - LENT_MINOR + REPAID_MINOR,
        }
        assert await desk.held_locks() == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted-before-term"])
async def test_a_reverse_leg_that_fails_is_rolled_back_and_reported(tmp_path, autojump_clock, restart):
    """bank-b no longer holds the bonds at term: the bond lock is refused, the cash lock
    released, and the repo reports the ledger's reason."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        raw, term_ms = desk.repo()
        await desk.send(raw)
        await desk.wait_repo("open")
        await desk.local.instruct(
            Transfer, "csd", "bank-b", from_account="b-sec", to_account="treasury", asset=BOND, amount=UNITS
        )
        if restart:
            desk.scope.cancel()
            await desk.kill_and_restart()
        before_term = await desk.holdings()
        failed = await desk.wait_repo("closed", from_ms=term_ms)
        assert (failed.state, failed.reason_code) == ("reverse_failed", "insufficient_funds")
        assert "csd" in failed.reason and failed.reverse_phase == "failed"
        assert await desk.holdings() == before_term
        assert await desk.held_locks() == []
        assert await desk.lock_state("cbdc-eur", lock_id("repo-1-reverse", 0)) == "cancelled"
        nursery.cancel_scope.cancel()


async def test_a_start_that_fails_cancels_the_reverse_which_is_never_sent(tmp_path, autojump_clock):
    too_much = (SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", 10**15), START[1])
    repaid = (SettlementLeg("cbdc-eur", "a-eur", "b-eur", "EUR", 10**15), REVERSE[1])
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        coordinator = await desk.start_coordinator()
        before = await desk.holdings()
        raw, term_ms = desk.repo(start_legs=too_much, reverse_legs=repaid)
        await desk.send(raw)
        failed = await desk.wait_repo("start_failed")
        assert (failed.start_phase, failed.reverse_phase, failed.reason_code) == (
            "failed",
            "failed",
            "insufficient_funds",
        )
        await trio.sleep_until(coordinator.clock.trio_time_at(term_ms + 120_000))
        reverse_wire = decode_signed(raw).msg.reverse
        record = await coordinator.settle(reverse_wire)  # sent on its own: the cancelled record, not run
        assert record.phase is Phase.FAILED and record.reason.startswith("cancelled")
        assert await desk.lock_state("csd", lock_id("repo-1-reverse", 1)) is None
        assert await desk.holdings() == before
        nursery.cancel_scope.cancel()


async def test_a_badly_linked_repo_is_refused(tmp_path, autojump_clock):
    fewer = (REVERSE[0], SettlementLeg("csd", "b-sec", "a-sec", BOND, UNITS - 1))
    cheaper = (SettlementLeg("cbdc-eur", "a-eur", "b-eur", "EUR", LENT_MINOR - 1), REVERSE[1])
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        for repo_id, legs, reason in (
            ("r-fewer", fewer, f"returns {BOND} 100 units"),
            ("r-cheaper", cheaper, "less than"),
        ):
            raw, _ = desk.repo(repo_id, reverse_legs=legs)
            refused = await desk.send(raw)
            assert (refused.state, refused.reason_code) == ("rejected", "invalid_field") and reason in refused.reason
        raw, _ = desk.repo("r-stranger", signer="treasury")
        refused = await desk.send(raw)
        assert (refused.state, refused.reason_code) == ("rejected", "missing_signature")
        nursery.cancel_scope.cancel()


def test_the_reverse_must_come_after_the_starts_deadline():
    legs_back = REVERSE
    first = Settlement("s", "dvp", 0, COORDINATOR, 1_000, ("bank-b", "bank-a"), START)
    second = Settlement("r", "dvp", 0, COORDINATOR, 9_000, ("bank-a", "bank-b"), legs_back, not_before_ms=1_000)
    with pytest.raises(Rejected) as refusal:
        check_link(first, second, COORDINATOR)
    assert (refusal.value.code, refusal.value.field) == (Code.INVALID_FIELD, "reverse.not_before_ms")
    check_link(
        first,
        Settlement("r", "dvp", 0, COORDINATOR, 9_000, ("bank-a", "bank-b"), legs_back, not_before_ms=1_001),
        COORDINATOR,
    )


async def test_a_reverse_leg_sent_on_its_own_is_refused_while_its_repo_is_open(tmp_path, autojump_clock):
    """The reverse leg runs only at term and only after the start: sent to the coordinator
    by itself before then, with both parties' signatures, it is refused and nothing moves;
    a repo whose reverse already ran on its own is refused too."""
    async with trio.open_nursery() as nursery:
        desk = await start(nursery, tmp_path)
        await desk.start_coordinator()
        raw, term_ms = desk.repo()
        await desk.send(raw)
        await desk.wait_repo("open")
        before = await desk.holdings()
        reverse = from_wire(decode(raw), allowed=(Repo,)).msg.reverse
        reply = await desk.local.send_settlement(encode(reverse), timeout_s=5)
        status = decode_signed(reply).msg
        assert (status.phase, status.reason_code) == ("rejected", Code.NOT_AUTHORISED.value)
        assert "reverse leg of repo repo-1" in status.reason
        assert await desk.holdings() == before
        closed = await desk.wait_repo("closed", from_ms=term_ms)
        assert closed.reverse_phase == "settled"

        other, _ = desk.repo("repo-2")
        alone = from_wire(decode(other), allowed=(Repo,)).msg.reverse
        await desk.local.send_settlement(encode(alone), timeout_s=1)  # runs as sent (waits for its term)
        refused = await desk.send(other)
        assert (refused.state, refused.reason_code) == ("rejected", Code.ID_REUSED.value)
        nursery.cancel_scope.cancel()
