"""The watchtower: forwards a settlement's decision to every ledger its coordinator has
not reached, so that a decided settlement completes as soon as anyone can reach them.

It learns a decision two ways. A ledger's journal makes it public: a `claim` entry
carries the claim secret, a `cancel` entry the cancellation preimage, and a lock entry
carrying `auth` says where the settlement's other leg is. A coordinator publishes each
decision once it is on disk (`decision` events, signed by it), before any ledger has
seen it. Then, a grace period later (the coordinator usually finishes first), it sends
every leg not yet ended the claim (commit) or the cancel (abort), again and again, until
the ledger says the lock has ended: claimed, cancelled, or refunded at its backstop.

Committed legs are claimed in the coordinator's order: leg 1 only once leg 0 is claimed,
so that a leg 0 its ledger refunds at the backstop never leaves leg 1 claimed alone.
Aborted legs are cancelled all at once.

It runs inside the coordinator (journals only) and as its own process (`lockstep
watchtower`, journals and decisions), as any party, as many as wanted: a claim or cancel
of an ended lock is refused and harmless. Memory is bounded: a settlement is forgotten
once every leg it knows of has ended, and at REMEMBERED_MAX the oldest are dropped."""

from __future__ import annotations

import logging
import secrets

import attrs
import trio

from protocols.authority import terms_of
from protocols.bus import Bus, BusTimeout, decisions_topic
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.follow import follow
from protocols.canonical import decode
from protocols.envelope import BATCH_BYTES_MAX, open_event
from protocols.errors import Code, Rejected
from protocols.journal import ChainBroken
from protocols.messages import Cancel, Claim, QueryLock, SettlementDecision
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey, Signed, sign

log = logging.getLogger("lockstep.watchtower")

GRACE_MS = 1_000
REMEMBERED_MAX = 100_000  # settlements remembered; past it the oldest not being forwarded is forgotten
RETRY_S = 0.1
RETRY_S_MAX = 2.0  # backing off from a ledger that does not answer


@attrs.define
class Watch:
    """What the watchtower knows of one settlement."""

    ledgers: tuple[str, ...] = ()  # each leg's ledger, once known
    expiry_ms: int | None = None  # no ledger places a lock of it later
    commit: bytes | None = None  # the claim secret, once public
    abort: bytes | None = None  # the cancellation preimage, once public
    ended: dict[int, str] = attrs.field(factory=dict)  # leg -> how its lock ended
    forwarding: bool = False

    @property
    def done(self) -> bool:
        every = bool(self.ledgers) and len(self.ended) == len(self.ledgers)
        return every or (self.commit is not None and self.ended.get(0, "claimed") != "claimed")


class Watchtower:
    def __init__(
        self,
        party_id: str,
        key: PrivateKey,
        registry: Registry,
        bus: Bus,
        ledger_ids: list[str],
        clock: ServiceClock,
        grace_ms: int = GRACE_MS,
        backlog: int = 1000,
        coordinators: tuple[str, ...] = (),
    ) -> None:
        self.id = party_id
        self._key = key
        self.registry = registry
        self.bus = bus
        self.ledger_ids = ledger_ids
        self.clock = clock
        self.grace_ms = grace_ms
        self.backlog = backlog
        self.coordinators = coordinators
        self._clients: dict[str, LedgerClient] = {}
        self._watches: dict[str, Watch] = {}
        self._nursery: trio.Nursery | None = None
        self.forwarded = 0  # claims and cancels it got applied

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for coordinator in self.coordinators:
                await nursery.start(self._hear, coordinator)
            for ledger in self.ledger_ids:
                nursery.start_soon(self._watch, ledger)
            task_status.started()

    def client(self, ledger: str) -> LedgerClient | None:
        """A client of any ledger in the registry (None for a party that is no ledger)."""
        if ledger not in self._clients:
            if not self.registry.has_role(ledger, Role.LEDGER):
                return None
            self._clients[ledger] = LedgerClient(
                self.bus, ledger, self.registry[ledger].public_key, timeout_s=0.5, attempts=1
            )
        return self._clients[ledger]

    # -- learning decisions ------------------------------------------------------------------

    async def _hear(self, coordinator: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """A coordinator's decisions, each signed by it."""
        async with self.bus.subscribe(decisions_topic(coordinator)) as events:
            task_status.started()
            async for raw in events:
                for signed in verified_decisions(raw, coordinator, self.registry):
                    decision: SettlementDecision = signed.msg
                    watch = self._watch_of(decision.settlement_id)
                    watch.ledgers, watch.expiry_ms = decision.ledgers, decision.expiry_ms
                    if decision.outcome == "commit":
                        watch.commit = decision.preimage
                    else:
                        watch.abort = decision.preimage
                    self._consider(decision.settlement_id, watch)

    async def _watch(self, ledger: str) -> None:
        client = self.client(ledger)
        assert client is not None, f"{ledger} is not a ledger of the registry"
        while True:
            try:
                async for entry in follow(client, backlog=self.backlog):
                    self._see(entry)
            except (BusTimeout, BadReply, ChainBroken) as error:
                log.warning("lost %s's journal stream (%s); following again", ledger, error)
                await trio.sleep(0.5)

    def _see(self, entry: dict) -> None:
        """Learn from one journal entry (a wire dictionary, checked by the follower)."""
        instruction, kind = entry.get("instruction"), entry.get("kind")
        try:
            if instruction is None:  # the ledger's own refunds
                for lock, state in entry["effects"].get("locks", ()):
                    self._ended(lock, state)
            elif kind == "lock" and instruction.get("auth"):
                settlement_id, leg = _leg_of(instruction["id"])
                if leg is not None:
                    terms = terms_of(instruction["auth"], None)  # the ledger has checked it
                    watch = self._watch_of(settlement_id)
                    watch.ledgers = tuple(one.ledger for one in terms.legs)
                    watch.expiry_ms = instruction["expiry_ms"]
                    self._consider(settlement_id, watch)
            elif kind in ("claim", "cancel"):
                settlement_id, leg = _leg_of(instruction["lock_id"])
                if leg is not None:
                    watch = self._watch_of(settlement_id)
                    preimage = bytes.fromhex(instruction["preimage"])
                    if kind == "claim":
                        watch.commit = preimage
                    else:
                        watch.abort = preimage
                    self._ended(instruction["lock_id"], "claimed" if kind == "claim" else "cancelled")
            elif kind in ("abort", "refund"):
                self._ended(instruction["lock_id"], "aborted" if kind == "abort" else "refunded")
        except (KeyError, TypeError, ValueError, AttributeError, Rejected) as error:
            log.warning("ignored a journal entry it cannot read: %s", error)

    def _ended(self, lock: str, state: str) -> None:
        settlement_id, leg = _leg_of(lock)
        watch = self._watches.get(settlement_id)
        if watch is None or leg is None:
            return
        watch.ended[leg] = state
        self._consider(settlement_id, watch)

    def _watch_of(self, settlement_id: str) -> Watch:
        watch = self._watches.get(settlement_id)
        if watch is None:
            if len(self._watches) >= REMEMBERED_MAX:
                oldest = next((key for key, kept in self._watches.items() if not kept.forwarding), None)
                self._watches.pop(oldest or "", None)
            watch = self._watches[settlement_id] = Watch()
        return watch

    # -- forwarding them ---------------------------------------------------------------------

    def _consider(self, settlement_id: str, watch: Watch) -> None:
        """Forward a known decision to the legs not yet ended, or forget a settlement done."""
        if watch.forwarding:
            return
        if watch.done:
            del self._watches[settlement_id]
            return
        if (watch.commit is None and watch.abort is None) or not watch.ledgers:
            return
        assert self._nursery is not None, "the watchtower is not running"
        watch.forwarding = True
        self._nursery.start_soon(self._forward, settlement_id, watch)

    async def _forward(self, settlement_id: str, watch: Watch) -> None:
        await trio.sleep(self.grace_ms / 1000)  # the coordinator usually finishes first
        if watch.commit is not None and watch.abort is not None:  # only a broken coordinator reveals both
            log.error("settlement %s: both its claim secret and its cancellation are public", settlement_id)
        if watch.abort is not None and (watch.commit is None or "claimed" not in watch.ended.values()):
            async with trio.open_nursery() as nursery:
                for leg in range(len(watch.ledgers)):
                    nursery.start_soon(self._until_ended, settlement_id, watch, leg, watch.abort)
        else:
            assert watch.commit is not None
            await self._until_ended(settlement_id, watch, 0, watch.commit)
            if watch.ended.get(0) == "claimed":  # else refunded at its backstop: the others are left to their own
                async with trio.open_nursery() as nursery:
                    for leg in range(1, len(watch.ledgers)):
                        nursery.start_soon(self._until_ended, settlement_id, watch, leg, watch.commit)
        watch.forwarding = False
        if self._watches.get(settlement_id) is watch:
            self._consider(settlement_id, watch)

    async def _until_ended(self, settlement_id: str, watch: Watch, leg: int, preimage: bytes) -> None:
        """Claim (commit) or cancel (abort) one leg until its ledger says it has ended, or
        that it was never placed and, past its expiry, never will be; either way the leg
        counts as ended here."""
        if leg not in watch.ended:
            watch.ended[leg] = await self._end(settlement_id, watch, leg, preimage)

    async def _end(self, settlement_id: str, watch: Watch, leg: int, preimage: bytes) -> str:
        target = f"{settlement_id}:{leg}"
        client = self.client(watch.ledgers[leg])
        if client is None:
            return "unreachable"
        pause_s = RETRY_S
        while leg not in watch.ended:
            instruction = (Claim if preimage == watch.commit else Cancel)(
                f"{target}:w{secrets.token_hex(3)}", client.ledger_id, self.clock.now_ms(), target, preimage
            )
            try:
                receipt = await client.submit(sign(instruction, (self.id, self._key)))
                if receipt.applied:
                    self.forwarded += 1
                    state = "claimed" if isinstance(instruction, Claim) else "cancelled"
                    log.warning("settlement %s: the watchtower %s leg %d", settlement_id, state, leg)
                    return state
                if receipt.code == Code.WRONG_PREIMAGE.value:
                    log.error("settlement %s: leg %d refuses the decision's preimage", settlement_id, leg)
                    return "refused"
                state = await self._state(client, target)
            except (BusTimeout, BadReply):
                await trio.sleep(pause_s)
                pause_s = min(2 * pause_s, RETRY_S_MAX)
                continue
            pause_s = RETRY_S
            if state == "absent":
                if watch.expiry_ms is not None and self.clock.now_ms() > watch.expiry_ms + self.grace_ms:
                    return state  # never placed, and no ledger places it any more
            elif state != "held":
                return state
            await trio.sleep(RETRY_S)
        return watch.ended[leg]  # learnt from the journal meanwhile

    async def _state(self, client: LedgerClient, target: str) -> str:
        try:
            return (await client.query(QueryLock(client.next_query_id(), client.ledger_id, target)))["state"]
        except Rejected as error:
            if error.code is Code.UNKNOWN_LOCK:
                return "absent"
            raise BadReply(f"query_lock {target}: {error}") from None


def _leg_of(lock: str) -> tuple[str, int | None]:
    """A coordinator's lock id `{settlement}:{leg}` split; leg None for any other lock."""
    settlement_id, _, leg = lock.rpartition(":")
    return settlement_id, int(leg) if leg.isdigit() and len(leg) <= 2 and settlement_id else None


def verified_decisions(raw: bytes, coordinator: str, registry: Registry) -> list[Signed]:
    """The decisions of an event (one alone, or a batch of them), each checked to be the
    coordinator's, signed by it alone; the others are logged and dropped."""
    try:
        items = open_event(decode(raw, bytes_max=BATCH_BYTES_MAX), allowed=(SettlementDecision,))
    except Rejected as error:
        log.warning("ignored a decision event that is not %s's: %s", coordinator, error)
        return []
    decisions = []
    for item in items:
        try:
            if isinstance(item, Rejected):
                raise item
            registry.verify_all(item)
        except Rejected as error:
            log.warning("ignored a decision that is not %s's: %s", coordinator, error)
            continue
        if item.msg.coordinator != coordinator or set(item.sigs) != {coordinator}:
            log.warning("ignored a decision of %s signed by %s", item.msg.coordinator, ", ".join(item.sigs))
            continue
        decisions.append(item)
    return decisions
