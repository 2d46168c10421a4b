"""A server's queue of waiting requests, fair between clients.

A broker delivers every request for a service to its one server; if one client floods
it, a plain queue fills with that client's requests and everyone else's are dropped.
Here each client may have at most `per_client_max` requests waiting: the rest of *its*
requests are dropped (it times out and sends again, as after any loss), and the others'
still get in. The whole queue is bounded too, so memory is bounded whatever arrives."""

from __future__ import annotations

from collections import Counter

import trio

from . import Request


class Waiting:
    """What `Bus.serve` yields: `receive`, `receive_nowait` and `async for`, as a trio
    receive channel, over requests offered by the bus with `offer`."""

    def __init__(self, total_max: int, per_client_max: int) -> None:
        assert 0 < per_client_max <= total_max, (per_client_max, total_max)
        self.per_client_max = per_client_max
        self._send, self._receive = trio.open_memory_channel[Request](total_max)
        self._by_client: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()   # by client: over its share, or the queue full

    def offer(self, request: Request) -> bool:
        """Queue a request unless its client already has its share waiting, or the
        queue is full; never blocks (the bus's reader must not wait on a server)."""
        if self._by_client[request.client] >= self.per_client_max:
            self.dropped[request.client] += 1
            return False
        try:
            self._send.send_nowait(request)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped[request.client] += 1
            return False
        self._by_client[request.client] += 1
        return True

    def waiting(self, client: str) -> int:
        return self._by_client[client]

    async def receive(self) -> Request:
        return self._taken(await self._receive.receive())

    def receive_nowait(self) -> Request:
        return self._taken(self._receive.receive_nowait())

    def __aiter__(self) -> Waiting:
        return self

    async def __anext__(self) -> Request:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._send.close()

    def _taken(self, request: Request) -> Request:
        left = self._by_client[request.client] - 1
        if left:
            self._by_client[request.client] = left
        else:
            del self._by_client[request.client]
        return request
