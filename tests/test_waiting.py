"""A server's queue is fair between clients: one that floods it loses its own excess,
never another client's requests; clients are served in turn; memory stays bounded."""

from __future__ import annotations

import trio
import trio.testing

from protocols.bus import Request
from protocols.bus.waiting import Waiting


async def _no_reply(_: bytes) -> None:
    pass


def request(client: str, n: int = 0) -> Request:
    return Request(f"{client}-{n}".encode(), _no_reply, client)


async def test_a_flooding_client_loses_its_own_excess_and_the_others_still_get_in():
    waiting = Waiting(total_max=100, per_client_max=10)
    offered = [waiting.offer(request("flood", n)) for n in range(50)]
    assert offered == [True] * 10 + [False] * 40
    assert waiting.offer(request("quiet"))
    assert waiting.dropped == {"flood": 40}
    assert (waiting.waiting("flood"), waiting.waiting("quiet")) == (10, 1)
    received = [waiting.receive_nowait().client for _ in range(11)]
    assert received == ["flood", "quiet"] + ["flood"] * 9  # served in turn: quiet waits behind one, not ten
    assert waiting.waiting("flood") == 0
    assert waiting.offer(request("flood", 99))  # its share is free again once served


async def test_the_whole_queue_is_bounded_whoever_sends():
    waiting = Waiting(total_max=5, per_client_max=5)
    assert [waiting.offer(request(f"c{n}")) for n in range(8)] == [True] * 5 + [False] * 3
    assert sum(waiting.dropped.values()) == 3


async def test_it_reads_as_a_channel_until_closed():
    waiting = Waiting(total_max=10, per_client_max=10)
    for n in range(3):
        waiting.offer(request("a", n))
    waiting.close()
    assert [r.payload async for r in waiting] == [b"a-0", b"a-1", b"a-2"]
    assert not waiting.offer(request("a", 4))


async def test_receive_waits_for_a_request():
    waiting = Waiting(total_max=10, per_client_max=10)
    async with trio.open_nursery() as nursery:
        got = []

        async def server():
            got.append(await waiting.receive())

        nursery.start_soon(server)
        await trio.testing.wait_all_tasks_blocked()
        waiting.offer(request("b"))
    assert got[0].client == "b" and waiting.waiting("b") == 0


async def test_a_client_may_have_only_so_many_bytes_waiting_and_the_queue_as_a_whole_too():
    waiting = Waiting(total_max=100, per_client_max=100, total_bytes_max=3_000, per_client_bytes_max=1_000)
    big = [Request(b"x" * 400, _no_reply, "big") for _ in range(3)]
    assert [waiting.offer(r) for r in big] == [True, True, False]  # 800 bytes waiting; 1,200 would pass its share
    assert waiting.offer(Request(b"y" * 900, _no_reply, "other"))  # another client's share is its own
    assert waiting.offer(Request(b"z" * 900, _no_reply, "third"))
    assert not waiting.offer(Request(b"w" * 900, _no_reply, "fourth"))  # 3,500 bytes in all: over the whole queue's
    waiting.receive_nowait()
    assert waiting.offer(Request(b"x" * 400, _no_reply, "big"))  # served, its bytes are free again


async def test_clients_are_served_in_turn_each_in_its_own_order():
    waiting = Waiting(total_max=100, per_client_max=100)
    for n in range(3):
        waiting.offer(request("a", n))
    waiting.offer(request("b", 0))
    waiting.offer(request("c", 0))
    waiting.offer(request("b", 1))
    order = [waiting.receive_nowait().payload.decode() for _ in range(6)]
    assert order == ["a-0", "b-0", "c-0", "a-1", "b-1", "a-2"]
    try:
        waiting.receive_nowait()
    except trio.WouldBlock:
        pass
    else:
        raise AssertionError("an empty queue gave a request")


async def test_a_cancelled_receive_loses_no_request():
    waiting = Waiting(total_max=10, per_client_max=10)
    with trio.move_on_after(0.01):
        await waiting.receive()
    waiting.offer(request("a"))
    assert (await waiting.receive()).client == "a"
