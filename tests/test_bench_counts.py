"""The benchmark's message count: each run counts what its own settlements sent, on both
buses, fast runs too, and neither the checks after it nor the run before it."""

from __future__ import annotations

import functools

import pytest

from benchmarks.runner import Load, Run, measure, memory_system, mqtt_system
from benchmarks.workload import LEDGERS, Shape

pytestmark = pytest.mark.slow  # benchmark runs over MQTT

SHAPE = Shape(participants=6)
# One settlement's messages: its request to the coordinator and the signed status back;
# same-ledger, one `settle` and its receipt; cross-ledger, a lock and a claim on each leg,
# each with its receipt, and the coordinator's decision event; and a journal entry event
# for each instruction a ledger applies. That is one settlement alone; with others in
# flight, instructions to one ledger share a batch (one message, one receipt message, one
# event for its entries), decisions of one step share an event, and only the request and
# its status stay its own.
# A run also counts the watchtower's polls of the ledgers it heard nothing from for a second
# (on Mosquitto, up to 2 s of them while the broker's next report comes): 1 or 2 a ledger.
NEEDED = {"same": 2 + 2 + 1, "cross": 2 + 8 + 1 + 4}
UNSHARED = {"same": 2, "cross": 2}
IDLE_PER_SETTLEMENT_MAX = 0.5


def check(found: dict) -> None:
    for (path, concurrency), per_settlement in found.items():
        least = NEEDED[path] if concurrency == 1 else UNSHARED[path]
        assert least <= per_settlement <= NEEDED[path] + IDLE_PER_SETTLEMENT_MAX, found


async def messages_per_settlement(system, bus: str, path: str, concurrency: int, settlements: int) -> float:
    result = await measure(
        system, Run(bus, "dvp", path, Load(concurrency=concurrency), settlements), lambda count: None
    )
    assert result.phases == {"settled": settlements}
    return result.bus_messages / settlements


async def counts(system_of, bus: str, tmp_path, paths: tuple[str, ...], settlements: int) -> dict:
    found = {}
    async with system_of(tmp_path, SHAPE, 1) as system:
        for concurrency in (1, 16):
            for path in paths:
                found[(path, concurrency)] = await messages_per_settlement(system, bus, path, concurrency, settlements)
    return found


async def test_memory_runs_count_their_own_settlements_messages_at_any_concurrency(tmp_path):
    check(await counts(memory_system, "memory", tmp_path, ("cross", "same"), settlements=60))


@pytest.mark.parametrize("qos", [1, 0])
async def test_mqtt_runs_count_one_settlements_messages_even_when_they_are_fast(tmp_path, qos):
    """Same-ledger at 16 in flight ends in well under the broker's report interval: the
    run the broker's stale count read as 0 messages, the next as several runs' worth. At
    QoS 0 the messages are the same, with no acknowledgement of each, and every service
    and the load generator run at it."""
    check(await counts(functools.partial(mqtt_system, qos=qos), "mqtt", tmp_path, ("same",), settlements=60))
    configs = list(tmp_path.rglob("*.toml"))
    brokers = [line for config in configs for line in config.read_text().splitlines() if line.startswith("broker =")]
    assert len(brokers) == len(LEDGERS) + SHAPE.coordinators
    assert all(line.endswith('?qos=0"') == (qos == 0) for line in brokers), brokers
