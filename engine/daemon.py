"""`lockstep coordinator`, `lockstep watchtower` and `lockstep intermediary`: the
engine's services as their own processes on an MQTT broker. SIGTERM or SIGINT stops them; a coordinator killed any
harder resumes every unfinished settlement from its journal when started again."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from contextlib import asynccontextmanager

import attrs
import trio

from protocols.bus.address import redacted
from protocols.bus.clock import ServiceClock
from protocols.bus.exposition import Listener, MetricsUnavailable, listener_for, serve_metrics
from protocols.bus.mqtt import MqttBus
from protocols.failures import ExpectedFailure
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey

from .client.intermediary import Intermediary, IntermediaryConfig
from .config import CoordinatorConfig
from .coordinator import Coordinator
from .coordinator.journal import Hold, Journal, JournalInUse, hold
from .coordinator.metrics import CoordinatorMetrics
from .coordinator.schema import JournalUnavailable
from .desks.matching import MatchingDesk
from .desks.paths import PathDesk
from .desks.repo import RepoDesk
from .desks.servicing import ServicingDesk
from .watchtower import Watchtower

log = logging.getLogger("lockstep")


class DaemonError(ExpectedFailure):
    """Why a service or tool cannot go on, beyond its config, registry, key and broker
    (which say so themselves): a setting that does not fit the registry, a service that
    does not answer, an answer that is not the service's."""


def load(config_path: str, broker: str | None) -> tuple[CoordinatorConfig, Registry, PrivateKey, str]:
    config = CoordinatorConfig.load(config_path)
    registry = Registry.load(config.registry)
    key = PrivateKey.load(config.key_file)
    url = broker or config.broker
    source = f"coordinator config {config_path}"
    if url is None:
        raise DaemonError(source, "broker: required (or pass --broker)")
    party = registry.get(config.coordinator_id)
    if party is None or Role.COORDINATOR not in party.roles:
        raise DaemonError(source, f"coordinator_id: {config.coordinator_id!r} is not a coordinator of the registry")
    if party.public_key.public_numbers() != key.public.public_numbers():
        raise DaemonError(f"private key {config.key_file}", f"not the key registered for {config.coordinator_id}")
    for ledger in config.ledgers:
        if ledger not in registry:
            raise DaemonError(source, f"ledgers: {ledger!r} is not in the registry")
    for asset, ledger in config.settlement_ledgers.items():
        if not registry.has_role(ledger, Role.LEDGER):
            raise DaemonError(source, f"settlement_ledgers: {asset} = {ledger!r} is not a ledger of the registry")
    return config, registry, key, url


async def on_bus(broker: str, work):
    """`await work(bus)` on a connection to the broker; an expected failure from it
    comes out as itself, not wrapped in the bus's nursery's exception group."""
    failure = None
    async with MqttBus.connect(broker) as bus:
        try:
            return await work(bus)
        except ExpectedFailure as error:
            failure = error
    raise failure


@asynccontextmanager
async def _until_signalled(url: str, client_id: str):
    """A bus connection and a nursery that a SIGTERM or SIGINT cancels."""
    async with MqttBus.connect(url, client_id=client_id) as bus:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s stopping on %s", client_id, signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                yield bus, nursery


TAKEOVER_POLL_S = 0.2  # how often a standby tries a held journal's lock: the kernel frees it as its holder dies


async def run_coordinator(
    config_path: str, broker: str | None = None, metrics: str | None = None, standby: tuple[str, ...] = ()
) -> None:
    """`broker` and `metrics` (HOST:PORT) override the config's. With `standby`, the
    coordinators of those configs are parts of this process too, each taken over from
    its journal when the process that served it dies; and this config's own coordinator,
    if another process holds its journal, is waited for the same way, not an error."""
    own, *others = [load(path, broker) for path in dict.fromkeys((config_path, *standby))]
    config, _, _, url = own
    _check_parts([own, *others])
    try:
        listener = listener_for(config.metrics, metrics)
    except MetricsUnavailable as error:
        raise DaemonError(f"coordinator {config.coordinator_id}", str(error)) from None
    journal = None if standby else _journal(config)
    # the process's pid in its MQTT client id: a standby for the same coordinator is
    # connected at the same time, and a broker drops the older of two equal client ids
    async with _until_signalled(url, f"coordinator-{config.coordinator_id}-{os.getpid()}") as (bus, nursery):
        served = _Part(config, own[1], own[2], bus, url, listener)
        if journal is not None:
            await nursery.start(served.run, journal)
        else:
            nursery.start_soon(served.stand_by, True)
        for part_config, registry, key, _ in others:
            nursery.start_soon(_Part(part_config, registry, key, bus, url, None).stand_by, False)


def _check_parts(parts: list[tuple[CoordinatorConfig, Registry, PrivateKey, str]]) -> None:
    """Parts of one process: each its own coordinator and journal, all on one broker."""
    for what, values in (
        ("coordinator_id", [config.coordinator_id for config, *_ in parts]),
        ("journal", [str(config.journal) for config, *_ in parts]),
    ):
        if len(set(values)) != len(values):
            raise DaemonError("--standby", f"each coordinator needs its own {what}; given {', '.join(values)}")
    if len({url for *_, url in parts}) > 1:
        raise DaemonError("--standby", "the coordinators of one process share its broker: give them one, or --broker")


def _journal(config: CoordinatorConfig, held: Hold | None = None) -> Journal:
    """The coordinator's journal, at a new epoch (its lock `held` already, or taken now)."""
    try:
        return Journal(config.journal, held=held)
    except JournalUnavailable as error:
        raise DaemonError(f"coordinator {config.coordinator_id}: {error.subject}", error.reason) from None
    except (sqlite3.Error, OSError) as error:
        raise DaemonError(
            f"coordinator {config.coordinator_id}: journal {config.journal}", f"cannot open it: {error}"
        ) from None
    except JournalInUse as error:
        raise DaemonError(f"coordinator {config.coordinator_id}: journal {config.journal}", str(error)) from None


@attrs.define
class _Part:
    """One coordinator (an id, its key and its journal) served by this process."""

    config: CoordinatorConfig
    registry: Registry
    key: PrivateKey
    bus: MqttBus
    url: str
    listener: Listener | None

    async def stand_by(self, own: bool) -> None:
        """Serve the part once its journal's lock is free: this process's own part at
        once, another's only once it has been seen held, so that a process never takes
        a part whose own process has not started yet, only one whose process has died."""
        config, seen_held = self.config, False
        while True:
            try:
                held = hold(config.journal)
            except JournalUnavailable as error:
                raise DaemonError(f"coordinator {config.coordinator_id}: {error.subject}", error.reason) from None
            except JournalInUse as error:
                if not seen_held:
                    log.info("coordinator %s: standing by, journal %s", config.coordinator_id, error)
                seen_held = True
            else:
                if own or seen_held:
                    break
                held.release()  # free, but not yet served: its own process's to take
            await trio.sleep(TAKEOVER_POLL_S)
        journal = _journal(config, held)
        if seen_held:
            log.warning(
                "coordinator %s: took over journal %s at epoch %d", config.coordinator_id, config.journal, journal.epoch
            )
        await self.run(journal)

    async def run(self, journal: Journal, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        try:
            async with trio.open_nursery() as nursery:
                coordinator = Coordinator(
                    config.coordinator_id,
                    self.key,
                    self.registry,
                    self.bus,
                    journal,
                    ServiceClock(),
                    config.timing,
                    config.ledgers if config.watchtower else (),
                    intake_max=config.intake_max,
                )
                coordinator.add_desk(MatchingDesk(coordinator, config.settlement_ledgers, config.calendars))
                coordinator.add_desk(ServicingDesk(coordinator))
                coordinator.add_desk(RepoDesk(coordinator))
                coordinator.add_desk(PathDesk(coordinator))
                coordinator_metrics = CoordinatorMetrics(coordinator)  # before any settlement is resumed
                await nursery.start(coordinator.run)
                log.info(
                    "coordinator %s up on %s, journal %s at epoch %d, Δ = %d ms, backstop %d ms",
                    config.coordinator_id,
                    redacted(self.url),
                    config.journal,
                    journal.epoch,
                    config.timing.margin_ms,
                    config.timing.backstop_ms,
                )
                if self.listener is not None:
                    await nursery.start(serve_metrics, coordinator_metrics.registry, self.listener)
                    log.info("coordinator %s metrics at %s", config.coordinator_id, self.listener.url)
                task_status.started()
        finally:
            journal.close()


async def run_watchtower(
    config_path: str, broker: str | None = None, party: str | None = None, key_file: str | None = None
) -> None:
    """As the coordinator's party with its key, or as `party` with `key_file`: any
    registered party may claim or cancel with a public preimage."""
    config, registry, key, url = load(config_path, broker)
    if (party is None) != (key_file is None):
        raise DaemonError("watchtower", "give both --party and --key, or neither")
    if party is not None and key_file is not None:
        signer = registry.get(party)
        if signer is None:
            raise DaemonError(f"--party {party}", "not a party of the registry")
        key = PrivateKey.load(key_file)
        if signer.public_key.public_numbers() != key.public.public_numbers():
            raise DaemonError(f"private key {key_file}", f"not the key registered for {party}")
    party = party or config.coordinator_id
    async with _until_signalled(url, f"watchtower-{party}") as (bus, nursery):
        watchtower = Watchtower(
            party,
            key,
            registry,
            bus,
            list(config.ledgers),
            ServiceClock(),
            grace_ms=config.timing.claim_deadline_ms // 2,
            coordinators=(config.coordinator_id,),
        )
        await nursery.start(watchtower.run)
        log.info(
            "watchtower %s watching %s and %s's decisions on %s",
            party,
            ", ".join(config.ledgers),
            config.coordinator_id,
            redacted(url),
        )


async def run_intermediary(config_path: str, broker: str | None = None) -> None:
    """A market maker's quoting and accepting service, until SIGTERM or SIGINT."""
    config = IntermediaryConfig.load(config_path)
    registry = Registry.load(config.registry)
    key = PrivateKey.load(config.key_file)
    source = f"intermediary config {config_path}"
    party = registry.get(config.party)
    if party is None or Role.INTERMEDIARY not in party.roles:
        raise DaemonError(source, f"intermediary: {config.party!r} is not an intermediary of the registry")
    if party.public_key.public_numbers() != key.public.public_numbers():
        raise DaemonError(f"private key {config.key_file}", f"not the key registered for {config.party}")
    url = broker or config.broker
    if url is None:
        raise DaemonError(source, "broker: required (or pass --broker)")
    async with _until_signalled(url, f"intermediary-{config.party}") as (bus, nursery):
        intermediary = Intermediary(
            config.party, key, registry, bus, ServiceClock(), config.offers, config.margin_ms, config.quote_valid_ms
        )
        await nursery.start(intermediary.run)
        log.info(
            "intermediary %s quoting %d offers on %s, margin %d ms",
            config.party,
            len(config.offers),
            redacted(url),
            config.margin_ms,
        )
