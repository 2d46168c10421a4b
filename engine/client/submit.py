"""`lockstep submit FILE`, `lockstep hold ID` and `lockstep advices`: a back office's side
of the matching desk. The document (sese.023 or pacs.009) is read and validated here first, so a bad
one is refused before it leaves, then signed with the party's key and sent; the
coordinator's status advices and confirmations come back as ISO 20022 documents,
written to a folder one file each and summarised one line each."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from protocols import canonical
from protocols.bus import Bus, BusTimeout, service_of_coordinator
from protocols.bus.clock import ServiceClock
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure, file_reason, read_bytes
from protocols.iso20022 import read, reasons
from protocols.iso20022.model import FORMATS
from protocols.messages import (
    IDENT_PATTERN,
    Advices,
    HoldInstruction,
    OffsetQueue,
    OffsetReport,
    PathPayment,
    PathStatus,
    QueryAdvices,
    SettlementInstruction,
    SettlementStatus,
)
from protocols.money import format_amount
from protocols.registry import Registry
from protocols.signing import PrivateKey, from_wire, sign

from ..daemon import DaemonError, on_bus

REPLY_TIMEOUT_S = 10
POLL_S = 0.5
FINAL = ("settled", "failed", "cancelled", "rejected")


def format_of(document: bytes) -> str:
    """The message a document is, by its namespace; ValueError if none of ours."""
    for fmt in FORMATS:
        if f"urn:iso:std:iso:20022:tech:xsd:{fmt}".encode() in document:
            return fmt
    raise ValueError(f"not one of {', '.join(FORMATS)} (by its namespace)")


def refusal(error: Rejected) -> str:
    """A refusal for a person: every problem of a document on a line of its own."""
    problems = getattr(error, "problems", ())
    if len(problems) < 2:
        return f"{error.code.value}: {error.field}: {error.reason}"
    lines = [f"{error.code.value}: {len(problems)} problems"]
    lines += [f"  {problem.field}: {problem.reason} [{problem.code}]" for problem in problems]
    return "\n".join(lines)


def instruction_id(reference: str) -> str:
    """The document's own reference where it is a Lockstep id, else a digest of it."""
    return (
        reference if IDENT_PATTERN.fullmatch(reference) else "i-" + hashlib.sha256(reference.encode()).hexdigest()[:32]
    )


class DeskClient:
    """The matching desk as a party reaches it: its replies' signatures checked."""

    def __init__(self, bus: Bus, registry: Registry, coordinator: str, party: str, key: PrivateKey) -> None:
        self.bus, self.registry, self.coordinator, self.party, self.key = bus, registry, coordinator, party, key
        self.clock = ServiceClock()

    async def _ask(
        self,
        payload: bytes,
        answer: type[Advices] | type[OffsetReport] | type[PathStatus] = Advices,
        timeout_s: float = REPLY_TIMEOUT_S,
    ):
        try:
            raw = await self.bus.request(service_of_coordinator(self.coordinator), payload, timeout_s=timeout_s)
        except BusTimeout:
            raise DaemonError(f"coordinator {self.coordinator}", f"did not answer within {timeout_s:g} s") from None
        try:
            signed = from_wire(canonical.decode(raw), allowed=(answer, SettlementStatus))
        except Rejected as error:
            raise DaemonError(f"coordinator {self.coordinator}", f"its answer is not {answer.TYPE}: {error}") from None
        if not signed.signed_by(self.coordinator, self.registry[self.coordinator].public_key):
            raise DaemonError(f"coordinator {self.coordinator}", "the answer is not signed by the coordinator")
        if isinstance(signed.msg, SettlementStatus):
            raise DaemonError(
                f"coordinator {self.coordinator}", f"refused: {signed.msg.reason_code}: {signed.msg.reason}"
            )
        if isinstance(signed.msg, Advices):
            return signed.msg.items
        return signed.msg

    async def submit(self, msg: SettlementInstruction | HoldInstruction) -> list[dict]:
        return await self._ask(sign(msg, (self.party, self.key)).encode())

    async def offset(self, msg: OffsetQueue) -> OffsetReport:
        report = await self._ask(sign(msg, (self.party, self.key)).encode(), OffsetReport)
        assert isinstance(report, OffsetReport)
        return report

    async def pay(self, msg: PathPayment, timeout_s: float) -> PathStatus:
        status = await self._ask(sign(msg, (self.party, self.key)).encode(), PathStatus, timeout_s)
        assert isinstance(status, PathStatus)
        return status

    async def advices(self, from_seq: int) -> list[dict]:
        query = QueryAdvices(f"advices-{self.clock.now_ms()}", self.coordinator, self.party, from_seq, 100)
        return await self._ask(sign(query, (self.party, self.key)).encode())


def summary(item: dict) -> str:
    """One line: the advice's position, status, instruction and any ISO reason."""
    codes, narrative = reasons(item["document"])
    why = f"  {'/'.join(codes)}: {narrative}" if narrative else ""
    return f"#{item['seq']} {item['status'].upper():9} {item['instruction_id']} {item['format']}{why}"


def save(item: dict, party: str, out: Path | None) -> None:
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{party}-{item['seq']:06d}-{item['status']}.xml").write_text(item["document"])
        except OSError as error:
            raise ExpectedFailure(f"--out folder {out}", f"cannot write there: {file_reason(error)}") from None


def load_party(registry_path: str, key_file: str, coordinator: str) -> tuple[Registry, PrivateKey]:
    registry, key = Registry.load(registry_path), PrivateKey.load(key_file)
    if coordinator not in registry:
        raise DaemonError(f"--coordinator {coordinator}", f"not in the registry {registry_path}")
    return registry, key


async def main(
    file: str,
    broker: str,
    registry_path: str,
    coordinator: str,
    party: str,
    key_file: str,
    given_id: str | None,
    wait_s: float,
    out: str | None,
) -> int:
    """Submit; with `wait_s`, follow the instruction's advices until a final one."""
    registry, key = load_party(registry_path, key_file, coordinator)
    document = read_bytes("document", file)
    try:
        fmt = format_of(document)
    except ValueError as error:
        raise DaemonError(f"document {file}", str(error)) from None
    try:
        one = read(fmt, document, registry.identified_by)
    except Rejected as error:
        raise DaemonError(f"document {file}", refusal(error)) from None
    if one.party != party:
        raise DaemonError(f"document {file}", f"instructs for {one.party}, not {party}")
    iid = given_id or instruction_id(one.reference)
    folder = Path(out) if out else None

    async def follow(bus: Bus) -> str:
        desk = DeskClient(bus, registry, coordinator, party, key)
        items = await desk.submit(
            SettlementInstruction(iid, coordinator, party, desk.clock.now_ms(), fmt, document.decode())
        )
        seen, status = 0, "rejected"
        for item in items:
            print(summary(item), flush=True)
            save(item, party, folder)
            seen, status = max(seen, item["seq"]), item["status"]
        with trio.move_on_after(wait_s):
            while status not in FINAL:
                await trio.sleep(POLL_S)
                for item in await desk.advices(seen + 1):
                    seen = item["seq"]
                    save(item, party, folder)
                    if item["instruction_id"] == iid:
                        print(summary(item), flush=True)
                        status = item["status"]
        return status

    return 0 if await on_bus(broker, follow) in ("settled", "matched", "pending", "unmatched") else 1


async def hold(
    broker: str,
    registry_path: str,
    coordinator: str,
    party: str,
    key_file: str,
    instruction: str,
    release: bool,
    given_id: str | None,
) -> int:
    """`lockstep hold`: hold the party's own instruction, or release it; print its latest advice."""
    registry, key = load_party(registry_path, key_file, coordinator)

    async def send(bus: Bus) -> int:
        desk = DeskClient(bus, registry, coordinator, party, key)
        now_ms = desk.clock.now_ms()
        msg = HoldInstruction(given_id or f"hold-{now_ms}", coordinator, party, now_ms, instruction, not release)
        for item in await desk.submit(msg):
            print(summary(item), flush=True)
        return 0

    return await on_bus(broker, send)


async def offset(broker: str, registry_path: str, coordinator: str, party: str, key_file: str) -> int:
    """`lockstep offset`: ask the settlement queue to look now for trades that fund one
    another; print what it released."""
    registry, key = load_party(registry_path, key_file, coordinator)

    async def ask(bus: Bus) -> int:
        desk = DeskClient(bus, registry, coordinator, party, key)
        report = await desk.offset(
            OffsetQueue(f"offset-{desk.clock.now_ms()}", coordinator, party, desk.clock.now_ms())
        )
        released = sum(len(pairs) for pairs in report.sets)
        moved = ", ".join(format_amount(asset, amount) for asset, amount in sorted(report.value.items()))
        saved = ", ".join(format_amount(asset, amount) for asset, amount in sorted(report.saved.items()) if amount)
        print(f"released {released} settlements in {len(report.sets)} linked settlements", flush=True)
        if report.sets:
            print(f"  moved {moved}; liquidity saved {saved or 'none'}")
        for pairs in report.sets:
            print(f"  together: {' '.join(pairs)}")
        return 0

    return await on_bus(broker, ask)


async def fetch(
    broker: str, registry_path: str, coordinator: str, party: str, key_file: str, from_seq: int, out: str | None
) -> int:
    """`lockstep advices`: every advice of a party from a position on."""
    registry, key = load_party(registry_path, key_file, coordinator)

    async def page_through(bus: Bus) -> int:
        desk, position = DeskClient(bus, registry, coordinator, party, key), from_seq
        while items := await desk.advices(position):
            for item in items:
                print(summary(item), flush=True)
                save(item, party, Path(out) if out else None)
            position = items[-1]["seq"] + 1
        return 0

    return await on_bus(broker, page_through)
