"""The ledger as a trio service on a bus: it drains whatever requests have arrived (up
to `batch_size_max`), applies them as one batch, answers each after the commit, then
publishes the batch's journal entries. When no request comes it still wakes at the
next lock expiry, so expired locks are refunded by the ledger itself, on its own clock."""

from __future__ import annotations

import logging
import math

import trio

from protocols.bus import Bus, entries_topic, service_of_ledger
from protocols.bus.clock import ServiceClock

from .ledger import Ledger

log = logging.getLogger("lockstep.ledger")

REPLY_SECONDS_MAX = 5.0  # how long an answer may take to hand to the bus once committed


class LedgerService:
    def __init__(self, ledger: Ledger, bus: Bus, clock: ServiceClock) -> None:
        self.ledger = ledger
        self.bus = bus
        self.clock = clock
        self.batches = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        limit = self.ledger.config.limits.batch_size_max
        async with self.bus.serve(service_of_ledger(self.ledger.id)) as requests:
            log.info("ledger %s serving at journal height %d", self.ledger.id, self.ledger.seq)
            task_status.started()
            while True:
                batch = []
                with trio.move_on_at(self._next_wake()):
                    batch.append(await requests.receive())
                while len(batch) < limit:
                    try:
                        batch.append(requests.receive_nowait())
                    except trio.WouldBlock:
                        break
                # a batch in hand is finished and answered even when we are being stopped
                with trio.CancelScope(shield=True):
                    await self._apply(batch)

    def _next_wake(self) -> float:
        expiry_ms = self.ledger.next_expiry_ms()
        return math.inf if expiry_ms is None else self.clock.trio_time_at(expiry_ms)

    async def _apply(self, batch: list) -> None:
        replies, entries = self.ledger.process([request.payload for request in batch], self.clock.now_ms())
        self.batches += 1
        with trio.move_on_after(REPLY_SECONDS_MAX):
            for request, reply in zip(batch, replies):
                await request.reply(reply)
            topic = entries_topic(self.ledger.id)
            for entry in entries:
                await self.bus.publish(topic, entry)
