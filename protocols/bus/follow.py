"""Follow a ledger's journal as a gap-free, in-order stream of verified entries.

Events on the bus are at most once: a subscriber may miss one (a broker queue full, a
reconnect). The follower notices a gap by sequence number and reads the missing entries
from the ledger's journal (`query_journal`) before going on, and checks every entry's
place, hash link and signature, so what it yields is exactly what the ledger committed."""

from __future__ import annotations

from typing import AsyncIterator

import trio

from ..canonical import decode
from ..journal import ChainChecker
from ..messages import QueryInfo, QueryJournal
from . import BusTimeout, entries_topic
from .client import LedgerClient

PAGE_SIZE = 200
RETRY_S = 0.1


async def follow(client: LedgerClient, *, from_seq: int | None = None, backlog: int = 0,
                 verify: bool = True) -> AsyncIterator[dict]:
    """Yield every entry (its wire dictionary) from `from_seq` on, by default from the
    head less `backlog`. With `verify=False` entries are only put in order, not checked:
    for a follower that acts only through the ledger itself (the watchtower), which
    checks everything again."""
    ledger_id = client.ledger_id
    async with client.bus.subscribe(entries_topic(ledger_id)) as live:
        if from_seq is None:
            info = await _ask(client, QueryInfo(client.next_query_id(), ledger_id))
            from_seq = max(0, info["head_seq"] - backlog)
        checker = ChainChecker(ledger_id, client.ledger_key, seq=from_seq, prev_hash=None)

        def check(value: dict) -> dict:
            if verify:
                checker.check(value)
            else:
                checker.seq += 1
            return value

        async def read_journal(until_seq: int | None) -> AsyncIterator[dict]:
            while until_seq is None or checker.seq < until_seq:
                limit = PAGE_SIZE if until_seq is None else min(PAGE_SIZE, until_seq - checker.seq)
                page = await _ask(client, QueryJournal(client.next_query_id(), ledger_id, checker.seq, limit))
                for value in page["entries"]:
                    yield check(value)
                if not page["entries"] or checker.seq >= page["head"]:
                    return  # at the head (a page may be short of `limit`: it is capped in bytes)

        async for signed in read_journal(None):
            yield signed
        async for raw in live:
            value = decode(raw, bytes_max=len(raw))
            seq = value.get("seq") if isinstance(value, dict) else None
            if not isinstance(seq, int) or seq < checker.seq:
                continue  # a duplicate, or already read from the journal
            async for signed in read_journal(seq):
                yield signed
            yield check(value)


async def _ask(client: LedgerClient, query):
    while True:
        try:
            return await client.query(query)
        except BusTimeout:
            await trio.sleep(RETRY_S)
