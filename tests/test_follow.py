"""The journal follower (protocols/bus/follow.py) against a real ledger service on the
in-memory bus: it yields every entry the ledger committed exactly once and in `seq`
order, first from the journal and then live; it fills any gap left by lost events from
the journal, also when pages come back short or the last event is lost; it yields no
event that is not what the ledger wrote, and reads the real entry in its place. Every
expectation is checked against the ledger's own journal, read with `query_journal`."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import trio
import trio.testing

import ledgers.ledger
from engine.world.local import Local, standard_world
from protocols import canonical
from protocols.bus import entries_topic
from protocols.bus import follow as follow_module
from protocols.bus.follow import follow
from protocols.bus.memory import MemoryBus
from protocols.journal import ChainBroken, entry_hash
from protocols.messages import QueryJournal, Transfer
from protocols.signing import from_wire

LEDGER = "cbdc-eur"
FUNDED = 4  # entries after fund_standard on cbdc-eur: configure, open a-eur, open b-eur, issue
TOPIC = entries_topic(LEDGER)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class EventBus(MemoryBus):
    """The in-memory bus, with a hook on the ledger's entries events as it publishes
    them (`alter` returns the entry to publish, the same one untouched, or None to lose
    it), and a count of the journal pages asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.alter: Callable[[dict], dict | None] = lambda entry: entry
        self.lost: list[int] = []
        self.journal_queries = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        if topic == TOPIC:
            entry = canonical.decode(payload, bytes_max=len(payload))
            altered = self.alter(entry)
            if altered is None:
                self.lost.append(entry["seq"])
                return
            if altered is not entry:
                payload = canonical.encode(altered)
        await super().publish(topic, payload)

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        if b'"type":"query_journal"' in payload:
            self.journal_queries += 1
        return await super().request(service, payload, timeout_s=timeout_s)


class Follower:
    """`follow` running in the background, what it yields kept in order."""

    def __init__(self, local: Local, **options) -> None:
        self.client = local.client(LEDGER)
        self.options = options
        self.entries: list[dict] = []

    async def run(self) -> None:
        async for entry in follow(self.client, **self.options):
            self.entries.append(entry)

    @property
    def seqs(self) -> list[int]:
        return [entry["seq"] for entry in self.entries]

    async def until(self, count: int, timeout_s: float = 30) -> None:
        with trio.fail_after(timeout_s):
            while len(self.entries) < count:
                await trio.sleep(0.01)


async def start(nursery: trio.Nursery, tmp_path, bus: MemoryBus | None = None) -> Local:
    """cbdc-eur running and funded: FUNDED entries in its journal."""
    local = Local(standard_world(tmp_path), bus or EventBus(), nursery)
    await local.start_ledger(LEDGER)
    await local.fund_standard(ledgers=(LEDGER,))
    return local


async def pay(local: Local, count: int, amount: int = 1) -> None:
    """`count` transfers from bank-b to bank-a: one journal entry each."""
    for _ in range(count):
        await local.instruct(
            Transfer, LEDGER, "bank-b", from_account="b-eur", to_account="a-eur", asset="EUR", amount=amount
        )


async def journal(local: Local) -> list[dict]:
    """The ledger's whole journal, paged as PROTOCOL.md section 9 says."""
    client = local.client(LEDGER)
    entries: list[dict] = []
    while True:
        page = await client.query(QueryJournal(client.next_query_id(), LEDGER, len(entries), 200))
        entries += page["entries"]
        if not page["entries"] or len(entries) >= page["head"]:
            return entries


def every_entry_once_in_order(follower: Follower, committed: list[dict]) -> None:
    assert follower.seqs == list(range(len(committed)))
    assert follower.entries == committed


# -- (a) the journal, then live ----------------------------------------------------------------


async def test_following_from_seq_0_yields_the_journal_then_live_entries_in_order(tmp_path, autojump_clock):
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        assert follower.seqs == list(range(FUNDED))
        pages_to_catch_up = bus.journal_queries
        assert pages_to_catch_up >= 1

        await pay(local, 5)
        await follower.until(FUNDED + 5)
        assert bus.journal_queries == pages_to_catch_up  # the new entries came live, not from the journal
        committed = await journal(local)
        assert len(committed) == FUNDED + 5
        every_entry_once_in_order(follower, committed)
        assert [entry["kind"] for entry in follower.entries[FUNDED:]] == ["transfer"] * 5
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "options, first_seq",
    [
        ({"from_seq": 0}, 0),
        ({"from_seq": 2}, 2),
        ({}, FUNDED),  # by default: the head, nothing old
        ({"backlog": 2}, FUNDED - 2),
        ({"backlog": 100}, 0),  # a backlog longer than the journal: all of it
    ],
    ids=["from-0", "from-2", "head", "backlog-2", "backlog-past-genesis"],
)
async def test_follower_starts_where_asked_and_goes_on_live(tmp_path, autojump_clock, options, first_seq):
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path)
        follower = Follower(local, **options)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED - first_seq)
        await trio.sleep(0.5)  # nothing before first_seq comes later
        assert follower.seqs == list(range(first_seq, FUNDED))
        await pay(local, 3)
        await follower.until(FUNDED - first_seq + 3)
        committed = await journal(local)
        assert follower.entries == committed[first_seq:]
        nursery.cancel_scope.cancel()


# -- (b) lost events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lose",
    [
        lambda seq: seq % 2 == 1,
        lambda seq: FUNDED + 2 <= seq < FUNDED + 7,
        lambda seq: True,
    ],
    ids=["every-other", "a-run-of-five", "all"],
)
async def test_lost_events_are_read_from_the_journal_once_and_in_order(tmp_path, autojump_clock, lose):
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        pages_to_catch_up = bus.journal_queries

        bus.alter = lambda entry: None if lose(entry["seq"]) else entry
        await pay(local, 10)
        bus.alter = lambda entry: entry
        await pay(local, 1)  # one event that arrives, after the gaps
        await follower.until(FUNDED + 11)
        await trio.sleep(0.5)  # and nothing more, no entry twice

        assert bus.lost, "the test lost no event"
        assert bus.journal_queries > pages_to_catch_up  # the gaps were read from the journal
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()


async def test_events_lost_before_the_follower_subscribed_are_read_from_the_journal(tmp_path, autojump_clock):
    """Entries applied while nobody listened (their events went to no one) come first,
    from the journal, then the live ones."""
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path)
        await pay(local, 7)
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED + 7)
        await pay(local, 2)
        await follower.until(FUNDED + 9)
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()


async def test_a_lost_last_event_is_yielded_without_waiting_for_a_later_entry(tmp_path, autojump_clock):
    """The event of the ledger's latest entry is lost and the ledger then stays quiet:
    the entry is committed and in the journal, and a gap-free follower must yield it
    anyway (a watchtower waiting for leg 0's claim has only until leg 1 expires)."""
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        bus.alter = lambda entry: None
        await pay(local, 1)
        bus.alter = lambda entry: entry
        assert bus.lost == [FUNDED]
        assert len(await journal(local)) == FUNDED + 1
        await follower.until(FUNDED + 1, timeout_s=30)
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()


# -- (c) verification: bad entries raise, duplicates and older entries are skipped ----------------


def _changed_amount(entry: dict) -> dict:
    """A copy of an issue or transfer entry moving twice the amount, its seq, prev_hash
    and ledger signature left as they were."""
    forged = copy.deepcopy(entry)
    forged["instruction"]["amount"] *= 2
    effects = forged["effects"]
    effects["balances"] = [
        [account, asset, available * 2, locked] for account, asset, available, locked in effects["balances"]
    ]
    if "supply" in effects:
        effects["supply"] = [[asset, issued * 2, redeemed] for asset, issued, redeemed in effects["supply"]]
    return forged


async def test_an_entry_altered_in_transit_is_ignored_and_the_real_one_read(tmp_path, autojump_clock):
    """Every transfer event reaches the follower with another amount (its seq, prev_hash
    and ledger signature left as they were): its signature no longer verifies, so the
    follower yields instead what the ledger's journal holds at that place."""
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        bus.alter = lambda entry: _changed_amount(entry) if entry["kind"] == "transfer" else entry
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        await pay(local, 3)
        await follower.until(FUNDED + 3)
        committed = await journal(local)
        every_entry_once_in_order(follower, committed)
        assert [e["instruction"]["amount"] for e in follower.entries[FUNDED:]] == [1, 1, 1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("forged_seq", [FUNDED, FUNDED + 1000], ids=["at-the-next-seq", "far-ahead"])
async def test_a_forged_event_neither_is_yielded_nor_hides_the_real_entry(tmp_path, autojump_clock, forged_seq):
    """Someone else publishes on the ledger's entries topic a copy of its last entry with
    a changed amount, under a seq not yet read, linked by prev_hash to the real last
    entry (its signature copied). It is not yielded, and the real entries that follow
    are (PROTOCOL.md: a forged entry costs a follower nothing it relies on)."""
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path)
        last = (await journal(local))[-1]
        assert last["kind"] == "issue"
        forged = _changed_amount(last)
        forged["seq"] = forged_seq
        forged["prev_hash"] = entry_hash(from_wire(last))  # linked to the real entry before it
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        await local.bus.publish(TOPIC, canonical.encode(forged))
        await pay(local, 2)  # the real entries FUNDED and FUNDED + 1
        await follower.until(FUNDED + 2)
        await trio.sleep(1.5)
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()


async def test_a_journal_page_that_does_not_verify_raises_chain_broken(tmp_path, autojump_clock, monkeypatch):
    """What the ledger itself answers must verify: a journal page whose entry was
    changed (here by patching the reply on its way) stops the follower."""
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        client = local.client(LEDGER)
        original = client.query

        async def tampered(query):
            value = await original(query)
            if isinstance(query, QueryJournal) and value["entries"]:
                value["entries"][-1] = _changed_amount(value["entries"][-1])
            return value

        monkeypatch.setattr(client, "query", tampered)
        with pytest.raises(ChainBroken) as broken, trio.fail_after(30):
            async for _ in follow(client, from_seq=0):
                pass
        assert broken.value.seq == FUNDED - 1 and "signature" in broken.value.reason
        nursery.cancel_scope.cancel()


async def test_duplicate_and_older_events_are_skipped_even_when_altered(tmp_path, autojump_clock):
    """Events for entries already yielded (replayed as they were, or altered) are not
    yielded again and do not break the stream; the next real entry follows as usual."""
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path)
        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED)
        committed = await journal(local)
        await local.bus.publish(TOPIC, canonical.encode(committed[1]))
        await local.bus.publish(TOPIC, canonical.encode(committed[FUNDED - 1]))
        await local.bus.publish(TOPIC, canonical.encode(_changed_amount(committed[FUNDED - 1])))
        await trio.sleep(0.5)
        assert follower.seqs == list(range(FUNDED))
        await pay(local, 2)
        await follower.until(FUNDED + 2)
        await trio.sleep(0.5)
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()


# -- (d) short pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["bytes", "limit"])
async def test_short_pages_do_not_stop_the_follower_early(tmp_path, autojump_clock, monkeypatch, cut):
    """Every journal page holds one entry (the byte cap) or two (the follower's own
    page size): catching up, and filling a gap of lost events, reads page after page
    to the end and yields every entry once, in order."""
    if cut == "bytes":
        monkeypatch.setattr(ledgers.ledger, "JOURNAL_PAGE_BYTES_MAX", 1)
    else:
        monkeypatch.setattr(follow_module, "PAGE_SIZE", 2)
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        local = await start(nursery, tmp_path, bus)
        await pay(local, 6)
        if cut == "bytes":
            client = local.client(LEDGER)
            page = await client.query(QueryJournal(client.next_query_id(), LEDGER, 0, 200))
            assert len(page["entries"]) == 1 and page["head"] == FUNDED + 6
        bus.journal_queries = 0

        follower = Follower(local, from_seq=0)
        nursery.start_soon(follower.run)
        await follower.until(FUNDED + 6)  # caught up over 10 short pages
        assert bus.journal_queries >= (FUNDED + 6) // (1 if cut == "bytes" else 2)
        pages_to_catch_up = bus.journal_queries

        bus.alter = lambda entry: None  # a gap of five lost events
        await pay(local, 5)
        bus.alter = lambda entry: entry
        await pay(local, 1)
        await follower.until(FUNDED + 12)
        await trio.sleep(0.5)
        assert bus.journal_queries >= pages_to_catch_up + 5 // (1 if cut == "bytes" else 2)
        every_entry_once_in_order(follower, await journal(local))
        nursery.cancel_scope.cancel()
