"""`lockstep chaos`: a DvP and PvP workload under chosen faults, then the audit.

The whole world runs in this process on the in-memory bus (each ledger and the
coordinator with its own database, key and clock); faults come from a seeded generator:

    drop        requests from the coordinator to a ledger, or their replies, are lost
    duplicate   requests reach the ledger twice
    delay       requests are held back and overtake one another
    kill-coordinator   the coordinator stops dead and restarts from its journal
    kill-ledger        a ledger stops dead (its database as it was) and restarts
    skew        every ledger's clock is off by up to half the allowed skew, each its own way
    partition   one ledger cannot be reached for a while, though it runs (and refunds);
                cut at the worst moment: as a second leg's claim is sent to it

Outages (kills, partitions) last less than the safety margin Δ, restarts included, unless
`long_outages`, which makes each last from Δ to ten times Δ, the coordinator's and a
ledger's overlapping as they fall. No timing decides whether a settlement settles (the
coordinator's durable decision does), so neither kind may leave one one-legged; only a
backstop passing during an outage can, which `backstop_ms` forces to happen (the audit
and a live observer must then report each, and the outage timeline explain it).

Every fourth back office sends its settlements four at a time, in one request to their
coordinator (protocol section 17), each request sent again, the same bytes, until the
statuses of all four come back; the others send each alone.

With `queue`, the back offices trade through the matching desk instead: each sends a
DvP as two one-sided sese.023 instructions, half of them allowing partial settlement,
every fourth sent with a second that sells half of it back (so that trades both ways
wait together, and liquidity saving may settle them netted, as linked settlements),
while the seller's bonds and the buyer's cash have been put aside, so that most trades
wait in the settlement queue at first; a funder hands them back a little at a time, and
all of it once the run is over, when every trade must settle. It reports the trades
settled and the value they released; the audit also checks that no trade's units were
settled twice by its tries.

With `paths`, the world is three one-currency CBDC ledgers and three market makers
(engine/world/paths.py), and each back office is a payer's: it pays CHF from EUR through
intermediaries the coordinator chooses from their quotes (a multi-hop payment, each hop
its own lock, one secret). The intermediaries never claim (no watchtower of theirs); a
partition cut as a second leg's claim is sent falls on a middle hop. The audit names any
intermediary that paid and was not paid.

Besides the audit it measures liveness: how long after an outage ended each settlement
that lived through it took to end, and what the locks cost, how long each was held and
the value held in locks over time. Process-level kills and a broker restart are in
chaos_processes; here the coordinator and ledgers are stopped by cancellation, which
loses everything not yet committed, as a kill does."""

from __future__ import annotations

import functools
import itertools
import random
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import attrs
import trio

from protocols.bus import service_of_ledger
from protocols.bus.faults import Faults, FaultyBus
from protocols.bus.memory import MemoryBus
from protocols.htlc import LockState
from protocols.messages import LEGS_MAX, PathStatus, QueryLocks, Settlement, SettlementLeg, SettlementStatus
from protocols.money import format_amount
from protocols.settlement import Timing, lock_id
from protocols.signing import decode_signed

from ..audit.journals import Kind, LedgerJournal, Report, Violation, audit, read_over_bus
from ..audit.observer import Observer
from ..desks.matching import MatchingDesk
from ..desks.paths import PathDesk
from . import paths as path_world
from . import trades
from .local import LEDGERS, PLACES, Local, dvp_legs, standard_world

FAULTS = ("drop", "duplicate", "delay", "kill-coordinator", "kill-ledger", "skew", "partition")
CHAOS_TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=3_000, clock_skew_ms_max=1_000)  # Δ = 4 s
OUTAGE_S_MAX = 0.8  # a kill's or partition's pause: the restart after it must fit in the rest of Δ
LONG_OUTAGES_DELTAS = (1, 10)  # with long_outages, a pause of Δ to 10 Δ
MESSAGE_FAULTS = {
    "drop": dict(drop_request=0.05, drop_reply=0.05),
    "duplicate": dict(duplicate=0.2),
    "delay": dict(delay=0.3, delay_s_max=0.05),
}
CONCURRENCY = 16
TOGETHER = 4  # settlements every fourth back office sends in one request (protocol section 17)
PAUSE_S_MAX = 1.0  # between two kills or partitions
SETTLE_WAIT_S = 60.0  # after the run, for every settlement to end
BACK_OFFICE_TIMEOUT_S = 1.0  # then the same settlement again: a restarted coordinator may not have heard it
OBSERVER_WAIT_S = 5.0  # after the audit, for the observer to have alerted what the audit found
FUNDING_S_MAX = 0.3  # between two hand-backs of what was put aside


def timing_with(backstop_ms: int | None) -> Timing:
    """The chaos timing, with `backstop_ms` (if given) as its backstop."""
    if backstop_ms is None:
        return CHAOS_TIMING
    try:
        return attrs.evolve(CHAOS_TIMING, backstop_ms=backstop_ms)
    except ValueError as error:
        raise ValueError(f"--backstop-ms {backstop_ms}: {error}") from None


@attrs.frozen
class Outage:
    """A span, in ms on the parties' clock, in which `whom` (the coordinator, or a
    ledger id) could not be reached by the coordinator."""

    whom: str
    start_ms: int
    end_ms: int


@attrs.frozen
class LockCost:
    """What the locks of a run cost: how long each was held (ms, from its lock entry to
    the entry that ended it, on its ledger's clock), and the value held over time, by
    asset (amount × ms): the liquidity outages take from the parties."""

    held_ms: tuple[int, ...]
    value_ms: dict[str, int]

    @classmethod
    def of(cls, journals: list[LedgerJournal]) -> LockCost:
        held: list[int] = []
        value: defaultdict[str, int] = defaultdict(int)
        for journal in journals:
            for lock_id_, placed in journal.placed.items():
                ended = journal.ended.get(lock_id_)
                if ended is None:
                    continue
                lock = journal.replay.locks[lock_id_]
                held.append(ended.time_ms - placed.time_ms)
                value[lock.asset] += lock.amount * (ended.time_ms - placed.time_ms)
        return cls(tuple(sorted(held)), dict(value))

    def text(self) -> str:
        if not self.held_ms:
            return "no locks"
        value = ", ".join(f"{format_amount(asset, round(v / 1000))}·s" for asset, v in sorted(self.value_ms.items()))
        return f"{_spread_ms(list(self.held_ms), 'locks held')}; value × time held {value}"


def _percentile(ordered: tuple[int, ...] | list[int], percent: int) -> int:
    """Nearest rank: the value below which `percent` % of the values fall."""
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


@attrs.define
class Outcome:
    faults: Counter = attrs.field(factory=Counter)
    phases: Counter = attrs.field(factory=Counter)
    report: Report | None = None
    outages: list[Outage] = attrs.field(factory=list)
    explanations: list[OneLegged | str] = attrs.field(factory=list)  # one per one-legged settlement
    down: dict[tuple[str, str], int] = attrs.field(factory=dict)  # outages going on: (fault, whom) -> since (ms)
    unalerted: list[str] = attrs.field(factory=list)  # one-legged settlements the observer missed
    # each final settlement: accepted and final (ms), and who it needed (the coordinator, its ledgers)
    lives: list[tuple[int, int, frozenset[str]]] = attrs.field(factory=list)
    locks: LockCost | None = None
    paths: Counter = attrs.field(factory=Counter)  # final settlements, cross-ledger and same-ledger
    trades: Counter = attrs.field(factory=Counter)  # queue mode: each trade's end
    released_minor: int = 0  # queue mode: the cash of the trades settled
    together: Counter = attrs.field(factory=Counter)  # settlements sent together, and the requests that carried them

    def paid(self, status: PathStatus) -> None:
        """A multi-hop payment's final status, as its payer received it."""
        path = f"{len(status.legs) - 1} intermediaries" if status.legs else "not routed"
        self._ended(status.phase, path, status.steps, {status.coordinator, *(leg.ledger for leg in status.legs)})

    def ended(self, settlement: Settlement, status: SettlementStatus) -> None:
        """A settlement's final status, as its back office received it."""
        path = "same" if len({leg.ledger for leg in settlement.legs}) == 1 else "cross"
        needed = {settlement.coordinator, *(leg.ledger for leg in settlement.legs)}
        self._ended(status.phase, path, status.steps, needed)

    def _ended(self, phase: str, path: str, steps: tuple, needed: set[str]) -> None:
        """Counted by phase and path; and its life, from its steps, with whom it needed."""
        self.phases[phase] += 1
        self.paths[path] += 1
        if steps:
            self.lives.append((steps[0][1], steps[-1][1], frozenset(needed)))

    def verdict(self) -> int:
        """Print every violation and why each one-legged settlement happened; the exit status."""
        assert self.report is not None
        if not self.report.clean:
            print("\n".join(str(violation) for violation in self.report.violations))
        if self.explanations:
            print("why each settlement went one-legged:")
            print("\n".join(f"  {line}" for line in self.explanations))
        return 0 if self.report.clean else 1

    def recoveries_ms(self) -> list[int]:
        """For each settlement an outage of the coordinator or of one of its ledgers ended
        during the life of, the time from the end of the last such outage to the
        settlement's end: how soon it completed once it could."""
        lags = []
        for accepted_ms, final_ms, needed in self.lives:
            ends = [o.end_ms for o in self.outages if o.whom in needed and accepted_ms < o.end_ms <= final_ms]
            if ends:
                lags.append(final_ms - max(ends))
        return sorted(lags)

    def went_down(self, fault: str, whom: str, now_ms: int) -> None:
        self.down[(fault, whom)] = now_ms

    def came_back(self, fault: str, whom: str, now_ms: int) -> None:
        self.outages.append(Outage(whom, self.down.pop((fault, whom)), now_ms))

    def over(self, margin_ms: int) -> int:
        """Outages, restarts included, that lasted Δ or more: outside what the time-locks cover."""
        return sum(1 for outage in self.outages if outage.end_ms - outage.start_ms >= margin_ms)

    def table(self) -> str:
        report = self.report
        assert report is not None
        kinds = Counter(violation.kind.value for violation in report.violations)
        longest = max((o.end_ms - o.start_ms for o in self.outages), default=0)
        settlements = (
            ("settlements", ", ".join(f"{phase} {count}" for phase, count in sorted(self.phases.items())) or "none")
            if self.phases or not self.trades
            else (  # every settlement is a trade's try: what the ledgers' journals say of them
                "settlement tries across ledgers",
                ", ".join(f"{end} {n}" for end, n in sorted(report.settlements.items())),
            )
        )
        rows = [
            ("faults injected", ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items())) or "none"),
            settlements,
            *(
                [("payments by path", ", ".join(f"{path} {n}" for path, n in sorted(self.paths.items())))]
                if any("intermediar" in path or path == "not routed" for path in self.paths)
                else []
            ),
            *(
                [
                    ("trades through the queue", ", ".join(f"{end} {n}" for end, n in sorted(self.trades.items()))),
                    ("value released", format_amount("EUR", self.released_minor)),
                    ("settled twice", str(kinds.get("settled_twice", 0))),
                ]
                if self.trades
                else []
            ),
            *(
                [
                    (
                        "sent together",
                        f"{self.together['settlements']} settlements in {self.together['requests']} requests",
                    )
                ]
                if self.together
                else []
            ),
            ("atomicity violations", str(kinds.get("one_legged", 0))),
            ("value created or lost", str(kinds.get("conservation", 0) + kinds.get("replay", 0))),
            ("locks left past their refund time", str(kinds.get("lock_overdue", 0))),
            (
                "journals broken or forged",
                str(kinds.get("journal", 0) + kinds.get("forged", 0) + kinds.get("state", 0)),
            ),
            ("one-legged not alerted live", str(len(self.unalerted))),
            (
                f"outages of Δ ({CHAOS_TIMING.margin_ms} ms) or more",
                f"{self.over(CHAOS_TIMING.margin_ms)} (longest {longest} ms)",
            ),
            ("locks still held at the end", str(report.settlements.get("in progress", 0))),
            ("completed after an outage ended", _spread_ms(self.recoveries_ms(), "settlements")),
            ("lock cost", self.locks.text() if self.locks is not None else "not measured"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


async def run(
    directory: Path,
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    *,
    long_outages: bool = False,
    offload: bool = True,
    settlements: int | None = None,
    backstop_ms: int | None = None,
    queue: bool = False,
    paths: bool = False,
) -> Outcome:
    """Run the workload for `seconds` (or until `settlements` have ended, if that comes
    first) under `faults`, wait for every settlement to end, then audit every ledger
    over the bus. `backstop_ms` replaces the locks' backstop (hours) with one an outage
    can outlast. Under a MockClock pass `offload=False` and a number of settlements:
    a load that never idles never lets a mock clock advance."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    chance = random.Random(seed)
    outcome = Outcome()
    bus = MemoryBus()
    world = path_world.path_world(directory) if paths else standard_world(directory)
    specs = path_world.LEDGERS if paths else LEDGERS
    message_faults = Faults(**{k: v for fault in faults for k, v in MESSAGE_FAULTS.get(fault, {}).items()})
    faulty = FaultyBus(
        bus,
        message_faults,
        seed,  # the coordinator's view of the bus
        applies=lambda service, payload: service.startswith("ledger/"),
    )
    timing = timing_with(backstop_ms)
    margin_s = timing.margin_ms / 1000
    # long: far past the time to decide and any Δ, so that a cut at the worst moment tells
    outage_s = tuple(deltas * margin_s for deltas in LONG_OUTAGES_DELTAS) if long_outages else (0, OUTAGE_S_MAX)

    async with trio.open_nursery() as nursery:
        local = Local(world, bus, nursery, offload=offload)
        skews = {
            spec.ledger_id: chance.randint(-CHAOS_TIMING.clock_skew_ms_max // 2, CHAOS_TIMING.clock_skew_ms_max // 2)
            if "skew" in faults
            else 0
            for spec in specs
        }
        for spec in specs:
            await local.start_ledger(spec.ledger_id, skew_ms=skews[spec.ledger_id])
        if "skew" in faults:
            outcome.faults["skewed clocks"] += sum(1 for skew in skews.values() if skew)
        if paths:
            await path_world.fund(local)
            await path_world.start_intermediaries(local, nursery, timing.margin_ms)
        else:
            await local.fund_standard()
        ledger_ids = [spec.ledger_id for spec in specs]
        observer = Observer(world.registry, bus, ledger_ids, CHAOS_TIMING.margin_ms, local.clock, publish=False)
        await nursery.start(observer.run)
        desks = (lambda c: MatchingDesk(c, PLACES),) if queue else (PathDesk,) if paths else ()
        start_coordinator = functools.partial(local.start_coordinator, timing, bus=faulty, desks=desks)
        if queue:
            aside = await trades.put_aside(local)
        coordinator, scope = await start_coordinator()
        state: dict[str, Any] = {"coordinator": coordinator, "scope": scope}
        struck: set[str] = set()

        def stream(task: str) -> random.Random:
            """A task's own draws from the seed: how the tasks interleave in time then
            changes none of them, so a seed strikes the same faults for as long."""
            return random.Random(f"{seed}:{task}")

        def pause(fault: str, draws: random.Random) -> float:
            """Until a fault strikes: soon the first time, so that a short run sees each;
            with long outages, as long as they last, so that services are up half the time."""
            if fault not in struck:
                struck.add(fault)
                return draws.uniform(0.02, 0.1)
            return draws.uniform(*outage_s) if long_outages else draws.uniform(0.2, PAUSE_S_MAX)

        enough = trio.Event()

        async def kill_coordinator() -> None:
            draws = stream("kill-coordinator")
            while True:
                await trio.sleep(pause("kill-coordinator", draws))
                state["scope"].cancel()
                outcome.faults["kill-coordinator"] += 1
                outcome.went_down("kill-coordinator", "coordinator", local.clock.now_ms())
                await trio.sleep(draws.uniform(*outage_s))
                state["coordinator"], state["scope"] = await start_coordinator()
                outcome.came_back("kill-coordinator", "coordinator", local.clock.now_ms())

        async def kill_ledger() -> None:
            draws = stream("kill-ledger")
            while True:
                await trio.sleep(pause("kill-ledger", draws))
                ledger = draws.choice(ledger_ids)
                local.stop_ledger(ledger)
                outcome.faults["kill-ledger"] += 1
                outcome.went_down("kill-ledger", ledger, local.clock.now_ms())
                await trio.sleep(draws.uniform(*outage_s))
                await local.start_ledger(ledger, skew_ms=skews[ledger])
                outcome.came_back("kill-ledger", ledger, local.clock.now_ms())

        async def partition() -> None:
            draws = stream("partition")
            while True:
                await trio.sleep(pause("partition", draws))
                tripped = trio.Event()  # whichever ledger is first sent a second leg's claim
                for ledger_id in ledger_ids:
                    faulty.trip(service_of_ledger(ledger_id), _claims_second_leg, tripped)
                with trio.move_on_after(PAUSE_S_MAX):  # else one is cut now, at no moment in particular
                    await tripped.wait()
                faulty.trips.clear()
                ledger = next(
                    (ledger_id for ledger_id in ledger_ids if service_of_ledger(ledger_id) in faulty.cut), None
                ) or draws.choice(ledger_ids)
                faulty.cut.add(service_of_ledger(ledger))
                outcome.faults["partition"] += 1
                outcome.went_down("partition", ledger, local.clock.now_ms())
                await trio.sleep(draws.uniform(*outage_s))
                faulty.cut.discard(service_of_ledger(ledger))
                outcome.came_back("partition", ledger, local.clock.now_ms())

        done = trio.Event()  # the run is over: no new settlement, no new fault

        office_numbers = itertools.count()

        async def trading_office() -> None:
            """Queue mode: trades through the matching desk, one after another."""
            office = next(office_numbers)
            draws = stream(f"back-office-{office}")
            for number in itertools.count():
                if done.is_set():
                    return
                sent = [await trades.send(local, draws, f"q{office}-{number}", BACK_OFFICE_TIMEOUT_S)]
                if number % 4 == 3:  # and bank-b sells half of it back at once: the two fund each other in part
                    units, cash = max(sent[0].units // 2, 1), max(sent[0].cash_minor // 2, 1)
                    reference = f"q{office}-{number}-back"
                    sent.append(
                        await trades.send(
                            local, draws, reference, BACK_OFFICE_TIMEOUT_S, units=units, cash=cash, back=True
                        )
                    )
                for trade in sent:
                    end = await trades.ended(local, trade)
                    outcome.trades[end] += 1
                    outcome.released_minor += trade.cash_minor if end == "settled" else 0
                if settlements is not None and outcome.trades.total() >= settlements:
                    enough.set()

        async def back_office() -> None:
            office = next(office_numbers)
            draws = stream(f"back-office-{office}")
            while not done.is_set():
                await settle(local, [local.settlement(*draw(draws)) for _ in range(sent_together(office))], outcome)
                if settlements is not None and sum(outcome.phases.values()) >= settlements:
                    enough.set()

        async def payer() -> None:
            """Paths mode: payments through intermediaries, one after another, each sent
            again (the same bytes) until its outcome comes."""
            office = next(office_numbers)
            draws = stream(f"payer-{office}")
            for number in itertools.count():
                if done.is_set():
                    return
                amount = draws.randint(1, 2_000_00)
                raw = path_world.payment(
                    local, f"pay-{office}-{number}", amount, amount * 2, local.clock.now_ms() + 30_000
                )
                while (reply := await local.send_settlement(raw, timeout_s=BACK_OFFICE_TIMEOUT_S)) is None:
                    pass
                outcome.paid(decode_signed(reply, allowed=(PathStatus,)).msg)
                if settlements is not None and sum(outcome.phases.values()) >= settlements:
                    enough.set()

        async def funder() -> None:
            """Hand back, a little at a time, what was put aside."""
            draws = stream("funder")
            while True:
                await trio.sleep(draws.uniform(0.05, FUNDING_S_MAX))
                share = draws.uniform(0.002, 0.02)
                await trades.hand_back(local, {place: max(1, int(amount * share)) for place, amount in aside.items()})

        async with trio.open_nursery() as offices:
            for _ in range(CONCURRENCY):
                offices.start_soon(trading_office if queue else payer if paths else back_office)
            async with trio.open_nursery() as strikes:
                if queue:
                    strikes.start_soon(funder)
                for fault, task in (
                    ("kill-coordinator", kill_coordinator),
                    ("kill-ledger", kill_ledger),
                    ("partition", partition),
                ):
                    if fault in faults:
                        strikes.start_soon(task)
                with trio.move_on_after(seconds):
                    await enough.wait()
                done.set()
                strikes.cancel_scope.cancel()
            for kind, count in faulty.injected.items():
                outcome.faults[kind] += count
            # faults off: every back office sees its last settlement end
            message_faults.drop_request = message_faults.drop_reply = message_faults.duplicate = 0
            message_faults.delay = 0
            faulty.trips.clear()  # a wire still armed would cut a ledger after the run, unrecorded
            faulty.cut.clear()
            for ledger_id in ledger_ids:
                if ledger_id not in local.services:
                    await local.start_ledger(ledger_id, skew_ms=skews[ledger_id])
            if state["scope"].cancel_called:
                state["coordinator"], state["scope"] = await start_coordinator()
            if queue:  # all of it back: every trade waiting can settle now
                await trades.hand_back(local)
            for fault, whom in list(outcome.down):  # cut short by the end of the run
                outcome.came_back(fault, whom, local.clock.now_ms())
            offices.cancel_scope.deadline = trio.current_time() + SETTLE_WAIT_S
        with trio.fail_after(SETTLE_WAIT_S):
            while state["coordinator"].in_flight:
                await trio.sleep(0.1)
        with trio.move_on_after(timing.total_ms() / 1000):  # a watchtower may still be ending one
            while await _locks_held(local, ledger_ids):
                await trio.sleep(0.1)
        await judge(outcome, await read_over_bus(bus, world.registry, ledger_ids), observer, skews)
        nursery.cancel_scope.cancel()
    return outcome


async def judge(outcome: Outcome, journals: list[LedgerJournal], observer: Observer, skews: dict[str, int]) -> None:
    """The audit; each one-legged settlement explained by the outages, and checked to
    have been alerted live by the observer."""
    outcome.report = audit(journals, grace_ms=CHAOS_TIMING.margin_ms)
    outcome.locks = LockCost.of(journals)
    one_legged = [violation for violation in outcome.report.violations if violation.kind is Kind.ONE_LEGGED]
    by_ledger = {journal.ledger: journal for journal in journals}
    outcome.explanations = [explain(violation, by_ledger, outcome.outages, skews) for violation in one_legged]
    with trio.move_on_after(OBSERVER_WAIT_S):
        while missed := not_alerted(one_legged, observer):
            await trio.sleep(0.1)
    outcome.unalerted = sorted(missed)


async def _locks_held(local: Local, ledger_ids: list[str]) -> bool:
    """Whether any ledger still holds a lock: once every settlement has ended, none may
    (the audit counts any left as in progress)."""
    for ledger_id in ledger_ids:
        client = local.client(ledger_id)
        if await client.query(QueryLocks(client.next_query_id(), ledger_id, 2**62, 1)):
            return True
    return False


def _claims_second_leg(payload: bytes) -> bool:
    """A claim of a settlement's leg 1: the secret is out on leg 0's ledger already."""
    return b'"type":"claim"' in payload and b":1:c" in payload


def not_alerted(one_legged: list[Violation], observer: Observer) -> set[str]:
    alerted = {alert.settlement for alert in observer.alerts if alert.kind is Kind.ONE_LEGGED}
    return {violation.settlement for violation in one_legged if violation.settlement is not None} - alerted


@attrs.frozen
class OneLegged:
    """Why a settlement went one-legged: from the claim of one leg to the refund time of
    the other (its backstop; real time: each ledger's skew taken off), how long the other
    leg's ledger was out of reach, or the coordinator (and the watchtower inside it) dead."""

    settlement: str
    claimed_on: str
    lost_on: str
    window_ms: int
    coordinator_down_ms: int
    ledger_out_ms: int
    out_of_reach_ms: int  # either, or both

    def __str__(self) -> str:
        return (
            f"settlement {self.settlement}: {self.claimed_on} applied the claim {self.window_ms} ms before "
            f"{self.lost_on}'s lock reached its refund time; in that time the coordinator was down "
            f"{self.coordinator_down_ms} ms and {self.lost_on} down or cut off {self.ledger_out_ms} ms: "
            f"out of reach {self.out_of_reach_ms} ms in all"
        )


def explain(
    violation: Violation, journals: dict[str, LedgerJournal], outages: list[Outage], skews: dict[str, int]
) -> OneLegged | str:
    settlement = violation.settlement
    assert settlement is not None
    legs = [
        (
            journal.ledger,
            journal.replay.locks[lock_id(settlement, index)],
            journal.ended.get(lock_id(settlement, index)),
        )
        for index in range(LEGS_MAX)
        for journal in journals.values()
        if lock_id(settlement, index) in journal.replay.locks
    ]
    claimed = [leg for leg in legs if leg[1].state is LockState.CLAIMED]
    others = [leg for leg in legs if leg[1].state is not LockState.CLAIMED]
    if not claimed or not others or claimed[0][2] is None:
        return f"settlement {settlement}: {violation.reason} (its locks are not all in the journals)"
    (claim_ledger, _, claim_at), (other_ledger, other_lock, _) = claimed[0], others[0]
    assert claim_at is not None  # checked above
    start_ms = claim_at.time_ms - skews[claim_ledger]
    end_ms = other_lock.refund_at_ms - skews[other_ledger]

    def covered(*whom: str) -> int:
        return _covered([outage for outage in outages if outage.whom in whom], start_ms, end_ms)

    return OneLegged(
        settlement,
        claim_ledger,
        other_ledger,
        end_ms - start_ms,
        covered("coordinator"),
        covered(other_ledger),
        covered("coordinator", other_ledger),
    )


def _spread_ms(values: list[int], what: str) -> str:
    """`values`, sorted, as a count and percentiles."""
    if not values:
        return "none"
    return (
        f"{len(values)} {what}: p50 {_percentile(values, 50)} ms, p99 {_percentile(values, 99)} ms, max {values[-1]} ms"
    )


def _covered(outages: list[Outage], start_ms: int, end_ms: int) -> int:
    """How many ms of [start_ms, end_ms) fall in at least one outage."""
    covered, reached = 0, start_ms
    for outage in sorted(outages, key=lambda o: o.start_ms):
        begin, end = max(outage.start_ms, reached), min(outage.end_ms, end_ms)
        if end > begin:
            covered += end - begin
            reached = end
    return covered


def sent_together(office: int) -> int:
    """How many settlements a back office sends in one request: every fourth, TOGETHER."""
    return TOGETHER if office % 4 == 3 else 1


async def settle(local: Local, raws: list[bytes], outcome: Outcome) -> None:
    """Settlements sent as a back office sends them, each request again (the same bytes)
    until answered: one alone, or several together, a request to each coordinator they
    name. Each final status goes to `outcome`."""
    sent = [decode_signed(raw, allowed=(Settlement,)).msg for raw in raws]
    if len(raws) == 1:
        while (reply := await local.send_settlement(raws[0], timeout_s=BACK_OFFICE_TIMEOUT_S)) is None:
            pass
        outcome.ended(sent[0], decode_signed(reply, allowed=(SettlementStatus,)).msg)
        return
    for coordinator in dict.fromkeys(settlement.coordinator for settlement in sent):
        mine = [
            (raw, settlement)
            for raw, settlement in zip(raws, sent, strict=True)
            if settlement.coordinator == coordinator
        ]
        group = [raw for raw, _ in mine]
        outcome.together.update(settlements=len(group), requests=1)
        while (statuses := await local.send_settlements(group, timeout_s=BACK_OFFICE_TIMEOUT_S)) is None:
            pass
        for (_, settlement), status in zip(mine, statuses, strict=True):
            outcome.ended(settlement, status)


def draw(chance: random.Random):
    """A settlement: cross or same ledger, DvP or PvP, small amounts."""
    kind = chance.choice(("dvp", "pvp"))
    cross = chance.random() < 0.75
    if kind == "dvp":
        legs = (
            dvp_legs(
                "csd",
                "a-sec",
                "b-sec",
                chance.randint(1, 5),
                "cbdc-eur",
                "EUR",
                "b-eur",
                "a-eur",
                chance.randint(100, 10_000),
            )
            if cross
            else dvp_legs(
                "unified", "a", "b", chance.randint(1, 5), "unified", "EUR", "b", "a", chance.randint(100, 10_000)
            )
        )
    else:
        legs = (
            (
                SettlementLeg("cbdc-eur", "b-eur", "a-eur", "EUR", chance.randint(100, 10_000)),
                SettlementLeg("cbdc-multi", "a-usd", "b-usd", "USD", chance.randint(100, 10_000)),
            )
            if cross
            else (
                SettlementLeg("unified", "b", "a", "EUR", chance.randint(100, 10_000)),
                SettlementLeg("unified", "a", "b", "USD", chance.randint(100, 10_000)),
            )
        )
    return kind, legs, ("bank-b", "bank-a")


def heading(
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    *,
    long_outages: bool = False,
    backstop_ms: int | None = None,
    settlements: int | None = None,
    coordinators: int = 1,
    queue: bool = False,
    paths: bool = False,
) -> str:
    """What a run is, as its first line says."""
    return (
        f"{seconds:g} s{f' or {settlements} settlements' if settlements else ''}, seed {seed}, "
        f"faults {', '.join(faults) or 'none'}{', outages of Δ to 10 Δ' if long_outages else ''}"
        f"{f', backstop {backstop_ms} ms' if backstop_ms is not None else ''}"
        f"{f', {coordinators} coordinators' if coordinators > 1 else ''}"
        f"{', trades through the settlement queue' if queue else ''}"
        f"{', payments through intermediaries' if paths else ''}"
    )


def main(seconds: float, seed: int, faults: tuple[str, ...], **options) -> int:
    """`options`: run's long_outages, settlements, backstop_ms, queue and paths."""
    directory = Path(tempfile.mkdtemp(prefix="lockstep-chaos-"))
    print(f"lockstep chaos: {heading(seconds, seed, faults, **options)}; world in {directory}", flush=True)
    try:
        outcome = trio.run(functools.partial(run, directory, seconds, seed, faults, **options))
    except ValueError as error:
        print(f"lockstep chaos: {error}", file=sys.stderr)
        return 2
    print(outcome.table())
    return outcome.verdict()
