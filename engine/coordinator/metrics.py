"""The coordinator's Prometheus metrics, in a registry of its own (several services may
share one process). Outcomes and latencies are counted as each record is saved (through
`Coordinator.on_phase`, chained) and round trips as each ledger answers (through each
`LedgerClient.on_round_trip`); the settlements being driven, by phase, are counted from
the coordinator's core, and the journal's size read from its file, when scraped, so
neither can drift from the truth."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from protocols.registry import Role
from protocols.settlement import FINAL, Phase

from . import Coordinator, schema
from .journal import Record

SETTLEMENT_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ROUND_TRIP_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNFINISHED = tuple(phase for phase in Phase if phase not in FINAL)
HOLDING_LOCKS = (Phase.LOCKING, Phase.LOCKED, Phase.CLAIMING, Phase.ROLLING_BACK)
INSTRUCTION_STATES = ("unmatched", "matched", "queued", "settled", "failed", "cancelled", "rejected")


class CoordinatorMetrics:
    def __init__(self, coordinator: Coordinator) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, open files of this process
        Gauge(
            "lockstep_coordinator_info", "This coordinator's id (always 1).", ["coordinator"], registry=self.registry
        ).labels(coordinator.id).set(1)
        self.final = Counter(
            "lockstep_coordinator_settlements_final_total",
            "Settlements that reached a final phase since this process started, by phase.",
            ["phase"],
            registry=self.registry,
        )
        for phase in FINAL:
            self.final.labels(phase.value)
        self.settlement_seconds = Histogram(
            "lockstep_coordinator_settlement_seconds",
            "From a settlement's acceptance (PENDING journaled) to its final phase, on the coordinator's clock.",
            buckets=SETTLEMENT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.round_trip = Histogram(
            "lockstep_coordinator_ledger_round_trip_seconds",
            "From a request sent to a ledger to its reply, by ledger.",
            ["ledger"],
            buckets=ROUND_TRIP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.timeouts = Counter(
            "lockstep_coordinator_ledger_timeouts_total",
            "Requests to a ledger that had no reply within one attempt's timeout, by ledger.",
            ["ledger"],
            registry=self.registry,
        )
        Gauge(
            "lockstep_coordinator_in_flight_settlements", "Settlements being driven now.", registry=self.registry
        ).set_function(lambda: coordinator.in_flight)
        Gauge(
            "lockstep_coordinator_intake_settlements",
            "Back offices' settlements in flight, which intake_max bounds.",
            registry=self.registry,
        ).set_function(lambda: coordinator.intake)
        busy = Counter(
            "lockstep_coordinator_busy_total",
            "New settlements refused busy at the intake bound.",
            registry=self.registry,
        )
        coordinator.on_busy = busy.inc
        offset = Counter(
            "lockstep_coordinator_offset_settlements_total",
            "Queued settlements released by liquidity saving (trades that fund one another, settled together).",
            registry=self.registry,
        )
        offset_value = Counter(
            "lockstep_coordinator_offset_value_total",
            "What those settlements moved, gross, by asset (minor units or units).",
            ["asset"],
            registry=self.registry,
        )
        offset_saved = Counter(
            "lockstep_coordinator_offset_liquidity_saved_total",
            "Liquidity saved by settling them netted: gross outflows less net outflows, by asset.",
            ["asset"],
            registry=self.registry,
        )

        def on_offset(count: int, value: dict[str, int], saved: dict[str, int]) -> None:
            offset.inc(count)
            for asset, amount in value.items():
                offset_value.labels(asset).inc(amount)
            for asset, amount in saved.items():
                offset_saved.labels(asset).inc(amount)

        coordinator.on_offset = on_offset
        self.registry.register(_PhaseCollector(coordinator))
        self.registry.register(_JournalCollector(coordinator.journal.database))
        for party in coordinator.registry:
            if Role.LEDGER in party.roles:
                self._watch(coordinator, party.id)
        chained = coordinator.on_phase

        def on_phase(record: Record) -> None:
            self.saved(record)
            chained(record)

        coordinator.on_phase = on_phase

    def _watch(self, coordinator: Coordinator, ledger_id: str) -> None:
        round_trip, timeouts = self.round_trip.labels(ledger_id), self.timeouts.labels(ledger_id)

        def on_round_trip(seconds: float, answered: bool) -> None:
            if answered:
                round_trip.observe(seconds)
            else:
                timeouts.inc()

        coordinator.client(ledger_id).on_round_trip = on_round_trip

    def saved(self, record: Record) -> None:
        """A record is on disk: if final, count its outcome and time it."""
        if record.final:
            self.final.labels(record.phase.value).inc()
            (_, accepted_ms), (_, final_ms) = record.steps[0], record.steps[-1]
            self.settlement_seconds.observe((final_ms - accepted_ms) / 1000)


class _PhaseCollector:
    """The settlements being driven now, by unfinished phase, from the coordinator's core."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def collect(self):
        by_phase = self._coordinator.phases()
        phases = GaugeMetricFamily(
            "lockstep_coordinator_settlements", "Settlements in each unfinished phase now.", labels=["phase"]
        )
        for phase in UNFINISHED:
            phases.add_metric([phase.value], by_phase.get(phase, 0))
        yield phases
        yield GaugeMetricFamily(
            "lockstep_coordinator_locks_outstanding",
            "Settlements whose locks may be held now (locking, locked, claiming, rolling_back).",
            value=sum(by_phase.get(phase, 0) for phase in HOLDING_LOCKS),
        )


class _JournalCollector:
    """Read at scrape time from the journal (a read-only connection of its own, so a
    scrape never meets the writer's transaction): the settlements it holds, the
    transitions in its log (of settlements not yet final), and the matching desk's
    instructions by state, the settlement queue's among them."""

    def __init__(self, database: str | Path) -> None:
        self._database = database

    def collect(self):
        with closing(schema.read_only(self._database)) as db:
            rows = db.execute(
                "SELECT COUNT(*) FROM (SELECT id FROM settlements UNION SELECT settlement_id FROM transitions) AS ids"
            ).fetchone()[0]
            logged = db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
            states = dict(db.execute("SELECT state, COUNT(*) FROM instructions GROUP BY state").fetchall())
            held = db.execute(
                "SELECT COUNT(*) FROM instructions WHERE held = 1 AND state IN ('unmatched', 'matched', 'queued')"
            ).fetchone()[0]
        yield GaugeMetricFamily(
            "lockstep_coordinator_journal_rows",
            "Settlements in the coordinator's journal, final or not.",
            value=rows,
        )
        yield GaugeMetricFamily(
            "lockstep_coordinator_journal_transitions",
            "Transitions in the journal's log: those of settlements not yet final.",
            value=logged,
        )
        instructions = GaugeMetricFamily(
            "lockstep_coordinator_instructions",
            "The matching desk's instructions by state; queued: waiting in the settlement queue.",
            labels=["state"],
        )
        for state in INSTRUCTION_STATES:
            instructions.add_metric([state], states.get(state, 0))
        yield instructions
        yield GaugeMetricFamily(
            "lockstep_coordinator_instructions_held",
            "Instructions not yet settled, failed or cancelled that their party holds.",
            value=held,
        )
