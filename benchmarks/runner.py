"""Runs the benchmark: for each bus (in-memory, Mosquitto), each scenario (DvP, PvP;
cross-ledger, same-ledger) and each load (closed-loop concurrency or open-loop rate),
it sends settlements to the coordinator as back offices would and records each one's
latency, then every process's CPU time and peak memory and the bus's message count.

After every run it checks what the benchmark itself cannot be trusted to report:
conservation of every asset on every ledger, and that each settlement settled on both
legs or on neither, read from the ledgers. A run that breaks either raises
`BenchmarkBroken` instead of producing a figure."""

from __future__ import annotations

import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import psycopg
import trio

from engine.world.broker import Broker
from engine.world.local import Local
from engine.world.nats import NatsServer
from engine.world.postgres import backend_pids, scratch_database, service_schemas
from engine.world.rabbitmq import RabbitMQNode
from protocols.bus import Bus, BusTimeout, service_of_coordinator
from protocols.bus.address import at_qos, redacted
from protocols.bus.client import LedgerClient
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.envelope import answers, settlements
from protocols.errors import Code, Rejected
from protocols.messages import (
    QueryInfo,
    QueryLock,
    QueryLocks,
    QueryReceipt,
    QuerySettlement,
    Settlement,
    SettlementStatus,
)
from protocols.settlement import Timing, lock_id, settle_id
from protocols.signing import decode_signed, unsigned

from .netem import Loopback, Places
from .profile import Profile, Sampling
from .workload import LEDGERS, SCENARIOS, Shape, Workload, lay_out_bench

BROKER = "broker"  # the broker's place
CHECK_IN_FLIGHT = 64
OTHER_BROKERS: dict[str, Callable[[Path], NatsServer | RabbitMQNode]] = {"nats": NatsServer, "rabbitmq": RabbitMQNode}
BROKER_KINDS = ("mosquitto", *OTHER_BROKERS)
POSTGRES_PREFIX = "postgres "  # the server's process serving one ledger: "postgres csd"
LOAD_GENERATOR = "load generator"  # this process: the back offices, not a service
WIRE = "wire"  # the process that carries --rtt's delay: the network, not a service
NOT_SERVICES = (LOAD_GENERATOR, WIRE)
REPLY_TIMEOUT_S = 30.0
ROUND_TRIPS_PINGED = 5  # before each run
# The rounds a settled cross-ledger settlement's steps show, on the coordinator's clock:
# its locks (both at once), and its claims (leg 0's, then leg 1's), each from the first
# step to the second.
ROUNDS = {"lock": ("locking", "locked"), "claims": ("claiming", "settled")}
BENCH_TIMING = Timing(lock_wait_ms=10_000, claim_deadline_ms=10_000, clock_skew_ms_max=1_000)
SYS_INTERVAL_S = 1
# Mosquitto reports a changed $SYS count when a whole number of seconds greater than its
# interval has passed (a strict comparison): every 2 s at a 1 s interval.
SYS_REPORT_S_MAX = SYS_INTERVAL_S + 1
SYS_REPORT_LATENCY_S_MAX = 0.25  # from the broker to the load generator, on loopback


class BenchmarkBroken(Exception):
    """A run lost or created value, or settled a settlement on one leg only."""


@attrs.frozen
class Load:
    concurrency: int | None = None  # closed loop: this many settlements in flight
    rate_per_s: float | None = None  # open loop: start this many per second
    per_request: int = 1  # settlements sent together in one request to their coordinator

    @property
    def label(self) -> str:
        load = f"c={self.concurrency}" if self.concurrency else f"r={self.rate_per_s:g}/s"
        return load if self.per_request == 1 else f"{load},b={self.per_request}"

    @property
    def tag(self) -> str:
        """The label as a file name's and a settlement id's part."""
        load = f"c{self.concurrency}" if self.concurrency else f"r{self.rate_per_s:g}"
        return load if self.per_request == 1 else f"{load}b{self.per_request}"


@attrs.frozen
class Run:
    bus: str
    kind: str
    path: str
    load: Load
    settlements: int
    store: str = "sqlite"  # the ledgers' databases: "sqlite" or "postgresql"
    rtt_ms: float | None = None  # every process in a place of its own, this far apart (benchmarks/netem.py)
    broker: str = "mosquitto"  # the mqtt bus's broker: "mosquitto", "nats" or "rabbitmq"
    qos: int = 1  # what every client of the mqtt bus publishes and subscribes at

    @property
    def system(self) -> str:
        """The bus, its broker where it is not Mosquitto, its QoS where it is not 1, the
        store where it is not SQLite and the round trip between places where there is
        one: what runs are grouped and compared by."""
        system = self.bus if self.broker == "mosquitto" else f"{self.bus}+{self.broker}"
        system = system if self.qos == 1 else f"{system}+qos{self.qos}"
        system = system if self.store == "sqlite" else f"{system}+{self.store}"
        return system if self.rtt_ms is None else f"{system}+rtt{self.rtt_ms:g}"


@attrs.define
class Result:
    run: Run
    elapsed_s: float
    latencies_ms: list[float]
    phases: dict[str, int]
    cpu_s: dict[str, float]  # by process
    rss_peak_bytes: dict[str, int]  # by process
    bus_messages: int | None
    rounds_ms: dict[str, list[float]] = attrs.Factory(dict)  # by ROUNDS' name, of each settled settlement
    round_trips_ms: list[float] = attrs.Factory(list)  # the coordinator pinged alone, before the run
    profiles: dict[str, Profile] | None = None  # by service process, with --profile

    @property
    def throughput_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    def latency_ms(self, percentile: float) -> float:
        return _percentile(self.latencies_ms, percentile)

    def summary(self) -> dict:
        count = len(self.latencies_ms)
        return {
            "system": self.run.system,
            "bus": self.run.bus,
            "broker": self.run.broker,
            "qos": self.run.qos,
            "store": self.run.store,
            "kind": self.run.kind,
            "path": self.run.path,
            "load": self.run.load.label,
            "concurrency": self.run.load.concurrency,
            "rate_per_s": self.run.load.rate_per_s,
            "per_request": self.run.load.per_request,
            "settlements": count,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": round(self.throughput_per_s, 1),
            **{f"latency_ms_p{p}": round(self.latency_ms(p), 2) for p in (50, 90, 99)},
            "latency_ms_max": round(max(self.latencies_ms), 2),
            "phases": self.phases,
            "cpu_ms_per_settlement": {name: round(1000 * cpu / count, 3) for name, cpu in self.cpu_s.items()},
            "cpu_ms_per_settlement_services": self.services_cpu_ms(),
            "rss_peak_mib": {name: round(rss / 2**20, 1) for name, rss in self.rss_peak_bytes.items()},
            "bus_messages_per_settlement": None if self.bus_messages is None else round(self.bus_messages / count, 2),
            "rtt_ms": self.run.rtt_ms,
            "bus_round_trip_ms_p50": round(_percentile(self.round_trips_ms, 50), 2) if self.round_trips_ms else None,
            **{
                f"{name}_ms_p{p}": round(_percentile(values, p), 1)
                for name, values in self.rounds_ms.items()
                if values
                for p in (50, 99)
            },
            **({"profile": {name: p.summary() for name, p in self.profiles.items()}} if self.profiles else {}),
        }

    def services_cpu_ms(self) -> float | None:
        """CPU per settlement summed over the services (the ledgers, the coordinators, the
        broker, the database serving the ledgers), the load generator and the wire left
        out; None where they share a process with the load generator (the memory bus)."""
        if LOAD_GENERATOR not in self.cpu_s:
            return None
        cpu = sum(cpu for name, cpu in self.cpu_s.items() if name not in NOT_SERVICES)
        return round(1000 * cpu / len(self.latencies_ms), 3)


def _percentile(values: list[float], percentile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(percentile / 100 * len(ordered)) - 1)]


# -- the processes under test and how to measure them ------------------------------------------


class Meter:
    """CPU seconds and peak RSS of a set of processes, read from /proc."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> dict[str, float]:
        result = {}
        for name, pid in self.pids.items():
            if pid == os.getpid():
                times = os.times()
                result[name] = times.user + times.system
            else:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                result[name] = (int(fields[11]) + int(fields[12])) / self._ticks
        return result

    def rss_peak_bytes(self) -> dict[str, int]:
        result = {}
        for name, pid in self.pids.items():
            if pid == os.getpid():
                result[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            else:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        result[name] = int(line.split()[1]) * 1024
        return result


@attrs.define
class System:
    """A running world: the bus the load generator uses, and how to read its costs.
    `messages` counts every message sent before it is called, none sent after."""

    bus: Bus
    meter: Meter
    messages: Callable[[], Awaitable[int | None]]  # None: a broker that does not say
    workload: Workload
    services: dict[str, int] = attrs.Factory(dict)  # the service processes of our code, by name: what --profile samples


@contextmanager
def databases(store: str, postgres: str) -> Iterator[dict[str, str] | None]:
    """The ledgers' database settings for `store`: None for SQLite (a file each, in the
    world's folder); for PostgreSQL a schema each in a scratch database on `postgres`."""
    if store not in ("sqlite", "postgresql"):
        raise BenchmarkBroken(f"--store {store}: not a store (sqlite, postgresql)")
    if store == "sqlite":
        yield None
        return
    with ExitStack() as stack:
        try:
            database = stack.enter_context(scratch_database(postgres, "lockstep_bench"))
        except psycopg.Error as error:
            raise BenchmarkBroken(f"--postgres {redacted(postgres)}: {str(error).strip()}") from None
        yield service_schemas(database, [spec.ledger_id for spec in LEDGERS])


@asynccontextmanager
async def memory_system(
    directory: Path, shape: Shape, seed: int, databases: dict[str, str] | None = None
) -> AsyncIterator[System]:
    """Every ledger and the coordinator in this process, on the in-memory bus."""
    if shape.coordinators != 1:
        raise BenchmarkBroken("--coordinators: more than one runs on the mqtt bus only, each its own process")
    world = lay_out_bench(directory, shape, databases=databases)
    bus = MemoryBus()
    async with trio.open_nursery() as nursery:
        local = Local(world, bus, nursery, offload=True)
        for spec in LEDGERS:
            await local.start_ledger(spec.ledger_id)
        await local.start_coordinator(BENCH_TIMING, watchtower=True)
        workload = Workload(world, bus, shape, seed)
        await workload.set_up()

        async def messages() -> int:
            return bus.messages_sent

        yield System(bus, Meter({"all (one process)": os.getpid()}), messages, workload)
        nursery.cancel_scope.cancel()


@contextmanager
def places(shape: Shape, rtt_ms: float | None) -> Iterator[Places | None]:
    """The broker, each ledger and each coordinator in a place of its own and the load
    generator in another, `rtt_ms` apart (benchmarks/netem.py); None: all on loopback."""
    if rtt_ms is None:
        yield None
        return
    with Places([BROKER, *(spec.ledger_id for spec in LEDGERS), *shape.coordinator_ids()], BROKER, rtt_ms) as made:
        yield made


@asynccontextmanager
async def mqtt_system(
    directory: Path,
    shape: Shape,
    seed: int,
    databases: dict[str, str] | None = None,
    places: Places | None = None,
    broker_kind: str = "mosquitto",
    qos: int = 1,
) -> AsyncIterator[System]:
    """The broker (Mosquitto, or `broker_kind`'s), every ledger and the coordinator each
    its own process, all at `qos`; with ledger databases on PostgreSQL, the server
    processes that serve them measured too; with `places`, each process started in its
    own, and the wire between them measured too."""
    where = places or Loopback()
    broker: Broker | NatsServer | RabbitMQNode
    if broker_kind == "mosquitto":
        broker = Broker(directory, host=where.host(BROKER), sys_interval_s=SYS_INTERVAL_S, prefix=where.prefix(BROKER))
    else:
        assert places is None, "only Mosquitto is started in a place of its own"
        (directory / broker_kind).mkdir()
        broker = OTHER_BROKERS[broker_kind](directory / broker_kind)
    broker.start()
    url = at_qos(broker.url, qos)
    world = lay_out_bench(directory, shape, broker=url, databases=databases)
    processes: dict[str, subprocess.Popen] = {}
    try:
        services = [(spec.ledger_id, "ledger") for spec in LEDGERS]
        for party, command in services + [(coordinator, "coordinator") for coordinator in shape.coordinator_ids()]:
            log = (directory / f"{party}.log").open("wb")
            processes[party] = subprocess.Popen(
                [
                    *where.prefix(party),
                    sys.executable,
                    "-m",
                    "engine.cli",
                    "--log-level",
                    "warning",
                    command,
                    "--config",
                    str(world.ledger_configs[party]),
                ],
                stdout=log,
                stderr=log,
            )
        async with MqttBus.connect(url, client_id="bench-load") as bus:
            await _wait_until_up(world, bus, processes)
            counter = _counter(broker, bus)
            workload = Workload(world, bus, shape, seed)
            await workload.set_up()
            pids = {name: process.pid for name, process in processes.items()}
            assert broker.process is not None  # started above
            pids["broker"] = broker.server_pid if isinstance(broker, RabbitMQNode) else broker.process.pid
            pids[LOAD_GENERATOR] = os.getpid()
            if places:
                pids[WIRE] = places.wire_pid
            if databases:
                pids.update(_postgres_backends(next(iter(databases.values()))))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(counter.run)
                ours = {name: process.pid for name, process in processes.items()}
                yield System(bus, Meter(pids), counter.value, workload, ours)
                nursery.cancel_scope.cancel()
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait()
        broker.stop()


def _postgres_backends(database: str) -> dict[str, int]:
    """The server's processes that serve the ledgers, one per ledger connection."""
    return {f"{POSTGRES_PREFIX}{name}": pid for name, pid in backend_pids(database.split("?", 1)[0]).items()}


async def _wait_until_up(world, bus, processes) -> None:
    with trio.fail_after(60):
        for spec in LEDGERS:
            client = LedgerClient(
                bus, spec.ledger_id, world.registry[spec.ledger_id].public_key, timeout_s=0.5, attempts=120
            )
            await client.query(QueryInfo(client.next_query_id(), spec.ledger_id))
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited at start; see its log"


def _counter(broker: Broker | NatsServer | RabbitMQNode, bus: MqttBus) -> _BrokerCounter | _VarzCounter | _NoCounter:
    if isinstance(broker, Broker):
        return _BrokerCounter(bus)
    return _VarzCounter(broker) if isinstance(broker, NatsServer) else _NoCounter()


class _VarzCounter:
    """Messages a nats-server has received from its clients (`in_msgs` of its /varz)."""

    def __init__(self, server: NatsServer) -> None:
        self.url = f"http://127.0.0.1:{server.http_port}/varz"

    async def run(self) -> None:
        await trio.sleep_forever()

    async def value(self) -> int:
        def read() -> int:
            with urllib.request.urlopen(self.url, timeout=5) as reply:
                return int(json.load(reply)["in_msgs"])

        return await trio.to_thread.run_sync(read)


class _NoCounter:
    """A broker that counts messages nowhere we read (RabbitMQ without its management plugin)."""

    async def run(self) -> None:
        await trio.sleep_forever()

    async def value(self) -> None:
        return None


class _BrokerCounter:
    """PUBLISH messages the broker has received, from its $SYS topic. The broker reports a
    changed count only every SYS_REPORT_S_MAX: read at once, the count can miss a whole
    fast run (it read 0) and add it, with the checks after it, to the next."""

    TOPIC = "$SYS/broker/publish/messages/received"

    def __init__(self, bus: MqttBus) -> None:
        self.bus = bus
        self.count = 0
        self._reported = trio.Event()

    async def run(self) -> None:
        async with self.bus.subscribe_raw(self.TOPIC) as updates:
            async for payload in updates:
                self.count = int(payload)
                self._reported.set()
                self._reported = trio.Event()

    async def value(self) -> int:
        """Every message received before the call: a report arriving later than any report
        could take was made after it; if none comes within a report period, nothing has
        changed since the last one."""
        await trio.sleep(SYS_REPORT_LATENCY_S_MAX)
        with trio.move_on_after(SYS_REPORT_S_MAX + SYS_REPORT_LATENCY_S_MAX):
            await self._reported.wait()
        return self.count


# -- one run --------------------------------------------------------------------------------------


async def measure(system: System, run: Run, progress: Callable[[int], None], profile_to: Path | None = None) -> Result:
    """One run; with `profile_to`, each service process sampled while it is measured
    (benchmarks/profile.py), its raw samples left in that folder."""
    orders = [_order(system.workload.settlement(run.kind, run.path, _run_label(run))) for _ in range(run.settlements)]
    latencies: list[float] = []
    statuses: dict[str, str] = {}
    rounds: dict[str, list[float]] = {name: [] for name in ROUNDS}
    round_trips = await _round_trips_ms(system)
    sampling = None
    if profile_to is not None and system.services:
        sampling = Sampling(profile_to, profile_label(run), system.services)
        await sampling.start()
    messages_before = await system.messages()
    cpu_before = system.meter.cpu_s()
    started = time.perf_counter()

    def record(settlement_id: str, status: SettlementStatus, begin: float) -> None:
        if status.reason_code == Code.BUSY.value:  # refused at the intake: counted, not timed
            statuses[settlement_id] = "busy"
        else:
            latencies.append((time.perf_counter() - begin) * 1000)
            statuses[settlement_id] = status.phase
            at_ms = dict(status.steps)
            for name, (start, end) in ROUNDS.items():
                if status.phase == "settled" and start in at_ms and end in at_ms:
                    rounds[name].append(at_ms[end] - at_ms[start])

    async def one(request: list[tuple[bytes, str, str]]) -> None:
        """Settlements sent in one request, alone or together, until answered."""
        service = request[0][2]
        raw = request[0][0] if len(request) == 1 else settlements([order[0] for order in request])
        begin = time.perf_counter()
        while True:
            try:
                reply = await system.bus.request(service, raw, timeout_s=REPLY_TIMEOUT_S)
                break
            except BusTimeout:
                continue  # the same bytes again: the coordinator runs a settlement once
        answered = answers(reply, len(request), (SettlementStatus,))
        for (_raw, settlement_id, _service), status in zip(request, answered, strict=True):
            record(settlement_id, status, begin)
        progress(len(request))

    requests = _requests(orders, run.load.per_request)
    async with trio.open_nursery() as nursery:
        if run.load.concurrency:
            queue = iter(requests)

            async def worker() -> None:
                for request in queue:
                    await one(request)

            for _ in range(max(1, run.load.concurrency // run.load.per_request)):
                nursery.start_soon(worker)
        else:
            rate = run.load.rate_per_s
            assert rate is not None  # a load is a concurrency or a rate
            sent = 0
            for request in requests:
                await trio.sleep_until(trio.current_time() + max(0.0, started + sent / rate - time.perf_counter()))
                nursery.start_soon(one, request)
                sent += len(request)
    elapsed = time.perf_counter() - started
    cpu_after = system.meter.cpu_s()
    profiles = None if sampling is None else await sampling.stop()
    messages_after = await system.messages()
    phases: dict[str, int] = {}
    for phase in statuses.values():
        phases[phase] = phases.get(phase, 0) + 1
    await check(system, run, statuses)
    return Result(
        run,
        elapsed,
        latencies,
        phases,
        {k: cpu_after[k] - cpu_before[k] for k in cpu_after},
        system.meter.rss_peak_bytes(),
        None if messages_after is None or messages_before is None else messages_after - messages_before,
        rounds,
        round_trips,
        profiles,
    )


async def _round_trips_ms(system: System) -> list[float]:
    """The bus's own round trip from the load generator to the coordinator, alone: a query
    about no settlement and its answer, ROUND_TRIPS_PINGED times."""
    coordinator = system.workload.shape.coordinator_ids()[0]
    query = unsigned(QuerySettlement("ping", coordinator, "ping")).encode()
    times_ms = []
    for _ in range(ROUND_TRIPS_PINGED):
        begin = time.perf_counter()
        await system.bus.request(service_of_coordinator(coordinator), query, timeout_s=REPLY_TIMEOUT_S)
        times_ms.append((time.perf_counter() - begin) * 1000)
    return times_ms


def _requests(orders: list[tuple[bytes, str, str]], per_request: int) -> list[list[tuple[bytes, str, str]]]:
    """The settlements in requests of `per_request` each, every request's to one
    coordinator, the coordinators' requests taken in turn."""
    by_service: dict[str, list[tuple[bytes, str, str]]] = {}
    for order in orders:
        by_service.setdefault(order[2], []).append(order)
    each = [[mine[i : i + per_request] for i in range(0, len(mine), per_request)] for mine in by_service.values()]
    return [request for turn in itertools.zip_longest(*each) for request in turn if request]


def _order(raw: bytes) -> tuple[bytes, str, str]:
    """A settlement as the load generator sends it: its bytes, its id and its coordinator's
    service, read before the run, so that reading them is neither timed nor counted."""
    settlement = decode_signed(raw, allowed=(Settlement,)).msg
    return raw, settlement.id, service_of_coordinator(settlement.coordinator)


def profile_label(run: Run) -> str:
    return f"{run.system}-{run.kind}-{run.path}-{run.load.tag}"


def _run_label(run: Run) -> str:
    return f"{run.bus}-{run.kind}-{run.path}-{run.load.tag}"


async def check(system: System, run: Run, statuses: dict[str, str]) -> None:
    """Conservation on every ledger; both legs or neither for every settlement; no lock
    left held. Read from the ledgers, not from the coordinator's account."""
    workload = system.workload
    clients = {
        spec.ledger_id: LedgerClient(
            system.bus, spec.ledger_id, workload.world.registry[spec.ledger_id].public_key, timeout_s=5
        )
        for spec in LEDGERS
    }
    for ledger, client in clients.items():
        info = await client.query(QueryInfo(client.next_query_id(), ledger))
        for asset in info["assets"]:
            held = info["held"].get(asset["code"], 0)
            if held != asset["issued"] - asset["redeemed"]:
                raise BenchmarkBroken(
                    f"{ledger}: {asset['code']} balances sum to {held}, "
                    f"issued minus redeemed is {asset['issued'] - asset['redeemed']}"
                )
        if await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 10)):
            raise BenchmarkBroken(f"{ledger}: locks still held after every settlement ended")
    ledgers = SCENARIOS[(run.kind, run.path)]
    limit = trio.CapacityLimiter(CHECK_IN_FLIGHT)

    async def legs_of(settlement_id: str, phase: str) -> None:
        async with limit:
            if run.path == "same":
                client = clients[ledgers[0]]
                try:
                    receipt = await client.submit_raw(_query_receipt(client, settle_id(settlement_id)))
                    done = [getattr(receipt, "status", "") == "applied"]
                except Rejected:
                    done = [False]
            else:
                done = []
                for leg, ledger in enumerate(_cross_ledgers(run)):
                    client = clients[ledger]
                    try:
                        query = QueryLock(client.next_query_id(), ledger, lock_id(settlement_id, leg))
                        view = await client.query(query)
                    except Rejected as error:  # never placed: refused busy, or refused before locking
                        if error.code is not Code.UNKNOWN_LOCK or phase == "settled":
                            raise
                        view = {"state": "absent"}
                    done.append(view["state"] == "claimed")
            if (phase == "settled" and not all(done)) or (phase != "settled" and any(done)):
                raise BenchmarkBroken(f"settlement {settlement_id} is {phase} but its legs settled as {done}")

    async with trio.open_nursery() as nursery:
        for settlement_id, phase in statuses.items():
            nursery.start_soon(legs_of, settlement_id, phase)


def _cross_ledgers(run: Run) -> tuple[str, str]:
    """Leg 0's ledger, then leg 1's, as Workload.settlement builds them."""
    first, second = SCENARIOS[(run.kind, run.path)]
    return (second, first) if run.kind == "dvp" else (first, second)


def _query_receipt(client: LedgerClient, instruction_id: str) -> bytes:
    return unsigned(QueryReceipt(client.next_query_id(), client.ledger_id, instruction_id)).encode()
