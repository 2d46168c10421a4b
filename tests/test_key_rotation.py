"""Key rotation: a participant registers a new key through its ledger's operator
(`rotate_key`), and from that entry on the old key moves nothing on that ledger; the new
key is in the journal, survives a restart, and a changed key row is caught at start."""

from __future__ import annotations

import secrets
import sqlite3
import sys

import pytest
import trio

from engine.audit.journals import audit, read_database
from engine.world.layout import lay_out
from ledgers.ledger import StartRefused
from protocols.bus.client import LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.errors import Code, Rejected
from protocols.messages import Issue, OpenAccount, RotateKey, Transfer
from protocols.signing import PrivateKey, public_point, sign
from tests.harness import LEDGERS, PARTIES, Harness
from tests.processes import ServiceProcess


@pytest.fixture
def eur(harness) -> Harness:
    """cbdc-eur with bank-a holding 1,000 EUR and bank-b an empty account."""
    h = harness("cbdc-eur")
    for account, owner in (("a", "bank-a"), ("b", "bank-b")):
        assert h.send(OpenAccount, "ecb", account=account, owner=owner).applied
    assert h.send(Issue, "ecb", asset="EUR", account="a", amount=1_000).applied
    return h


def pay(h: Harness, key: PrivateKey, amount: int = 10):
    """bank-a pays bank-b, signed with `key` under bank-a's name."""
    msg = Transfer(
        id=h.next_id("t"),
        ledger=h.ledger_id,
        ts_ms=h.now_ms,
        from_account="a",
        to_account="b",
        asset="EUR",
        amount=amount,
    )
    return h.submit(sign(msg, ("bank-a", key)))


def rotate(h: Harness, new: PrivateKey, *signers: str, party: str = "bank-a"):
    return h.send(RotateKey, *signers, party=party, public_key=public_point(new.public))


def test_after_rotation_the_old_key_moves_nothing_and_the_new_key_does(eur):
    old, new = eur.world.keys["bank-a"], PrivateKey.generate()
    assert pay(eur, old).applied
    assert rotate(eur, new, "ecb").applied
    refused = pay(eur, old)
    assert (refused.code, refused.field) == (Code.BAD_SIGNATURE.value, "sigs")
    assert pay(eur, new).applied
    assert eur.balance("b", "EUR") == (20, 0)


def test_the_rotation_is_in_the_journal_survives_a_restart_and_the_audit_replays_it(eur):
    new = PrivateKey.generate()
    assert rotate(eur, new, "ecb").applied
    eur.close()
    eur.open()
    assert pay(eur, new).applied
    assert pay(eur, eur.world.keys["bank-a"]).code == Code.BAD_SIGNATURE.value
    journal = read_database(eur.config.database, eur.world.registry)
    assert journal.replay.keys == {"bank-a": public_point(new.public)}
    assert audit([journal]).clean


@pytest.mark.parametrize(
    "signers, code, field",
    [
        (("bank-a",), Code.NOT_AUTHORISED, "sigs"),  # the party alone: its old key may be the stolen one
        (("bank-b",), Code.NOT_AUTHORISED, "sigs"),
        (("fed",), Code.NOT_AUTHORISED, "sigs"),  # another ledger's operator
        (("coordinator",), Code.NOT_AUTHORISED, "sigs"),
    ],
)
def test_only_the_ledgers_operator_registers_a_key(eur, signers, code, field):
    receipt = rotate(eur, PrivateKey.generate(), *signers)
    assert (receipt.code, receipt.field) == (code.value, field)
    assert pay(eur, eur.world.keys["bank-a"]).applied  # the old key still works


@pytest.mark.parametrize("party", ["cbdc-eur", "ecb", "fed", "coordinator", "csd-op"])
def test_only_a_participants_key_is_registered_never_one_with_powers(eur, party):
    """With the central bank's key the operator could mint; with a coordinator's, act
    for settlements: those keys change in the consortium's registry."""
    receipt = rotate(eur, PrivateKey.generate(), "ecb", party=party)
    assert (receipt.code, receipt.field) == (Code.NOT_AUTHORISED.value, "party")


def test_an_unknown_party_and_the_same_key_are_refused(eur):
    new = PrivateKey.generate()
    assert rotate(eur, new, "ecb", party="nobody").code == Code.UNKNOWN_SIGNER.value
    same = rotate(eur, eur.world.keys["bank-a"], "ecb")
    assert (same.code, same.field) == (Code.INVALID_FIELD.value, "public_key")


@pytest.mark.parametrize(
    "public_key",
    [  # empty; x = 1 is not on the curve; uncompressed; upper case
        "",
        "02" + "00" * 31 + "01",
        "04" + "11" * 32,
        ("02" + "ab" * 32).upper(),
    ],
)
def test_a_public_key_that_is_not_a_compressed_p256_point_is_refused_at_construction(public_key):
    with pytest.raises(Rejected) as refused:
        RotateKey(id="r1", ledger="cbdc-eur", ts_ms=1, party="bank-a", public_key=public_key)
    assert refused.value.field == "public_key"


def test_a_rotation_on_one_ledger_leaves_the_others_alone(eur, harness):
    multi = harness("cbdc-multi")
    assert multi.send(OpenAccount, "fed", account="a", owner="bank-a").applied
    assert rotate(eur, PrivateKey.generate(), "ecb").applied
    assert multi.send(OpenAccount, "bank-a", account="a2", owner="bank-a").applied  # old key, other ledger


def test_a_changed_key_row_is_caught_when_the_ledger_starts(eur):
    assert rotate(eur, PrivateKey.generate(), "ecb").applied
    eur.close()
    with sqlite3.connect(eur.config.database) as db:
        db.execute(
            "UPDATE keys SET public_key = ? WHERE party = 'bank-a'", (public_point(PrivateKey.generate().public),)
        )
    with pytest.raises(StartRefused, match="key of bank-a"):
        eur.open()


def test_a_key_row_added_behind_the_journals_back_is_caught_when_the_ledger_starts(eur):
    eur.close()
    with sqlite3.connect(eur.config.database) as db:
        db.execute("INSERT INTO keys VALUES ('bank-a', ?)", (public_point(PrivateKey.generate().public),))
    with pytest.raises(StartRefused, match="key of bank-a"):
        eur.open()


@pytest.mark.slow
async def test_the_operator_rotates_a_key_with_the_cli_against_a_ledger_process(tmp_path, broker):
    """`lockstep rotate-key` over Mosquitto; then the ledger process refuses the old key."""
    world = lay_out(tmp_path, LEDGERS, PARTIES)
    process = ServiceProcess(world, "ledger", "cbdc-eur", broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus:
            await process.ready(bus)
            client = LedgerClient(bus, "cbdc-eur", world.registry["cbdc-eur"].public_key)
            clock = ServiceClock()

            async def send(msg_cls, key: PrivateKey, signer: str, **fields):
                msg = msg_cls(id=f"i{secrets.token_hex(4)}", ledger="cbdc-eur", ts_ms=clock.now_ms(), **fields)
                return await client.submit(sign(msg, (signer, key)))

            keys = world.keys
            assert (await send(OpenAccount, keys["ecb"], "ecb", account="a", owner="bank-a")).applied
            new = PrivateKey.generate()
            (tmp_path / "bank-a.new.pub.pem").write_text(new.public_pem())
            command = [
                sys.executable,
                "-m",
                "engine.cli",
                "rotate-key",
                "--broker",
                broker.url,
                "--registry",
                str(tmp_path / "registry.toml"),
                "--ledger",
                "cbdc-eur",
                "--operator",
                "ecb",
                "--operator-key",
                str(tmp_path / "keys" / "ecb.pem"),
                "--party",
                "bank-a",
                "--public-key",
                str(tmp_path / "bank-a.new.pub.pem"),
            ]
            wrong = await trio.run_process(
                command[:-6] + ["--operator-key", str(tmp_path / "keys" / "bank-a.pem")] + command[-4:],
                capture_stderr=True,
                check=False,
            )
            assert wrong.returncode == 2 and b"not the key registered for ecb" in wrong.stderr
            done = await trio.run_process(command, capture_stdout=True, check=False)
            assert done.returncode == 0, done.stdout
            assert public_point(new.public).encode() in done.stdout
            old = await send(OpenAccount, keys["bank-a"], "bank-a", account="a2", owner="bank-a")
            assert old.code == Code.BAD_SIGNATURE.value
            assert (await send(OpenAccount, new, "bank-a", account="a3", owner="bank-a")).applied
    finally:
        process.stop()
