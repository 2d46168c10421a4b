"""`lockstep console`: the observer (engine/audit/observer.py) and a web server in one
process. The observer follows every ledger's journal as it grows and raises the alerts;
the console samples it once a second for the charts, asks each ledger now and then who
it is (`query_info`: role, operator, last checkpoint), and serves the pages
(engine/console/app.py) from what it holds. Nothing the console does writes to a ledger
or a coordinator. Given the supervisor's key (a party with the observer role), it signs
one kind of message, a read: a settlement's ISO 20022 advices, asked of the coordinators
when its page is opened."""

from __future__ import annotations

import logging
import secrets
import ssl
from collections import Counter, OrderedDict
from pathlib import Path

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_http

from protocols.bus import Bus, BusTimeout, decisions_topic, service_of_coordinator
from protocols.bus.address import redacted
from protocols.bus.client import BadReply
from protocols.bus.clock import ServiceClock
from protocols.bus.exposition import parse_address
from protocols.canonical import decode
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure, file_reason
from protocols.messages import (
    QueryInfo,
    QuerySettlementAdvices,
    SettlementAdvices,
    SettlementDecision,
    SettlementStatus,
)
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey, Signed, from_wire, sign

from ..audit.graces import OBSERVER_GRACE_MS
from ..audit.journals import LedgerJournal, Violation, read_over_bus
from ..audit.observer import Observer, load
from ..watchtower import verified_decisions
from . import access, views
from .app import console_app

log = logging.getLogger("lockstep.console")

SAMPLE_INTERVAL_S = 1.0  # the charts' resolution
INFO_INTERVAL_S = 10.0  # how often each ledger is asked for its role, operator and last checkpoint
RECENT_SETTLEMENTS_MAX = 1_000  # drilled down from their entries, kept whole: some 12 KiB each
ADVICES_TIMEOUT_S = 2.0  # a settlement's page waits this long for its coordinators' advices


@attrs.frozen
class Supervisor:
    """Whom the console reads advices as: a party holding the observer role, and its key."""

    party: str
    key: PrivateKey = attrs.field(repr=False)


class Console:
    """What the pages are made of, kept up to date while `run` runs."""

    def __init__(
        self,
        observer: Observer,
        registry: Registry,
        coordinators: tuple[str, ...] = (),
        supervisor: Supervisor | None = None,
    ) -> None:
        self.observer = observer
        self.registry = registry
        self.coordinators = coordinators
        self.supervisor = supervisor
        self.rates = views.Rates()
        self.conservation = views.Conservation()
        self.infos: dict[str, dict] = {}
        # the latest settlements' journal entries, as replayed: (ledger, the signed entry, its hash)
        self.settlements: OrderedDict[str, list[tuple[str, Signed, str]]] = OrderedDict()
        self.decisions: OrderedDict[str, str] = OrderedDict()  # settlement -> its coordinator's decision, as published
        self.phases: dict[str, str] = {}  # the latest settlements' phases
        self.flow = views.Flow()
        self.alerted = trio.lowlevel.ParkingLot()  # the live pages, woken by an alert
        observer.on_entry = self._entry
        observer.on_alert = self._alert

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.observer.run)
            nursery.start_soon(self._sample)
            for ledger in self.observer.clients:
                nursery.start_soon(self._ask_info, ledger)
            for coordinator in self.coordinators:
                await nursery.start(self._hear, coordinator)
            task_status.started()

    def overview(self) -> dict:
        observer = self.observer
        return views.overview(
            observer.journals,
            self.infos,
            observer.alerts,
            observer.judged,
            observer.open_settlements,
            self.rates,
            observer.clock.now_ms(),
            Counter(self.phases.values()),
            self.flow,
        )

    def settlement(self, settlement_id: str) -> dict | None:
        """A settlement drilled down, each entry's signature verified again now; None when it
        is not among the latest RECENT_SETTLEMENTS_MAX."""
        entries = self.settlements.get(settlement_id)
        if entries is None:
            return None
        keys = {ledger: client.ledger_key for ledger, client in self.observer.clients.items()}
        return views.settlement(settlement_id, entries, keys, self.observer.journals)

    async def tokens(self, ledger: str) -> LedgerJournal | None:
        """A ledger's journal read whole over the bus now, checked as the audit checks it,
        with its token view (protocols/tokens.py); None if it is not followed here."""
        if ledger not in self.observer.clients:
            return None
        (journal,) = await read_over_bus(self.observer.bus, self.registry, [ledger])
        return journal

    async def advices(self, settlement_id: str) -> tuple[list[dict], list[str]]:
        """Every party's ISO 20022 advices of the settlement, asked of each coordinator
        (the one whose desk matched it holds them), each answer verified as that
        coordinator's; and, a line each, what could not be had."""
        if self.supervisor is None:
            return [], ["the console has no supervisor's key to ask with (--party and --key)"]
        items: list[dict] = []
        problems: list[str] = []

        async def ask(coordinator: str) -> None:
            try:
                items.extend(await self._advices_of(coordinator, settlement_id))
            except BusTimeout:
                problems.append(f"coordinator {coordinator}: did not answer within {ADVICES_TIMEOUT_S} s")
            except (BadReply, Rejected) as error:
                problems.append(f"coordinator {coordinator}: {error}")

        async with trio.open_nursery() as nursery:
            for coordinator in self.coordinators:
                nursery.start_soon(ask, coordinator)
        return views.advices(items), sorted(problems)

    async def _advices_of(self, coordinator: str, settlement_id: str) -> tuple[dict, ...]:
        assert self.supervisor is not None
        query = QuerySettlementAdvices(
            f"console-{secrets.token_hex(8)}", coordinator, self.supervisor.party, settlement_id
        )
        payload = sign(query, (self.supervisor.party, self.supervisor.key)).encode()
        raw = await self.observer.bus.request(service_of_coordinator(coordinator), payload, timeout_s=ADVICES_TIMEOUT_S)
        signed = from_wire(decode(raw), allowed=(SettlementAdvices, SettlementStatus))
        if coordinator not in self.registry or not signed.signed_by(coordinator, self.registry[coordinator].public_key):
            raise BadReply("its answer is not signed by it")
        answer = signed.msg
        if isinstance(answer, SettlementStatus):
            raise BadReply(f"refused: {answer.reason_code}: {answer.reason}")
        assert isinstance(answer, SettlementAdvices)
        if answer.settlement_id != settlement_id:
            raise BadReply(f"it answered for settlement {answer.settlement_id!r}")
        return answer.items

    def _alert(self, violation: Violation) -> None:
        self.alerted.unpark_all()

    def _entry(self, ledger: str, signed: Signed, hash_: str, settlements: list[str]) -> None:
        for settlement_id in settlements:
            entries = self.settlements.setdefault(settlement_id, [])
            entries.append((ledger, signed, hash_))
            self.settlements.move_to_end(settlement_id)
            self._phase(settlement_id)
        while len(self.settlements) > RECENT_SETTLEMENTS_MAX:
            settlement_id, _ = self.settlements.popitem(last=False)
            self.phases.pop(settlement_id, None)
            self.decisions.pop(settlement_id, None)

    def _phase(self, settlement_id: str) -> None:
        entries = self.settlements.get(settlement_id, [])
        before = self.phases.get(settlement_id)
        now = self.phases[settlement_id] = views.phase(settlement_id, entries, self.decisions.get(settlement_id))
        if now in views.FINAL_PHASES and before not in views.FINAL_PHASES:
            self.flow.end(views.settled_in(entries))

    async def _hear(self, coordinator: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """A coordinator's published decisions, each verified as its alone."""
        async with self.observer.bus.subscribe(decisions_topic(coordinator)) as events:
            task_status.started()
            async for raw in events:
                for signed in verified_decisions(raw, coordinator, self.registry):
                    decision: SettlementDecision = signed.msg
                    self.decisions[decision.settlement_id] = decision.outcome
                    while len(self.decisions) > RECENT_SETTLEMENTS_MAX:
                        self.decisions.popitem(last=False)
                    if decision.settlement_id in self.settlements:
                        self._phase(decision.settlement_id)

    async def _sample(self) -> None:
        while True:
            heights = {ledger: journal.entries for ledger, journal in self.observer.journals.items()}
            now_ms = self.observer.clock.now_ms()
            self.rates.sample(heights, now_ms)
            self.conservation.sample(self.observer.journals, now_ms)
            self.flow.sample(SAMPLE_INTERVAL_S)
            await trio.sleep(SAMPLE_INTERVAL_S)

    async def _ask_info(self, ledger: str) -> None:
        client = self.observer.clients[ledger]
        while True:
            try:
                self.infos[ledger] = await client.query(QueryInfo(client.next_query_id(), ledger))
            except (BusTimeout, BadReply, Rejected) as error:
                log.debug("%s did not say who it is: %s", ledger, error)
            await trio.sleep(INFO_INTERVAL_S)


def console_of(
    registry: Registry,
    bus: Bus,
    ledgers: list[str],
    coordinators: tuple[str, ...] = (),
    grace_ms: int = OBSERVER_GRACE_MS,
    supervisor: Supervisor | None = None,
) -> Console:
    """A console over these ledgers and these coordinators' decisions and advices; its
    observer publishes no alerts (the observer service does), it only shows them."""
    observer = Observer(registry, bus, ledgers, grace_ms, ServiceClock(), publish=False)
    return Console(observer, registry, coordinators, supervisor)


def supervisor_of(registry: Registry, party: str, key_file: str) -> Supervisor:
    """`--party` and `--key`: a party of the registry with the observer role, and its key."""
    if not registry.has_role(party, Role.OBSERVER):
        raise ExpectedFailure(f"--party {party}", "not a party with the observer role in the registry")
    key = PrivateKey.load(key_file)
    if registry[party].public_key.public_numbers() != key.public.public_numbers():
        raise ExpectedFailure(f"--key {key_file}", f"not the key registered for {party}")
    return Supervisor(party, key)


@attrs.frozen
class Tls:
    """The console's certificate and key, PEM files: its pages served over HTTPS only."""

    certificate: Path
    key: Path


async def start_http(
    console: Console, users: dict[str, str], host: str, port: int, nursery: trio.Nursery, tls: Tls | None = None
) -> str:
    """Serve the console's pages on `host:port` (0: any free port), over TLS if given; its address."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    if tls is not None:
        config.certfile, config.keyfile = str(tls.certificate), str(tls.key)
        subject = f"console TLS files {tls.certificate}, {tls.key}"
        try:
            config.create_ssl_context()
        except ssl.SSLError as error:
            raise ExpectedFailure(subject, f"not a PEM certificate and its key ({error.reason})") from None
        except OSError as error:
            raise ExpectedFailure(subject, file_reason(error)) from None
    try:
        binds = await nursery.start(serve_http, console_app(console, users, secure=tls is not None), config)
    except OSError as error:
        raise ExpectedFailure(f"console --listen {host}:{port}", file_reason(error)) from None
    return binds[0]


async def serve(
    config_path: str,
    listen: str,
    users_file: str,
    broker: str | None = None,
    grace_ms: int = OBSERVER_GRACE_MS,
    tls: Tls | None = None,
    supervisor: tuple[str, str] | None = None,
) -> None:
    """`lockstep console`, until SIGTERM or SIGINT; `supervisor`: the party and key file
    to read settlements' advices as."""
    from ..daemon import _until_signalled

    registry, url, ledgers = load(config_path, broker, grace_ms)
    users = access.read_users(Path(users_file))
    reader = supervisor_of(registry, *supervisor) if supervisor is not None else None
    try:
        host, port = parse_address(listen)
    except ValueError as error:
        raise ExpectedFailure(f"--listen {listen}", str(error)) from None
    async with _until_signalled(url, f"console-{secrets.token_hex(4)}") as (bus, nursery):
        coordinators = tuple(party.id for party in registry if Role.COORDINATOR in party.roles)
        console = console_of(registry, bus, list(ledgers), coordinators, grace_ms, reader)
        await nursery.start(console.run)
        address = await start_http(console, users, host, port, nursery, tls)
        log.info("console on %s, following %s on %s", address, ", ".join(ledgers), redacted(url))
