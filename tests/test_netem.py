"""Places a round trip apart (benchmarks/netem.py): a packet takes the round trip asked
for, a settlement takes its round trips and a few ms more, and nothing is left behind,
even when the body fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from benchmarks.bench import ROUND_TRIPS
from benchmarks.netem import NAMESPACES, Places
from benchmarks.runner import Load, Run, measure, mqtt_system, places
from benchmarks.workload import Shape

pytestmark = pytest.mark.slow  # namespaces, and a world of processes in them

RTT_MS = 150.0  # more than a settlement's own work takes while the suite keeps every core busy (up to 100 ms seen)
ECHO = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], 9000))
    print("up", flush=True)
    while True:
        data, sender = s.recvfrom(100)
        s.sendto(data, sender)
"""


def ignored(count: int) -> None:
    """Progress, which no one watches here."""


def left_behind() -> list[str]:
    """This process's namespaces and devices, which must all be gone once its places are."""
    pid = os.getpid()
    namespaces = [path.name for path in NAMESPACES.glob(f"lockstep-{pid}-*")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return namespaces + [line for line in links.splitlines() if f" ls{pid}-" in line]


def test_a_packet_takes_the_round_trip_asked_for_and_nothing_is_left_even_after_an_error():
    with pytest.raises(RuntimeError, match="the body failed"), Places(["centre", "far"], "centre", RTT_MS) as made:
        echo = subprocess.Popen(
            [*made.prefix("far"), sys.executable, "-c", ECHO, made.host("far")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert echo.stdout is not None and echo.stdout.readline() == "up\n"
            round_trips_ms = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as here:
                here.settimeout(1)
                for _ in range(5):
                    begin = time.perf_counter()
                    here.sendto(b"ping", (made.host("far"), 9000))
                    assert here.recv(100) == b"ping"
                    round_trips_ms.append((time.perf_counter() - begin) * 1000)
            assert RTT_MS <= min(round_trips_ms) < 1.1 * RTT_MS, round_trips_ms
            wire = made.wire_pid
            assert left_behind(), "the places were never made"
        finally:
            echo.kill()
            echo.wait()
        raise RuntimeError("the body failed")
    assert not Path(f"/proc/{wire}").exists(), "the wire still runs"
    assert left_behind() == []


async def test_a_settlement_takes_its_round_trips_and_no_more(tmp_path):
    """Every settlement takes at least its round trips (4 across ledgers, 2 on one) and the
    quickest less than one more; so does a lone request to the coordinator (1), and, by the
    coordinator's steps, each lock round (1) and the claims (2). The quickest, since the
    suite beside it may keep both cores busy."""
    shape = Shape(participants=4)
    with places(shape, RTT_MS) as made:
        async with mqtt_system(tmp_path, shape, 1, places=made) as system:

            async def uncounted() -> int:  # what the bus counts is not this test's: no 2 s waits for it
                return 0

            system = attrs.evolve(system, messages=uncounted)
            results = {
                path: await measure(system, Run("mqtt", "dvp", path, Load(concurrency=1), 5, rtt_ms=RTT_MS), ignored)
                for path in ("cross", "same")
            }
    for path, result in results.items():
        least_ms = ROUND_TRIPS[path] * RTT_MS
        assert min(result.latencies_ms) >= least_ms, (path, result.latencies_ms)
        assert min(result.latencies_ms) < least_ms + RTT_MS, (path, result.latencies_ms)
        assert RTT_MS <= min(result.round_trips_ms) < 2 * RTT_MS, result.round_trips_ms
    for name, trips in (("lock", 1), ("claims", 2)):
        rounds_ms = results["cross"].rounds_ms[name]
        assert trips * RTT_MS <= min(rounds_ms) < (trips + 1) * RTT_MS, (name, rounds_ms)
        assert not results["same"].rounds_ms[name]  # one settle: no lock, no claim
    assert left_behind() == []
