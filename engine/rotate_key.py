"""`lockstep rotate-key`: a ledger's operator registers a participant's new key on that
ledger (PROTOCOL.md §6, `rotate_key`). The operator has checked out of band who asks;
from the journal entry it makes, the old key moves nothing on that ledger."""

from __future__ import annotations

import secrets
from pathlib import Path

from protocols.bus import BusTimeout
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import BrokerUnreachable, MqttBus
from protocols.messages import RotateKey
from protocols.registry import Registry
from protocols.signing import PrivateKey, load_public_pem, public_point, sign

from .daemon import DaemonError


def prepare(registry_path: str, ledger: str, operator: str, operator_key_path: str, party: str,
            public_key_path: str, now_ms: int) -> tuple[Registry, RotateKey, bytes]:
    """The signed instruction, after every check that can be made before sending."""
    try:
        registry = Registry.load(registry_path)
        key = PrivateKey.load(operator_key_path)
        new_key = load_public_pem(Path(public_key_path).read_text())
    except (OSError, ValueError) as error:
        raise DaemonError(str(error)) from None
    for who, path in ((ledger, "--ledger"), (operator, "--operator"), (party, "--party")):
        if who not in registry:
            raise DaemonError(f"{path}: {who!r} is not in the registry")
    if registry.get(operator).public_key.public_numbers() != key.public.public_numbers():
        raise DaemonError(f"--operator-key: {operator_key_path} is not the key registered for {operator}")
    msg = RotateKey(f"rotate-{party}-{secrets.token_hex(4)}", ledger, now_ms, party, public_point(new_key))
    return registry, msg, sign(msg, (operator, key)).encode()


async def main(broker: str, registry_path: str, ledger: str, operator: str, operator_key_path: str,
               party: str, public_key_path: str) -> int:
    registry, msg, raw = prepare(registry_path, ledger, operator, operator_key_path, party, public_key_path,
                            ServiceClock().now_ms())
    try:
        async with MqttBus.connect(broker) as bus:
            client = LedgerClient(bus, ledger, registry.get(ledger).public_key)
            try:
                receipt = await client.submit_raw(raw)
            except (BusTimeout, BadReply) as error:
                raise DaemonError(f"ledger {ledger}: {error}") from None
    except BrokerUnreachable as error:
        raise DaemonError(str(error)) from None
    if not receipt.applied:
        print(f"lockstep rotate-key: {ledger} refused: {receipt.code}: {receipt.field}: {receipt.reason}")
        return 1
    print(f"{party}'s key on {ledger} is now {msg.public_key} "
          f"(journal entry {receipt.seq}); the old key moves nothing there from that entry on")
    return 0

