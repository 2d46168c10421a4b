"""What one request and its reply cost on the MQTT bus, with no settlement around them.

`python -m benchmarks.round_trip [N]` starts a Mosquitto with Lockstep's settings and two
bus connections in this process, one serving an echo, and sends N requests of 300 bytes
one after the other. It prints the wall time and the CPU of both ends per round trip:
the floor under every message a settlement sends when nothing shares it with others
(one settlement alone), and the cost that batches amortize under load."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio

from engine.world.broker import Broker
from protocols.bus.mqtt import MqttBus

PAYLOAD = b"x" * 300
WARM_UP = 200


async def measure(url: str, count: int) -> tuple[float, float]:
    """(wall ms, CPU ms of both ends) per round trip, over `count` of them."""
    async with MqttBus.connect(url, client_id="echo") as server, MqttBus.connect(url, client_id="asker") as client:

        async def echo(task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with server.serve("echo") as requests:
                task_status.started()
                async for request in requests:
                    await request.reply(request.payload)

        async with trio.open_nursery() as nursery:
            await nursery.start(echo)
            for _ in range(WARM_UP):
                await client.request("echo", PAYLOAD, timeout_s=5)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                reply = await client.request("echo", PAYLOAD, timeout_s=5)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            nursery.cancel_scope.cancel()
    assert reply == PAYLOAD, reply
    return 1e3 * wall / count, 1e3 * cpu / count


def main(argv: list[str]) -> None:
    count = max(1, int(argv[0])) if argv else 5000
    with tempfile.TemporaryDirectory() as directory, Broker(Path(directory)) as broker:
        wall_ms, cpu_ms = trio.run(measure, broker.url, count)
    print(f"{count} round trips: {wall_ms:.3f} ms wall, {cpu_ms:.3f} ms CPU of both ends, each")


if __name__ == "__main__":
    main(sys.argv[1:])
