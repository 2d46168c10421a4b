"""Metrics: the scrape endpoint on its own (answers, refusals, a slow or oversized client
cannot hold it), the ledgers' and the coordinator's values after real settlements in one
process, and the same scraped over HTTP from real processes on Mosquitto."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import attrs
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.config import ConfigError as CoordinatorConfigError
from engine.config import CoordinatorConfig
from engine.coordinator.metrics import CoordinatorMetrics
from engine.world.broker import free_port
from engine.world.local import Local, dvp_legs, standard_world
from ledgers import daemon as ledger_daemon
from ledgers.config import ConfigError, LedgerConfig
from protocols.bus import exposition
from protocols.bus.exposition import listen, parse_address, serve_metrics
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.messages import QueryInfo, SettlementStatus
from protocols.settlement import Phase, Timing
from protocols.signing import decode_signed
from tests.processes import ServiceProcess
from tests.test_expiry import HOUR_MS, running_ledger

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
CROSS_DVP = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
SAME_DVP = dvp_legs("unified", "a", "b", 100, "unified", "EUR", "b", "a", 99_000)
PARTIES = ("bank-b", "bank-a")  # bank-b pays leg 0, bank-a pays leg 1


def scraped(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def of(registry: CollectorRegistry) -> dict:
    return scraped(generate_latest(registry).decode())


# -- the endpoint ------------------------------------------------------------------------


async def fetch(port: int, request: bytes, *, eof: bool = False) -> tuple[int, dict[str, str], bytes]:
    """The response to `request`; `eof`: then close our side, as a client that has no more to say."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        if eof:
            await stream.send_eof()
        data = b""
        while (chunk := await stream.receive_some(1 << 16)) and not _whole(data := data + chunk):
            pass  # a kept-alive connection stays open after the answer: read up to its length
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, headers = _head(head)
    return int(status_line.split(" ")[1]), headers, body


def _head(head: bytes) -> tuple[str, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    return status_line, {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}


def _whole(data: bytes) -> bool:
    """An answer has come whole: its head, and as much body as its content-length says."""
    head, ended, body = data.partition(b"\r\n\r\n")
    length = _head(head)[1].get("content-length") if ended else None
    return length is not None and len(body) >= int(length)


@pytest.fixture
async def endpoint(nursery):
    """A registry with one counter, served on a free port: (registry, port)."""
    registry = CollectorRegistry()
    Counter("lockstep_test_events_total", "Events.", registry=registry).inc(3)
    listener = listen("127.0.0.1", 0)
    await nursery.start(serve_metrics, registry, listener)
    return registry, int(listener.url.rsplit(":", 1)[1].removesuffix("/metrics"))


async def test_get_metrics_answers_the_registry_as_prometheus_text(endpoint):
    _, port = endpoint
    status, headers, body = await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert value(scraped(body.decode()), "lockstep_test_events_total") == 3


@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without its Host header
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n", 400),  # the client closed before the headers ended
    ],
)
async def test_other_paths_methods_and_broken_requests_are_refused(endpoint, request_head, status):
    _, port = endpoint
    assert (await fetch(port, request_head, eof=True))[0] == status


async def test_an_oversized_request_is_refused(endpoint):
    _, port = endpoint
    head = b"GET /metrics HTTP/1.1\r\nX-Padding: "
    oversized = head + b"a" * (exposition.REQUEST_BYTES_MAX + 1 - len(head))
    status, _, _ = await fetch(port, oversized)
    assert status == 431


async def test_a_silent_client_is_cut_off_at_the_deadline_while_others_are_answered(nursery, monkeypatch):
    monkeypatch.setattr(exposition, "CONNECTION_SECONDS_MAX", 1)
    listener = listen("127.0.0.1", 0)
    await nursery.start(serve_metrics, CollectorRegistry(), listener)
    port = int(listener.url.rsplit(":", 1)[1].removesuffix("/metrics"))
    started = trio.current_time()  # before the connection: the server's deadline runs from its accept
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    async with silent:
        assert (await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
        with trio.fail_after(5):
            assert await silent.receive_some(1024) == b""  # closed by the server, unanswered
        assert trio.current_time() - started >= 1


async def test_a_metrics_read_that_fails_is_answered_500(nursery):
    class Broken:
        def collect(self):
            raise OSError("database unavailable")

    registry = CollectorRegistry()
    registry.register(Broken())
    listener = listen("127.0.0.1", 0)
    await nursery.start(serve_metrics, registry, listener)
    port = int(listener.url.rsplit(":", 1)[1].removesuffix("/metrics"))
    status, _, body = await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500 and b"database unavailable" in body


def test_the_metrics_address_must_be_host_and_port():
    assert parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9101", "127.0.0.1:", ":9101", "host:http", "host:65536", "host:-1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_a_bad_metrics_setting_is_refused_naming_the_key(tmp_path):
    world = standard_world(tmp_path)
    ledger = world.ledger_configs["csd"]
    ledger.write_text('metrics = "localhost"\n' + ledger.read_text())
    with pytest.raises(ConfigError, match=r"csd\.toml: metrics: 'localhost' is not HOST:PORT"):
        LedgerConfig.load(ledger)
    coordinator = world.ledger_configs["coordinator"]
    coordinator.write_text("metrics = 9100\n" + coordinator.read_text())
    with pytest.raises(CoordinatorConfigError, match="metrics: must be a string"):
        CoordinatorConfig.load(coordinator)
    coordinator.write_text(coordinator.read_text().replace("metrics = 9100", 'metrics = "127.0.0.1:9100"'))
    assert CoordinatorConfig.load(coordinator).metrics == ("127.0.0.1", 9100)


async def test_a_bad_metrics_flag_stops_the_ledger_naming_it(tmp_path):
    world = standard_world(tmp_path)
    with pytest.raises(ledger_daemon.DaemonError, match="--metrics: 'nowhere' is not HOST:PORT"):
        await ledger_daemon.run(str(world.ledger_configs["csd"]), "mqtt://127.0.0.1:1", "nowhere")


async def test_a_metrics_port_in_use_stops_the_ledger_naming_it(tmp_path):
    world = standard_world(tmp_path)
    taken = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = taken[0].socket.getsockname()[1]
    with pytest.raises(ledger_daemon.DaemonError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
        await ledger_daemon.run(str(world.ledger_configs["csd"]), "mqtt://127.0.0.1:1", f"127.0.0.1:{port}")
    await taken[0].aclose()


# -- the services in one process ---------------------------------------------------------


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def head_seq(local: Local, ledger: str) -> int:
    client = local.client(ledger)
    return (await client.query(QueryInfo(client.next_query_id(), ledger)))["head_seq"]


async def test_service_metrics_follow_settled_and_failed_settlements(tmp_path, autojump_clock):
    ledgers = ("csd", "cbdc-eur", "unified")
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), MemoryBus(), nursery)
        for ledger in ledgers:
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=ledgers)
        coordinator, _ = await local.start_coordinator(TIMING, watchtower=False)
        metrics = CoordinatorMetrics(coordinator)
        before = {ledger: of(local.services[ledger].metrics.registry) for ledger in ledgers}

        too_much = (attrs.evolve(CROSS_DVP[0], amount=10**15), CROSS_DVP[1])
        outcomes = [
            (await coordinator.submit(local.settlement("dvp", legs, PARTIES))).phase
            for legs in (CROSS_DVP, SAME_DVP, too_much)
        ]
        assert outcomes == [Phase.SETTLED, Phase.SETTLED, Phase.FAILED]

        heads = {ledger: await head_seq(local, ledger) for ledger in ledgers}
        after = {ledger: of(local.services[ledger].metrics.registry) for ledger in ledgers}

        def applied(ledger: str, kind: str) -> float:
            return value(after[ledger], "lockstep_ledger_instructions_applied_total", type=kind) - value(
                before[ledger], "lockstep_ledger_instructions_applied_total", type=kind
            )

        # settled: a lock and a claim on each ledger; failed: the bond locked, then cancelled
        assert (applied("csd", "lock"), applied("csd", "claim"), applied("csd", "cancel")) == (2, 1, 1)
        assert (applied("cbdc-eur", "lock"), applied("cbdc-eur", "claim"), applied("cbdc-eur", "cancel")) == (1, 1, 0)
        assert applied("unified", "settle") == 1
        assert (
            value(after["cbdc-eur"], "lockstep_ledger_requests_refused_total", type="lock", code="insufficient_funds")
            == 1
        )
        for ledger in ledgers:
            samples, service = after[ledger], local.services[ledger]
            assert value(samples, "lockstep_ledger_journal_height") == heads[ledger]
            assert value(samples, "lockstep_ledger_locks_outstanding") == 0
            assert value(samples, "lockstep_ledger_batch_size_count") == service.batches
            assert value(samples, "lockstep_ledger_batch_size_sum") == service.instructions
            assert value(samples, "lockstep_ledger_batch_apply_seconds_count") == service.batches
            assert value(samples, "lockstep_ledger_request_seconds_count") == service.instructions
            assert value(samples, "lockstep_ledger_info", ledger=ledger, role=service.ledger.config.role) == 1

        samples = of(metrics.registry)
        final = {
            phase.value: value(samples, "lockstep_coordinator_settlements_final_total", phase=phase.value)
            for phase in (Phase.SETTLED, Phase.FAILED, Phase.ROLLED_BACK, Phase.ONE_LEGGED)
        }
        assert final == {"settled": 2, "failed": 1, "rolled_back": 0, "one_legged": 0}
        for phase in ("pending", "locking", "locked", "claiming", "rolling_back"):
            assert ("lockstep_coordinator_settlements", frozenset({("phase", phase)})) in samples and value(
                samples, "lockstep_coordinator_settlements", phase=phase
            ) == 0
        assert value(samples, "lockstep_coordinator_locks_outstanding") == 0
        assert value(samples, "lockstep_coordinator_journal_rows") == 3
        assert value(samples, "lockstep_coordinator_in_flight_settlements") == 0
        assert value(samples, "lockstep_coordinator_settlement_seconds_count") == 3
        for ledger in ledgers:
            assert value(samples, "lockstep_coordinator_ledger_round_trip_seconds_count", ledger=ledger) > 0
        nursery.cancel_scope.cancel()


async def test_a_lock_refunded_at_its_expiry_is_counted_and_no_longer_outstanding(world, autojump_clock):
    async with running_ledger(world) as ledger:
        registry = ledger.service.metrics.registry
        await ledger.lock("l1", 40, ledger.clock.now_ms() + HOUR_MS)
        assert value(of(registry), "lockstep_ledger_locks_outstanding") == 1
        await trio.sleep(2 * HOUR_MS / 1000)
        samples = of(registry)
        assert value(samples, "lockstep_ledger_instructions_applied_total", type="expire") == 1
        assert value(samples, "lockstep_ledger_locks_outstanding") == 0
        assert value(samples, "lockstep_ledger_batch_size_count") == ledger.service.batches


async def test_coordinator_gauges_show_a_settlement_holding_its_locks(tmp_path, autojump_clock):
    """Read while a settlement is LOCKED: one in flight, one holding locks, held on both ledgers."""
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), MemoryBus(), nursery)
        for ledger in ("csd", "cbdc-eur"):
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=("csd", "cbdc-eur"))
        coordinator, _ = await local.start_coordinator(TIMING, watchtower=False)
        metrics = CoordinatorMetrics(coordinator)
        seen = []

        def at_locked(record) -> None:  # journaled with the commit after it: being claimed
            if record.phase is Phase.LOCKED:
                seen.append(
                    (
                        of(metrics.registry),
                        [of(local.services[ledger].metrics.registry) for ledger in ("csd", "cbdc-eur")],
                    )
                )

        coordinator.on_phase = at_locked  # replaces the metrics' hook: counted outcomes are not read here
        await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))
        [(samples, ledger_samples)] = seen
        assert value(samples, "lockstep_coordinator_settlements", phase="claiming") == 1
        assert value(samples, "lockstep_coordinator_locks_outstanding") == 1
        assert value(samples, "lockstep_coordinator_in_flight_settlements") == 1
        assert [value(s, "lockstep_ledger_locks_outstanding") for s in ledger_samples] == [1, 1]
        nursery.cancel_scope.cancel()


# -- real processes ----------------------------------------------------------------------


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return scraped(response.read().decode())


async def test_processes_serve_metrics_over_http(tmp_path, broker):
    world = standard_world(tmp_path, broker=broker.url)
    ports = {"csd": free_port(), "cbdc-eur": free_port(), "coordinator": free_port()}
    for ledger in ("csd", "cbdc-eur"):  # the ledgers by their config, the coordinator by its flag
        config = world.ledger_configs[ledger]
        config.write_text(f'metrics = "127.0.0.1:{ports[ledger]}"\n' + config.read_text())  # before any [table]
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url)
    with coordinator.log_path.open("ab") as log:
        coordinator.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "coordinator",
                "--config",
                str(world.ledger_configs["coordinator"]),
                "--broker",
                broker.url,
                "--metrics",
                f"127.0.0.1:{ports['coordinator']}",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))
            reply = await local.send_settlement(local.settlement("dvp", CROSS_DVP, PARTIES), timeout_s=30)
            assert decode_signed(reply, allowed=(SettlementStatus,)).msg.phase == "settled"

            for ledger in ("csd", "cbdc-eur"):
                samples = await trio.to_thread.run_sync(scrape, ports[ledger])
                assert value(samples, "lockstep_ledger_instructions_applied_total", type="lock") == 1
                assert value(samples, "lockstep_ledger_instructions_applied_total", type="claim") == 1
                assert value(samples, "lockstep_ledger_journal_height") == await head_seq(local, ledger)
                assert value(samples, "lockstep_ledger_locks_outstanding") == 0
            samples = await trio.to_thread.run_sync(scrape, ports["coordinator"])
            assert value(samples, "lockstep_coordinator_settlements_final_total", phase="settled") == 1
            assert value(samples, "lockstep_coordinator_settlement_seconds_count") == 1
            assert value(samples, "lockstep_coordinator_journal_rows") == 1
            assert value(samples, "lockstep_coordinator_locks_outstanding") == 0
            for ledger in ("csd", "cbdc-eur"):
                assert value(samples, "lockstep_coordinator_ledger_round_trip_seconds_count", ledger=ledger) > 0
            nursery.cancel_scope.cancel()
    finally:
        for process in ledgers + [coordinator]:
            process.stop()
    assert "metrics at http://127.0.0.1:" in coordinator.log_path.read_text()
