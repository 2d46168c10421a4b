"""`lockstep bench --per-request N`: a back office's settlements sent to their coordinator
N to a request. Each settlement is still timed, counted and checked on the ledgers; each
request goes to the one coordinator all of its settlements name."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from benchmarks.bench import main, sweep
from benchmarks.options import arguments
from benchmarks.runner import Load, Run, _requests, measure, memory_system
from benchmarks.workload import Shape
from protocols.failures import ExpectedFailure


async def test_settlements_sent_together_are_each_timed_and_checked_and_share_their_messages(tmp_path):
    """32 in flight, 8 to a request: every settlement settles and is timed, and the
    requests and replies no longer cost two messages a settlement."""
    async with memory_system(tmp_path, Shape(participants=6), 1) as system:
        alone = await measure(system, Run("memory", "dvp", "cross", Load(concurrency=32), 96), lambda count: None)
        load = Load(concurrency=32, per_request=8)
        together = await measure(system, Run("memory", "dvp", "cross", load, 96), lambda count: None)
    assert load.label == "c=32,b=8" and together.summary()["per_request"] == 8
    assert together.phases == alone.phases == {"settled": 96}
    assert len(together.latencies_ms) == 96
    assert alone.bus_messages is not None and together.bus_messages is not None
    # a request and its reply for 8 settlements, not for each; the ledgers' share about the same
    assert together.bus_messages <= alone.bus_messages - 2 * 96 + 2 * 96 // 8 + 96 // 8, (alone, together)


def test_each_request_carries_settlements_of_one_coordinator_and_every_settlement_goes_once():
    orders = [(f"raw-{n}".encode(), f"s-{n}", f"coordinator-{n % 3}") for n in range(50)]
    requests = _requests(orders, 4)
    assert all(1 <= len(request) <= 4 and len({order[2] for order in request}) == 1 for request in requests)
    assert sorted(order for request in requests for order in request) == sorted(orders)
    assert Counter(len(request) for request in requests) == Counter({4: 12, 1: 2})
    assert [request[0][2] for request in requests[:3]] == ["coordinator-0", "coordinator-1", "coordinator-2"]


def test_a_request_never_carries_more_settlements_than_the_loop_has_in_flight():
    assert [load.label for load in sweep([1, 256], [300], [1, 64])] == [
        "c=1",
        "c=256",
        "r=300/s",
        "c=256,b=64",
        "r=300/s,b=64",
    ]


@pytest.mark.parametrize("value", ["0", "1025"])
def test_settlements_to_a_request_out_of_range_are_refused_naming_them_before_any_run(tmp_path, value):
    parser = argparse.ArgumentParser()
    arguments(parser)
    with pytest.raises(ExpectedFailure) as refused:
        main(parser.parse_args(["--bus", "memory", "--per-request", f"1,{value}", "--out", str(tmp_path / "out")]))
    assert str(refused.value) == f"--per-request {value}: settlements to a request are 1 to 1024"
    assert not (tmp_path / "out").exists()
