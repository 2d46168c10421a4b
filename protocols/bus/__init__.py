"""The bus: how services meet. Request/response with a deadline, and events.

`Bus` is the interface every service and the coordinator is written against; two
implementations carry it: `memory.MemoryBus` inside one process and `mqtt.MqttBus`
over an MQTT broker. A request names a *service* (such as `ledger.csd`); the bus routes
it to whoever serves that name and routes the reply back to the caller alone, by a
correlation id. Delivery is at most once per attempt: a caller that hears nothing by
its deadline gets `BusTimeout` and retries with the same instruction id, which the
receiver makes idempotent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs


class BusTimeout(Exception):
    """No reply arrived before the deadline. The request may or may not have been
    applied: ask again with the same id."""


class BusClosed(Exception):
    """The bus connection is gone and will not come back."""


@attrs.frozen
class Request:
    """A request as its server receives it; `reply` sends the one answer back. `client`
    is who sent it, as the bus knows (over MQTT: the client id in its topic, which the
    broker's ACL ties to the client's login)."""

    payload: bytes
    reply: Callable[[bytes], Awaitable[None]] = attrs.field(repr=False)
    client: str = ""


class Bus(Protocol):
    @property
    def messages_sent(self) -> int:
        """Published and requested by this end: what the benchmark counts."""

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        """Send a request to a service and wait for its reply, or raise BusTimeout."""

    def serve(self, service: str) -> AbstractAsyncContextManager:
        """While entered, receive the service's requests from the yielded channel."""

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish an event; subscribers of the topic receive it, in order."""

    def subscribe(self, topic: str) -> AbstractAsyncContextManager:
        """While entered, receive the topic's events (bytes) from the yielded channel."""


# A service is named by its kind and id, two topic levels (`ledger/csd`), and events
# likewise with their stream: `/`, not `.`, which some brokers' MQTT (NATS) refuse in topics.


def service_of_ledger(ledger_id: str) -> str:
    return f"ledger/{ledger_id}"


def service_of_coordinator(coordinator_id: str) -> str:
    return f"coordinator/{coordinator_id}"


def service_of_intermediary(party_id: str) -> str:
    """Where an intermediary answers coordinators' quote and hop requests."""
    return f"intermediary/{party_id}"


def entries_topic(ledger_id: str) -> str:
    """Where a ledger publishes each journal entry as it commits: its change stream."""
    return f"ledger/{ledger_id}/entries"


def decisions_topic(coordinator_id: str) -> str:
    """Where a coordinator publishes each settlement's decision once it is durable: what
    watchtowers forward to the ledgers."""
    return f"coordinator/{coordinator_id}/decisions"


ReplyFn = Callable[[bytes], Awaitable[None]]
