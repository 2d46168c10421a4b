"""A bus that loses, repeats, delays and reorders messages, with a seeded generator, for
fault tests and `lockstep chaos`. It wraps any bus and changes only what its own user
sends and hears; the services behind it are untouched.

- a *dropped request* never reaches the service: the caller waits out its deadline;
- a *dropped reply* was applied by the service but never heard: the caller times out
  and must retry, which idempotency makes safe;
- a *duplicate* request reaches the service twice;
- a *delay* holds a request back, so requests overtake one another (reordering);
- a service in `cut` cannot be reached at all (a partition), for as long as it is there;
- a service with a *trip wire* is cut the moment a request to it matches (a partition
  at the worst moment: say, just as the secret is sent to the second leg's ledger)."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from . import Bus, BusTimeout


@attrs.define
class Faults:
    drop_request: float = 0.0
    drop_reply: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_s_max: float = 0.05


def except_fences(service: str, payload: bytes) -> bool:
    """`applies` for faults on everything but a coordinator's fences (a Fence is sent
    alone): a coordinator deaf to its ledgers' replies still fences them, and so still
    sends them its instructions, which are applied and never answered."""
    return b'"type":"fence"' not in payload


class FaultyBus:
    def __init__(
        self,
        inner: Bus,
        faults: Faults,
        seed: int,
        applies: Callable[[str, bytes], bool] = lambda service, payload: True,
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.applies = applies
        self._random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.cut: set[str] = set()
        self.trips: dict[str, tuple[Callable[[bytes], bool], trio.Event]] = {}  # service -> (wire, set when tripped)

    def _roll(self, probability: float, kind: str) -> bool:
        if probability and self._random.random() < probability:
            self.injected[kind] += 1
            return True
        return False

    def trip(self, service: str, wire: Callable[[bytes], bool], tripped: trio.Event) -> None:
        """Cut `service` at the first request to it that `wire` matches (that request
        lost too), and set `tripped`. Of wires armed with one event, only the first trips."""
        self.trips[service] = (wire, tripped)

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        armed = self.trips.get(service)
        if armed is not None and armed[0](payload):
            for other, (_, tripped) in list(self.trips.items()):  # wires sharing its event: one cut only
                if tripped is armed[1]:
                    del self.trips[other]
            self.cut.add(service)
            armed[1].set()
        if service in self.cut:
            await trio.sleep(timeout_s)
            raise BusTimeout(f"{service} is cut off")
        if not self.applies(service, payload):
            return await self.inner.request(service, payload, timeout_s=timeout_s)
        faults = self.faults
        with trio.move_on_after(timeout_s) as scope:
            if self._roll(faults.delay, "delay"):
                await trio.sleep(self._random.uniform(0, faults.delay_s_max))
            if self._roll(faults.drop_request, "drop_request"):
                await trio.sleep_forever()
            if self._roll(faults.duplicate, "duplicate"):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._ignore, service, payload, timeout_s)
                    reply = await self.inner.request(service, payload, timeout_s=timeout_s)
            else:
                reply = await self.inner.request(service, payload, timeout_s=timeout_s)
            if self._roll(faults.drop_reply, "drop_reply"):
                await trio.sleep_forever()
            return reply
        assert scope.cancelled_caught
        raise BusTimeout(f"no reply from {service} within {timeout_s}s")

    async def _ignore(self, service: str, payload: bytes, timeout_s: float) -> None:
        with contextlib.suppress(BusTimeout):
            await self.inner.request(service, payload, timeout_s=timeout_s)

    def serve(self, service: str):
        return self.inner.serve(service)

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.inner.publish(topic, payload)

    def subscribe(self, topic: str):
        return self.inner.subscribe(topic)

    @property
    def messages_sent(self) -> int:
        return self.inner.messages_sent
