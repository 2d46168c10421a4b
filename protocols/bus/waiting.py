"""A server's queue of waiting requests, fair between clients.

A broker delivers every request for a service to its one server; if one client floods
it, a plain queue fills with that client's requests and everyone else's are dropped.
Here each client may have at most `per_client_max` requests, and `per_client_bytes_max`
bytes, waiting: the rest of *its* requests are dropped (it times out and sends again, as
after any loss), and the others' still get in. The whole queue is bounded too, in
requests and in bytes, so memory is bounded whatever arrives, large requests included."""

from __future__ import annotations

from collections import Counter

import trio

from . import Request


class Waiting:
    """What `Bus.serve` yields: `receive`, `receive_nowait` and `async for`, as a trio
    receive channel, over requests offered by the bus with `offer`."""

    def __init__(self, total_max: int, per_client_max: int, *, total_bytes_max: int = 256 << 20,
                 per_client_bytes_max: int = 8 << 20) -> None:
        assert 0 < per_client_max <= total_max, (per_client_max, total_max)
        assert 0 < per_client_bytes_max <= total_bytes_max, (per_client_bytes_max, total_bytes_max)
        self.per_client_max = per_client_max
        self.per_client_bytes_max = per_client_bytes_max
        self.total_bytes_max = total_bytes_max
        self._send, self._receive = trio.open_memory_channel[Request](total_max)
        self._by_client: Counter[str] = Counter()
        self._bytes_by_client: Counter[str] = Counter()
        self._bytes = 0
        self.dropped: Counter[str] = Counter()   # by client: over its share, or the queue full

    def offer(self, request: Request) -> bool:
        """Queue a request unless its client already has its share waiting, or the
        queue is full; never blocks (the bus's reader must not wait on a server)."""
        size = len(request.payload)
        if self._by_client[request.client] >= self.per_client_max or \
                self._bytes_by_client[request.client] + size > self.per_client_bytes_max or \
                self._bytes + size > self.total_bytes_max:
            self.dropped[request.client] += 1
            return False
        try:
            self._send.send_nowait(request)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped[request.client] += 1
            return False
        self._by_client[request.client] += 1
        self._bytes_by_client[request.client] += size
        self._bytes += size
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
        size = len(request.payload)
        self._bytes -= size
        for counts, taken in ((self._by_client, 1), (self._bytes_by_client, size)):
            left = counts[request.client] - taken
            if left:
                counts[request.client] = left
            else:
                del counts[request.client]
        return request
