"""A client written from docs/PROTOCOL.md alone, in another language, checks what a
ledger signs: docs/verify-signature.mjs (Node.js and its built-in crypto, no Lockstep
code) verifies a receipt signed alone, a receipt from a batch reply, and journal entries
written alone and in a batch (whose instruction carries signatures of its own), each on
its own; and refuses each with one byte changed, or with another party's key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from protocols.canonical import decode, encode
from protocols.envelope import open_batch, seal
from protocols.messages import Issue, OpenAccount, Receipt, Transfer
from protocols.signing import public_pem, unsigned
from tests.harness import Harness

VERIFIER = Path(__file__).parent.parent / "docs" / "verify-signature.mjs"
LEDGER = "cbdc-eur"


def node_verifies(tmp_path: Path, key, party: str, message: bytes) -> bool:
    node = shutil.which("node")
    assert node, "Node.js is needed (.ci/run installs it where missing)"
    pem = tmp_path / f"{party}.pub.pem"
    pem.write_text(public_pem(key))
    done = subprocess.run(
        [node, str(VERIFIER), str(pem), party], input=message, capture_output=True, timeout=30, check=False
    )
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.returncode == 0 and done.stdout.strip() == b"verified"


@pytest.fixture
def h(harness) -> Harness:
    return harness(LEDGER)


def test_node_verifies_receipts_and_entries_alone_and_in_batches_and_refuses_them_changed(h, tmp_path):
    ledger_key = h.world.registry[LEDGER].public_key
    h.send(OpenAccount, "ecb", account="a", owner="bank-a")
    h.send(OpenAccount, "ecb", account="b", owner="bank-b")
    (alone,), _ = h.ledger.process([h.make(Issue, "ecb", asset="EUR", account="a", amount=1_000).encode()], h.now_ms)
    batch = [
        unsigned(Transfer(f"t{n}", LEDGER, h.now_ms, "a", "b", "EUR", amount))
        for n, amount in enumerate((100, 5_000, 200))
    ]
    (reply,), _ = h.ledger.process([seal(batch, "bank-a", h.world.keys["bank-a"])], h.now_ms)
    in_batch = _items(reply)
    entries = [raw for _, _, raw in h.store.journal(0)]
    batch_entry = next(raw for raw in entries if b'"count":2' in raw and b'"t2"' in raw)
    messages = [alone, *in_batch, entries[0], batch_entry]
    for message in messages:
        assert node_verifies(tmp_path, ledger_key, LEDGER, message), message[:200]
    instruction = _nested_instruction(batch_entry)  # bank-a's share of its own batch, journaled
    assert node_verifies(tmp_path, h.world.keys["bank-a"].public, "bank-a", instruction)
    for message in (alone, in_batch[1], batch_entry):
        changed = message.replace(b'"ts_ms":', b'"ts_ms":1', 1) if b'"ts_ms"' in message else message
        changed = changed.replace(b'"time_ms":', b'"time_ms":1', 1)
        assert changed != message and not node_verifies(tmp_path, ledger_key, LEDGER, changed)
        assert not node_verifies(tmp_path, h.world.keys["ecb"].public, LEDGER, message)


def _items(reply: bytes) -> list[bytes]:
    """Each receipt of a batch reply as a message of its own, with its share of the
    ledger's signature (as Lockstep's client keeps it)."""
    _signer, items = open_batch(decode(reply, bytes_max=1 << 20), allowed=(Receipt,))
    return [item.encode() for item in items]  # type: ignore[union-attr]


def _nested_instruction(entry: bytes) -> bytes:
    return encode(decode(entry, bytes_max=len(entry))["instruction"])
