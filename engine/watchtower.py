"""The watchtower: finishes a settlement whose coordinator stopped between its claims.

A claim's journal entry carries the secret. When the watchtower sees leg 0 of a
settlement claimed and, a grace period later, leg 1 still held, it claims leg 1 with
that secret, so the settlement completes on both legs even with the coordinator dead.
It learns where leg 1 lives from the settlement carried in the locks' `auth`.

It runs inside the coordinator and as its own process (`lockstep watchtower`); any
number may run, since claiming a claimed lock is refused and harmless. Memory is
bounded: what it remembers of a lock is dropped once the lock has ended or expired."""

from __future__ import annotations

import logging
import secrets

import attrs
import trio

from protocols.authority import Terms, terms_of
from protocols.bus import Bus, BusTimeout
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.follow import follow
from protocols.errors import Rejected
from protocols.journal import ChainBroken
from protocols.messages import Claim
from protocols.registry import Registry
from protocols.signing import PrivateKey, sign

log = logging.getLogger("lockstep.watchtower")

GRACE_MS = 1_000
REMEMBERED_MAX = 1_000_000


@attrs.frozen
class Watched:
    """Leg 1 of a settlement whose leg 0 is locked: where it is and until when."""

    ledger: str
    lock_id: str
    expiry_ms: int


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
    ) -> None:
        self.id = party_id
        self._key = key
        self.bus = bus
        self.ledger_ids = ledger_ids
        self.clock = clock
        self.grace_ms = grace_ms
        self.backlog = backlog
        self._clients = {
            ledger: LedgerClient(bus, ledger, registry[ledger].public_key, timeout_s=0.5, attempts=1)
            for ledger in ledger_ids
        }
        self._second: dict[str, Watched] = {}  # settlement id -> its leg 1
        self._ended: set[str] = set()  # watched legs 1 seen claimed, refunded or aborted
        self.claims_made = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for ledger in self.ledger_ids:
                await nursery.start(self._watch, ledger, nursery)
            task_status.started()

    async def _watch(self, ledger: str, nursery: trio.Nursery, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                async for entry in follow(self._clients[ledger], backlog=self.backlog):
                    self._see(entry, nursery)
            except (BusTimeout, BadReply, ChainBroken) as error:
                log.warning("lost %s's journal stream (%s); following again", ledger, error)
                await trio.sleep(0.5)

    def _see(self, entry: dict, nursery: trio.Nursery) -> None:
        """React to one journal entry (a wire dictionary)."""
        instruction, kind = entry.get("instruction"), entry.get("kind")
        try:
            if instruction is None:  # the ledger's own expiry refunds
                for lock_id, _ in entry["effects"].get("locks", ()):
                    self._lock_ended(lock_id)
            elif kind == "lock" and instruction.get("auth") and instruction["id"].endswith(":0"):
                self._remember(terms_of(instruction["auth"], None))  # the ledger has checked it
            elif kind == "claim" and instruction["lock_id"].endswith(":0"):
                settlement_id = instruction["lock_id"][:-2]
                watched = self._second.get(settlement_id)
                if watched is not None:
                    nursery.start_soon(self._finish, settlement_id, watched, bytes.fromhex(instruction["preimage"]))
            elif kind in ("claim", "abort", "refund"):
                self._lock_ended(instruction["lock_id"])
        except (KeyError, TypeError, ValueError, AttributeError, Rejected) as error:
            log.warning("ignored a journal entry it cannot read: %s", error)

    def _lock_ended(self, lock_id: str) -> None:
        settlement_id, _, leg = lock_id.rpartition(":")
        if settlement_id not in self._second:
            return
        if leg == "0":  # leg 0 refunded or aborted: the settlement rolled back
            del self._second[settlement_id]
        elif leg == "1":
            self._ended.add(lock_id)

    def _remember(self, settlement: Terms) -> None:
        if len(self._second) >= REMEMBERED_MAX:
            self._forget_expired()
        second = settlement.legs[1]
        self._second[settlement.id] = Watched(second.ledger, f"{settlement.id}:1", settlement.deadline_ms)

    def _forget_expired(self) -> None:
        now_ms = self.clock.now_ms()
        for settlement_id, watched in list(self._second.items()):
            if watched.expiry_ms < now_ms:
                del self._second[settlement_id]
                self._ended.discard(watched.lock_id)

    async def _finish(self, settlement_id: str, watched: Watched, secret: bytes) -> None:
        """After the grace period, claim leg 1 unless it has ended already."""
        await trio.sleep(self.grace_ms / 1000)
        client = self._clients.get(watched.ledger)
        while watched.lock_id not in self._ended and self.clock.now_ms() < watched.expiry_ms and client:
            claim = sign(
                Claim(
                    f"{watched.lock_id}:w{secrets.token_hex(3)}",
                    watched.ledger,
                    self.clock.now_ms(),
                    watched.lock_id,
                    secret,
                ),
                (self.id, self._key),
            )
            try:
                receipt = await client.submit(claim)
            except (BusTimeout, BadReply):
                await trio.sleep(0.1)
                continue
            if receipt.applied:
                self.claims_made += 1
                log.warning("settlement %s: coordinator silent after leg 0; watchtower claimed leg 1", settlement_id)
            break
        self._second.pop(settlement_id, None)
        self._ended.discard(watched.lock_id)
