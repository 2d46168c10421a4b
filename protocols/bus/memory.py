"""The bus inside one process: trio memory channels, the same semantics as MQTT.

A server's queue is bounded; a request that finds it full is dropped, as a broker
drops messages to a subscriber whose queue is full, and its caller times out. Callers
are not told apart here (one process, one party's worth of trust): fairness between
clients is the MQTT bus's (waiting.py)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import trio

from . import BusTimeout, Request
from .waiting import Waiting

QUEUE_LENGTH_MAX = 10_000


class MemoryBus:
    def __init__(self, queue_length_max: int = QUEUE_LENGTH_MAX) -> None:
        self._servers: dict[str, Waiting] = {}
        self._subscribers: dict[str, set[trio.MemorySendChannel]] = {}
        self._queue_length_max = queue_length_max
        self._ids = itertools.count()
        self.messages_sent = 0

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        send, receive = trio.open_memory_channel[bytes](1)

        async def reply(answer: bytes) -> None:
            self.messages_sent += 1
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                send.send_nowait(answer)  # not sent: a duplicate or late reply, which nobody awaits

        with trio.move_on_after(timeout_s):
            self._deliver(service, Request(payload, reply))
            async with receive:
                answer = await receive.receive()
                return answer
        raise BusTimeout(f"no reply from {service} within {timeout_s}s")

    def _deliver(self, service: str, request: Request) -> None:
        self.messages_sent += 1
        server = self._servers.get(service)
        if server is not None:
            server.offer(request)

    @asynccontextmanager
    async def serve(self, service: str) -> AsyncIterator[Waiting]:
        assert service not in self._servers, f"{service} is already served"
        waiting = self._servers[service] = Waiting(self._queue_length_max, self._queue_length_max)
        try:
            yield waiting
        finally:
            del self._servers[service]
            waiting.close()

    async def publish(self, topic: str, payload: bytes) -> None:
        self.messages_sent += 1
        for subscriber in list(self._subscribers.get(topic, ())):
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                subscriber.send_nowait(payload)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel]:
        send, receive = trio.open_memory_channel[bytes](self._queue_length_max)
        self._subscribers.setdefault(topic, set()).add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers[topic].discard(send)
            send.close()
