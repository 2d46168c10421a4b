"""Checkpoints: a ledger starts by checking its journal from its latest signed checkpoint,
so that start-up costs O(state rows + entries since), not O(journal); and a database
edited behind its back is still refused, naming what differs, wherever the row was
changed. The journal's entries before the checkpoint are left to `lockstep audit`, which
reads the whole journal."""

from __future__ import annotations

import json
from contextlib import closing

import attrs
import pytest

import ledgers.ledger
import protocols.journal
from engine.audit.journals import audit, read_database
from ledgers.store import Store
from protocols.canonical import encode
from protocols.htlc import hashlock_of
from protocols.journal import Checkpoint, StateDigest, state_digest
from protocols.messages import Claim, Issue, Lock, OpenAccount, RotateKey, Transfer
from protocols.signing import PrivateKey, public_point
from tests.databases import run_sql
from tests.harness import BOTH_BACKENDS, Harness
from tests.test_audit import rewrite
from tests.test_instructions import applied
from tests.test_restart import edit, entry_of, refusal

SECRET = b"\x07" * 32
HOUR_MS = 3_600_000

pytestmark = BOTH_BACKENDS


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """How many journal entries have been decoded: the work a start does on its journal."""
    count = [0]
    decode = protocols.journal.decode

    def counting(raw: bytes, **limits):
        count[0] += 1
        return decode(raw, **limits)

    monkeypatch.setattr(protocols.journal, "decode", counting)
    return count


def opened(h: Harness, decoded: list[int]) -> int:
    """Start the ledger again; return how many entries that start decoded."""
    before = decoded[0]
    h.open()
    return decoded[0] - before


def stored_checkpoint(h: Harness) -> Checkpoint:
    """As stored, read beside the ledger (which holds its database open)."""
    _, rows = run_sql(h.config.database, "SELECT seq, entry_hash, state_digest, keys, signature FROM checkpoints")
    ((seq, entry_hash, digest, keys, signature),) = rows
    return Checkpoint(seq, entry_hash, digest, json.loads(keys), bytes(signature))


def lock(
    h: Harness,
    lock_id: str,
    amount: int,
    expiry_ms: int,
    *,
    asset: str = "EUR",
    owner: str = "a",
    beneficiary: str = "b",
    signer: str = "bank-a",
) -> None:
    applied(
        h.send(
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
    )


def rotate(h: Harness, party: str) -> None:
    """A new key for `party` on this ledger; the test signs with it from now on."""
    new = PrivateKey.generate()
    applied(h.send(RotateKey, "csd-op", party=party, public_key=public_point(new.public)))
    h.world.keys[party] = new


def before_checkpoint(h: Harness) -> None:
    """Rows the entries after the checkpoint leave alone (c/USD, lock `early`, the
    supply, accounts a, b and c, treasury's key) and rows they change."""
    for account, owner in (("a", "bank-a"), ("b", "bank-b"), ("c", "bank-a")):
        applied(h.send(OpenAccount, "csd-op", account=account, owner=owner))
    applied(h.send(Issue, "ecb", asset="EUR", account="a", amount=1000))
    applied(h.send(Issue, "fed", asset="USD", account="b", amount=700))
    applied(h.send(Issue, "fed", asset="USD", account="c", amount=50))
    applied(h.send(Transfer, "bank-a", id="t-early", from_account="a", to_account="b", asset="EUR", amount=100))
    lock(h, "early", 60, h.now_ms + HOUR_MS)
    lock(h, "early-claimed", 20, h.now_ms + HOUR_MS)
    lock(h, "early-refunded", 40, h.now_ms + 1_000)
    rotate(h, "treasury")


def after_checkpoint(h: Harness) -> None:
    """An account made, a transfer, a lock placed before claimed and one refunded by
    expiry, a lock placed, a key rotated."""
    applied(h.send(OpenAccount, "csd-op", account="late", owner="bank-b"))
    applied(h.send(Transfer, "bank-b", id="t-late", from_account="b", to_account="a", asset="EUR", amount=5))
    applied(h.send(Claim, "bank-b", lock_id="early-claimed", preimage=SECRET))
    lock(h, "late-held", 70, h.now_ms + HOUR_MS, asset="USD", owner="b", beneficiary="a", signer="bank-b")
    rotate(h, "bank-b")
    h.now_ms += 1_000
    h.tick()
    assert h.store.lock("early-refunded").state.value == "refunded"


@pytest.fixture
def checkpointed(harness) -> tuple[Harness, int]:
    """A ledger stopped cleanly (a checkpoint at its head, entry S), started again, run
    on, then killed: rows changed before and after S. Returns it and S."""
    h = harness("unified")
    before_checkpoint(h)
    seq = h.ledger.seq - 1
    h.ledger.close()
    h.open()
    after_checkpoint(h)
    h.close()
    assert stored_checkpoint(h).seq == seq
    return h, seq


def audited_clean(h: Harness) -> bool:
    return audit([read_database(h.config.database, h.world.registry)]).clean


# -- the work a start does ------------------------------------------------------------------------


def test_a_long_journal_starts_reading_only_the_entries_since_its_checkpoint(harness, decoded, monkeypatch):
    """Twenty intervals and a part, at a tenth of the real interval: the same proportions
    as a long journal, in a tenth of the time."""
    monkeypatch.setattr(ledgers.ledger, "CHECKPOINT_INTERVAL_ENTRIES", ledgers.ledger.CHECKPOINT_INTERVAL_ENTRIES // 10)
    h = harness("unified")
    interval, batch = ledgers.ledger.CHECKPOINT_INTERVAL_ENTRIES, 100
    height = 20 * interval + 123
    while h.ledger.seq < height:
        accounts = range(h.ledger.seq, min(h.ledger.seq + batch, height))
        h.ledger.process(
            [h.make(OpenAccount, "csd-op", account=f"acc-{n}", owner="bank-a").encode() for n in accounts], h.now_ms
        )
    h.close()  # killed: no checkpoint at the head
    checkpoint = stored_checkpoint(h)
    assert height - 1 - checkpoint.seq < interval + batch  # one at the end of a batch, every `interval` entries

    assert opened(h, decoded) == height - checkpoint.seq < interval + batch  # entry S and those after it
    assert h.ledger.seq == height
    h.ledger.close()
    assert opened(h, decoded) == 1  # a clean stop checkpoints the head
    h.close()
    edit(h, "DELETE FROM checkpoints")
    assert opened(h, decoded) == height  # no checkpoint: the whole journal, as before checkpoints
    h.close()
    assert opened(h, decoded) == 1  # that start checkpointed the head


def test_a_start_after_each_restart_reads_only_what_came_since(harness, decoded, monkeypatch):
    monkeypatch.setattr(ledgers.ledger, "CHECKPOINT_INTERVAL_ENTRIES", 7)
    h = harness("unified")
    applied(h.send(OpenAccount, "csd-op", account="a", owner="bank-a"))
    applied(h.send(Issue, "ecb", asset="EUR", account="a", amount=1_000))
    for round_ in range(6):
        applied(h.send(OpenAccount, "csd-op", account=f"b{round_}", owner="bank-b"))
        for _ in range(round_ * 3):
            applied(h.send(Transfer, "bank-a", from_account="a", to_account=f"b{round_}", asset="EUR", amount=1))
        assert h.send(Transfer, "bank-a", from_account="a", to_account="b0", asset="EUR", amount=10**6).code  # recorded
        seq_before, checkpoint = h.ledger.seq, stored_checkpoint(h).seq
        if round_ % 2:
            h.ledger.close()
            assert opened(h, decoded) == 1
        else:
            h.close()
            assert opened(h, decoded) == seq_before - checkpoint <= 7
        assert h.ledger.seq == seq_before
        assert stored_checkpoint(h).seq == seq_before - 1  # every start checkpoints its head
    assert h.balance("a", "EUR") == (1_000 - 3 * sum(range(6)), 0)
    h.close()
    assert audited_clean(h)


# -- the digest a checkpoint signs ------------------------------------------------------------------


def test_the_digest_followed_through_every_write_is_the_digest_of_the_tables(checkpointed):
    h, _ = checkpointed
    h.open()
    assert h.store.digest == state_digest(h.store.tables())
    applied(h.send(Claim, "bank-b", lock_id="early", preimage=SECRET))
    applied(h.send(Transfer, "bank-a", from_account="c", to_account="b", asset="USD", amount=50))  # c/USD to (0, 0)
    applied(h.send(Issue, "ecb", asset="EUR", account="late", amount=3))
    assert h.store.digest == state_digest(h.store.tables())


def test_a_batch_rolled_back_rolls_the_digest_and_every_row_read_since_back(harness):
    h = harness("unified")
    applied(h.send(OpenAccount, "csd-op", account="a", owner="bank-a"))
    applied(h.send(Issue, "ecb", asset="EUR", account="a", amount=7))
    digest = StateDigest(h.store.digest.value)
    assert h.store.balance("a", "EUR") == (7, 0)  # read, so kept by the store
    with pytest.raises(RuntimeError), h.store.transaction():
        h.store.set_balance("a", "EUR", 5, 0)
        h.store.put_account("b", "bank-b")
        assert h.store.digest != digest and h.store.balance("a", "EUR") == (5, 0)
        raise RuntimeError("a batch that fails")
    assert h.store.digest == digest == state_digest(h.store.tables())
    assert h.store.balance("a", "EUR") == (7, 0) and h.store.account_owner("b") is None


def test_the_checkpoint_names_its_head_entry_and_signs_the_state_and_keys_with_the_ledger_key(checkpointed):
    h, _ = checkpointed
    h.open()  # a start checkpoints its head
    checkpoint = stored_checkpoint(h)
    assert (checkpoint.seq, checkpoint.entry_hash) == (h.ledger.seq - 1, h.ledger.prev_hash)
    assert checkpoint.state_digest == state_digest(h.store.tables()).hexdigest()
    assert checkpoint.keys == h.store.all_keys() and set(checkpoint.keys) == {"treasury", "bank-b"}
    assert checkpoint.signed_by("unified", h.world.keys["unified"].public)
    assert not checkpoint.signed_by("csd", h.world.keys["unified"].public)
    assert not checkpoint.signed_by("unified", h.world.keys["csd"].public)


# -- a database edited behind the ledger's back, with a checkpoint ------------------------------------

ROW_EDITS = [  # (what, sql, what the refusal names)
    # rows the entries since the checkpoint left alone: caught by the digest
    (
        "untouched-balance",
        "UPDATE balances SET available = available + 1 WHERE account = 'c' AND asset = 'USD'",
        "balance c/USD is USD 0.51 available, USD 0.00 locked, journal says USD 0.50 available, USD 0.00 locked",
    ),
    (
        "untouched-lock-terms",
        "UPDATE locks SET amount = 59 WHERE lock_id = 'early'",
        "lock early amount is EUR 0.59, journal says EUR 0.60",
    ),
    (
        "untouched-lock-state",
        "UPDATE locks SET state = 'aborted' WHERE lock_id = 'early'",
        "lock early state is aborted",
    ),
    ("untouched-lock-deleted", "DELETE FROM locks WHERE lock_id = 'early'", "lock early is missing"),
    (
        "untouched-account-owner",
        "UPDATE accounts SET owner = 'bank-b' WHERE account = 'a'",
        "account a is owned by bank-b, journal says bank-a",
    ),
    (
        "account-added",
        "INSERT INTO accounts (account, owner) VALUES ('x', 'bank-a')",
        "account x is owned by bank-a, journal says None",
    ),
    (
        "untouched-supply",
        "UPDATE assets SET issued = issued + 5 WHERE code = 'USD'",
        "asset USD differs from the journal",
    ),
    (
        "untouched-asset-issuer",
        "UPDATE assets SET issuer = 'snb' WHERE code = 'EUR'",
        "asset EUR differs from the journal",
    ),
    (
        "untouched-key",
        "UPDATE keys SET public_key = public_key || '00' WHERE party = 'treasury'",
        "the key of treasury is",
    ),
    (
        "key-added",
        "INSERT INTO keys (party, public_key) VALUES ('bank-a', '02aa')",
        "the key of bank-a is 02aa, journal says None",
    ),
    (
        "untouched-idempotency-row",
        "DELETE FROM instructions WHERE id = 't-early'",
        "instruction t-early is in the journal but not among the instructions answered",
    ),
    (
        "untouched-idempotency-row-marked-refused",
        "UPDATE instructions SET seq = NULL WHERE id = 't-early'",
        "instruction t-early is answered as applied by entry None, journal says 7",
    ),
    # rows the entries since the checkpoint changed or made: each held against the journal
    (
        "touched-balance",
        "UPDATE balances SET available = available + 1 WHERE account = 'a' AND asset = 'EUR'",
        "balance a/EUR is",
    ),
    (
        "touched-balance-deleted",
        "DELETE FROM balances WHERE account = 'b' AND asset = 'USD'",
        "balance b/USD is absent, journal says USD 6.30 available, USD 0.70 locked",
    ),
    (
        "claimed-since-made-held",
        "UPDATE locks SET state = 'held' WHERE lock_id = 'early-claimed'",
        "lock early-claimed state is held, journal says claimed",
    ),
    (
        "refunded-since-made-claimed",
        "UPDATE locks SET state = 'claimed' WHERE lock_id = 'early-refunded'",
        "lock early-refunded state is claimed, journal says refunded",
    ),
    (
        "placed-since-terms",
        "UPDATE locks SET expiry_ms = 1 WHERE lock_id = 'late-held'",
        "lock late-held expiry_ms is 1",
    ),
    ("placed-since-deleted", "DELETE FROM locks WHERE lock_id = 'late-held'", "lock late-held is missing"),
    (
        "opened-since-owner",
        "UPDATE accounts SET owner = 'bank-a' WHERE account = 'late'",
        "account late is owned by bank-a, journal says bank-b",
    ),
    (
        "opened-since-deleted",
        "DELETE FROM accounts WHERE account = 'late'",
        "account late is owned by None, journal says bank-b",
    ),
    ("rotated-since-key", "DELETE FROM keys WHERE party = 'bank-b'", "the key of bank-b is None"),
    (
        "idempotency-row-since",
        "DELETE FROM instructions WHERE id = 't-late'",
        "instruction t-late is in the journal but not among the instructions answered",
    ),
    (
        "idempotency-row-since-marked-refused",
        "UPDATE instructions SET seq = NULL WHERE id = 't-late'",
        "instruction t-late is answered as applied by entry None, journal says 13",
    ),
    (
        "idempotency-row-since-moved",
        "UPDATE instructions SET seq = 3 WHERE id = 't-late'",
        "instruction t-late is answered as applied by entry 3, journal says 13",
    ),
]


@pytest.mark.parametrize(
    ("sql", "named"), [(sql, named) for _, sql, named in ROW_EDITS], ids=[what for what, _, _ in ROW_EDITS]
)
def test_a_changed_added_or_deleted_state_row_is_refused_naming_it(checkpointed, sql, named):
    h, seq = checkpointed
    edit(h, sql)
    refused = refusal(h)
    assert named in refused
    assert f"checkpoint at entry {seq}" in refused


def test_the_same_database_untouched_starts(checkpointed, decoded):
    h, seq = checkpointed
    height = entries_in(h)
    assert opened(h, decoded) == height - seq
    assert audited_clean(h)


def entries_in(h: Harness) -> int:
    _, ((count,),) = run_sql(h.config.database, "SELECT COUNT(*) FROM journal")
    return count


def test_a_changed_journal_entry_after_the_checkpoint_is_refused_naming_it(checkpointed):
    h, seq = checkpointed
    entry = entry_of(h, seq + 2)
    assert entry["instruction"]["id"] == "t-late"
    entry["instruction"]["amount"] = 4
    edit(h, "UPDATE journal SET entry = ? WHERE seq = ?", (encode(entry), seq + 2))
    assert f"journal entry {seq + 2}: content does not match its stored hash" in refusal(h)


def test_a_deleted_journal_entry_after_the_checkpoint_is_refused_naming_it(checkpointed):
    h, seq = checkpointed
    edit(h, "DELETE FROM journal WHERE seq = ?", (seq + 2,))
    assert f"journal entry {seq + 2}: is missing" in refusal(h)


def test_a_deleted_last_journal_entry_is_refused(checkpointed):
    h, _seq = checkpointed
    last = entries_in(h) - 1
    assert entry_of(h, last)["kind"] == "expire"
    edit(h, "DELETE FROM journal WHERE seq = ?", (last,))
    assert (
        "balance a/EUR is EUR 8.25 available, EUR 0.60 locked, journal says EUR 7.85 available, EUR 1.00 locked"
        in refusal(h)
    )  # the refund undone


def test_an_entry_inserted_after_the_head_is_refused(checkpointed):
    h, _ = checkpointed
    last = entries_in(h) - 1
    edit(h, "INSERT INTO journal (seq, hash, entry) SELECT seq + 1, hash, entry FROM journal WHERE seq = ?", (last,))
    assert f"journal entry {last + 1}: sequence {last} where {last + 1} was expected" in refusal(h)


def test_history_after_the_checkpoint_signed_with_another_key_is_refused(checkpointed):
    h, seq = checkpointed
    rewrite(h.config.database, seq + 2, lambda entry: None, PrivateKey.generate())
    assert "ledger signature does not verify" in refusal(h)


def test_a_changed_checkpoint_entry_is_refused(checkpointed):
    h, seq = checkpointed
    entry = entry_of(h, seq)
    entry["time_ms"] += 1
    edit(h, "UPDATE journal SET entry = ? WHERE seq = ?", (encode(entry), seq))
    assert f"journal entry {seq}: content does not match its stored hash" in refusal(h)


def test_a_journal_cut_below_the_checkpoint_is_refused(checkpointed):
    h, seq = checkpointed
    run_sql(h.config.database, "DELETE FROM journal WHERE seq >= ?", (seq,))
    assert f"the checkpoint at journal entry {seq} names an entry that is missing" in refusal(h)


# -- the checkpoint edited, forged, deleted -------------------------------------------------------------

CHECKPOINT_EDITS = [
    ("state-digest", "UPDATE checkpoints SET state_digest = ?", ("0" * 64,), "is not signed by this ledger's key"),
    ("keys", "UPDATE checkpoints SET keys = '{}'", (), "is not signed by this ledger's key"),
    ("signature", "UPDATE checkpoints SET signature = ?", (bytes.fromhex("3006020101020101"),), "is not signed by"),
    ("entry-hash", "UPDATE checkpoints SET entry_hash = ?", ("ab" * 32,), f"names hash {'ab' * 32}, the entry's is"),
    ("seq", "UPDATE checkpoints SET seq = seq - 1", (), "names hash"),
]


@pytest.mark.parametrize(
    ("sql", "params", "named"), [edit_[1:] for edit_ in CHECKPOINT_EDITS], ids=[edit_[0] for edit_ in CHECKPOINT_EDITS]
)
def test_an_edited_checkpoint_is_refused(checkpointed, sql, params, named):
    h, _ = checkpointed
    edit(h, sql, params)
    assert named in refusal(h)


def forge(h: Harness, key: PrivateKey, **changes) -> None:
    """Replace the checkpoint with one signed by `key`, with these fields changed."""
    checkpoint = stored_checkpoint(h)
    forged = attrs.evolve(checkpoint, **changes).signed("unified", key)
    with closing(Store(h.config.database)) as store, store.transaction():
        store.put_checkpoint(forged)


def test_a_checkpoint_signed_with_another_key_is_refused(checkpointed):
    h, _ = checkpointed
    forge(h, h.world.keys["csd"], state_digest="0" * 64)
    assert "is not signed by this ledger's key" in refusal(h)


def test_a_checkpoint_signed_by_the_ledger_must_still_match_its_entry(checkpointed):
    h, seq = checkpointed
    forge(h, h.world.keys["unified"], entry_hash=stored_hash(h, seq - 1))
    assert f"the checkpoint at journal entry {seq} names hash" in refusal(h)


def stored_hash(h: Harness, seq: int) -> str:
    _, ((hash_,),) = run_sql(h.config.database, "SELECT hash FROM journal WHERE seq = ?", (seq,))
    return hash_


def test_a_checkpoint_signed_by_the_ledger_with_a_wrong_state_is_refused(checkpointed):
    """Only a bug (or the ledger's key) makes one: the tables match the journal, not it."""
    h, seq = checkpointed
    forge(h, h.world.keys["unified"], state_digest="0" * 64)
    refused = refusal(h)
    assert f"the checkpoint at journal entry {seq}: the state tables, rewound to entry {seq}, do not match" in refused
    assert "though the tables match the whole journal" in refused


def test_a_deleted_checkpoint_falls_back_to_the_whole_journal(checkpointed, decoded):
    h, _ = checkpointed
    height = entries_in(h)
    edit(h, "DELETE FROM checkpoints")
    assert opened(h, decoded) == height
    assert stored_checkpoint(h).seq == height - 1


def test_a_deleted_checkpoint_and_a_changed_row_are_refused_by_the_whole_journal(checkpointed):
    h, _ = checkpointed
    edit(h, "DELETE FROM checkpoints")
    edit(h, "UPDATE locks SET amount = 59 WHERE lock_id = 'early'")
    refused = refusal(h)
    assert (
        "lock early amount is EUR 0.59, journal says EUR 0.60" in refused
        and "(found from the checkpoint" not in refused
    )


# -- what a start no longer reads: the audit does ------------------------------------------------------


def test_an_entry_changed_before_the_checkpoint_is_left_to_the_audit(checkpointed):
    h, seq = checkpointed
    entry = entry_of(h, seq - 1)
    entry["time_ms"] += 1
    edit(h, "UPDATE journal SET entry = ? WHERE seq = ?", (encode(entry), seq - 1))
    h.open()
    h.close()
    assert not audited_clean(h)
