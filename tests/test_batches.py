"""Batches on the wire (protocol version 2, docs/PROTOCOL.md §3a): a ledger applies a batch
of instructions in one transaction, each accepted or refused on its own and idempotent by
its id, answers with one envelope of receipts signed once, and journals the batch's
entries under one signature, each entry and receipt checkable on its own. The batcher
gathers many tasks' instructions into such batches and gives each task its receipt."""

from __future__ import annotations

import pytest
import trio

from ledgers.config import LedgerConfig
from ledgers.ledger import Ledger
from ledgers.service import LedgerService
from ledgers.store import Store
from protocols.bus import BusTimeout
from protocols.bus.batcher import Batcher
from protocols.bus.client import LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.bus.faults import Faults, FaultyBus
from protocols.bus.follow import event_entries
from protocols.bus.memory import MemoryBus
from protocols.canonical import decode, encode
from protocols.envelope import open_batch, seal
from protocols.journal import Link, verify_chain
from protocols.messages import Issue, OpenAccount, QueryHolders, Receipt, Transfer
from protocols.signing import PrivateKey, Signed, from_wire, unsigned
from tests.harness import BOTH_BACKENDS, Harness

pytestmark = BOTH_BACKENDS

LEDGER = "cbdc-eur"


@pytest.fixture
def h(harness) -> Harness:
    h = harness(LEDGER)
    h.send(OpenAccount, "ecb", account="a", owner="bank-a")
    h.send(OpenAccount, "ecb", account="b", owner="bank-b")
    h.send(Issue, "ecb", asset="EUR", account="a", amount=1_000)
    return h


def transfer(h: Harness, amount: int, **fields) -> Signed:
    """A transfer from a to b, to be signed by bank-a through a batch."""
    fields.setdefault("id", h.next_id("t"))
    return unsigned(
        Transfer(ledger=LEDGER, ts_ms=h.now_ms, from_account="a", to_account="b", asset="EUR", amount=amount, **fields)
    )


def receipts(h: Harness, reply: bytes) -> list[Receipt]:
    """A batch reply's receipts, each checked on its own against the ledger's key."""
    signer, items = open_batch(decode(reply, bytes_max=1 << 20), allowed=(Receipt,))
    assert signer == LEDGER
    key = h.world.registry[LEDGER].public_key
    assert all(isinstance(item, Signed) and item.signed_by(LEDGER, key) for item in items)
    return [item.msg for item in items]  # type: ignore[union-attr]


def test_a_batch_is_one_transaction_each_instruction_judged_on_its_own(h):
    height = h.ledger.seq
    batch = [transfer(h, 100), transfer(h, 5_000), transfer(h, 200)]  # the second overdraws
    (reply,), events = h.ledger.process([seal(batch, "bank-a", h.world.keys["bank-a"])], h.now_ms)
    first, overdrawn, third = receipts(h, reply)
    assert (first.status, first.seq, third.status, third.seq) == ("applied", height, "applied", height + 1)
    assert (overdrawn.status, overdrawn.code, overdrawn.field) == ("rejected", "insufficient_funds", "amount")
    assert h.balance("a", "EUR") == (700, 0) and h.balance("b", "EUR") == (300, 0)
    (event,) = events  # the batch's entries in one event, under one signature
    entries = event_entries(decode(event))
    assert [e["seq"] for e in entries] == [height, height + 1]
    assert len({e["sigs"][LEDGER]["sig"] for e in entries}) == 1
    links = [Link(seq, hash_, raw) for seq, hash_, raw in h.store.journal(0)]
    assert len(list(verify_chain(links, LEDGER, h.world.registry[LEDGER].public_key, signatures="all"))) == h.ledger.seq


def test_an_entry_written_alone_is_published_and_stored_signed_on_its_own(h):
    """A batch that writes one entry signs it alone, as a version-1 follower reads it: the
    event is the entry itself, its signature the ledger's, the same bytes the store keeps."""
    key = h.world.keys["bank-a"]
    alone = transfer(h, 5)
    (_reply,), (event,) = h.ledger.process([alone.with_sig("bank-a", key.sign(alone.data)).encode()], h.now_ms)
    entry = from_wire(decode(event))
    assert isinstance(entry.sigs[LEDGER], bytes)  # its own signature, no batch's share
    assert entry.signed_by(LEDGER, h.world.registry[LEDGER].public_key)
    assert entry.msg.seq == h.ledger.seq - 1 and entry.msg.kind == "transfer"
    ((seq, _hash, stored),) = h.ledger.store.journal(entry.msg.seq, 1)
    assert (seq, bytes(stored)) == (entry.msg.seq, event)


def test_a_batch_sent_again_in_any_grouping_gets_its_first_receipts_and_applies_nothing(h):
    batch = [transfer(h, 100), transfer(h, 5_000), transfer(h, 200)]
    key = h.world.keys["bank-a"]
    (reply,), _ = h.ledger.process([seal(batch, "bank-a", key)], h.now_ms)
    height, balances = h.ledger.seq, h.balance("a", "EUR")
    h.now_ms += 1_000
    (again,), events = h.ledger.process([seal(batch, "bank-a", key)], h.now_ms)
    assert again == reply and events == []
    (regrouped,), _ = h.ledger.process([seal(batch[2:] + batch[:1], "bank-a", key)], h.now_ms)
    (alone,), _ = h.ledger.process([batch[1].with_sig("bank-a", key.sign(batch[1].data)).encode()], h.now_ms)
    assert receipts(h, regrouped) == [receipts(h, reply)[2], receipts(h, reply)[0]]
    assert from_wire(decode(alone)).msg == receipts(h, reply)[1]  # a message alone: a reply alone
    assert (h.ledger.seq, h.balance("a", "EUR")) == (height, balances)


def test_a_batch_signed_by_a_stranger_or_changed_after_signing_applies_none_of_it(h):
    batch = [transfer(h, 100), transfer(h, 200)]
    height = h.ledger.seq
    stranger = seal(batch, "bank-a", PrivateKey.generate())
    changed = seal(batch, "bank-a", h.world.keys["bank-a"]).replace(b'"amount":200', b'"amount":201')
    for payload in (stranger, changed):
        (reply,), events = h.ledger.process([payload], h.now_ms)
        assert [(r.code, r.field) for r in receipts(h, reply)] == [("bad_signature", "sigs")] * 2
        assert events == [] and h.ledger.seq == height
    assert h.store.instruction(batch[0].msg.id) is None  # unauthenticated: the ids stay free


def test_an_item_that_does_not_decode_is_refused_alone(h):
    good = transfer(h, 100)
    bad = transfer(h, 100, id="bad-1").wire() | {"amount": -1}
    envelope = seal([good, good], "bank-a", h.world.keys["bank-a"])
    # the signer hashed what it sent: a refused item still has its place in the tree
    value = decode(envelope, bytes_max=1 << 20)
    value["items"][1] = bad
    (reply,), _ = h.ledger.process([_encode(value)], h.now_ms)
    first, refused = receipts(h, reply)
    assert (refused.instruction_id, refused.code, refused.field) == ("bad-1", "invalid_field", "amount")
    assert first.code == "bad_signature"  # its proof was for a tree holding `good` twice


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"items": []}, "items"),
        ({"v": 1}, "v"),
        ({"sigs": {}}, "sigs"),
        ({"sigs": {"bank-a": "zz"}}, "sigs.bank-a"),
        ({"extra": 1}, "$"),
    ],
)
def test_a_malformed_envelope_is_refused_whole_naming_the_field(h, change, field):
    value = decode(seal([transfer(h, 1)], "bank-a", h.world.keys["bank-a"]), bytes_max=1 << 20) | change
    height = h.ledger.seq
    (reply,), _ = h.ledger.process([_encode(value)], h.now_ms)
    refusal = from_wire(decode(reply)).msg
    assert (refusal.status, refusal.field) == ("rejected", field) and h.ledger.seq == height


async def test_the_batcher_sends_many_tasks_instructions_together_and_a_lost_batch_again(world, autojump_clock):
    """Twenty tasks' transfers leave together; with that batch's reply lost, every task
    hears BusTimeout, hands its transfer in again, and gets the receipt of its one
    application."""
    armed, lost = trio.Event(), []

    def first_batch(service: str, payload: bytes) -> bool:
        if armed.is_set() and not lost:
            lost.append(payload)
            return True
        return False

    bus = FaultyBus(MemoryBus(), Faults(drop_reply=1.0), seed=1, applies=first_batch)
    clock = ServiceClock()
    config = LedgerConfig.load(world.ledger_configs[LEDGER])
    store = Store(config.database)
    ledger = Ledger(config, world.registry, world.keys[LEDGER], store, clock.now_ms())
    client = LedgerClient(bus, LEDGER, world.registry[LEDGER].public_key, timeout_s=0.5, attempts=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(LedgerService(ledger, bus, clock).run)
        setup, sender = Batcher(client, "ecb", world.keys["ecb"]), Batcher(client, "bank-a", world.keys["bank-a"])
        await nursery.start(setup.run)
        await nursery.start(sender.run)
        now = clock.now_ms()
        for msg in (
            OpenAccount("open-a", LEDGER, now, "a", "bank-a"),
            OpenAccount("open-b", LEDGER, now, "b", "bank-b"),
            Issue("mint", LEDGER, now, "EUR", "a", 1_000),
        ):
            assert (await setup.submit(unsigned(msg))).applied
        height = ledger.seq
        armed.set()
        got: dict[str, Receipt] = {}
        timeouts = 0

        async def hand_in(n: int) -> None:
            nonlocal timeouts
            signed = unsigned(Transfer(f"t{n}", LEDGER, now, "a", "b", "EUR", 10))
            while True:
                try:
                    got[signed.msg.id] = await sender.submit(signed)
                    return
                except BusTimeout:
                    timeouts += 1

        async with trio.open_nursery() as tasks:
            for n in range(20):
                tasks.start_soon(hand_in, n)
        assert lost and timeouts == 20 and sender.batches_sent == 2
        assert sorted(r.seq for r in got.values()) == list(range(height, height + 20))
        assert store.balance("b", "EUR") == (200, 0)
        nursery.cancel_scope.cancel()
    store.close()


def _encode(value: dict) -> bytes:
    return encode(value)


def test_a_query_in_a_batch_sees_what_the_instructions_before_it_wrote(h):
    """The store keeps a batch's rows to write them at its commit: a query that reads
    many rows must find them all the same."""
    opened = unsigned(OpenAccount(id="open-c", ledger=LEDGER, ts_ms=h.now_ms, account="c", owner="bank-b"))
    minted = unsigned(Issue(id="mint-c", ledger=LEDGER, ts_ms=h.now_ms, asset="EUR", account="c", amount=70))
    holders = unsigned(QueryHolders(id="q-holders", ledger=LEDGER, asset="EUR", limit=10))
    replies, _ = h.ledger.process(
        [
            seal([opened, minted], "ecb", h.world.keys["ecb"]),
            seal([transfer(h, 300)], "bank-a", h.world.keys["bank-a"]),
            holders.encode(),
        ],
        h.now_ms,
    )
    assert all(r.applied for reply in replies[:2] for r in receipts(h, reply))
    answer = from_wire(decode(replies[2], bytes_max=1 << 20)).msg
    assert {row["account"]: row["available"] for row in answer.value["holders"]} == {"a": 700, "b": 300, "c": 70}
