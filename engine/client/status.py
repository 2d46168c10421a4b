"""`lockstep status ID`: ask the coordinator over the bus for a settlement's phase and
the time of each step, checking the coordinator's signature on the answer."""

from __future__ import annotations

import datetime

from protocols import canonical
from protocols.bus import BusTimeout, service_of_coordinator
from protocols.bus.address import redacted
from protocols.bus.mqtt import MqttBus
from protocols.errors import Rejected
from protocols.messages import QuerySettlement, SettlementStatus
from protocols.signing import from_wire, unsigned

from ..daemon import DaemonError, load

ANSWER_TIMEOUT_S = 5


async def main(config_path: str, settlement_id: str, broker: str | None) -> int:
    config, registry, _, url = load(config_path, broker)
    query = unsigned(QuerySettlement("status-query", config.coordinator_id, settlement_id)).encode()
    coordinator = f"coordinator {config.coordinator_id}"
    async with MqttBus.connect(url) as bus:
        try:  # caught here: raised through the bus's nursery it would come wrapped in a group
            raw = await bus.request(service_of_coordinator(config.coordinator_id), query, timeout_s=ANSWER_TIMEOUT_S)
        except BusTimeout:
            raw = None
    if raw is None:
        raise DaemonError(
            coordinator, f"did not answer within {ANSWER_TIMEOUT_S} s (is it running on {redacted(url)}?)"
        )
    try:
        signed = from_wire(canonical.decode(raw), allowed=(SettlementStatus,))
    except Rejected as error:
        raise DaemonError(coordinator, f"its answer is not a settlement status: {error}") from None
    key = registry[config.coordinator_id].public_key
    if not signed.signed_by(config.coordinator_id, key):
        raise DaemonError(coordinator, "the answer is not signed by the coordinator")
    status: SettlementStatus = signed.msg
    print(f"settlement {status.settlement_id}: {status.phase.upper()}")
    if status.reason_code:
        print(f"  reason: {status.reason_code}: {status.reason}")
    start = status.steps[0][1] if status.steps else 0
    for phase, at_ms in status.steps:
        stamp = datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")
        print(f"  {stamp}  +{at_ms - start:>6} ms  {phase}")
    return 0 if status.phase != "rejected" else 1
