"""The MQTT bus against a real Mosquitto: the same contract as the in-memory bus."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import pytest
import trio

from engine.world.broker import Broker
from protocols.bus import BusTimeout
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import BrokerUnreachable, MqttBus


async def echo_server(bus, service: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with bus.serve(service) as requests:
        task_status.started()
        async for request in requests:
            await request.reply(b"echo:" + request.payload)


async def echoed_again(client, payload: bytes, deadline_s: float) -> None:
    """Ask the echo service until it answers (the bus finding its broker again), by a deadline."""
    with trio.fail_after(deadline_s):
        while True:
            try:
                assert await client.request("echo", payload, timeout_s=0.5) == b"echo:" + payload
                return
            except BusTimeout:
                continue


@asynccontextmanager
async def two_ends(kind: str, broker: Broker):
    """A server-side and a client-side bus of one kind."""
    if kind == "memory":
        bus = MemoryBus()
        yield bus, bus
    else:
        async with MqttBus.connect(broker.url) as server, MqttBus.connect(broker.url) as client:
            yield server, client


@pytest.mark.parametrize("kind", ["memory", "mqtt"])
async def test_each_caller_gets_its_own_reply(kind, broker):
    async with two_ends(kind, broker) as (server, client), trio.open_nursery() as nursery:
        await nursery.start(echo_server, server, "echo")
        replies = {}

        async def ask(n: int) -> None:
            replies[n] = await client.request("echo", str(n).encode(), timeout_s=5)

        async with trio.open_nursery() as callers:
            for n in range(50):
                callers.start_soon(ask, n)
        assert replies == {n: f"echo:{n}".encode() for n in range(50)}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["memory", "mqtt"])
async def test_request_to_a_service_nobody_serves_times_out(kind, broker):
    async with two_ends(kind, broker) as (_, client):
        with pytest.raises(BusTimeout):
            await client.request("nobody", b"hello", timeout_s=0.3)


@pytest.mark.parametrize("kind", ["memory", "mqtt"])
async def test_events_reach_every_subscriber_in_order(kind, broker):
    async with two_ends(kind, broker) as (publisher, subscriber):
        async with subscriber.subscribe("ticks") as first, subscriber.subscribe("ticks") as second:
            for n in range(100):
                await publisher.publish("ticks", str(n).encode())
            with trio.fail_after(5):
                for channel in (first, second):
                    assert [await channel.receive() for _ in range(100)] == [str(n).encode() for n in range(100)]


async def test_client_socket_has_tcp_nodelay(broker):
    async with MqttBus.connect(broker.url) as bus:
        sock = bus._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_unreachable_broker_is_a_clear_error(tmp_path):
    port = Broker(tmp_path).port  # a free port with nothing listening
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port}"):
        async with MqttBus.connect(f"mqtt://127.0.0.1:{port}"):
            pass


async def test_bus_reconnects_and_serves_again_after_broker_restart(tmp_path):
    broker = Broker(tmp_path).start()
    try:
        async with MqttBus.connect(broker.url) as server, MqttBus.connect(broker.url) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(echo_server, server, "echo")
                assert await client.request("echo", b"before", timeout_s=5) == b"echo:before"
                broker.stop()
                await trio.sleep(0.3)
                broker.start()
                await echoed_again(client, b"after", 20)
                nursery.cancel_scope.cancel()
    finally:
        broker.stop()


@pytest.mark.parametrize("kind", ["memory", "mqtt"])
async def test_a_subscriber_leaving_while_its_events_stream_in_leaves_the_bus_serving(kind, broker):
    """A follower stops (a ledger it followed went away, say) while that ledger's events
    are still arriving: the events meant for it are dropped, and the bus goes on, for the
    follower that subscribes again and for everyone else."""
    async with two_ends(kind, broker) as (publisher, subscriber), trio.open_nursery() as nursery:
        await nursery.start(echo_server, subscriber, "echo")
        for _ in range(5):
            async with subscriber.subscribe("stream") as events:
                for n in range(200):
                    await publisher.publish("stream", b"%d" % n)
                await events.receive()  # the rest on their way as it leaves
        async with subscriber.subscribe("stream") as events:
            await publisher.publish("stream", b"again")
            with trio.fail_after(5):
                while await events.receive() != b"again":
                    pass
        await echoed_again(publisher, b"still serving", deadline_s=5)
        nursery.cancel_scope.cancel()
