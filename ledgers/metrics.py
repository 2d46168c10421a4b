"""A ledger's Prometheus metrics, in a registry of its own (several services may share
one process). What the service counts as it works (outcomes, batches, replies) is kept
in counters and histograms; what the store knows (journal height, held locks) is read
when scraped, so it cannot drift from the truth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from .ledger import Ledger

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LedgerMetrics:
    def __init__(self, ledger: Ledger) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, open files of this process
        labels = {"ledger": ledger.id, "role": ledger.config.role}
        Gauge(
            "lockstep_ledger_info", "This ledger's id and role (always 1).", list(labels), registry=self.registry
        ).labels(**labels).set(1)
        self.applied = Counter(
            "lockstep_ledger_instructions_applied_total",
            "Instructions applied, each one journal entry, by instruction type "
            "(expire: a lock the ledger refunded at its expiry by itself).",
            ["type"],
            registry=self.registry,
        )
        self.refused = Counter(
            "lockstep_ledger_requests_refused_total",
            "Instructions and queries refused, by message type (unknown: did not decode) and refusal code.",
            ["type", "code"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "lockstep_ledger_batch_apply_seconds",
            "Time to apply and commit one batch (one SQLite transaction).",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lockstep_ledger_batch_size",
            "Requests per batch (0: a wake-up to refund expired locks).",
            buckets=_powers_of_two(ledger.config.limits.batch_size_max),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "lockstep_ledger_request_seconds",
            "From a request taken off the queue to its reply handed to the bus.",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(ledger))
        ledger.on_outcome = self.outcome

    def outcome(self, kind: str, code: str | None) -> None:
        """One request answered: applied (code None) or refused with `code`."""
        if code is None:
            self.applied.labels(kind).inc()
        else:
            self.refused.labels(kind, code).inc()


class _StoreCollector:
    """Read at scrape time: the journal height the ledger holds, and the held locks
    counted on the store's partial index (a read-only connection of its own, so a
    scrape never meets the writer's transaction)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self):
        yield GaugeMetricFamily(
            "lockstep_ledger_journal_height", "Journal entries written: the next entry's seq.", value=self.ledger.seq
        )
        with self.ledger.store.reader() as db:
            held = db.execute("SELECT COUNT(*) FROM locks WHERE state = 'held'").fetchone()[0]
        yield GaugeMetricFamily(
            "lockstep_ledger_locks_outstanding",
            "Locks held now: placed, not yet claimed, aborted or refunded.",
            value=held,
        )


def _powers_of_two(limit: int) -> tuple[int, ...]:
    """1, 2, 4 ... up to and including `limit`."""
    buckets = [1]
    while buckets[-1] < limit:
        buckets.append(min(buckets[-1] * 2, limit))
    return tuple(buckets)
