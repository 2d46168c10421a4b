"""Several coordinators in the benchmark: each settlement is routed to one coordinator by
a stable hash of its id, so the coordinators own disjoint parts of the id space and
every one of them gets a share; each is a coordinator of the registry laid out."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from benchmarks.runner import BenchmarkBroken, memory_system
from benchmarks.workload import Shape, lay_out_bench
from protocols.registry import Role


def test_each_settlement_id_has_one_coordinator_and_every_coordinator_a_share():
    shape = Shape(participants=4, coordinators=3)
    ids = [f"mqtt-dvp-cross-c64-{n}" for n in range(3_000)]
    owners = Counter(shape.coordinator_of(settlement_id) for settlement_id in ids)
    assert set(owners) == {"coordinator", "coordinator-1", "coordinator-2"}
    assert min(owners.values()) > 800, owners
    assert [shape.coordinator_of(i) for i in ids] == [
        Shape(participants=9, coordinators=3).coordinator_of(i) for i in ids
    ]
    assert {Shape(participants=4).coordinator_of(i) for i in ids} == {"coordinator"}


def test_the_bench_world_registers_and_configures_every_coordinator(tmp_path):
    world = lay_out_bench(tmp_path, Shape(participants=4, coordinators=2))
    for coordinator in ("coordinator", "coordinator-1"):
        assert world.registry.has_role(coordinator, Role.COORDINATOR)
        assert f'coordinator_id = "{coordinator}"' in world.ledger_configs[coordinator].read_text()


def test_more_than_one_coordinator_on_the_memory_bus_is_refused_saying_why(tmp_path):
    async def run() -> None:
        async with memory_system(tmp_path, Shape(participants=4, coordinators=2), seed=1):
            pass

    with pytest.raises(BenchmarkBroken, match="more than one runs on the mqtt bus only"):
        trio.run(run)
