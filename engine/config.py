"""The coordinator's configuration (the watchtower reads the same file):

coordinator_id = "coordinator"
key_file = "keys/coordinator.pem"     # paths are relative to this file
registry = "registry.toml"
journal = "coordinator.db"             # or "postgresql://..." (docs/DEPLOY.md)
broker = "mqtt://127.0.0.1:1883"      # or a cluster's nodes: ["mqtt://a:1883", "mqtt://b:1883", ...]
broker_password_file = "secrets/coordinator.password"  # optional: a secured broker (docs/DEPLOY.md);
broker_ca_file = "ca.pem"             # the user is the client id, coordinator-{id} or watchtower-{id}
ledgers = ["csd", "cbdc-eur"]         # watched by the watchtower
watchtower = false                    # optional: true runs a watchtower inside the coordinator too;
                                      # it adds nothing for the coordinator's own settlements,
                                      # which its core drives, and costs it a third of its CPU
metrics = "127.0.0.1:9110"            # optional: the coordinator serves Prometheus metrics
                                      # at http://HOST:PORT/metrics (the watchtower does not)
intake_max = 512                      # optional: back offices' settlements in flight at once;
                                      # a new one past it is refused `busy`, to send again later

[settlement_ledgers]                  # optional: where matched instructions settle each asset,
EUR = "cbdc-eur"                      # needed for an asset more than one ledger carries
XS2700000016 = "csd"

[timing]                              # optional; see protocols.settlement.Timing
lock_wait_ms = 2000
claim_deadline_ms = 4000
clock_skew_ms_max = 1000
backstop_ms = 14400000                # when a decision lock's ledger refunds it by itself

[settlement_queue]                    # optional (engine/desks/calendar.py): a matched pair
past_cutoff = "recycle"               # still queued at its cut-off fails ("fail", the default)
recycle_days = 20                     # or waits for its next settlement day, this many at most
partial_min_units = 10                # the least part the queue settles where both sides allow parts
offset_interval_ms = 1000             # how often it looks for trades that fund one another (0: never)

[calendars.csd]                       # optional, per ledger: its settlement days and cut-off
cutoff = "16:00"                      # UTC; no try begins later that day (default: 24:00)
weekends = false                      # default: true, it settles every day (24/7)
holidays = ["2026-12-25", "2027-01-01"]
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import attrs

from protocols.bus.address import broker_setting
from protocols.bus.exposition import metrics_setting
from protocols.databases import is_postgres
from protocols.failures import ExpectedFailure, read_toml
from protocols.settlement import Timing

from .desks.calendar import FAIL, RECYCLE, Calendar, Calendars

INTAKE_MAX = 512  # back offices' settlements in flight by default; a new one past it is refused `busy`
IN_FLIGHT_MAX = 10_000  # settlements a coordinator drives at once: no intake may be larger


class ConfigError(ExpectedFailure):
    """The configuration cannot be used: `subject` names the file, `reason` the setting and why."""


@attrs.frozen
class CoordinatorConfig:
    coordinator_id: str
    key_file: Path
    registry: Path
    journal: Path | str  # a file (SQLite), or a postgresql:// URL
    broker: str | None  # its URLs joined by commas, the broker_*_file settings in the query of each
    ledgers: tuple[str, ...]
    timing: Timing = Timing()
    metrics: tuple[str, int] | None = None  # (host, port) of the metrics endpoint; None: off
    settlement_ledgers: dict[str, str] = attrs.field(factory=dict)  # asset -> the ledger that settles it
    intake_max: int = INTAKE_MAX
    watchtower: bool = False  # a watchtower inside the coordinator, for the ledgers in `ledgers`
    calendars: Calendars = attrs.field(factory=Calendars)  # the matching desk's settlement days and cut-offs

    @classmethod
    def load(cls, path: str | Path) -> CoordinatorConfig:
        path = Path(path)
        source = f"coordinator config {path}"
        try:
            data = read_toml("coordinator config", path)
        except ExpectedFailure as error:
            raise ConfigError(error.subject, error.reason) from None
        known = {
            "coordinator_id",
            "key_file",
            "registry",
            "journal",
            "broker",
            "broker_password_file",
            "broker_ca_file",
            "ledgers",
            "timing",
            "metrics",
            "settlement_ledgers",
            "intake_max",
            "watchtower",
            "settlement_queue",
            "calendars",
        }
        for key in data:
            if key not in known:
                raise ConfigError(source, f"{key}: unknown setting")
        for key in ("coordinator_id", "key_file", "registry", "journal"):
            if not isinstance(data.get(key), str):
                raise ConfigError(source, f"{key}: required, a string")
        ledgers = data.get("ledgers", [])
        if not isinstance(ledgers, list) or not all(isinstance(ledger, str) for ledger in ledgers):
            raise ConfigError(source, "ledgers: must be a list of ledger ids")
        timing = data.get("timing", {})
        if not isinstance(timing, dict) or not all(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in timing.values()
        ):
            raise ConfigError(source, "timing: must be a table of whole numbers of ms, none negative")
        try:
            timing = Timing(**timing)
        except (TypeError, ValueError) as error:  # an unknown name; a backstop too short for the rest
            raise ConfigError(source, f"timing: {error}") from None
        intake_max = data.get("intake_max", INTAKE_MAX)
        if not isinstance(intake_max, int) or isinstance(intake_max, bool) or not 1 <= intake_max <= IN_FLIGHT_MAX:
            raise ConfigError(source, f"intake_max: must be a whole number from 1 to {IN_FLIGHT_MAX}")
        watchtower = data.get("watchtower", False)
        if not isinstance(watchtower, bool):
            raise ConfigError(source, "watchtower: must be true or false")
        places = data.get("settlement_ledgers", {})
        if not isinstance(places, dict) or not all(isinstance(v, str) for v in places.values()):
            raise ConfigError(source, "settlement_ledgers: must map each asset to a ledger id")
        base = path.parent
        try:
            broker = broker_setting(data, base)
        except ValueError as error:
            raise ConfigError(source, str(error)) from None
        try:
            metrics = metrics_setting(data)
        except ValueError as error:
            raise ConfigError(source, f"metrics: {error}") from None
        calendars = _calendars(source, data.get("settlement_queue", {}), data.get("calendars", {}))
        return cls(
            data["coordinator_id"],
            base / data["key_file"],
            base / data["registry"],
            data["journal"] if is_postgres(data["journal"]) else base / data["journal"],
            broker,
            tuple(ledgers),
            timing,
            metrics,
            places,
            intake_max,
            watchtower,
            calendars,
        )


def _calendars(source: str, queue: object, tables: object) -> Calendars:
    """[settlement_queue] and [calendars.LEDGER], each fault named with its setting."""
    if not isinstance(queue, dict) or set(queue) - {
        "past_cutoff",
        "recycle_days",
        "partial_min_units",
        "offset_interval_ms",
    }:
        raise ConfigError(
            source,
            "settlement_queue: a table of past_cutoff, recycle_days, partial_min_units and offset_interval_ms",
        )
    past_cutoff = queue.get("past_cutoff", FAIL)
    if past_cutoff not in (FAIL, RECYCLE):
        raise ConfigError(source, f"settlement_queue.past_cutoff: {FAIL!r} or {RECYCLE!r}")
    recycle_days = queue.get("recycle_days", 20)
    if not isinstance(recycle_days, int) or isinstance(recycle_days, bool) or not 0 <= recycle_days <= 40:
        raise ConfigError(source, "settlement_queue.recycle_days: a whole number from 0 to 40")
    partial_min_units = queue.get("partial_min_units", 1)
    if not isinstance(partial_min_units, int) or isinstance(partial_min_units, bool) or partial_min_units < 1:
        raise ConfigError(source, "settlement_queue.partial_min_units: a whole number from 1")
    offset_interval_ms = queue.get("offset_interval_ms", 1000)
    if (
        not isinstance(offset_interval_ms, int)
        or isinstance(offset_interval_ms, bool)
        or not 0 <= offset_interval_ms <= 3_600_000
    ):
        raise ConfigError(source, "settlement_queue.offset_interval_ms: a whole number of ms from 0 (never) to 3600000")
    if not isinstance(tables, dict):
        raise ConfigError(source, "calendars: a table of [calendars.LEDGER] tables")
    ledgers = {}
    for ledger, table in tables.items():
        where = f"calendars.{ledger}"
        if not isinstance(table, dict) or set(table) - {"cutoff", "weekends", "holidays"}:
            raise ConfigError(source, f"{where}: a table of cutoff, weekends and holidays")
        cutoff = table.get("cutoff", "24:00")
        found = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)|24:00", cutoff) if isinstance(cutoff, str) else None
        if found is None:
            raise ConfigError(source, f"{where}.cutoff: a time of day HH:MM, UTC, up to 24:00")
        hours, minutes = (24, 0) if found.group(1) is None else (int(found.group(1)), int(found.group(2)))
        weekends = table.get("weekends", True)
        if not isinstance(weekends, bool):
            raise ConfigError(source, f"{where}.weekends: true or false")
        holidays = table.get("holidays", [])
        if not isinstance(holidays, list) or not all(_is_date(day) for day in holidays):
            raise ConfigError(source, f"{where}.holidays: a list of dates YYYY-MM-DD")
        ledgers[ledger] = Calendar(weekends, frozenset(holidays), (hours * 60 + minutes) * 60_000)
    return Calendars(ledgers, past_cutoff, recycle_days, partial_min_units, offset_interval_ms)


def _is_date(value: object) -> bool:
    try:
        return isinstance(value, str) and datetime.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False
