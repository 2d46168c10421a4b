"""`lockstep rotate-key`: a ledger's operator registers a participant's new key on that
ledger (PROTOCOL.md §6, `rotate_key`). The operator has checked out of band who asks;
from the journal entry it makes, the old key moves nothing on that ledger."""

from __future__ import annotations

import secrets

from protocols.bus import BusTimeout
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.messages import Receipt, RotateKey
from protocols.registry import Registry
from protocols.signing import PrivateKey, load_public_key, public_point, sign

from ..daemon import DaemonError


def prepare(
    registry_path: str,
    ledger: str,
    operator: str,
    operator_key_path: str,
    party: str,
    public_key_path: str,
    now_ms: int,
) -> tuple[Registry, RotateKey, bytes]:
    """The signed instruction, after every check that can be made before sending."""
    registry = Registry.load(registry_path)
    key = PrivateKey.load(operator_key_path)
    new_key = load_public_key(public_key_path)
    for who, option in ((ledger, "--ledger"), (operator, "--operator"), (party, "--party")):
        if who not in registry:
            raise DaemonError(f"{option} {who}", f"not in the registry {registry_path}")
    if registry[operator].public_key.public_numbers() != key.public.public_numbers():
        raise DaemonError(f"--operator-key {operator_key_path}", f"not the key registered for {operator}")
    msg = RotateKey(f"rotate-{party}-{secrets.token_hex(4)}", ledger, now_ms, party, public_point(new_key))
    return registry, msg, sign(msg, (operator, key)).encode()


async def main(
    broker: str,
    registry_path: str,
    ledger: str,
    operator: str,
    operator_key_path: str,
    party: str,
    public_key_path: str,
) -> int:
    registry, msg, raw = prepare(
        registry_path, ledger, operator, operator_key_path, party, public_key_path, ServiceClock().now_ms()
    )
    async with MqttBus.connect(broker) as bus:
        client = LedgerClient(bus, ledger, registry[ledger].public_key)
        try:  # caught here: raised through the bus's nursery it would come wrapped in a group
            receipt = await client.submit_raw(raw)
        except (BusTimeout, BadReply) as error:
            failure: DaemonError | None = DaemonError(f"ledger {ledger}", str(error))
        else:
            failure = None
    if failure is not None:
        raise failure
    if not isinstance(receipt, Receipt):
        raise DaemonError(f"ledger {ledger}", "answered the key rotation with a query's result")
    if not receipt.applied:
        print(f"lockstep rotate-key: {ledger} refused: {receipt.code}: {receipt.field}: {receipt.reason}")
        return 1
    print(
        f"{party}'s key on {ledger} is now {msg.public_key} "
        f"(journal entry {receipt.seq}); the old key moves nothing there from that entry on"
    )
    return 0
