"""A server's queue of waiting requests, fair between clients.

A broker delivers every request for a service to its one server; if one client floods
it, a plain queue fills with that client's requests and everyone else's are dropped, or
wait behind the flood. Here each client may have at most `per_client_max` requests, and
`per_client_bytes_max` bytes, waiting: the rest of *its* requests are dropped (it times
out and sends again, as after any loss), and the others' still get in. And clients are
served in turn, one request each, so a request waits behind at most one of each other
client's, never behind a flood. The whole queue is bounded too, in requests and in
bytes, so memory is bounded whatever arrives, large requests included."""

from __future__ import annotations

from collections import Counter, deque

import trio

from . import Request


class Waiting:
    """What `Bus.serve` yields: `receive`, `receive_nowait` and `async for`, as a trio
    receive channel, over requests offered by the bus with `offer`."""

    def __init__(
        self,
        total_max: int,
        per_client_max: int,
        *,
        total_bytes_max: int = 256 << 20,
        per_client_bytes_max: int = 8 << 20,
    ) -> None:
        assert 0 < per_client_max <= total_max, (per_client_max, total_max)
        assert 0 < per_client_bytes_max <= total_bytes_max, (per_client_bytes_max, total_bytes_max)
        self.total_max = total_max
        self.per_client_max = per_client_max
        self.total_bytes_max = total_bytes_max
        self.per_client_bytes_max = per_client_bytes_max
        self._queues: dict[str, deque[Request]] = {}  # each client's waiting requests, oldest first
        self._turns: deque[str] = deque()  # clients with requests waiting, next to serve first
        self._bytes_by_client: Counter[str] = Counter()
        self._count = 0
        self._bytes = 0
        self._closed = False
        self._arrived = trio.lowlevel.ParkingLot()
        self.dropped: Counter[str] = Counter()  # by client: over its share, the queue full, or closed

    def offer(self, request: Request) -> bool:
        """Queue a request unless its client already has its share waiting, or the
        queue is full; never blocks (the bus's reader must not wait on a server)."""
        client, size = request.client, len(request.payload)
        queue = self._queues.get(client)
        if (
            self._closed
            or self._count >= self.total_max
            or self._bytes + size > self.total_bytes_max
            or (queue is not None and len(queue) >= self.per_client_max)
            or self._bytes_by_client[client] + size > self.per_client_bytes_max
        ):
            self.dropped[client] += 1
            return False
        if queue is None:
            queue = self._queues[client] = deque()
            self._turns.append(client)
        queue.append(request)
        self._count += 1
        self._bytes += size
        self._bytes_by_client[client] += size
        self._arrived.unpark()
        return True

    def waiting(self, client: str) -> int:
        queue = self._queues.get(client)
        return len(queue) if queue else 0

    def receive_nowait(self) -> Request:
        """The next client's oldest request; that client then goes to the back of the line."""
        if not self._turns:
            raise trio.EndOfChannel if self._closed else trio.WouldBlock
        client = self._turns.popleft()
        queue = self._queues[client]
        request = queue.popleft()
        if queue:
            self._turns.append(client)
        else:
            del self._queues[client]
        size = len(request.payload)
        self._count -= 1
        self._bytes -= size
        self._bytes_by_client[client] -= size
        if not self._bytes_by_client[client]:
            del self._bytes_by_client[client]
        return request

    def arrived(self, limit: int) -> list[Request]:
        """Up to `limit` requests that are waiting now, in turn, without waiting for
        more (the end of a closed queue is for the next `receive` to report)."""
        requests: list[Request] = []
        while len(requests) < limit:
            try:
                requests.append(self.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return requests

    async def receive(self) -> Request:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                request = self.receive_nowait()
            except trio.WouldBlock:
                await self._arrived.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return request

    def __aiter__(self) -> Waiting:
        return self

    async def __anext__(self) -> Request:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """No more requests: a receiver gets those waiting, then EndOfChannel."""
        self._closed = True
        self._arrived.unpark_all()
