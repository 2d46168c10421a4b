"""When the settlement queue looks again: each time a ledger its pairs pay on writes an
entry (followed live, protocols/bus/follow.py), at least every POLL_S (an event may be
lost), at most every GAP_S however busy the ledgers, and at each moment a pair's day
opens or its cut-off passes. What a look does is the desk's (engine/desks/matching.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from protocols.bus import BusTimeout
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.follow import follow
from protocols.errors import Rejected
from protocols.journal import ChainBroken

log = logging.getLogger("lockstep.queue")

POLL_S = 5.0
GAP_S = 0.05
WATCH_RETRY_S = 1.0  # a ledger whose entries cannot be followed is followed again after this


class Recycler:
    """`ledgers()`: the ledgers the waiting pairs pay on; `moments()`: when each next
    opens or closes (ms); `look()`: the desk's look at the queue."""

    def __init__(
        self,
        ledgers: Callable[[], set[str]],
        moments: Callable[[], list[int]],
        look: Callable[[], Awaitable[object]],
        client: Callable[[str], LedgerClient],
        clock: ServiceClock,
    ) -> None:
        self._ledgers, self._moments, self._look, self._client, self._clock = ledgers, moments, look, client, clock
        self._stirred = trio.Event()

    def stir(self) -> None:
        """Something changed (a pair queued, held or released): look again soon."""
        self._stirred.set()

    async def run(self) -> None:
        while True:
            ledgers = self._ledgers()
            async with trio.open_nursery() as watching:
                for ledger in sorted(ledgers):
                    watching.start_soon(self._watch, ledger)
                while ledgers == self._ledgers():
                    self._stirred = trio.Event()
                    await self._look()
                    moments = self._moments()
                    with trio.move_on_after(POLL_S if ledgers else float("inf")) as waiting:
                        if moments:
                            waiting.deadline = min(waiting.deadline, self._clock.trio_time_at(min(moments)))
                        await self._stirred.wait()
                    await trio.sleep(GAP_S)
                watching.cancel_scope.cancel()

    async def _watch(self, ledger: str) -> None:
        """Stir at each entry the ledger writes."""
        client = self._client(ledger)
        while True:
            try:
                async for _ in follow(client):
                    self._stirred.set()
            except (BusTimeout, BadReply, ChainBroken, Rejected) as error:
                log.warning("the queue cannot follow %s (%s): it looks every %s s", ledger, error, POLL_S)
            await trio.sleep(WATCH_RETRY_S)
