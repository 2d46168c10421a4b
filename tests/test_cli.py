"""The command line as a person uses it: every expected failure of every command (the broker
unreachable or refusing, a file missing, a key or config that cannot serve, a service that
does not answer) ends in one line on stderr naming the cause and the file or address, exit
status 2, with a traceback only at --log-level debug; the help says what every option does;
`lockstep broker` cleans up after itself; the world's configs are complete."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from engine.cli import expected, parser
from engine.coordinator.journal import Journal
from engine.world.broker import Broker, free_port
from engine.world.layout import LOCAL_BROKER, World, lay_out
from engine.world.local import BOND, LEDGERS, PARTIES, standard_world
from protocols.bus.mqtt import MqttBus
from protocols.failures import ExpectedFailure
from protocols.iso20022 import sese023
from protocols.iso20022.model import SESE_023, OneSided

pytestmark = pytest.mark.slow  # each test starts the command, and often services, as processes

ANSWER_WAIT_S = 90  # the slowest "does not answer": five attempts of two seconds, in parallel


def lockstep(*args: str, timeout: float = 120, tmp: Path | None = None) -> subprocess.CompletedProcess:
    """`tmp`: the TMPDIR of the command, so that what it leaves there can be seen."""
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp else None
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def fails_in_one_line(result: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """The command ended with exit status 2 and one line on stderr naming each needle."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lockstep {command}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


class Files:
    """A standard world on disk and what the commands read from it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.dir = world.directory
        self.registry = str(world.registry_path)
        self.coordinator = str(world.ledger_configs["coordinator"])
        self.public_key = self.dir / "bank-a.pub.pem"
        self.public_key.write_text(world.keys["bank-a"].public_pem())
        self.document = self.dir / "bank-a.xml"
        self.document.write_bytes(
            sese023.write(
                OneSided(
                    SESE_023,
                    "SELL-1",
                    "dvp",
                    "deliver",
                    "bank-a",
                    "bank-b",
                    "2030-01-02",
                    "2030-01-02",
                    BOND,
                    40,
                    "a-sec",
                    "EUR",
                    4_100_000,
                    "a-eur",
                )
            )
        )

    def config(self, name: str) -> str:
        return str(self.world.ledger_configs[name])

    def key(self, party: str) -> str:
        return str(self.world.key_path(party))

    def nowhere(self, name: str) -> str:
        return str(self.dir / "nowhere" / name)

    def commands(self, url: str) -> dict[str, list[str]]:
        """Every command that reaches a broker, as a user would type it, on `url`."""
        registry = ["--registry", self.registry]
        party = ["--party", "bank-a", "--key", self.key("bank-a")]
        return {
            "demo": ["demo", "--broker", url],
            "ledger": ["ledger", "--config", self.config("csd"), "--broker", url],
            "coordinator": ["coordinator", "--config", self.coordinator, "--broker", url],
            "watchtower": ["watchtower", "--config", self.coordinator, "--broker", url],
            "status": ["status", "dvp-1", "--config", self.coordinator, "--broker", url],
            "observer": ["observer", "--config", self.coordinator, "--broker", url],
            "conformance": ["conformance", "--broker", url, "--ledger", "csd", "--keys", str(self.dir)],
            "audit": ["audit", *registry, "--broker", url, "--ledger", "csd"],
            "rotate-key": [
                "rotate-key",
                "--broker",
                url,
                *registry,
                "--ledger",
                "csd",
                "--operator",
                "csd-op",
                "--operator-key",
                self.key("csd-op"),
                "--party",
                "bank-a",
                "--public-key",
                str(self.public_key),
            ],
            "corporate-action": ["corporate-action", "--broker", url, *registry, "--id", "coupon-1", "--query"],
            "submit": ["submit", str(self.document), "--broker", url, *registry, *party],
            "advices": ["advices", "--broker", url, *registry, *party],
            "statement": [
                "statement",
                "--broker",
                url,
                *registry,
                "--ledger",
                "cbdc-eur",
                "--account",
                "a-eur",
                "--currency",
                "EUR",
            ],
        }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    """Read-only: tests that change a file take `fresh`."""
    return Files(standard_world(tmp_path_factory.mktemp("world")))


@pytest.fixture
def fresh(tmp_path) -> Files:
    return Files(standard_world(tmp_path / "world"))


BROKER_COMMANDS = [
    "demo",
    "ledger",
    "coordinator",
    "watchtower",
    "status",
    "observer",
    "conformance",
    "audit",
    "rotate-key",
    "corporate-action",
    "submit",
    "advices",
    "statement",
]


# -- the broker unreachable or refusing --------------------------------------------------------


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_an_unreachable_broker_ends_every_command_in_one_line_naming_it(files, command, tmp_path):
    port = free_port()
    result = lockstep(*files.commands(f"mqtt://127.0.0.1:{port}")[command], tmp=tmp_path)
    fails_in_one_line(result, command, f"MQTT broker 127.0.0.1:{port}: cannot reach it")


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    world = lay_out(
        tmp_path_factory.mktemp("secured"), LEDGERS, PARTIES, broker=f"mqtt://127.0.0.1:{free_port()}", secured=True
    )
    port = int(world.broker.rsplit(":", 1)[1])
    with Broker(
        world.directory, port=port, password_file=world.broker_password_file, acl_file=world.broker_acl_file
    ) as running:
        yield running


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_a_broker_refusing_the_credentials_ends_every_command_in_one_line_naming_it(
    files, secured_broker, command, tmp_path
):
    url = f"mqtt://bank-a:wrong@127.0.0.1:{secured_broker.port}"
    line = fails_in_one_line(
        lockstep(*files.commands(url)[command], tmp=tmp_path),
        command,
        f"MQTT broker 127.0.0.1:{secured_broker.port}: refused 'bank-a'",
    )
    assert "wrong" not in line


def test_a_broker_url_that_is_not_one_is_named_with_what_is_wrong(files):
    fails_in_one_line(
        lockstep("demo", "--broker", "http://127.0.0.1:1883"),
        "demo",
        "broker URL 'http://127.0.0.1:1883': must look like mqtt://host:port",
    )
    fails_in_one_line(
        lockstep(
            "status", "dvp-1", "--config", files.coordinator, "--broker", "mqtt://u:secret@127.0.0.1:1883?colour=red"
        ),
        "status",
        "broker URL 'mqtt://u:***@127.0.0.1:1883?colour=red': unknown parameter 'colour'",
    )
    password = files.dir / "nowhere" / "bank-a.password"
    fails_in_one_line(
        lockstep(
            "audit",
            "--registry",
            files.registry,
            "--ledger",
            "csd",
            "--broker",
            f"mqtt://bank-a@127.0.0.1:1883?password_file={password}",
        ),
        "audit",
        f"broker password file {password}: no such file",
    )


# -- a file missing ----------------------------------------------------------------------------


def _missing(files: Files) -> dict[str, tuple[list[str], str]]:
    """By command: an invocation naming a file that is not there, and what it must say."""
    url = "mqtt://127.0.0.1:1"  # never reached: every file is read first
    registry, nowhere = ["--registry", files.registry], files.nowhere
    return {
        "ledger": (["ledger", "--config", nowhere("csd.toml")], f"ledger config {nowhere('csd.toml')}: no such file"),
        "coordinator": (
            ["coordinator", "--config", nowhere("c.toml")],
            f"coordinator config {nowhere('c.toml')}: no such file",
        ),
        "watchtower": (
            ["watchtower", "--config", nowhere("c.toml")],
            f"coordinator config {nowhere('c.toml')}: no such file",
        ),
        "status": (
            ["status", "dvp-1", "--config", nowhere("c.toml")],
            f"coordinator config {nowhere('c.toml')}: no such file",
        ),
        "observer": (
            ["observer", "--config", nowhere("c.toml")],
            f"coordinator config {nowhere('c.toml')}: no such file",
        ),
        "conformance": (
            ["conformance", "--broker", url, "--ledger", "csd", "--keys", nowhere("keys")],
            f"--keys {nowhere('keys')}: no such folder",
        ),
        "audit": (
            ["audit", "--registry", nowhere("registry.toml"), "--db", "x.db"],
            f"registry {nowhere('registry.toml')}: no such file",
        ),
        "rotate-key": (
            [
                "rotate-key",
                "--broker",
                url,
                *registry,
                "--ledger",
                "csd",
                "--operator",
                "csd-op",
                "--operator-key",
                files.key("csd-op"),
                "--party",
                "bank-a",
                "--public-key",
                nowhere("a.pem"),
            ],
            f"public key {nowhere('a.pem')}: no such file",
        ),
        "corporate-action": (
            [
                "corporate-action",
                "--broker",
                url,
                *registry,
                "--id",
                "c-1",
                "--issuer",
                "treasury",
                "--issuer-key",
                nowhere("treasury.pem"),
                "--isin",
                BOND,
                "--kind",
                "coupon",
                "--date",
                "2030-01-02",
                "--securities-account",
                "t-sec",
                "--cash-account",
                "t-eur",
            ],
            f"private key {nowhere('treasury.pem')}: no such file",
        ),
        "submit": (
            ["submit", nowhere("a.xml"), "--broker", url, *registry, "--party", "bank-a", "--key", files.key("bank-a")],
            f"document {nowhere('a.xml')}: no such file",
        ),
        "advices": (
            [
                "advices",
                "--broker",
                url,
                "--registry",
                nowhere("r.toml"),
                "--party",
                "bank-a",
                "--key",
                files.key("bank-a"),
            ],
            f"registry {nowhere('r.toml')}: no such file",
        ),
        "statement": (
            [
                "statement",
                "--broker",
                url,
                "--registry",
                nowhere("r.toml"),
                "--ledger",
                "cbdc-eur",
                "--account",
                "a",
                "--currency",
                "EUR",
            ],
            f"registry {nowhere('r.toml')}: no such file",
        ),
        "broker": (
            ["broker", "--port", "1", "--certfile", nowhere("cert.pem"), "--keyfile", nowhere("key.pem")],
            f"broker certificate file {nowhere('cert.pem')}: no such file",
        ),
    }


@pytest.mark.parametrize(
    "command",
    [
        "ledger",
        "coordinator",
        "watchtower",
        "status",
        "observer",
        "conformance",
        "audit",
        "rotate-key",
        "corporate-action",
        "submit",
        "advices",
        "statement",
        "broker",
    ],
)
def test_a_missing_file_ends_the_command_in_one_line_saying_what_file_it_is(files, command, tmp_path):
    args, says = _missing(files)[command]
    fails_in_one_line(lockstep(*args, tmp=tmp_path), command, says)


def test_a_file_a_config_names_is_named_with_what_it_is(fresh):
    (fresh.dir / "registry.toml").rename(fresh.dir / "moved.toml")
    fails_in_one_line(
        lockstep("ledger", "--config", fresh.config("csd")),
        "ledger",
        f"registry {fresh.dir / 'registry.toml'}: no such file",
    )
    (fresh.dir / "moved.toml").rename(fresh.dir / "registry.toml")
    fresh.world.key_path("coordinator").unlink()
    fails_in_one_line(
        lockstep("coordinator", "--config", fresh.coordinator),
        "coordinator",
        f"private key {fresh.world.key_path('coordinator')}: no such file",
    )


def test_the_audit_names_a_database_that_is_missing_or_not_a_ledgers(files, tmp_path):
    fails_in_one_line(
        lockstep("audit", "--registry", files.registry, "--db", files.nowhere("csd.db")),
        "audit",
        f"database {files.nowhere('csd.db')}: no such file",
    )
    fails_in_one_line(
        lockstep("audit", "--registry", files.registry, "--db", files.registry),
        "audit",
        f"database {files.registry}: not a ledger's database",
    )
    fails_in_one_line(
        lockstep("audit", "--registry", files.registry, "--db", str(tmp_path)),
        "audit",
        f"database {tmp_path}: is a folder, not a file",
    )


# -- a key that cannot serve -------------------------------------------------------------------


def _foreign_key(kind: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())
    )
    encryption = serialization.BestAvailableEncryption(b"pw") if kind == "encrypted" else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def test_a_ledgers_key_readable_by_others_or_not_the_registered_one_is_refused(fresh):
    key = fresh.world.key_path("csd")
    key.chmod(0o644)
    fails_in_one_line(
        lockstep("ledger", "--config", fresh.config("csd"), "--broker", "mqtt://127.0.0.1:1"),
        "ledger",
        f"private key {key}: readable by others (mode -rw-r--r--); chmod 600 it",
    )
    key.chmod(0o600)
    key.write_bytes(fresh.world.key_path("ecb").read_bytes())
    fails_in_one_line(
        lockstep("ledger", "--config", fresh.config("csd"), "--broker", "mqtt://127.0.0.1:1"),
        "ledger",
        "does not match the key registered for csd",
    )


def test_a_coordinators_key_of_another_kind_or_party_is_refused_naming_the_file(fresh):
    key = fresh.world.key_path("coordinator")
    write_private(key, _foreign_key("rsa"))
    fails_in_one_line(
        lockstep("coordinator", "--config", fresh.coordinator), "coordinator", f"private key {key}: an RSA key"
    )
    write_private(key, fresh.world.key_path("bank-a").read_bytes())
    fails_in_one_line(
        lockstep("watchtower", "--config", fresh.coordinator),
        "watchtower",
        f"private key {key}: not the key registered for coordinator",
    )
    write_private(key, b"not a key\n")
    fails_in_one_line(
        lockstep("status", "dvp-1", "--config", fresh.coordinator), "status", f"private key {key}: not PEM"
    )


def test_a_party_key_that_cannot_serve_is_refused_naming_the_file_and_why(fresh):
    url, registry = "mqtt://127.0.0.1:1", ["--registry", fresh.registry]
    p384 = write_private(fresh.dir / "p384.pem", _foreign_key("p384"))
    encrypted = write_private(fresh.dir / "encrypted.pem", _foreign_key("encrypted"))
    shared = fresh.dir / "shared.pem"
    shared.write_bytes(fresh.world.key_path("bank-a").read_bytes())
    shared.chmod(0o640)
    rotate = ["rotate-key", "--broker", url, *registry, "--ledger", "csd", "--operator", "csd-op", "--party", "bank-a"]
    cases = [
        (
            "rotate-key",
            [*rotate, "--operator-key", str(fresh.public_key), "--public-key", str(fresh.public_key)],
            f"private key {fresh.public_key}: a public key, where a private key is needed",
        ),
        (
            "rotate-key",
            [*rotate, "--operator-key", fresh.key("csd-op"), "--public-key", fresh.key("bank-a")],
            f"public key {fresh.key('bank-a')}: a private key, where a public key is needed",
        ),
        (
            "rotate-key",
            [*rotate, "--operator-key", fresh.key("bank-a"), "--public-key", str(fresh.public_key)],
            f"--operator-key {fresh.key('bank-a')}: not the key registered for csd-op",
        ),
        (
            "corporate-action",
            [
                "corporate-action",
                "--broker",
                url,
                *registry,
                "--id",
                "c-1",
                "--issuer",
                "treasury",
                "--issuer-key",
                str(encrypted),
                "--isin",
                BOND,
                "--kind",
                "coupon",
                "--date",
                "2030-01-02",
                "--securities-account",
                "t-sec",
                "--cash-account",
                "t-eur",
            ],
            f"private key {encrypted}: encrypted with a passphrase",
        ),
        (
            "submit",
            ["submit", str(fresh.document), "--broker", url, *registry, "--party", "bank-a", "--key", str(p384)],
            f"private key {p384}: an EC key on curve P-384",
        ),
        (
            "advices",
            ["advices", "--broker", url, *registry, "--party", "bank-a", "--key", str(shared)],
            f"private key {shared}: readable by others",
        ),
    ]
    for command, args, says in cases:
        fails_in_one_line(lockstep(*args), command, says)


def test_a_key_in_the_keys_folder_or_the_registry_that_cannot_serve_is_named(fresh):
    bad = write_private(fresh.dir / "keys" / "zz.pem", b"garbage")
    fails_in_one_line(
        lockstep("conformance", "--broker", "mqtt://127.0.0.1:1", "--ledger", "csd", "--keys", str(fresh.dir)),
        "conformance",
        f"private key {bad}: not PEM",
    )
    bad.unlink()
    registry = fresh.world.registry_path
    text = registry.read_text()
    start = text.index("[parties.bank-a]")
    pem_start = text.index("-----BEGIN PUBLIC KEY-----", start)
    pem_end = text.index("-----END PUBLIC KEY-----", start) + len("-----END PUBLIC KEY-----")
    registry.write_text(text[:pem_start] + fresh.world.key_path("bank-a").read_text().strip() + text[pem_end:])
    says = f"registry {registry}: party 'bank-a': public_key: a private key, where a public key is needed"
    for command, args in (
        ("audit", ["audit", "--registry", str(registry), "--db", "x.db"]),
        ("observer", ["observer", "--config", fresh.coordinator]),
        (
            "statement",
            [
                "statement",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--registry",
                str(registry),
                "--ledger",
                "cbdc-eur",
                "--account",
                "a",
                "--currency",
                "EUR",
            ],
        ),
    ):
        fails_in_one_line(lockstep(*args), command, says)


# -- a config or an option that cannot serve ----------------------------------------------------


def test_ledger_with_a_wrong_config_exits_naming_the_field(fresh):
    config = Path(fresh.config("csd"))
    config.write_text(config.read_text().replace('role = "securities"', 'role = "bank"'))
    fails_in_one_line(
        lockstep("ledger", "--config", str(config)),
        "ledger",
        f"ledger config {config}: role: must be one of securities, cbdc, unified",
    )
    config.write_text("role = \n")
    fails_in_one_line(lockstep("ledger", "--config", str(config)), "ledger", f"ledger config {config}: not valid TOML")


def test_a_second_coordinator_on_a_journal_in_use_is_refused_naming_the_holder(fresh):
    """One coordinator per journal: two would drive the same settlements at once."""
    config = Path(fresh.coordinator)
    held = Journal(config.parent / "coordinator.db")
    try:
        fails_in_one_line(
            lockstep("coordinator", "--config", str(config)),
            "coordinator",
            f"held by process {os.getpid()}; one coordinator per journal",
        )
    finally:
        held.close()


def test_standby_coordinators_of_one_process_need_their_own_journals_and_one_broker(tmp_path):
    world = standard_world(tmp_path / "world", coordinators=2)
    config, other = world.ledger_configs["coordinator"], world.ledger_configs["coordinator-1"]
    original = other.read_text()
    cases = [
        (original.replace('"coordinator-1.db"', '"coordinator.db"'), "each coordinator needs its own journal"),
        (original.replace("broker = ", 'broker = "mqtt://127.0.0.1:1"\n# '), "share its broker"),
    ]
    for text, says in cases:
        other.write_text(text)
        result = lockstep("coordinator", "--config", str(config), "--standby", str(other))
        fails_in_one_line(result, "coordinator", says)


def test_a_coordinator_config_that_cannot_serve_is_named_with_its_setting(fresh):
    config = Path(fresh.coordinator)
    original = config.read_text()
    cases = [
        ("coordinator", 'colour = "red"\n' + original, "colour: unknown setting"),
        (
            "watchtower",
            original.replace('coordinator_id = "coordinator"', 'coordinator_id = "bank-a"'),
            "coordinator_id: 'bank-a' is not a coordinator of the registry",
        ),
        (
            "status",
            "\n".join(line for line in original.splitlines() if not line.startswith("broker")),
            "broker: required (or pass --broker)",
        ),
        (
            "observer",
            original.replace('ledgers = ["csd", "cbdc-eur", "cbdc-multi", "unified"]', "ledgers = []"),
            "ledgers: none to observe",
        ),
        ("coordinator", original + '[timing]\nlock_wait_ms = "2 s"\n', "timing: must be a table of whole numbers"),
        ("coordinator", "intake_max = 0\n" + original, "intake_max: must be a whole number from 1 to 10000"),
        ("coordinator", 'watchtower = "yes"\n' + original, "watchtower: must be true or false"),
        (
            "coordinator",
            original + "[timing]\nbackstop_ms = 5000\n",
            "timing: backstop_ms must be at least lock_wait + 2 × skew + claim_deadline = 8000 ms",
        ),
    ]
    for command, text, says in cases:
        config.write_text(text)
        args = ["status", "dvp-1"] if command == "status" else [command]
        fails_in_one_line(lockstep(*args, "--config", str(config)), command, f"coordinator config {config}: {says}")


def test_an_option_that_cannot_serve_is_named(files, tmp_path):
    url, registry = "mqtt://127.0.0.1:1", ["--registry", files.registry]
    not_iso = tmp_path / "note.xml"
    not_iso.write_text("<note/>")
    cases = [
        ("audit", ["audit", *registry, "--db", "x.db", "--grace-ms", "-1"], "--grace-ms -1: must not be negative"),
        ("audit", ["audit", *registry, "--db", "x.db", "--ledger", "csd"], "give --db for each ledger's database"),
        (
            "statement",
            ["statement", "--broker", url, *registry, "--ledger", "nowhere", "--account", "a", "--currency", "EUR"],
            f"--ledger nowhere: not in the registry {files.registry}",
        ),
        (
            "submit",
            ["submit", str(not_iso), "--broker", url, *registry, "--party", "bank-a", "--key", files.key("bank-a")],
            f"document {not_iso}: not one of",
        ),
        (
            "submit",
            [
                "submit",
                str(files.document),
                "--broker",
                url,
                *registry,
                "--party",
                "bank-b",
                "--key",
                files.key("bank-b"),
            ],
            f"document {files.document}: instructs for bank-a, not bank-b",
        ),
        (
            "advices",
            [
                "advices",
                "--broker",
                url,
                *registry,
                "--coordinator",
                "nobody",
                "--party",
                "bank-a",
                "--key",
                files.key("bank-a"),
            ],
            "--coordinator nobody: not in the registry",
        ),
        (
            "rotate-key",
            [
                "rotate-key",
                "--broker",
                url,
                *registry,
                "--ledger",
                "csd",
                "--operator",
                "csd-op",
                "--operator-key",
                files.key("csd-op"),
                "--party",
                "nobody",
                "--public-key",
                str(files.public_key),
            ],
            "--party nobody: not in the registry",
        ),
        ("broker", ["broker", "--port", "1", "--certfile", files.registry], "TLS needs both a certificate file"),
        (
            "broker",
            ["broker", "--port", "1", "--dir", files.nowhere("broker")],
            f"broker folder {files.nowhere('broker')}: cannot write its config there: no such file",
        ),
        ("chaos", ["chaos", "--seconds", "1", "--faults", "bogus"], "unknown faults"),
    ]
    for command, args, says in cases:
        fails_in_one_line(lockstep(*args, tmp=tmp_path), command, says)
    keys = tmp_path / "keys-less"
    keys.mkdir()
    fails_in_one_line(
        lockstep("conformance", "--broker", url, "--ledger", "csd", "--keys", str(keys)),
        "conformance",
        f"--keys {keys}: holds no keys/ folder",
    )


def test_the_broker_command_names_a_port_already_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails_in_one_line(
            lockstep("broker", "--port", str(port), tmp=tmp_path),
            "broker",
            f"mosquitto on 127.0.0.1:{port}: cannot listen there",
        )
    assert list(tmp_path.iterdir()) == []  # its temporary folder removed


def test_corporate_action_asks_for_either_the_query_or_the_whole_mandate(files):
    common = ["corporate-action", "--broker", "mqtt://127.0.0.1:1", "--registry", files.registry, "--id", "c-1"]
    usage = lockstep(*common, "--help").stdout
    assert "(--query | --issuer ID --issuer-key FILE --isin ISIN" in usage
    neither = lockstep(*common)
    assert neither.returncode == 2 and "one of the arguments --query --issuer is required" in neither.stderr
    both = lockstep(*common, "--query", "--issuer", "treasury")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    partial = lockstep(*common, "--issuer", "treasury", "--issuer-key", files.key("treasury"), "--isin", BOND)
    assert partial.returncode == 2
    assert "--issuer needs --kind, --date, --securities-account, --cash-account" in partial.stderr
    extra = lockstep(*common, "--query", "--isin", BOND)
    assert extra.returncode == 2 and "drop --isin" in extra.stderr
    bad_date = lockstep(*common, "--issuer", "treasury", "--date", "2030-W01-1")
    assert bad_date.returncode == 2 and "'2030-W01-1' is not a date written YYYY-MM-DD" in bad_date.stderr


# -- a service that does not answer -------------------------------------------------------------


def test_a_service_that_does_not_answer_ends_the_command_in_one_line_naming_it(files, broker, tmp_path):
    """Nothing but the broker runs: each command waits its deadline out (all at once)."""
    says = {
        "status": "coordinator coordinator: did not answer within 5 s",
        "conformance": "ledger csd: csd did not answer",
        "audit": "ledger csd: csd did not answer",
        "rotate-key": "ledger csd: csd did not answer",
        "corporate-action": "coordinator coordinator: did not answer within 10 s",
        "advices": "coordinator coordinator: did not answer within 10 s",
        "submit": "coordinator coordinator: did not answer within 10 s",
        "statement": "ledger cbdc-eur: cbdc-eur did not answer",
    }
    commands = files.commands(broker.url)
    running = {
        command: subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *commands[command]],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for command in says
    }
    for command, process in running.items():
        out, err = process.communicate(timeout=ANSWER_WAIT_S)
        fails_in_one_line(
            subprocess.CompletedProcess(process.args, process.returncode, out, err), command, says[command]
        )


# -- the traceback is for debugging; a bug keeps its own -----------------------------------------


def test_debug_shows_the_traceback_of_an_expected_failure_and_still_ends_in_its_line(files):
    result = lockstep("--log-level", "debug", "audit", "--registry", files.nowhere("r.toml"), "--db", "x.db")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == f"lockstep audit: registry {files.nowhere('r.toml')}: no such file"
    port = free_port()
    result = lockstep(
        "--log-level", "debug", "ledger", "--config", files.config("csd"), "--broker", f"mqtt://127.0.0.1:{port}"
    )
    assert result.returncode == 2 and "BrokerUnreachable" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"lockstep ledger: MQTT broker 127.0.0.1:{port}: cannot reach it")


def test_only_expected_failures_are_told_apart_from_bugs_even_inside_a_group():
    failure = ExpectedFailure("registry r.toml", "no such file")
    assert expected(failure) is failure
    assert expected(ExceptionGroup("nursery", [ExceptionGroup("inner", [failure])])) is failure
    assert expected(AssertionError("a broken invariant")) is None
    assert expected(TypeError("a bug")) is None
    assert expected(ExceptionGroup("nursery", [failure, TypeError("a bug")])) is None


# -- the help says what every option does -------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)).choices


def test_every_command_has_a_description_and_every_option_a_help_showing_its_default():
    for name, command in _subcommands().items():
        assert command.description, name
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            default = action.default
            if default is not None and default is not False and default != []:
                assert "(default:" in action.help, f"{name} {action.option_strings}: its default {default!r} unsaid"


# -- lockstep broker ------------------------------------------------------------------------------


def _start_broker(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`lockstep broker` on a free port, once it serves MQTT: the process and its config's folder."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "broker", "--port", str(port), *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    line = process.stdout.readline()
    assert line.startswith(f"mosquitto on mqtt://127.0.0.1:{port} (config "), line + process.stderr.read()

    async def connect() -> None:
        async with MqttBus.connect(f"mqtt://127.0.0.1:{port}"):
            pass

    trio.run(connect)
    return process, Path(line.split("(config ")[1].rstrip(")\n")).parent


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_the_broker_passes_a_signal_to_mosquitto_and_removes_the_folder_it_made(tmp_path, signum):
    process, folder = _start_broker(tmp_path)
    assert folder.parent == tmp_path and any(folder.glob("mosquitto-*.conf"))
    (mosquitto,) = _children(process.pid)
    process.send_signal(signum)
    assert process.wait(timeout=30) == 0, process.stderr.read()
    assert not Path(f"/proc/{mosquitto}").exists()
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    process.stdout.close()
    process.stderr.close()


def test_the_broker_keeps_a_folder_given_with_dir(tmp_path):
    given = tmp_path / "mine"
    given.mkdir()
    process, folder = _start_broker(tmp_path, "--dir", str(given))
    assert folder == given
    process.terminate()
    assert process.wait(timeout=30) == 0
    assert any(given.glob("mosquitto-*.conf"))
    process.stdout.close()
    process.stderr.close()


# -- the world on disk is complete ---------------------------------------------------------------


def test_the_configs_a_world_lays_out_name_the_broker_lockstep_broker_runs(tmp_path):
    from engine.config import CoordinatorConfig
    from engine.daemon import load
    from ledgers.config import LedgerConfig

    world = standard_world(tmp_path)
    defaults = {action.dest: action.default for action in _subcommands()["broker"]._actions}
    assert LOCAL_BROKER == f"mqtt://{defaults['host']}:{defaults['port']}" == world.broker
    for name, path in world.ledger_configs.items():
        loaded = CoordinatorConfig.load(path) if name == "coordinator" else LedgerConfig.load(path)
        assert loaded.broker == LOCAL_BROKER
    load(str(world.ledger_configs["coordinator"]), None)  # key, registry, ledgers: all there and agreeing
    result = lockstep("status", "dvp-1", "--config", str(world.ledger_configs["coordinator"]), timeout=60)
    assert "required" not in result.stderr and "127.0.0.1:1883" in result.stderr
