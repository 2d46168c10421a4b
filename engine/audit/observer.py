"""`lockstep observer`: the audit, live. It follows every ledger's journal as it grows
(protocols.bus.follow: gap-free, in order, every link and signature checked), replays
each entry into the auditor's own `LedgerJournal`, and after each entry judges again,
by the auditor's own rules (`legs_of`, `judge`), the settlements whose locks that entry
placed or ended. Every half second it also looks for what no entry announces: a lock
still held past its refund time plus the grace period, and a settlement whose other leg can
no longer be claimed because its ledger went quiet (down, say) before ending it.

Time. A journal tells "now" only as late as its last entry, and a ledger that is down
writes none. Once a ledger's journal has been read up to the head it had when the
observer started, the observer also takes that ledger's clock to have passed its own
clock less `grace_ms`. So `grace_ms` must cover the skew between the observer's clock
and any ledger's, plus how far the observer lags behind a journal: up to a second when
the last event is lost (protocols/bus/follow.py, IDLE_POLL_S), more if it falls behind.

Each violation is alerted once: one ERROR line starting with `ALERT`, kept in `alerts`,
and published (unsigned) on the bus topic `observer/alerts`. A journal that does not
verify or cannot be replayed is alerted and no longer followed: nothing from the break
on is trusted, as in the audit. Memory is bounded: a settlement judged for good (every
leg ended, or never locked by its deadline) is forgotten and only counted."""

from __future__ import annotations

import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from contextlib import aclosing

import trio

from protocols import canonical
from protocols.bus import Bus, BusTimeout
from protocols.bus.address import redacted
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.follow import follow
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure
from protocols.htlc import LockState
from protocols.journal import ChainBroken, Replay, entry_hash
from protocols.matching import MATCHED_PREFIX, pair_of
from protocols.messages import Entry, QueryInfo
from protocols.registry import Registry
from protocols.settlement import lock_id
from protocols.signing import Signed, from_wire

from ..config import ConfigError, CoordinatorConfig
from .graces import OBSERVER_GRACE_MS
from .journals import (
    AuditError,
    Kind,
    LedgerJournal,
    Terms,
    Try,
    Violation,
    judge,
    ledger_key,
    legs_of,
    settled_twice,
)

log = logging.getLogger("lockstep.observer")

CHECK_INTERVAL_S = 0.5  # how often held locks and quiet ledgers are looked at
RETRY_S = 1.0  # before asking a ledger again after an answer that is not its own
STATUS_INTERVAL_S = 60.0  # how often the counts are logged
ALERTS_KEPT_MAX = 10_000  # in `alerts`; every alert is logged and counted in `alerted` regardless
ALERTS_TOPIC = "observer/alerts"
PAIRS_KEPT_MAX = 100_000  # matched pairs whose tries that moved are remembered, the latest


class Observer:
    def __init__(
        self,
        registry: Registry,
        bus: Bus,
        ledger_ids: list[str],
        grace_ms: int,
        clock: ServiceClock,
        *,
        publish: bool = True,
    ) -> None:
        assert grace_ms >= 0, grace_ms
        assert ledger_ids and len(set(ledger_ids)) == len(ledger_ids), ledger_ids
        self.bus = bus
        self.grace_ms = grace_ms
        self.clock = clock
        self.publish = publish
        self.clients = {ledger: LedgerClient(bus, ledger, ledger_key(registry, ledger)) for ledger in ledger_ids}
        # no set of every instruction id: memory stays bounded (the audit keeps one, to find an id applied twice)
        self.journals = {ledger: LedgerJournal(ledger, Replay(applied=None)) for ledger in ledger_ids}
        self.alerts: list[Violation] = []
        self.alerted: Counter[Kind] = Counter()  # every alert raised, by kind
        self.judged: Counter[str] = Counter()  # settlements judged for good and forgotten, by outcome
        self._open: dict[str, Terms] = {}  # settlements seen and not yet judged for good
        self._heads: dict[str, int] = {}  # each ledger's journal length when the observer started
        self._live: set[str] = set()  # ledgers whose journal has been read up to that head
        self._problems_alerted = dict.fromkeys(ledger_ids, 0)  # of each journal's `problems`
        self._once: set[tuple] = set()  # judged violations alerted, by `_first`'s key
        self._tries: OrderedDict[str, dict[str, Try]] = OrderedDict()  # a matched pair -> its tries that moved
        # for a console beside it: each entry as it is replayed (the ledger, the entry, its
        # hash, the settlements whose locks it placed or ended), and each alert as raised
        self.on_entry: Callable[[str, Signed, str, list[str]], None] = lambda ledger, signed, hash_, settlements: None
        self.on_alert: Callable[[Violation], None] = lambda violation: None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for ledger in self.journals:
                nursery.start_soon(self._follow, ledger)
            nursery.start_soon(self._check_every_interval)
            task_status.started()

    # -- entries as they come ------------------------------------------------------------------

    async def _follow(self, ledger: str) -> None:
        """From entry 0, then live, until the journal breaks."""
        client, journal = self.clients[ledger], self.journals[ledger]
        self._heads[ledger] = await self._head(client)
        if self._heads[ledger] == 0:
            self._live.add(ledger)
        while journal.intact:
            try:
                async with aclosing(follow(client, from_seq=journal.entries)) as entries:
                    async for value in entries:
                        await self._see(journal, value)
                        if not journal.intact:
                            break
            except ChainBroken as error:
                journal.chain_broken(error)
                await self._alert_all(self._new_problems(journal))
            except (BadReply, Rejected) as error:  # an answer that is not the ledger's, or garbage on its topic
                log.warning(
                    "lost %s's journal stream (%s); following again from entry %d", ledger, error, journal.entries
                )
                await trio.sleep(RETRY_S)
        self._live.discard(ledger)
        log.error("no longer following %s: its journal is not trusted from entry %d on", ledger, journal.broken_at)

    async def _head(self, client: LedgerClient) -> int:
        while True:
            try:
                info = await client.query(QueryInfo(client.next_query_id(), client.ledger_id))
                if isinstance(info, dict) and isinstance(info.get("head_seq"), int):
                    return info["head_seq"]
                log.warning("%s answered query_info without its head: %.80s", client.ledger_id, info)
            except (BusTimeout, BadReply, Rejected) as error:
                log.warning("cannot learn %s's journal head (%s); asking again", client.ledger_id, error)
            await trio.sleep(RETRY_S)

    async def _see(self, journal: LedgerJournal, value: dict) -> None:
        """Replay one entry, checked by the follower, and judge what it touched."""
        signed = from_wire(value, allowed=(Entry,))
        entry: Entry = signed.msg
        assert entry.seq == journal.entries, f"{journal.ledger}: entry {entry.seq} where {journal.entries} is next"
        if entry.prev_hash != journal.head_hash:  # the follower takes a resumed stream's first link on trust
            raise ChainBroken(entry.seq, "prev_hash does not match the hash of the entry before")
        hash_ = entry_hash(signed)
        journal.read([(signed, hash_)])
        if journal.entries >= self._heads[journal.ledger]:
            self._live.add(journal.ledger)
        found: list[Violation | None] = list(self._new_problems(journal))
        if journal.intact:
            touched = self._touched(journal, entry)
            self.on_entry(journal.ledger, signed, hash_, [terms.settlement for terms in touched])
            for terms in touched:
                found += self._judge(terms)
            for settlement, at, units in journal.settled:  # a matched pair's try, on one ledger
                found.append(self._moved(Try(settlement, (at,), units)))
            journal.settled.clear()
        await self._alert_all(found)

    def _touched(self, journal: LedgerJournal, entry: Entry) -> list[Terms]:
        """The settlements whose locks this entry placed or ended; a lock of no settlement
        is forgotten once ended, as there is nothing to judge across ledgers."""
        locks = [lock for lock, _ in entry.effects.get("locks", ())]
        if entry.kind == "lock" and entry.instruction is not None:
            locks.append(entry.instruction["id"])
        touched: dict[str, Terms] = {}
        for lock in dict.fromkeys(locks):
            terms, held = journal.legs.get(lock), journal.replay.locks.get(lock)
            if terms is not None:
                touched[terms.settlement] = self._open.setdefault(terms.settlement, terms)
            elif held is not None and held.state is not LockState.HELD:
                self._once.discard((Kind.LOCK_OVERDUE, (journal.placed[lock],)))
                journal.forget(lock)
        return list(touched.values())

    def _new_problems(self, journal: LedgerJournal) -> list[Violation]:
        alerted = self._problems_alerted[journal.ledger]
        self._problems_alerted[journal.ledger] = len(journal.problems)
        return journal.problems[alerted:]

    # -- judging -------------------------------------------------------------------------------

    def _judge(self, terms: Terms) -> list[Violation | None]:
        """The auditor's judgement, on the observer's clock where every leg's ledger is
        followed live; a settlement nothing can change any more is forgotten."""
        live = all(ledger in self._live for ledger in terms.ledgers)
        legs = legs_of(terms, self.journals, self.clock.now_ms() - self.grace_ms if live else None)
        outcome, finding = judge(terms, legs)
        new = [self._first(finding) if isinstance(finding, Violation) else None]
        if any(leg.state == "claimed" for leg in legs):
            new += [self._moved(moved) for moved in terms.tries(tuple(at for leg in legs for at in leg.entries))]
        if all(leg.state != "held" and not leg.open for leg in legs):  # ended, never to be locked, or unknowable
            self._forget(terms, outcome)
        return new

    def _moved(self, moved: Try) -> Violation | None:
        """A matched pair's try moved: remembered, and the pair judged for tries that
        moved the same units twice."""
        pair = pair_of(moved.settlement)
        if not pair.startswith(MATCHED_PREFIX):
            return None
        tries = self._tries.setdefault(pair, {})
        tries[moved.settlement] = moved
        self._tries.move_to_end(pair)
        while len(self._tries) > PAIRS_KEPT_MAX:
            self._tries.popitem(last=False)
        return next((self._first(found) for found in settled_twice({pair: list(tries.values())})), None)

    def _first(self, violation: Violation) -> Violation | None:
        """A violation judged again and again is alerted the first time: a settlement is
        one-legged once, whatever its other leg's state; a lock overdue once, however long."""
        key = (
            (violation.kind, violation.settlement)
            if violation.kind in (Kind.ONE_LEGGED, Kind.SETTLED_TWICE)
            else (violation.kind, violation.entries)
        )
        if key in self._once:
            return None
        self._once.add(key)
        return violation

    def _forget(self, terms: Terms, outcome: str) -> None:
        del self._open[terms.settlement]
        self._once.discard((Kind.ONE_LEGGED, terms.settlement))
        for index, ledger in enumerate(terms.ledgers):
            journal = self.journals.get(ledger)
            if journal is None:
                continue
            lock = lock_id(terms.settlement, index)
            if lock in journal.placed:
                self._once.discard((Kind.LOCK_OVERDUE, (journal.placed[lock],)))
            journal.forget(lock)
        self.judged[outcome] += 1

    async def _check_every_interval(self) -> None:
        status_at = trio.current_time() + STATUS_INTERVAL_S
        while True:
            await trio.sleep(CHECK_INTERVAL_S)
            await self.check()
            if trio.current_time() >= status_at:
                log.info("%s", self.status())
                status_at += STATUS_INTERVAL_S

    async def check(self) -> None:
        """Locks held past their refund time plus grace, and settlements whose other leg went past
        claiming, on the observer's clock."""
        now_ms = self.clock.now_ms()
        found: list[Violation | None] = []
        for ledger in sorted(self._live):
            if self.journals[ledger].intact:
                found += map(self._first, self.journals[ledger].overdue(self.grace_ms, now_ms))
        for terms in list(self._open.values()):
            found += self._judge(terms)
        await self._alert_all(found)

    # -- alerts --------------------------------------------------------------------------------

    async def _alert_all(self, found: Sequence[Violation | None]) -> None:
        for violation in found:
            if violation is not None:
                await self._alert(violation)

    async def _alert(self, violation: Violation) -> None:
        self.alerted[violation.kind] += 1
        if len(self.alerts) >= ALERTS_KEPT_MAX:
            del self.alerts[0]
        self.alerts.append(violation)
        self.on_alert(violation)
        log.error("ALERT %s", violation.text())
        if self.publish:
            await self.bus.publish(ALERTS_TOPIC, canonical.encode(alert_event(violation, self.clock.now_ms())))

    @property
    def open_settlements(self) -> int:
        """Settlements seen and not yet judged for good: what the observer remembers."""
        return len(self._open)

    def status(self) -> str:
        journals = self.journals.values()
        judged = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.judged.items())) or "none"
        return (
            f"observer: {sum(j.entries for j in journals)} entries read on {len(self.journals)} ledgers "
            f"({len(self._live)} live); settlements judged: {judged}, {self.open_settlements} open, "
            f"{sum(j.settles for j in journals)} same-ledger; {sum(self.alerted.values())} alerts"
        )


def alert_event(violation: Violation, time_ms: int) -> dict:
    """An alert as published on `observer/alerts`."""
    return {
        "kind": violation.kind.value,
        "settlement": violation.settlement,
        "ledgers": list(violation.ledgers),
        "entries": [{"ledger": at.ledger, "seq": at.seq, "kind": at.kind} for at in violation.entries],
        "reason": violation.reason,
        "text": violation.text(),
        "time_ms": time_ms,
    }


# -- the service ---------------------------------------------------------------------------------


def load(config_path: str, broker: str | None, grace_ms: int) -> tuple[Registry, str, tuple[str, ...]]:
    """From the coordinator's configuration: the registry, the broker and the ledgers."""
    config = CoordinatorConfig.load(config_path)
    registry = Registry.load(config.registry)
    source = f"coordinator config {config_path}"
    url = broker or config.broker
    if url is None:
        raise ConfigError(source, "broker: required (or pass --broker)")
    if not config.ledgers:
        raise ConfigError(source, "ledgers: none to observe")
    if grace_ms < 0:
        raise ExpectedFailure(f"--grace-ms {grace_ms}", "must not be negative")
    try:
        for ledger in config.ledgers:
            ledger_key(registry, ledger)
    except AuditError as error:
        raise ConfigError(source, f"ledgers: {error}") from None
    return registry, url, config.ledgers


async def serve(config_path: str, broker: str | None = None, grace_ms: int = OBSERVER_GRACE_MS) -> None:
    """`lockstep observer`, until SIGTERM or SIGINT."""
    from ..daemon import _until_signalled

    registry, url, ledgers = load(config_path, broker, grace_ms)
    async with _until_signalled(url, f"observer-{secrets.token_hex(4)}") as (bus, nursery):
        observer = Observer(registry, bus, list(ledgers), grace_ms, ServiceClock())
        await nursery.start(observer.run)
        log.info(
            "observer following %s on %s, grace %d ms; alerts on %s",
            ", ".join(ledgers),
            redacted(url),
            grace_ms,
            ALERTS_TOPIC,
        )
