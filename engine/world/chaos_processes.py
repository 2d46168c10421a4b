"""`lockstep chaos --bus mqtt`: the chaos workload with every service a real process.

Mosquitto (engine.broker), each ledger of the standard world (`lockstep ledger`) and the
coordinator (`lockstep coordinator`, PROCESS_TIMING in its config) run as processes of
their own. This process is the back offices and the supervisor: it sends the workload
of engine.chaos over MQTT (the same signed bytes again until a final status) and, each
fault class from its own seeded generator, strikes:

    kill-coordinator   SIGKILL the coordinator (with `coordinators` > 1, one of their
                       processes, drawn at random); start it again after a pause
    kill-ledger        SIGKILL a ledger chosen at random; start it again after a pause
    broker-restart     SIGKILL Mosquitto; start it again on the same port after a pause
    broker-node-kill   with a broker cluster (`broker_cluster`, nats:N): SIGKILL one of its
                       nodes, drawn at random; every client on it moves to another node
                       (each service is given every node's URL, starting from a node of
                       its own, so that they spread over the cluster); once a pause is
                       over and every service answers again, start the node again

Each outage is timed from the kill until the service answers again, its start-up
included (for the broker: until every service answers through it again; for a broker
node, through the nodes left, the failover, the node's own restart coming after); unless
`long_outages` it is meant to stay under Δ: the pause is at most 0.3 Δ, the start-up
must fit in the rest (a ledger's grows with its journal, which it replays before it
serves), and a broker restart never overlaps a service's outage (`Outages`), since a
service cannot start while the broker is down. `Restarts` shows whether they did.
With `coordinators` > 1 the settlement ids are routed among that many coordinators,
each its own process standing by for all the others (`--standby`): a coordinator killed
is taken over from its journal by a surviving process at the next epoch, fenced at the
ledgers, and the restarted process stands by in its turn. After the run: faults off,
everything up again, every settlement final, every abandoned lock expired and refunded
by its ledger; then the audit, over the bus. As in engine.chaos, a live observer
follows every ledger throughout and must have alerted each one-legged settlement, and
the timed outages explain each."""

from __future__ import annotations

import functools
import itertools
import random
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Protocol

import attrs
import trio

from protocols.bus.address import at_qos
from protocols.bus.mqtt import MqttBus
from protocols.messages import QueryLocks, readable_id
from protocols.settlement import Timing, coordinator_ids

from ..audit.journals import read_over_bus
from ..audit.observer import Observer
from .broker import Broker
from .chaos import (
    CHAOS_TIMING,
    CONCURRENCY,
    LONG_OUTAGES_DELTAS,
    SETTLE_WAIT_S,
    Outage,
    Outcome,
    draw,
    heading,
    judge,
    sent_together,
    settle,
    timing_with,
)
from .layout import World
from .local import COORDINATOR, LEDGERS, Local, standard_world
from .nats import CLUSTER_QOS, NatsCluster, NatsServer
from .postgres import LOCAL_POSTGRES, scratch_database, service_schemas
from .processes import ServiceProcess
from .rabbitmq import RabbitMQNode

FAULTS = ("kill-coordinator", "kill-ledger", "broker-restart")
BROKERS: dict[str, Callable[[Path], BrokerProcess]] = {
    "mosquitto": Broker,
    "nats": NatsServer,
    "rabbitmq": RabbitMQNode,
}
STORES = ("sqlite", "postgresql")
CLUSTER_FAULTS = ("kill-coordinator", "kill-ledger", "broker-node-kill")  # with a broker cluster
# Δ = 4 s, as in the one-process mode: a pause of up to 0.3 Δ, then a start-up that took up
# to 1.4 s on a loaded two-core machine
PROCESS_TIMING = CHAOS_TIMING
PAUSE_S = (1.0, 4.0)  # between two faults of one class, once the last outage is over
START_TIMEOUT_S = 20.0  # for a service to answer after its process starts
FAILOVER_TIMEOUT_S = 60.0  # for every service to answer through a cluster's nodes left (NATS: 4 to 15 s)
EXPIRY_SLACK_S = 5.0  # past the last expiry, for the ledgers to refund what is left


def check(faults: tuple[str, ...], cluster: bool = False) -> None:
    known, mode = (CLUSTER_FAULTS, "--bus mqtt --broker-cluster") if cluster else (FAULTS, "--bus mqtt")
    unknown = sorted(set(faults) - set(known))
    if unknown:
        raise ValueError(f"unknown faults for {mode}: {', '.join(unknown)}; choose from {', '.join(known)}")


def check_broker(kind: str, faults: tuple[str, ...], cluster: bool) -> None:
    """A single broker of `kind` for these faults (a cluster is always NATS's)."""
    if kind not in BROKERS:
        raise ValueError(f"--broker-kind {kind}: one of {', '.join(BROKERS)}")
    if cluster and kind != "mosquitto":
        raise ValueError("--broker-kind: a --broker-cluster is NATS's already")
    if kind == "rabbitmq" and "broker-restart" in faults:
        raise ValueError(
            "broker-restart with --broker-kind rabbitmq: a RabbitMQ node takes about 10 s to start, longer "
            "than a broker outage may last here (Δ); choose kill-coordinator,kill-ledger"
        )


def cluster_size(spec: str) -> int:
    """The nodes of the broker cluster `spec` names: nats:N, N from 3."""
    kind, _, size = spec.partition(":")
    if kind != "nats" or not size.isdigit() or int(size) < 3:
        raise ValueError(f"--broker-cluster {spec}: must be nats:N, N nodes from 3 (a quorum left after a loss)")
    return int(size)


@attrs.define
class Restarts:
    """How long services took to answer again, in ms: from the start of their process
    (start-up; for the broker, until every service answers through it again), and from
    the fault (the outage: the pause, then the start-up)."""

    startup_ms: dict[str, list[int]] = attrs.field(factory=lambda: defaultdict(list))
    outage_ms: dict[str, list[int]] = attrs.field(factory=lambda: defaultdict(list))
    ledger_heights: list[tuple[int, int]] = attrs.field(factory=list)  # (journal height, start-up ms)

    def over(self, margin_ms: int) -> int:
        """Outages that lasted Δ or more: those the time-locks are not meant to survive."""
        return sum(1 for times in self.outage_ms.values() for ms in times if ms >= margin_ms)

    def table(self, margin_ms: int) -> str:
        rows = [
            ("start-up to answering", _spread(self.startup_ms)),
            ("outage, fault to answering", _spread(self.outage_ms)),
            (f"outages of Δ ({margin_ms} ms) or more", str(self.over(margin_ms))),
            ("ledger start-up by journal height", _by_height(self.ledger_heights)),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _spread(times: dict[str, list[int]]) -> str:
    return (
        "; ".join(
            f"{kind} n {len(ms)} median {statistics.median(ms):.0f} max {max(ms)} ms"
            for kind, ms in sorted(times.items())
            if ms
        )
        or "none"
    )


def _by_height(pairs: list[tuple[int, int]]) -> str:
    """Median start-up of each quarter of the restarts, by journal height: whether
    start-up grows with the journal (a ledger replays all of it before it serves)."""
    pairs = sorted(pairs)
    quarters = (
        [pairs[i * len(pairs) // 4 : (i + 1) * len(pairs) // 4] for i in range(4)] if len(pairs) >= 4 else [pairs]
    )
    return (
        "; ".join(
            f"{part[0][0]}-{part[-1][0]} entries: median {statistics.median(ms for _, ms in part):.0f} ms"
            for part in quarters
            if part
        )
        or "none"
    )


@attrs.define
class Result:
    """What engine.chaos reports (so the same table prints), and the restarts timed."""

    outcome: Outcome
    restarts: Restarts


@attrs.define
class Outages:
    """Who is down: any number of services at once, or the broker alone. A service
    cannot start while the broker is down (it exits, refused), so the two outages
    would merge into one that is longer than Δ; kept apart, each stays under it."""

    services: int = 0
    broker: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def _until(self, possible) -> None:
        while not possible():
            await self._changed.wait()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def of_service(self):
        await self._until(lambda: not self.broker)
        self.services += 1
        try:
            yield
        finally:
            self.services -= 1
            self._change()

    @asynccontextmanager
    async def of_broker(self):
        await self._until(lambda: not self.broker and not self.services)
        self.broker = True
        try:
            yield
        finally:
            self.broker = False
            self._change()


class BrokerProcess(Protocol):
    """A broker run as one process the chaos may kill: Mosquitto's `Broker`, or another."""

    process: subprocess.Popen | None

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...


@attrs.define
class Services:
    """The broker and every service process of one world, and this process's bus to them."""

    world: World
    broker: BrokerProcess | NatsCluster
    ledgers: dict[str, ServiceProcess]
    coordinators: list[ServiceProcess]
    bus: MqttBus | None = None  # once connected
    restarts: Restarts = attrs.field(factory=Restarts)
    outages: Outages = attrs.field(factory=Outages)

    @property
    def processes(self) -> list[ServiceProcess]:
        return [*self.ledgers.values(), *self.coordinators]

    async def up(self, service: ServiceProcess) -> None:
        """Start `service` and wait until it answers; its start-up is recorded."""
        started = trio.current_time()
        answer = await service.start().ready(self.bus, START_TIMEOUT_S)
        startup_ms = round((trio.current_time() - started) * 1000)
        self.restarts.startup_ms[service.command].append(startup_ms)
        if service.command == "ledger":
            self.restarts.ledger_heights.append((answer["head_seq"], startup_ms))

    def outage(self, fault: str):
        return self.outages.of_broker() if fault.startswith("broker-") else self.outages.of_service()

    def strike(self, fault: str, chance: random.Random) -> tuple[str, tuple[str, ...], Callable[[], Awaitable[None]]]:
        """SIGKILL what `fault` names (a ledger or a broker node drawn by `chance`): what
        went down, who is out of reach for it (with the broker, everyone), and how to bring
        it back (for a broker node, its clients moved to the others: `repair` restarts it)."""
        everyone = tuple(service.party for service in self.processes)
        if fault == "broker-node-kill":
            assert isinstance(self.broker, NatsCluster)  # check() saw to it
            self.broker.kill(chance.randrange(len(self.broker.nodes)))
            # a node's loss stalls whatever JetStream groups it led until others are elected: anyone's messages
            return "broker-node", everyone, self.failover
        if fault == "broker-restart":
            assert not isinstance(self.broker, NatsCluster) and self.broker.process is not None
            self.broker.process.kill()
            self.broker.stop()  # reaps it
            return "broker", everyone, self.broker_up
        if fault == "kill-coordinator":
            service = chance.choice(self.coordinators)
            # which coordinators its process served, after takeovers, is not known here: all count as down
            whom = tuple(c.party for c in self.coordinators)
        else:
            service = self.ledgers[chance.choice(sorted(self.ledgers))]
            whom = (service.party,)
        service.kill()
        return service.command, whom, functools.partial(self.up, service)

    async def broker_up(self) -> None:
        """Mosquitto started again on its port, and every service answering through it."""
        await trio.to_thread.run_sync(self.broker.start)
        started = trio.current_time()
        await self._answering(START_TIMEOUT_S)
        self.restarts.startup_ms["broker"].append(round((trio.current_time() - started) * 1000))

    async def failover(self) -> None:
        """Every service answering through the cluster's nodes left: each client of the
        node lost has moved to another."""
        await self._answering(FAILOVER_TIMEOUT_S)

    async def repair(self) -> None:
        """A cluster's nodes down started again, each serving before the next."""
        if not isinstance(self.broker, NatsCluster):
            return
        for node in self.broker.down():
            started = trio.current_time()
            await trio.to_thread.run_sync(self.broker.start, node)
            self.restarts.startup_ms["broker-node"].append(round((trio.current_time() - started) * 1000))

    async def _answering(self, timeout_s: float) -> None:
        async with trio.open_nursery() as nursery:
            for service in self.processes:
                nursery.start_soon(service.ready, self.bus, timeout_s)

    async def restore(self) -> None:
        """Faults are off: the broker and every service up and answering."""
        if isinstance(self.broker, NatsCluster):
            await self.repair()
        elif self.broker.process is None or self.broker.process.poll() is not None:
            await trio.to_thread.run_sync(self.broker.start)
        async with trio.open_nursery() as nursery:
            for service in self.processes:
                if service.running:  # after a broker's restart, as long as its clients take to find it
                    nursery.start_soon(service.ready, self.bus, FAILOVER_TIMEOUT_S)
                else:
                    nursery.start_soon(self.up, service)

    def stop(self) -> None:
        for service in self.processes:
            service.stop()
        self.broker.stop()


async def run(
    directory: Path,
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    *,
    long_outages: bool = False,
    settlements: int | None = None,
    backstop_ms: int | None = None,
    coordinators: int = 1,
    strikes: int | None = None,
    broker_in: Callable[[Path], BrokerProcess | NatsCluster] = Broker,
    databases: dict[str, str] | None = None,
    qos: int = 1,
) -> Result:
    """Run the workload for `seconds` (or until `settlements` have ended, or each fault
    has struck `strikes` times and its outage is over) under `faults`, then let every
    settlement end and audit every ledger over the bus. `backstop_ms`
    replaces the locks' backstop (hours) with one an outage can outlast. `broker_in`
    makes the broker, given its folder: Mosquitto, another MQTT broker, or a cluster.
    `databases`: the ledgers' and coordinators' database settings, where not files. `qos`:
    what every client of a single broker publishes and subscribes at (a cluster's is its own)."""
    broker = broker_in(directory)
    check(faults, isinstance(broker, NatsCluster))
    world = standard_world(directory, broker=next(_urls(broker, qos)), coordinators=coordinators, databases=databases)
    timing = timing_with(backstop_ms)  # PROCESS_TIMING is the chaos timing
    ids = coordinator_ids(COORDINATOR, coordinators)
    for coordinator in ids:
        _write_timing(world.ledger_configs[coordinator], timing)
    urls = _urls(broker, qos)
    services = Services(
        world,
        broker,
        {spec.ledger_id: ServiceProcess(world, "ledger", spec.ledger_id, next(urls)) for spec in LEDGERS},
        [ServiceProcess(world, "coordinator", c, next(urls), _standby(world, ids, c)) for c in ids],
    )
    ledger_ids = [spec.ledger_id for spec in LEDGERS]
    outage_s = timing.margin_ms * (LONG_OUTAGES_DELTAS[1] if long_outages else 0.3) / 1000
    outcome = Outcome()
    try:
        await trio.to_thread.run_sync(broker.start)
        async with MqttBus.connect(next(urls), client_id="lockstep-chaos") as bus, trio.open_nursery() as nursery:
            services.bus = bus
            local = Local(world, bus, nursery, coordinators=tuple(ids))
            await _start(services, local)
            observer = Observer(world.registry, bus, ledger_ids, PROCESS_TIMING.margin_ms, local.clock, publish=False)
            await nursery.start(observer.run)
            await _load(services, local, outcome, seconds, seed, faults, outage_s, settlements, strikes)
            await _no_locks_held(local)
            await judge(
                outcome, await read_over_bus(bus, world.registry, ledger_ids), observer, dict.fromkeys(ledger_ids, 0)
            )  # one clock for all: no skew
            nursery.cancel_scope.cancel()
    finally:
        services.stop()
    return Result(outcome, services.restarts)


def _urls(broker: BrokerProcess | NatsCluster, qos: int) -> Iterator[str]:
    """The broker's URL for each client in turn, at `qos`; a cluster's nodes each time
    from the next node, so that the clients spread over them, at the cluster's QoS."""
    if isinstance(broker, NatsCluster):
        return (broker.url_from(n) for n in itertools.count())
    return itertools.repeat(at_qos(broker.url, qos))


def _standby(world: World, ids: list[str], own: str) -> tuple[str, ...]:
    """`--standby` for every other coordinator: none if there is only one."""
    return tuple(arg for other in ids if other != own for arg in ("--standby", str(world.ledger_configs[other])))


def _write_timing(path: Path, timing: Timing) -> None:
    """The coordinator's config gets the chaos Timing (engine.config reads `[timing]`)."""
    path.write_text(
        path.read_text() + f"\n[timing]\nlock_wait_ms = {timing.lock_wait_ms}\n"
        f"claim_deadline_ms = {timing.claim_deadline_ms}\nclock_skew_ms_max = {timing.clock_skew_ms_max}\n"
        f"backstop_ms = {timing.backstop_ms}\n"
    )


async def _start(services: Services, local: Local) -> None:
    """Every ledger up and funded, then the coordinator up; not counted as restarts."""
    async with trio.open_nursery() as nursery:
        for ledger in services.ledgers.values():
            nursery.start_soon(ledger.start().ready, services.bus, START_TIMEOUT_S)
    await local.fund_standard()
    async with trio.open_nursery() as nursery:
        for coordinator in services.coordinators:
            nursery.start_soon(coordinator.start().ready, services.bus, START_TIMEOUT_S)


async def _load(
    services: Services,
    local: Local,
    outcome: Outcome,
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    outage_s: float,
    settlements: int | None,
    strikes: int | None,
) -> None:
    """The back offices under faults for `seconds`; then faults off, everything up, and
    each back office on until its last settlement is final."""
    chance = random.Random(seed)
    done = trio.Event()  # the run is over: no new settlement, no new fault
    unfinished: set[str] = set()
    striking = set(faults)  # the faults yet to strike `strikes` times

    def over() -> None:
        """With `strikes`, the run is over once every fault has struck that often and
        settlements of both paths, cross-ledger and same-ledger, have ended meanwhile."""
        if not striking and outcome.paths["cross"] and outcome.paths["same"]:
            done.set()

    async def strike(fault: str) -> None:
        """`fault` again and again, each time after a pause and for a while: from its own
        generator, so that its strikes do not depend on the other faults' timing."""
        own = random.Random(f"{seed}-{fault}")
        pause = own.uniform(0.02, 0.1)  # soon the first time, so that a short run sees every fault
        while strikes is None or outcome.faults[fault] < strikes:
            await trio.sleep(pause)
            async with services.outage(fault):
                struck, struck_ms = trio.current_time(), local.clock.now_ms()
                kind, whom, bring_up = services.strike(fault, own)
                outcome.faults[fault] += 1
                await trio.sleep(own.uniform(0, outage_s))
                await bring_up()
                services.restarts.outage_ms[kind].append(round((trio.current_time() - struck) * 1000))
                outcome.outages += [Outage(party, struck_ms, local.clock.now_ms()) for party in whom]
                await services.repair()  # a broker node, once its clients have moved
            pause = own.uniform(*PAUSE_S)
        striking.discard(fault)
        over()

    async def back_office(together: int) -> None:
        while not done.is_set():
            raws = [local.settlement(*draw(chance)) for _ in range(together)]
            ids = [readable_id(raw) for raw in raws]
            unfinished.update(ids)
            await settle(local, raws, outcome)
            unfinished.difference_update(ids)
            if settlements is not None and sum(outcome.phases.values()) >= settlements:
                done.set()
            if strikes is not None:
                over()

    async with trio.open_nursery() as offices:
        for office in range(CONCURRENCY):
            offices.start_soon(back_office, sent_together(office))
        async with trio.open_nursery() as faulting:
            for fault in faults:
                faulting.start_soon(strike, fault)
            with trio.move_on_after(seconds):
                await done.wait()
            done.set()
            faulting.cancel_scope.cancel()
        await services.restore()
        offices.cancel_scope.deadline = trio.current_time() + SETTLE_WAIT_S
    if unfinished:
        raise TimeoutError(
            f"{len(unfinished)} settlements not final {SETTLE_WAIT_S:g} s after the faults stopped: "
            f"{', '.join(sorted(unfinished)[:5])}"
        )


async def _no_locks_held(local: Local) -> None:
    """Until no ledger holds a lock (a watchtower may still be ending one); a lock still
    held after that is left for the audit to count as in progress."""
    with trio.move_on_after(PROCESS_TIMING.total_ms() / 1000 + EXPIRY_SLACK_S):
        for spec in LEDGERS:
            client = local.client(spec.ledger_id)
            while await client.query(QueryLocks(client.next_query_id(), spec.ledger_id, 2**62, 1)):
                await trio.sleep(0.1)


def main(
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    broker_cluster: str | None = None,
    strikes: int | None = None,
    broker_kind: str = "mosquitto",
    store: str = "sqlite",
    postgres: str = LOCAL_POSTGRES,
    qos: int = 1,
    **options,
) -> int:
    """`options`: run's long_outages, settlements, backstop_ms and coordinators;
    `broker_cluster` (nats:N) runs the broker as a NATS cluster of N nodes, `broker_kind`
    a single broker of another kind; `store` "postgresql" keeps every ledger's book and
    every coordinator's journal in a scratch database on `postgres`; `qos` 0 has every
    client of a single broker publish and subscribe without acknowledgements."""
    try:
        size = cluster_size(broker_cluster) if broker_cluster else None
        check(faults, size is not None)
        check_broker(broker_kind, faults, size is not None)
        if store not in STORES:
            raise ValueError(f"--store {store}: one of {', '.join(STORES)}")
        if strikes is not None and strikes < 1:
            raise ValueError(f"--strikes {strikes}: 1 or more")
        if qos not in (0, 1):
            raise ValueError(f"--qos {qos}: 0 or 1")
        if qos != 1 and size is not None:
            raise ValueError(f"--qos {qos}: a NATS cluster's clients are at QoS {CLUSTER_QOS} already")
        timing_with(options.get("backstop_ms"))
    except ValueError as error:
        print(f"lockstep chaos: {error}", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="lockstep-chaos-"))
    print(
        f"lockstep chaos --bus mqtt: {heading(seconds, seed, faults, **options)}"
        f"{f', each {strikes} times' if strikes else ''}{f', a NATS cluster of {size} nodes' if size else ''}"
        f"{f', on {broker_kind}' if broker_kind != 'mosquitto' else ''}"
        f"{', ledgers and journals on PostgreSQL' if store == 'postgresql' else ''}"
        f"{f', QoS {qos}' if qos != 1 else ''}; "
        f"Δ = {PROCESS_TIMING.margin_ms} ms; world and logs in {directory}",
        flush=True,
    )
    if size is not None:
        options["broker_in"] = functools.partial(NatsCluster, size=size)
    elif broker_kind != "mosquitto":
        options["broker_in"] = BROKERS[broker_kind]
    with ExitStack() as stack:
        if store == "postgresql":
            database = stack.enter_context(scratch_database(postgres, "lockstep_chaos"))
            coordinators = coordinator_ids(COORDINATOR, options.get("coordinators", 1))
            options["databases"] = service_schemas(database, [spec.ledger_id for spec in LEDGERS] + coordinators)
        result = trio.run(functools.partial(run, directory, seconds, seed, faults, strikes=strikes, qos=qos, **options))
    print(result.outcome.table())
    print(result.restarts.table(PROCESS_TIMING.margin_ms))
    return result.outcome.verdict()
