"""Follow a ledger's journal as a gap-free, in-order stream of verified entries.

Events on the bus are at most once: a subscriber may miss one (a broker queue full, a
reconnect). The follower notices a gap by sequence number and reads the missing entries
from the ledger's journal (`query_journal`) before going on, and checks every entry's
place, hash link and signature, so what it yields is exactly what the ledger committed.
An event holds one entry, or a batch's entries under one signature (envelope.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import trio

from ..canonical import decode
from ..envelope import is_batch, open_batch
from ..errors import Rejected
from ..journal import GENESIS_HASH, ChainBroken, ChainChecker
from ..messages import Entry, QueryInfo, QueryJournal
from ..signing import Signed
from . import BusTimeout, entries_topic
from .client import LedgerClient

log = logging.getLogger("lockstep.follow")

PAGE_SIZE = 200
RETRY_S = 0.1
IDLE_POLL_S = 1.0  # with no event for this long, ask the journal whether one was lost


async def follow(client: LedgerClient, *, from_seq: int | None = None, backlog: int = 0) -> AsyncGenerator[dict, None]:
    """Yield every entry (its wire dictionary, checked) from `from_seq` on, by default
    from the head less `backlog`. A live event that does not verify is not the
    ledger's: it is ignored and the entry at its place read from the journal, whose
    pages come signed by the ledger. A journal page that does not verify raises
    ChainBroken."""
    ledger_id = client.ledger_id
    async with client.bus.subscribe(entries_topic(ledger_id)) as live:
        if from_seq is None:
            info = await _ask(client, QueryInfo(client.next_query_id(), ledger_id))
            from_seq = max(0, info["head_seq"] - backlog)
        checker = ChainChecker(
            ledger_id, client.ledger_key, seq=from_seq, prev_hash=GENESIS_HASH if from_seq == 0 else None
        )

        async def read_journal(until_seq: int | None) -> AsyncIterator[dict]:
            while until_seq is None or checker.seq < until_seq:
                limit = PAGE_SIZE if until_seq is None else min(PAGE_SIZE, until_seq - checker.seq)
                page = await _ask(client, QueryJournal(client.next_query_id(), ledger_id, checker.seq, limit))
                for value in page["entries"]:
                    checker.check(value)
                    yield value
                if not page["entries"] or checker.seq >= page["head"]:
                    return  # at the head (a page may be short of `limit`: it is capped in bytes)

        async for value in read_journal(None):
            yield value
        while True:
            with trio.move_on_after(IDLE_POLL_S) as quiet:
                raw = await live.receive()
            if quiet.cancelled_caught:  # no event for a while: one may have been lost
                async for value in read_journal(None):
                    yield value
                continue
            try:
                values = event_entries(decode(raw, bytes_max=len(raw)))
            except Rejected as error:  # not even JSON: certainly not the ledger's
                log.warning("ignored an undecodable event on %s: %s", ledger_id, error)
                continue
            for value in values:
                seq = value.get("seq") if isinstance(value, dict) else None
                if not isinstance(seq, int) or seq < checker.seq:
                    continue  # a duplicate, or already read from the journal
                async for earlier in read_journal(seq):
                    yield earlier
                try:
                    checker.check(value)
                except ChainBroken as error:  # not what the ledger wrote: read the real one
                    log.warning("ignored an event on %s that is not the ledger's: %s", ledger_id, error)
                    async for real in read_journal(seq + 1):
                        yield real
                    continue
                yield value


def event_entries(value: Any) -> list[Any]:
    """An event's entries: one, or a batch's, each with its share of the batch signature."""
    if not is_batch(value):
        return [value]
    _signer, entries = open_batch(value, allowed=(Entry,))
    return [entry.wire() if isinstance(entry, Signed) else None for entry in entries]


async def _ask(client: LedgerClient, query):
    while True:
        try:
            return await client.query(query)
        except BusTimeout:
            await trio.sleep(RETRY_S)
