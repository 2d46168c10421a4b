"""A ledger's configuration, read from a TOML file:

ledger_id = "csd"
role = "securities"              # or "cbdc" or "unified"
operator = "csd-operator"        # the party that runs this ledger
database = "csd.db"              # paths are relative to this file; or "postgresql://..." (docs/DEPLOY.md)
key_file = "keys/csd.pem"        # the ledger's own signing key (party id = ledger_id)
registry = "registry.toml"
broker = "mqtt://127.0.0.1:1883"  # or a cluster's nodes: ["mqtt://a:1883", "mqtt://b:1883", ...]
broker_password_file = "secrets/ledger-csd.password"   # optional: a secured broker (docs/DEPLOY.md);
broker_ca_file = "ca.pem"                               # the user is the client id, ledger-{ledger_id}
metrics = "127.0.0.1:9111"       # optional: serve Prometheus metrics at http://HOST:PORT/metrics

[[currencies]]                   # cbdc and unified ledgers
code = "EUR"
issuer = "ecb"                   # the central bank that mints and burns it
"""

from __future__ import annotations

from pathlib import Path

import attrs

from protocols.bus.address import broker_setting
from protocols.bus.exposition import metrics_setting
from protocols.databases import is_postgres
from protocols.failures import ExpectedFailure, read_toml
from protocols.identifiers import currency_problem
from protocols.messages import IDENT_PATTERN

ROLES = ("securities", "cbdc", "unified")


class ConfigError(ExpectedFailure):
    """The configuration cannot be used: `subject` names the file, `reason` the setting and why."""


@attrs.frozen
class CurrencyConfig:
    code: str
    issuer: str


@attrs.frozen
class Limits:
    batch_size_max: int = 512
    lock_expiry_ms_max: int = 7 * 24 * 3600 * 1000
    ts_age_ms_max: int = 5 * 60 * 1000  # freshness: how old a signed instruction may be
    ts_ahead_ms_max: int = 60 * 1000  # how far ahead of our clock a sender's may run


@attrs.frozen
class LedgerConfig:
    ledger_id: str
    role: str
    operator: str
    database: Path | str  # a file (SQLite), or a postgresql:// URL
    key_file: Path
    registry: Path
    broker: str | None = None  # its URLs joined by commas, the broker_*_file settings in the query of each
    metrics: tuple[str, int] | None = None  # (host, port) of the metrics endpoint; None: off
    currencies: tuple[CurrencyConfig, ...] = ()
    limits: Limits = Limits()

    @property
    def holds_securities(self) -> bool:
        return self.role in ("securities", "unified")

    @property
    def holds_currencies(self) -> bool:
        return self.role in ("cbdc", "unified")

    @classmethod
    def load(cls, path: str | Path) -> LedgerConfig:
        path = Path(path)
        try:
            data = read_toml("ledger config", path)
        except ExpectedFailure as error:
            raise ConfigError(error.subject, error.reason) from None
        return cls.from_dict(data, base=path.parent, source=f"ledger config {path}")

    @classmethod
    def from_dict(cls, data: dict, *, base: Path, source: str) -> LedgerConfig:
        """`source` names the file for errors; paths are relative to `base`."""

        def need(key: str, kind: type = str):
            if key not in data:
                raise ConfigError(source, f"{key}: required")
            if not isinstance(data[key], kind):
                raise ConfigError(source, f"{key}: must be a {kind.__name__}")
            return data[key]

        known = {
            "ledger_id",
            "role",
            "operator",
            "database",
            "key_file",
            "registry",
            "broker",
            "broker_password_file",
            "broker_ca_file",
            "metrics",
            "currencies",
            "limits",
        }
        for key in data:
            if key not in known:
                raise ConfigError(source, f"{key}: unknown setting")
        ledger_id = need("ledger_id")
        if not IDENT_PATTERN.fullmatch(ledger_id):
            raise ConfigError(source, f"ledger_id: {ledger_id!r} is not a valid identifier")
        role = need("role")
        if role not in ROLES:
            raise ConfigError(source, f"role: must be one of {', '.join(ROLES)}")
        currencies = []
        entries = data.get("currencies", [])
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ConfigError(source, "currencies: must be [[currencies]] tables of code and issuer")
        for index, entry in enumerate(entries):
            code, issuer = entry.get("code"), entry.get("issuer")
            problem = currency_problem(code) if isinstance(code, str) else "must be a string"
            if problem:
                raise ConfigError(source, f"currencies[{index}].code: {problem}")
            if not isinstance(issuer, str):
                raise ConfigError(source, f"currencies[{index}].issuer: required")
            currencies.append(CurrencyConfig(code, issuer))
        if currencies and role == "securities":
            raise ConfigError(source, "currencies: a securities ledger holds no currency")
        if not currencies and role == "cbdc":
            raise ConfigError(source, "currencies: a cbdc ledger needs at least one currency")
        limits = data.get("limits", {})
        if not isinstance(limits, dict) or not all(_positive_int(value) for value in limits.values()):
            raise ConfigError(source, "limits: must be a table of positive whole numbers")
        try:
            limits = Limits(**limits)
        except TypeError as error:
            raise ConfigError(source, f"limits: {error}") from None
        try:
            broker = broker_setting(data, base)
        except ValueError as error:
            raise ConfigError(source, str(error)) from None
        try:
            metrics = metrics_setting(data)
        except ValueError as error:
            raise ConfigError(source, f"metrics: {error}") from None
        return cls(
            ledger_id=ledger_id,
            role=role,
            operator=need("operator"),
            database=_database(need("database"), base),
            key_file=base / need("key_file"),
            registry=base / need("registry"),
            broker=broker,
            metrics=metrics,
            currencies=tuple(currencies),
            limits=limits,
        )


def _database(setting: str, base: Path) -> Path | str:
    """A postgresql:// URL as it is; a path relative to the config file."""
    return setting if is_postgres(setting) else base / setting


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
