"""The ledger as a trio service on a bus: it drains whatever requests have arrived (up
to `batch_size_max`), applies them as one batch, answers each after the commit, then
publishes the batch's journal entries. When no request comes it still wakes at the
next refund time of a lock, so due locks are refunded by the ledger itself, on its own clock.
It counts its batches, outcomes and replies in its metrics (`metrics.py`) as it goes."""

from __future__ import annotations

import logging
import math
import time

import trio

from protocols.bus import Bus, entries_topic, service_of_ledger
from protocols.bus.clock import ServiceClock

from .ledger import Ledger
from .metrics import LedgerMetrics

log = logging.getLogger("lockstep.ledger")

REPLY_SECONDS_MAX = 5.0  # how long an answer may take to hand to the bus once committed


class LedgerService:
    """`offload=True` applies each batch in a worker thread, so that while SQLite waits
    for the disk the other services of the same process go on: the demo, the in-process
    bench and chaos run every ledger in one process. A ledger process of its own applies
    inline (ledgers/daemon.py): its batch is Python work, which in a thread only contends
    with the event loop for the interpreter lock, and what arrives meanwhile waits in the
    socket to make the next batch. Tests on a MockClock keep it off: a thread's wait
    would let the mock clock jump."""

    def __init__(self, ledger: Ledger, bus: Bus, clock: ServiceClock, *, offload: bool = False) -> None:
        self.ledger = ledger
        self.bus = bus
        self.clock = clock
        self.offload = offload
        self.batches = 0
        self.instructions = 0
        self.metrics = LedgerMetrics(ledger)
        self._next_refund_ms = ledger.next_refund_ms()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        limit = self.ledger.config.limits.batch_size_max
        async with self.bus.serve(service_of_ledger(self.ledger.id)) as requests:
            log.info("ledger %s serving at journal height %d", self.ledger.id, self.ledger.seq)
            task_status.started()
            while True:
                batch = []
                with trio.move_on_at(self._next_wake()):
                    batch.append(await requests.receive())
                    await trio.lowlevel.checkpoint()  # let requests already on their way arrive
                batch += requests.arrived(limit - len(batch))
                # a batch in hand is finished and answered even when we are being stopped
                with trio.CancelScope(shield=True):
                    await self._apply(batch)

    def _next_wake(self) -> float:
        refund_ms = self._next_refund_ms
        return math.inf if refund_ms is None else self.clock.trio_time_at(refund_ms)

    def _process(self, payloads: list[bytes], now_ms: int) -> tuple[list[bytes], list[bytes], int | None]:
        replies, entries = self.ledger.process(payloads, now_ms)
        return replies, entries, self.ledger.next_refund_ms()

    async def _apply(self, batch: list) -> None:
        payloads = [request.payload for request in batch]
        started = time.perf_counter()
        if self.offload:
            outcome = await trio.to_thread.run_sync(self._process, payloads, self.clock.now_ms())
        else:
            outcome = self._process(payloads, self.clock.now_ms())
        replies, entries, self._next_refund_ms = outcome
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        self.batches += 1
        self.instructions += len(batch)
        with trio.move_on_after(REPLY_SECONDS_MAX):
            for request, reply in zip(batch, replies, strict=True):  # one reply per request
                await request.reply(reply)
                self.metrics.request_seconds.observe(time.perf_counter() - started)
            topic = entries_topic(self.ledger.id)
            for entry in entries:
                await self.bus.publish(topic, entry)
