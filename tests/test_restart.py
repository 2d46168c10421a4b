"""A ledger closed and reopened mid-workload is the same ledger; a database edited behind
its back, a key that is not its own or another ledger's database make it refuse to start,
naming what is wrong."""

from __future__ import annotations

import json

import pytest

from ledgers.ledger import Ledger, StartRefused
from ledgers.store import Store
from protocols.canonical import decode, encode
from protocols.htlc import hashlock_of
from protocols.journal import Link, Replay, verify_chain
from protocols.messages import Abort, Claim, Issue, Lock, OpenAccount, Transfer
from protocols.signing import PrivateKey
from tests.databases import run_sql
from tests.harness import BOTH_BACKENDS, Harness

pytestmark = BOTH_BACKENDS

SECRET = b"\x07" * 32


def workload(h: Harness) -> dict[str, int]:
    """Accounts, issuance, a transfer and locks in every state; returns the journal
    seq of some entries by name."""
    seqs = {}
    assert h.send(OpenAccount, "csd-op", account="a", owner="bank-a").applied
    assert h.send(OpenAccount, "csd-op", account="b", owner="bank-b").applied
    seqs["issue"] = h.send(Issue, "ecb", asset="EUR", account="a", amount=1000).seq
    assert h.send(Issue, "fed", asset="USD", account="b", amount=700).applied
    seqs["transfer"] = h.send(Transfer, "bank-a", from_account="a", to_account="b", asset="EUR", amount=100).seq

    def lock(
        lock_id: str,
        amount: int,
        expiry_ms: int,
        asset: str = "EUR",
        owner: str = "a",
        beneficiary: str = "b",
        signer: str = "bank-a",
    ) -> None:
        receipt = h.send(
            Lock,
            signer,
            id=lock_id,
            owner_account=owner,
            beneficiary_account=beneficiary,
            asset=asset,
            amount=amount,
            hashlock=hashlock_of(SECRET),
            expiry_ms=expiry_ms,
            abort_by=("coordinator",),
        )
        assert receipt.applied, receipt
        seqs[lock_id] = receipt.seq

    lock("held", 60, h.now_ms + 3_600_000)
    lock("held-usd", 70, h.now_ms + 3_600_000, asset="USD", owner="b", beneficiary="a", signer="bank-b")
    lock("claimed", 20, h.now_ms + 5_000)
    lock("aborted", 30, h.now_ms + 5_000)
    lock("refunded", 40, h.now_ms + 1_000)
    assert h.send(Claim, "bank-b", lock_id="claimed", preimage=SECRET).applied
    assert h.send(Abort, "coordinator", lock_id="aborted").applied
    h.now_ms += 1_000
    h.tick()
    assert h.store.lock("refunded").state.value == "refunded"
    return seqs


def snapshot(h: Harness):
    return (
        h.store.all_balances(),
        h.store.all_locks(),
        h.store.assets(),
        h.ledger.seq,
        h.ledger.prev_hash,
        h.store.journal(),
    )


def refusal(h: Harness) -> str:
    """Reopen the ledger's database and return why it refuses to start."""
    with pytest.raises(StartRefused) as refused:
        h.open()
    h.store.close()
    return str(refused.value)


def edit(h: Harness, sql: str, params: tuple = ()) -> None:
    """Change the closed ledger's database directly, as an intruder or a bad disk would."""
    changed, _ = run_sql(h.config.database, sql, params)
    assert changed == 1, f"{sql} changed {changed} rows"


def entry_of(h: Harness, seq: int) -> dict:
    _, ((raw,),) = run_sql(h.config.database, "SELECT entry FROM journal WHERE seq = ?", (seq,))
    return decode(raw)


@pytest.fixture
def stopped(harness) -> tuple[Harness, dict[str, int]]:
    """A ledger that ran a workload and was closed."""
    h = harness("unified")
    seqs = workload(h)
    h.close()
    return h, seqs


# -- a clean restart ----------------------------------------------------------------------


def test_reopened_ledger_has_the_same_balances_locks_and_journal(harness):
    h = harness("unified")
    workload(h)
    before = snapshot(h)
    h.close()
    h.open()
    assert snapshot(h) == before
    assert h.balance("a", "EUR") == (1000 - 100 - 60 - 20 - 30 - 40 + 30 + 40, 60)
    assert {lock.lock_id: lock.state.value for lock in h.store.all_locks()} == {
        "held": "held",
        "held-usd": "held",
        "claimed": "claimed",
        "aborted": "aborted",
        "refunded": "refunded",
    }


def test_reopened_ledger_journal_verifies_with_every_signature_and_replays_to_its_state(harness):
    h = harness("unified")
    workload(h)
    h.close()
    h.open()
    links = [Link(seq, stored_hash, raw) for seq, stored_hash, raw in h.store.journal()]
    replay = Replay()
    for signed, _ in verify_chain(links, "unified", h.world.keys["unified"].public, signatures="all"):
        replay.apply(signed.msg)
    assert len(links) == h.ledger.seq
    assert replay.conservation_problems() == []
    assert {key: tuple(value) for key, value in replay.balances.items()} == h.store.all_balances()
    assert replay.locks == {lock.lock_id: lock for lock in h.store.all_locks()}


def test_reopened_ledger_continues_the_chain_and_answers_old_instructions_identically(harness):
    h = harness("unified")
    workload(h)
    old = h.make(Transfer, "bank-b", from_account="b", to_account="a", asset="EUR", amount=5)
    (first_reply,), _ = h.ledger.process([old.encode()], h.now_ms)
    height = h.ledger.seq
    h.close()
    h.now_ms += 10_000
    h.open()
    (again,), entries = h.ledger.process([old.encode()], h.now_ms)
    assert again == first_reply and entries == [] and h.ledger.seq == height
    receipt = h.send(Transfer, "bank-b", from_account="b", to_account="a", asset="EUR", amount=5)
    assert receipt.seq == height
    assert decode(h.store.journal(height)[0][2])["prev_hash"] == h.store.journal(height - 1)[0][1]


def test_lock_that_expired_while_the_ledger_was_down_is_refunded_on_its_first_batch(harness):
    h = harness("unified")
    workload(h)
    h.close()
    h.now_ms += 3_600_000
    h.open()
    assert h.store.lock("held").state.value == "held"
    h.tick()
    assert h.store.lock("held").state.value == "refunded"
    assert h.balance("a", "EUR") == (1000 - 100 - 20, 0)


# -- a database edited behind the ledger's back ------------------------------------------


def test_changed_amount_inside_a_journal_entry_is_refused_naming_that_entry(stopped):
    h, seqs = stopped
    seq = seqs["transfer"]
    entry = entry_of(h, seq)
    assert entry["instruction"]["amount"] == 100
    entry["instruction"]["amount"] = 10
    edit(h, "UPDATE journal SET entry = ? WHERE seq = ?", (encode(entry), seq))
    assert f"journal entry {seq}: content does not match its stored hash" in refusal(h)


def test_changed_effect_amount_inside_a_journal_entry_is_refused_naming_that_entry(stopped):
    h, seqs = stopped
    seq = seqs["issue"]
    entry = entry_of(h, seq)
    assert entry["effects"]["supply"] == [["EUR", 1000, 0]]
    entry["effects"]["supply"] = [["EUR", 1001, 0]]
    edit(h, "UPDATE journal SET entry = ? WHERE seq = ?", (encode(entry), seq))
    assert f"journal entry {seq}:" in refusal(h)


def test_deleted_journal_entry_is_refused_naming_the_missing_entry(stopped):
    h, seqs = stopped
    seq = seqs["transfer"]
    edit(h, "DELETE FROM journal WHERE seq = ?", (seq,))
    assert f"journal entry {seq}:" in refusal(h)


def test_deleted_last_journal_entry_is_refused(harness):
    h = harness("unified")
    workload(h)
    last = h.send(OpenAccount, "csd-op", account="late", owner="bank-b")
    assert last.seq == h.ledger.seq - 1
    h.close()
    edit(h, "DELETE FROM journal WHERE seq = ?", (last.seq,))
    assert "late" in refusal(h)


def test_changed_balance_row_is_refused_naming_the_balance(stopped):
    h, _ = stopped
    edit(h, "UPDATE balances SET available = available + 1 WHERE account = 'b' AND asset = 'EUR'")
    assert (
        "balance b/EUR is EUR 1.21 available, EUR 0.00 locked, journal says EUR 1.20 available, EUR 0.00 locked"
        in refusal(h)
    )


def test_balances_moved_between_accounts_conserving_the_total_are_still_refused(stopped):
    h, _ = stopped
    edit(h, "UPDATE balances SET available = available - 50 WHERE account = 'a' AND asset = 'EUR'")
    edit(h, "UPDATE balances SET available = available + 50 WHERE account = 'b' AND asset = 'EUR'")
    assert "balance a/EUR" in refusal(h) or "balance b/EUR" in refusal(h)


@pytest.mark.parametrize(
    ("lock_id", "state"), [("held", "claimed"), ("claimed", "held"), ("refunded", "aborted"), ("aborted", "refunded")]
)
def test_changed_lock_state_is_refused_naming_the_lock(stopped, lock_id, state):
    h, _ = stopped
    edit(h, "UPDATE locks SET state = ? WHERE lock_id = ?", (state, lock_id))
    assert f"lock {lock_id} state is {state}, journal says" in refusal(h)


LOCK_TERM_EDITS = [
    ("beneficiary_account", "a"),
    ("owner_account", "b"),
    ("amount", 59),
    ("expiry_ms", 1),
    ("hashlock", hashlock_of(b"\x08" * 32)),
    ("asset", "USD"),
    ("abort_by", json.dumps(["bank-b"])),
]


@pytest.mark.parametrize(("column", "value"), LOCK_TERM_EDITS, ids=[column for column, _ in LOCK_TERM_EDITS])
def test_changed_terms_of_a_held_lock_are_refused_naming_the_lock(stopped, column, value):
    h, _ = stopped
    edit(h, f"UPDATE locks SET {column} = ? WHERE lock_id = 'held'", (value,))
    assert "lock held" in refusal(h)


def test_deleted_lock_row_is_refused(stopped):
    h, _ = stopped
    edit(h, "DELETE FROM locks WHERE lock_id = 'claimed'")
    assert "lock" in refusal(h)


def test_changed_supply_is_refused_naming_the_asset(stopped):
    h, _ = stopped
    edit(h, "UPDATE assets SET issued = issued + 5 WHERE code = 'USD'")
    assert "asset USD differs" in refusal(h)


# -- the wrong key, the wrong database --------------------------------------------------------


def test_key_file_that_does_not_match_the_registry_is_refused(stopped):
    h, _ = stopped
    PrivateKey.generate().save(h.config.key_file)
    store = Store(h.config.database)
    with pytest.raises(StartRefused, match="key file does not match the key registered for unified"):
        Ledger(h.config, h.world.registry, PrivateKey.load(h.config.key_file), store, h.now_ms)
    store.close()


def test_another_ledgers_key_is_refused(harness):
    h = harness("unified")
    h.close()
    store = Store(h.config.database)
    with pytest.raises(StartRefused, match="key file does not match"):
        Ledger(h.config, h.world.registry, h.world.keys["csd"], store, h.now_ms)
    store.close()


def test_database_of_another_ledger_is_refused(harness):
    other = harness("cbdc-eur")
    assert other.send(OpenAccount, "ecb", account="a", owner="bank-a").applied
    other.close()
    h = harness("unified")
    h.close()
    store = Store(other.config.database)
    with pytest.raises(StartRefused, match="belongs to ledger 'cbdc-eur', not 'unified'"):
        Ledger(h.config, h.world.registry, h.world.keys["unified"], store, h.now_ms)
    store.close()


def test_database_of_another_ledger_with_its_name_erased_is_refused_by_its_journal(harness):
    other = harness("cbdc-eur")
    other.close()
    h = harness("unified")
    h.close()
    edit(other, "DELETE FROM meta WHERE key = 'ledger_id'")
    store = Store(other.config.database)
    with pytest.raises(StartRefused, match="journal entry 0: written by ledger 'cbdc-eur'"):
        Ledger(h.config, h.world.registry, h.world.keys["unified"], store, h.now_ms)
    store.close()
