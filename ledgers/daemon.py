"""`lockstep ledger --config FILE`: one ledger as its own process on an MQTT broker.

Start-up refuses, with a message naming the cause, a wrong config, a key that is not the
registered one, a database whose journal does not verify, an unreachable broker. SIGTERM
or SIGINT stops it cleanly: the batch in hand is committed and answered, then the
database is closed."""

from __future__ import annotations

import logging
import signal

import trio

from protocols.bus.address import redacted
from protocols.bus.clock import ServiceClock
from protocols.bus.exposition import MetricsUnavailable, listener_for, serve_metrics
from protocols.bus.mqtt import MqttBus
from protocols.failures import ExpectedFailure
from protocols.registry import Registry
from protocols.signing import PrivateKey

from .config import LedgerConfig
from .database import DatabaseUnavailable
from .ledger import Ledger, StartRefused
from .service import LedgerService
from .store import Store

log = logging.getLogger("lockstep.ledger")


class DaemonError(ExpectedFailure):
    """Why the ledger daemon cannot run, beyond its config, registry, key and broker
    (which say so themselves)."""


def open_ledger(config: LedgerConfig, now_ms: int) -> Ledger:
    registry = Registry.load(config.registry)
    key = PrivateKey.load(config.key_file)
    try:
        store = Store(config.database)
    except DatabaseUnavailable as error:
        raise DaemonError(f"ledger {config.ledger_id}: {error.subject}", error.reason) from None
    try:
        return Ledger(config, registry, key, store, now_ms)
    except StartRefused as error:
        store.close()
        raise DaemonError(f"ledger {config.ledger_id}", f"refuses to start: {error}") from None


async def run(config_path: str, broker: str | None = None, metrics: str | None = None) -> None:
    """`broker` and `metrics` (HOST:PORT) override the config's."""
    config = LedgerConfig.load(config_path)
    url = broker or config.broker
    if url is None:
        raise DaemonError(f"ledger config {config_path}", "broker: required to run as a service (or pass --broker)")
    try:
        listener = listener_for(config.metrics, metrics)
    except MetricsUnavailable as error:
        raise DaemonError(f"ledger {config.ledger_id}", str(error)) from None
    clock = ServiceClock()
    ledger = open_ledger(config, clock.now_ms())
    try:
        async with MqttBus.connect(url, client_id=f"ledger-{config.ledger_id}") as bus:
            service = LedgerService(ledger, bus, clock)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(service.run)
                    log.info(
                        "ledger %s (%s) up on %s, database %s",
                        config.ledger_id,
                        config.role,
                        redacted(url),
                        ledger.store.name,
                    )
                    if listener is not None:
                        await nursery.start(serve_metrics, service.metrics.registry, listener)
                        log.info("ledger %s metrics at %s", config.ledger_id, listener.url)
                    async for signum in signals:
                        log.info("ledger %s stopping on %s", config.ledger_id, signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
    finally:
        try:
            ledger.close()  # a checkpoint at the head: the next start reads one entry
        except DatabaseUnavailable as error:
            log.warning("ledger %s stopped without a checkpoint at its head: %s", config.ledger_id, error)
    log.info("ledger %s stopped at journal height %d", config.ledger_id, ledger.seq)
