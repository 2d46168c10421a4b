"""The bus round-trip measurement (benchmarks/round_trip.py) runs and measures."""

import trio

from benchmarks.round_trip import measure


def test_round_trip_measures_wall_and_cpu(broker):
    wall_ms, cpu_ms = trio.run(measure, broker.url, 50)
    assert 0 < wall_ms < 1000
    assert 0 < cpu_ms < 1000
