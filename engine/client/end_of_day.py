"""`lockstep end-of-day`: a participant's end-of-day report. For each cash account it
names, a camt.053 statement of the day's bookings, read from its ledger's journal and
checked; and, for each of its instructions still open at the matching desk (unmatched,
matched, or pending in the settlement queue), its latest status advice (sese.024, or
pacs.002 for a PvP), as the desk holds it when the report is made."""

from __future__ import annotations

from pathlib import Path

from protocols.bus import Bus
from protocols.bus.client import LedgerClient
from protocols.bus.clock import ServiceClock
from protocols.failures import ExpectedFailure, file_reason
from protocols.iso20022 import camt053
from protocols.matching import day_window

from ..daemon import DaemonError, on_bus
from .statement import read_entries, statement_of
from .statement import summary as statement_summary
from .submit import DeskClient, load_party, summary

OPEN = ("unmatched", "matched", "pending")  # an instruction's statuses before its last


def cash_account(text: str) -> tuple[str, str, str]:
    """`LEDGER:ACCOUNT:CCY`, as --cash takes it."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{text!r} is not LEDGER:ACCOUNT:CCY")
    return parts[0], parts[1], parts[2]


def open_instructions(items: list[dict]) -> list[dict]:
    """The latest advice of each instruction whose latest is not final, oldest first."""
    latest: dict[str, dict] = {}
    for item in items:
        latest[item["instruction_id"]] = item
    return sorted((item for item in latest.values() if item["status"] in OPEN), key=lambda item: item["seq"])


async def main(
    broker: str,
    registry_path: str,
    coordinator: str,
    party: str,
    key_file: str,
    date: str,
    cash: list[tuple[str, str, str]],
    out: str,
) -> int:
    registry, key = load_party(registry_path, key_file, coordinator)
    folder = Path(out)
    start_ms, end_ms = day_window(date)
    for ledger, _, _ in cash:
        if ledger not in registry:
            raise DaemonError(f"--cash {ledger}", f"not in the registry {registry_path}")

    async def report(bus: Bus) -> list[tuple[str, bytes, str]]:
        written = []
        for ledger, account, currency in cash:
            entries = await read_entries(LedgerClient(bus, ledger, registry[ledger].public_key))
            day = [entry.seq for entry in entries if start_ms <= entry.time_ms <= end_ms]
            first = day[0] if day else next((e.seq for e in entries if e.time_ms > end_ms), len(entries))
            statement = statement_of(
                entries,
                ledger,
                account,
                currency,
                from_seq=first,
                to_seq=day[-1] if day else first - 1,
                now_ms=ServiceClock().now_ms(),
            )
            name = f"{party}-{date}-camt053-{ledger}-{account}-{currency}.xml"
            written.append((name, camt053.write(statement), statement_summary(statement)))
        desk, items, position = DeskClient(bus, registry, coordinator, party, key), [], 0
        while page := await desk.advices(position):
            items += page
            position = page[-1]["seq"] + 1
        for item in open_instructions(items):
            name = f"{party}-{date}-open-{item['instruction_id']}-{item['status']}.xml"
            written.append((name, item["document"].encode(), summary(item)))
        return written

    written = await on_bus(broker, report)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, document, said in written:
            (folder / name).write_bytes(document)
            print(f"{name}: {said}", flush=True)
    except OSError as error:
        raise ExpectedFailure(f"--out folder {folder}", f"cannot write there: {file_reason(error)}") from None
    return 0
