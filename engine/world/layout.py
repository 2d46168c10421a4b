"""Lay out a local world on disk: a key per party, the shared registry, a TOML file per
ledger and per coordinator, each naming a broker (by default the one `lockstep broker`
runs), so that every service can be started from it by hand. The demo, the benchmark
and the tests all start from one of these; a secured world adds a broker password per
user and the broker's password and ACL files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import attrs

from protocols.bus import service_of_intermediary
from protocols.bus.address import with_files
from protocols.registry import Party, Registry, Role
from protocols.signing import PrivateKey

from ..audit.observer import ALERTS_TOPIC
from .broker import Account, acl_text, coordinator_accounts, ledger_account, write_password_file

LOCAL_BROKER = "mqtt://127.0.0.1:1883"  # where `lockstep broker` listens by default


@attrs.frozen
class LedgerSpec:
    ledger_id: str
    role: str  # securities, cbdc or unified
    operator: str
    currencies: tuple[tuple[str, str], ...] = ()  # (code, central bank)


@attrs.define
class World:
    directory: Path
    registry: Registry
    keys: dict[str, PrivateKey]
    ledger_configs: dict[str, Path]  # and the coordinators' and intermediaries' configs, by party id
    broker: str = LOCAL_BROKER  # the URL the configs name
    broker_password_file: Path | None = None  # a secured world's, for Broker(password_file=...)
    broker_acl_file: Path | None = None

    @property
    def registry_path(self) -> Path:
        return self.directory / "registry.toml"

    def key_path(self, party: str) -> Path:
        return self.directory / "keys" / f"{party}.pem"

    def password_path(self, username: str) -> Path:
        """A broker user's password, in clear, mode 600: a party's (username = party id),
        `ledger-{id}`'s, `coordinator-{id}`'s (its watchtower's too)."""
        return self.directory / "secrets" / f"{username}.password"

    def client_url(self, username: str) -> str:
        """The URL `username` connects to this secured world's broker with."""
        parts = urlsplit(self.broker)
        url = urlunsplit(parts._replace(netloc=f"{username}@{parts.netloc}"))
        return with_files(url, password_file=self.password_path(username))


def lay_out(
    directory: str | Path,
    ledgers: list[LedgerSpec],
    parties: dict[str, tuple[Role, ...]],
    *,
    broker: str | None = None,
    secured: bool = False,
    places: dict[str, str] | None = None,
    names: dict[str, tuple[str, str]] | None = None,
    databases: dict[str, str] | None = None,
) -> World:
    """Write keys, registry and ledger configs under `directory` (created if needed).
    Each ledger is also a party (role LEDGER) with its own key. The configs name
    `broker`, LOCAL_BROKER if None. `secured` (needs `broker`) also writes a broker
    password per user, the configs' broker_password_file settings and the broker's
    files: see `secure`. `places` names, in the coordinators' configs, the ledger that
    settles each asset for the matching desk; `names` gives parties a BIC and an LEI;
    `databases` a ledger its database setting, or a coordinator its journal's (a
    postgresql:// URL), `{id}.db` otherwise."""
    directory = Path(directory)
    if secured and broker is None:
        raise ValueError("a secured world needs broker, the URL its configs name")
    broker = broker or LOCAL_BROKER
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    everyone = dict(parties)
    for spec in ledgers:
        everyone[spec.ledger_id] = (Role.LEDGER,)
    keys = {party: PrivateKey.generate() for party in everyone}
    for party, key in keys.items():
        key.save(directory / "keys" / f"{party}.pem")
    names = names or {}
    registry = Registry(
        Party(party, frozenset(roles), keys[party].public, *names.get(party, (None, None)))
        for party, roles in everyone.items()
    )
    registry.save(directory / "registry.toml")
    configs = {}
    for spec in ledgers:
        lines = [
            f'ledger_id = "{spec.ledger_id}"',
            f'role = "{spec.role}"',
            f'operator = "{spec.operator}"',
            f'database = "{(databases or {}).get(spec.ledger_id, f"{spec.ledger_id}.db")}"',
            f'key_file = "keys/{spec.ledger_id}.pem"',
            'registry = "registry.toml"',
            f'broker = "{broker}"',
        ]
        if secured:
            lines.append(f'broker_password_file = "secrets/{ledger_account(spec.ledger_id).username}.password"')
        for code, issuer in spec.currencies:
            lines += ["", "[[currencies]]", f'code = "{code}"', f'issuer = "{issuer}"']
        path = directory / f"{spec.ledger_id}.toml"
        path.write_text("\n".join(lines) + "\n")
        configs[spec.ledger_id] = path
    for party, roles in parties.items():
        if Role.COORDINATOR in roles:
            ledger_list = ", ".join(f'"{spec.ledger_id}"' for spec in ledgers)
            lines = [
                f'coordinator_id = "{party}"',
                f'key_file = "keys/{party}.pem"',
                'registry = "registry.toml"',
                f'journal = "{(databases or {}).get(party, f"{party}.db")}"',
                f"ledgers = [{ledger_list}]",
                f'broker = "{broker}"',
            ]
            if secured:
                lines.append(f'broker_password_file = "secrets/{coordinator_accounts(party)[0].username}.password"')
            if places:
                lines += ["", "[settlement_ledgers]", *(f'{asset} = "{ledger}"' for asset, ledger in places.items())]
            configs[party] = directory / f"{party}.toml"
            configs[party].write_text("\n".join(lines) + "\n")
    world = World(directory, registry, keys, configs, broker)
    if secured:
        world.broker_password_file, world.broker_acl_file = secure(world, ledgers, parties)
    return world


def secure(world: World, ledgers: list[LedgerSpec], parties: dict[str, tuple[Role, ...]]) -> tuple[Path, Path]:
    """A broker user per party (its id; an observer may also publish alerts, an
    intermediary answers on its own service), per ledger
    service and per coordinator and its watchtower, each with a random password in
    world.password_path(user); then the broker's hashed password file and ACL, under
    broker/. The watchtower reads its coordinator's config, so they share a password."""
    accounts = [
        Account(
            party,
            serves=(service_of_intermediary(party),) if Role.INTERMEDIARY in roles else (),
            publishes=(ALERTS_TOPIC,) if Role.OBSERVER in roles else (),
        )
        for party, roles in parties.items()
    ]
    accounts += [ledger_account(spec.ledger_id) for spec in ledgers]
    sharing = {}  # watchtower user -> the coordinator user whose password it uses
    for party, roles in parties.items():
        if Role.COORDINATOR in roles:
            coordinator, watchtower = coordinator_accounts(party)
            accounts += [coordinator, watchtower]
            sharing[watchtower.username] = coordinator.username
    usernames = [account.username for account in accounts]
    clashes = sorted({username for username in usernames if usernames.count(username) > 1})
    if clashes:
        raise ValueError(f"broker usernames {', '.join(clashes)}: a party id is also a service's client id")
    (world.directory / "secrets").mkdir(mode=0o700, exist_ok=True)
    passwords = {username: secrets.token_urlsafe(24) for username in usernames if username not in sharing}
    for username, password in passwords.items():
        fd = os.open(world.password_path(username), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
    passwords |= {watchtower: passwords[coordinator] for watchtower, coordinator in sharing.items()}
    (world.directory / "broker").mkdir(exist_ok=True)
    password_file, acl_file = world.directory / "broker" / "passwd", world.directory / "broker" / "acl"
    write_password_file(password_file, passwords)
    acl_file.write_text(acl_text(accounts))
    return password_file, acl_file
