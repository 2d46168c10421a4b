"""The secured broker (engine/world/broker.py, docs/DEPLOY.md) against a real Mosquitto: who is
refused at the door, what the ACL keeps each participant from publishing and reading, a
ledger process serving over it, and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.world.broker import Broker, free_port
from engine.world.layout import World, lay_out
from ledgers.config import ConfigError, LedgerConfig
from protocols.bus import entries_topic
from protocols.bus.address import with_files
from protocols.bus.client import LedgerClient
from protocols.bus.mqtt import TOPIC_ROOT, BrokerRefused, BrokerUnreachable, MqttBus, reply_topic, request_topic
from protocols.messages import Issue, OpenAccount, QueryBalances, Transfer
from protocols.signing import sign
from tests.harness import LEDGERS, PARTIES
from tests.processes import ServiceProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    directory = tmp_path_factory.mktemp("secured")
    return lay_out(directory, LEDGERS, PARTIES, broker=f"mqtt://127.0.0.1:{free_port()}", secured=True)


@pytest.fixture(scope="module")
def broker(world):
    port = int(world.broker.rsplit(":", 1)[1])
    with Broker(
        world.directory, port=port, password_file=world.broker_password_file, acl_file=world.broker_acl_file
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tls(world):
    """The same users and ACL on a TLS listener; yields the broker and the CA file."""
    ca_file, certfile, keyfile = make_certificates(world.directory / "tls")
    with Broker(
        world.directory,
        password_file=world.broker_password_file,
        acl_file=world.broker_acl_file,
        certfile=certfile,
        keyfile=keyfile,
    ) as running:
        yield running, ca_file


@asynccontextmanager
async def connected(world: World, username: str):
    async with MqttBus.connect(world.client_url(username)) as bus:
        yield bus


async def stand_in(bus, service: str, seen: list[bytes], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `service` as its ledger would, with the ledger's credentials: note each
    request that reaches it and echo it."""
    async with bus.serve(service) as requests:
        task_status.started()
        async for request in requests:
            seen.append(request.payload)
            await request.reply(b"echo:" + request.payload)


# -- at the door -------------------------------------------------------------------------


async def test_an_anonymous_client_is_refused(broker):
    with pytest.raises(BrokerRefused, match=r"(?i)not authori"):
        async with MqttBus.connect(broker.url):
            pass


async def test_a_wrong_password_is_refused(world, broker):
    with pytest.raises(BrokerRefused, match=r"'bank-a'.*(?i:not authori)"):
        async with MqttBus.connect(f"mqtt://bank-a:wrong@127.0.0.1:{broker.port}"):
            pass


async def test_a_password_file_others_may_read_is_refused_before_connecting(world, broker, tmp_path):
    loose = tmp_path / "bank-a.password"
    loose.write_text(world.password_path("bank-a").read_text())
    loose.chmod(0o644)
    with pytest.raises(BrokerUnreachable, match="readable by others"):
        async with MqttBus.connect(with_files(f"mqtt://bank-a@127.0.0.1:{broker.port}", password_file=loose)):
            pass


def test_a_ledger_process_without_credentials_exits_naming_the_refusal(world, broker):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "ledger",
            "--config",
            str(world.ledger_configs["unified"]),
            "--broker",
            broker.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"lockstep ledger: MQTT broker 127.0.0.1:{broker.port}: refused 'ledger-unified': Not authorized\n"
    )


# -- the ACL -----------------------------------------------------------------------------


async def test_a_participant_cannot_publish_under_another_id_nor_a_ledgers_events(world, broker):
    seen: list[bytes] = []
    async with connected(world, "ledger-csd") as ledger, connected(world, "bank-a") as bank_a:
        async with trio.open_nursery() as nursery:
            await nursery.start(stand_in, ledger, "ledger/csd", seen)
            async with ledger.subscribe(entries_topic("csd")) as entries:
                # raw publishes: the bus itself always sends under its own id
                bank_a._publish(request_topic("ledger/csd", "bank-b", "1"), b"forged request")
                await bank_a.publish(entries_topic("csd"), b"forged entry")
                assert await bank_a.request("ledger/csd", b"genuine", timeout_s=5) == b"echo:genuine"
                assert seen == [b"genuine"]
                with trio.move_on_after(0.2):
                    pytest.fail(f"a participant published a ledger's event: {await entries.receive()!r}")
            nursery.cancel_scope.cancel()


async def test_a_participant_reads_only_its_own_replies_and_the_events(world, broker):
    seen: list[bytes] = []
    async with (
        connected(world, "ledger-csd") as ledger,
        connected(world, "bank-a") as bank_a,
        connected(world, "bank-b") as bank_b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stand_in, ledger, "ledger/csd", seen)
        async with (
            bank_a.subscribe_raw(reply_topic("bank-b")) as theirs,
            bank_a.subscribe_raw(request_topic("ledger/csd")) as requests,
            bank_a.subscribe_raw(f"{TOPIC_ROOT}/#") as everything,
            bank_a.subscribe(entries_topic("csd")) as entries,
        ):
            assert await bank_b.request("ledger/csd", b"for b", timeout_s=5) == b"echo:for b"
            await ledger.publish(entries_topic("csd"), b"an entry")
            with trio.fail_after(5):
                assert await entries.receive() == b"an entry"
            # the entry was published after bank-b's request and reply: had bank-a been
            # sent either, it would have it by now
            for denied in (theirs, requests, everything):
                with pytest.raises(trio.WouldBlock):
                    denied.receive_nowait()
        nursery.cancel_scope.cancel()


# -- a real ledger, served over the secured broker -------------------------------------------


async def test_a_ledger_process_serves_a_credentialed_participant(world, broker):
    url = LedgerConfig.load(world.ledger_configs["cbdc-eur"]).broker  # its broker_password_file folded in
    process = ServiceProcess(world, "ledger", "cbdc-eur", url).start()
    try:
        async with connected(world, "ecb") as ecb, connected(world, "bank-a") as bank_a:
            await process.ready(ecb)
            key = world.registry["cbdc-eur"].public_key
            clients = {bus: LedgerClient(bus, "cbdc-eur", key, timeout_s=2) for bus in (ecb, bank_a)}

            def signed(cls, signer: str, **fields):
                return sign(
                    cls(ledger="cbdc-eur", ts_ms=time.time_ns() // 1_000_000, **fields), (signer, world.keys[signer])
                )

            async with bank_a.subscribe(entries_topic("cbdc-eur")) as entries:
                for instruction in (
                    signed(OpenAccount, "ecb", id="open-a", account="a", owner="bank-a"),
                    signed(OpenAccount, "ecb", id="open-b", account="b", owner="bank-b"),
                    signed(Issue, "ecb", id="mint", asset="EUR", account="a", amount=100),
                ):
                    assert (await clients[ecb].submit(instruction)).applied
                move = signed(Transfer, "bank-a", id="pay", from_account="a", to_account="b", asset="EUR", amount=40)
                assert (await clients[bank_a].submit(move)).applied
                with trio.fail_after(5):  # open-a, open-b, mint, then the payment
                    assert b'"pay"' in [await entries.receive() for _ in range(4)][-1]
            balances = await clients[bank_a].query(QueryBalances(clients[bank_a].next_query_id(), "cbdc-eur", "b"))
            assert balances["balances"]["EUR"] == {"available": 40, "locked": 0}
    finally:
        assert process.stop() == 0, process.log_path.read_text()[-3000:]


# -- TLS ---------------------------------------------------------------------------------


async def test_tls_with_the_ca_carries_requests_and_replies(world, tls):
    broker, ca_file = tls
    seen: list[bytes] = []

    def url(username: str) -> str:
        return with_files(
            f"mqtts://{username}@127.0.0.1:{broker.port}", password_file=world.password_path(username), ca_file=ca_file
        )

    async with MqttBus.connect(url("ledger-csd")) as ledger, MqttBus.connect(url("bank-a")) as bank_a:
        async with trio.open_nursery() as nursery:
            await nursery.start(stand_in, ledger, "ledger/csd", seen)
            payloads = [bytes([n]) * 30_000 for n in range(100)]  # many TLS records, read in bursts

            async def ask(payload: bytes) -> None:
                assert await bank_a.request("ledger/csd", payload, timeout_s=10) == b"echo:" + payload

            async with trio.open_nursery() as requests:
                for payload in payloads:
                    requests.start_soon(ask, payload)
            assert sorted(seen) == sorted(payloads)
            nursery.cancel_scope.cancel()


async def test_tls_without_the_ca_is_refused(world, tls):
    broker, _ = tls
    url = with_files(f"mqtts://bank-a@127.0.0.1:{broker.port}", password_file=world.password_path("bank-a"))
    with pytest.raises(BrokerUnreachable, match=r"TLS .* failed: .*certificate verify failed"):
        async with MqttBus.connect(url):
            pass


async def test_plain_mqtt_to_a_tls_listener_is_a_clear_error(world, tls):
    broker, _ = tls
    url = with_files(f"mqtt://bank-a@127.0.0.1:{broker.port}", password_file=world.password_path("bank-a"))
    with pytest.raises(BrokerUnreachable, match=r"did not acknowledge the connection .*mqtts://"):
        async with MqttBus.connect(url):
            pass


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate it signs for 127.0.0.1 and localhost;
    returns the CA file, the server's certificate file and its key file (mode 600)."""
    directory.mkdir(exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lockstep test CA")])

    def certificate(subject, key, *extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = certificate(
        ca_name,
        ca_key,
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    )
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        server_key,
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    ca_file, certfile, keyfile = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certfile.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, certfile, keyfile


# -- configuration -----------------------------------------------------------------------


def test_a_config_folds_its_password_file_into_the_broker_url_and_needs_a_broker(world, tmp_path):
    config = LedgerConfig.load(world.ledger_configs["csd"])
    assert config.broker == with_files(world.broker, password_file=world.password_path("ledger-csd"))
    orphan = tmp_path / "csd.toml"
    orphan.write_text(
        "\n".join(
            line for line in world.ledger_configs["csd"].read_text().splitlines() if not line.startswith("broker =")
        )
    )
    with pytest.raises(ConfigError, match="broker_password_file: needs broker"):
        LedgerConfig.load(orphan)


def test_the_broker_command_refuses_a_password_file_without_an_acl(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "broker",
            "--port",
            str(free_port()),
            "--dir",
            str(tmp_path),
            "--password-file",
            str(tmp_path / "passwd"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "secured mode needs both a password file and an ACL file" in result.stderr
