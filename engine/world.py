"""Lay out a local world on disk: a key per party, the shared registry, a TOML file per
ledger. The demo, the benchmark and the tests all start from one of these."""

from __future__ import annotations

from pathlib import Path

import attrs

from protocols.registry import Party, Registry, Role
from protocols.signing import PrivateKey


@attrs.frozen
class LedgerSpec:
    ledger_id: str
    role: str                                   # securities, cbdc or unified
    operator: str
    currencies: tuple[tuple[str, str], ...] = ()  # (code, central bank)


@attrs.define
class World:
    directory: Path
    registry: Registry
    keys: dict[str, PrivateKey]
    ledger_configs: dict[str, Path]    # and the coordinators' configs, by party id

    @property
    def registry_path(self) -> Path:
        return self.directory / "registry.toml"

    def key_path(self, party: str) -> Path:
        return self.directory / "keys" / f"{party}.pem"


def lay_out(directory: str | Path, ledgers: list[LedgerSpec], parties: dict[str, tuple[Role, ...]],
            *, broker: str | None = None) -> World:
    """Write keys, registry and ledger configs under `directory` (created if needed).
    Each ledger is also a party (role LEDGER) with its own key."""
    directory = Path(directory)
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    everyone = dict(parties)
    for spec in ledgers:
        everyone[spec.ledger_id] = (Role.LEDGER,)
    keys = {party: PrivateKey.generate() for party in everyone}
    for party, key in keys.items():
        key.save(directory / "keys" / f"{party}.pem")
    registry = Registry(Party(party, frozenset(roles), keys[party].public) for party, roles in everyone.items())
    registry.save(directory / "registry.toml")
    configs = {}
    for spec in ledgers:
        lines = [f'ledger_id = "{spec.ledger_id}"', f'role = "{spec.role}"', f'operator = "{spec.operator}"',
                 f'database = "{spec.ledger_id}.db"', f'key_file = "keys/{spec.ledger_id}.pem"',
                 'registry = "registry.toml"']
        if broker:
            lines.append(f'broker = "{broker}"')
        for code, issuer in spec.currencies:
            lines += ["", "[[currencies]]", f'code = "{code}"', f'issuer = "{issuer}"']
        path = directory / f"{spec.ledger_id}.toml"
        path.write_text("\n".join(lines) + "\n")
        configs[spec.ledger_id] = path
    for party, roles in parties.items():
        if Role.COORDINATOR in roles:
            ledger_list = ", ".join(f'"{spec.ledger_id}"' for spec in ledgers)
            lines = [f'coordinator_id = "{party}"', f'key_file = "keys/{party}.pem"', 'registry = "registry.toml"',
                     f'journal = "{party}.db"', f"ledgers = [{ledger_list}]"]
            if broker:
                lines.append(f'broker = "{broker}"')
            configs[party] = directory / f"{party}.toml"
            configs[party].write_text("\n".join(lines) + "\n")
    return World(directory, registry, keys, configs)
