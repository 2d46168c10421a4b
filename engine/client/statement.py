"""`lockstep statement`: a camt.053 statement of one cash account, from its ledger's
journal read over the bus and checked (hash chain and the ledger's signature) from
entry 0, since the opening balance is everything that came before.

A booking is a change of the account's total (available + locked): a lock or its
refund only moves money between the two, so it is a hold, not a booking; the claim
that pays a lock out is the booking."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterable
from pathlib import Path

from protocols.bus import BusTimeout
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure, file_reason
from protocols.iso20022 import camt053
from protocols.iso20022.model import Statement, StatementEntry
from protocols.journal import ChainBroken, ChainChecker
from protocols.messages import Entry, QueryJournal
from protocols.money import format_amount
from protocols.registry import Registry

from ..daemon import DaemonError, on_bus

PAGE_SIZE = 200


def statement_of(
    entries: Iterable[Entry],
    ledger: str,
    account: str,
    currency: str,
    *,
    from_seq: int,
    to_seq: int | None,
    now_ms: int,
) -> Statement:
    """The account's bookings in [from_seq, to_seq] (to the head if None), with the
    balance before and after."""
    owner, opening, bookings, last_seq = None, 0, [], from_seq - 1
    for entry in entries:
        if to_seq is not None and entry.seq > to_seq:
            break
        for acct, acct_owner in entry.effects.get("accounts", ()):
            if acct == account:
                owner = acct_owner
        delta = sum(
            available + locked
            for acct, asset, available, locked in entry.effects.get("balances", ())
            if (acct, asset) == (account, currency)
        )
        if entry.seq < from_seq:
            opening += delta
            continue
        last_seq = entry.seq
        if delta:
            reference = entry.instruction["id"] if entry.instruction else f"{entry.kind}-{entry.seq}"
            bookings.append(StatementEntry(reference, entry.seq, entry.time_ms, delta, entry.kind))
    if owner is None:
        raise DaemonError(f"ledger {ledger}", f"has no account {account!r}")
    closing = opening + sum(booking.amount_minor for booking in bookings)
    stamp = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).strftime("%Y%m%d%H%M%S")
    return Statement(
        f"{account}-{stamp}"[:35],
        owner,
        ledger,
        account,
        currency,
        now_ms,
        from_seq,
        max(last_seq, from_seq),
        opening,
        closing,
        tuple(bookings),
    )


async def read_entries(client: LedgerClient) -> list[Entry]:
    """Every entry, each checked against the chain and the ledger's key."""
    checker, entries = ChainChecker(client.ledger_id, client.ledger_key), []
    while True:
        try:
            page = await client.query(QueryJournal(client.next_query_id(), client.ledger_id, checker.seq, PAGE_SIZE))
            entries += [checker.check(value)[0].msg for value in page["entries"]]
        except (BusTimeout, BadReply, Rejected, ChainBroken) as error:
            raise DaemonError(f"ledger {client.ledger_id}", str(error)) from None
        if checker.seq >= page["head"] or not page["entries"]:
            return entries


async def main(
    broker: str,
    registry_path: str,
    ledger: str,
    account: str,
    currency: str,
    from_seq: int,
    to_seq: int | None,
    out: str | None,
) -> int:
    registry = Registry.load(registry_path)
    if ledger not in registry:
        raise DaemonError(f"--ledger {ledger}", f"not in the registry {registry_path}")
    entries = await on_bus(broker, lambda bus: read_entries(LedgerClient(bus, ledger, registry[ledger].public_key)))
    statement = statement_of(
        entries, ledger, account, currency, from_seq=from_seq, to_seq=to_seq, now_ms=ServiceClock().now_ms()
    )
    document = camt053.write(statement)
    if out:
        try:
            Path(out).write_bytes(document)
        except OSError as error:
            raise ExpectedFailure(f"--out file {out}", f"cannot write it: {file_reason(error)}") from None
        print(f"{out}: {summary(statement)}")
    else:
        sys.stdout.write(document.decode())
    return 0


def summary(statement: Statement) -> str:
    """What the document says, as a person reads it (the document itself keeps minor units)."""
    credits = sum(entry.amount_minor for entry in statement.entries if entry.amount_minor > 0)
    debits = -sum(entry.amount_minor for entry in statement.entries if entry.amount_minor < 0)

    def money(amount: int) -> str:
        return format_amount(statement.currency, amount)

    return (
        f"camt.053 of {statement.account} on {statement.ledger}, journal entries {statement.from_seq} to "
        f"{statement.to_seq}: opening {money(statement.opening_minor)}, {len(statement.entries)} movements "
        f"(credits {money(credits)}, debits {money(debits)}), closing {money(statement.closing_minor)}"
    )
