"""The matching desk: one-sided ISO 20022 instructions in, matched settlements driven,
status advices and confirmations out, as a CSD's settlement engine does it.

Each counterparty sends its own side (a `settlement_instruction` carrying a sese.023 or
pacs.009 document, signed by it). An instruction waits unmatched until the other side
arrives with every matching field equal (protocols.matching); then both are settled as
one `matched` authority, which each ledger checks again. Every step is written to the
coordinator's database before it is acted on or announced:

    unmatched --(other side agrees)--> matched --(settlement final)--> settled | failed
    unmatched --(its settlement date has passed)--> cancelled
    matched --(a leg lacks securities or cash, or a side is held)--> queued
    queued --(no side held, and its ledgers' entries show both legs provided)--> matched (the next attempt)
    queued --(its settlement date's cut-off has passed)--> failed

A pair that fails for want of securities or cash is recycled, as a CSD does: it waits in
the queue, and each time an entry lands on a ledger it pays on, the queue looks at the
balances of every waiting pair's payers, by priority (sese.023 Prty) then oldest first,
and releases those they now cover (each pair's amounts counted out of what the pairs
before it take). A party may hold its own instruction (sese.023 HldInd, or a
`hold_instruction`) and release it later: a pair with a side held waits in the queue
whatever the balances. A released pair is
tried again as a new attempt (protocols.matching.attempt_id): an attempt's settlement id
is spent once tried, and the next is begun only after the one before it ended with
nothing moved.

Each party gets an advice for each step (sese.024: unmatched with the ISO reason,
matched, pending with LACK or MONY while queued (PREA or PRCY while held), failed with
the reason, cancelled; a
sese.025 confirmation once settled; for a PvP, pacs.002), kept numbered per party and
read with `query_advices`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from protocols import matching, netting
from protocols.authority import LINKED_PREFIX, pair_terms, terms_of
from protocols.bus import BusTimeout
from protocols.bus.client import BadReply
from protocols.canonical import decode, encode
from protocols.errors import Code, Rejected
from protocols.identifiers import CURRENCIES
from protocols.iso20022 import read
from protocols.iso20022.model import (
    Denomination,
    OneSided,
    Part,
    Problem,
)
from protocols.iso20022.sese023 import FACE_FIELD, in_units
from protocols.iso20022.xml import Refused
from protocols.messages import (
    ATTEMPTS_MAX,
    LEGS_MAX,
    LINKED_PAIRS_MAX,
    HoldInstruction,
    Linked,
    Matched,
    OffsetQueue,
    OffsetReport,
    QueryAdvices,
    QueryBalances,
    QueryInfo,
    QuerySettlementAdvices,
    SettlementInstruction,
    SettlementLeg,
    to_body,
)
from protocols.money import format_amount
from protocols.registry import Role
from protocols.settlement import Phase
from protocols.signing import Signed, from_wire

from ..coordinator import Coordinator
from . import offsetting, parts
from .advices import AdviceBook
from .base import Desk
from .calendar import Calendars
from .recycler import Recycler

log = logging.getLogger("lockstep.matching")
ALWAYS_OPEN = Calendars()  # every ledger settles every day, to its end

SETTLING_MAX = 256  # matched settlements driven at once by this desk
OFFSETS_KEPT = 100  # the latest liquidity-saving releases kept to report
RECYCLED = (Code.INSUFFICIENT_FUNDS.value, Code.TIMEOUT.value)  # a try that ended so, moving nothing, is tried again

# the ISO 20022 settlement status reason for a ledger's refusal of a leg
_FAILURE_REASONS = {
    Code.INSUFFICIENT_FUNDS.value: ("LACK", "MONY"),
    Code.TIMEOUT.value: ("LATE", "LATE"),
    Code.LOCK_EXPIRED.value: ("LATE", "LATE"),
    Code.EXPIRY_OUT_OF_RANGE.value: ("LATE", "LATE"),
}


def _instrument(one: OneSided) -> str:
    """The ISIN of a DvP side."""
    isin = one.gives_asset if one.side == "deliver" else one.takes_asset
    assert isin is not None
    return isin


@attrs.frozen
class Side:
    """An instruction as the desk keeps it: the signed message and what its document says."""

    signed: Signed
    one: OneSided

    @property
    def msg(self) -> SettlementInstruction:
        return self.signed.msg


@attrs.define
class Queued:
    """A matched pair waiting in the queue for its payers to hold what its legs pay."""

    pair_id: str
    sides: tuple[Side, Side]
    legs: tuple[SettlementLeg, ...]
    day: str  # its settlement day
    opens_ms: int  # no try before this: the day's start
    cutoff_ms: int  # nor after this: the day's cut-off on its ledgers
    since_ms: int  # when it was first queued: the queue's order, after priority
    priority: int  # the more urgent of its sides' (the lower number)
    held: set[str]  # the parties holding their side
    settled: int  # the trade's units settled in parts so far
    references: frozenset[tuple[str, str]] = frozenset()  # (party, TxId) of each side
    settle_with: frozenset[tuple[str, str]] = frozenset()  # (party, TxId) its parties linked it to
    released: trio.Event = attrs.field(factory=trio.Event)
    expired: bool = False  # set with `released` when it is failed at its cut-off instead

    def candidate(self) -> offsetting.Candidate:
        return offsetting.Candidate(self.pair_id, self.legs, self.priority, self.since_ms)


def _on_hold(side: Side, holders: set[str] | frozenset[str]) -> str:
    """The ISO 20022 reason for a side of a held pair: its own hold, or its counterparty's."""
    return "PREA" if side.msg.party in holders else "PRCY"


def _ones(queued: Queued) -> tuple[OneSided, OneSided]:
    a, b = queued.sides
    return a.one, b.one


def _units(a: Side, b: Side) -> int:
    """A DvP's units of the instrument."""
    return a.one.gives_amount if a.one.side == "deliver" else b.one.gives_amount


def _lacking(leg: SettlementLeg) -> str:
    """The ISO 20022 reason for a leg whose payer lacks what it pays."""
    return "MONY" if leg.asset in CURRENCIES else "LACK"


class MatchingDesk(Desk):
    """Its unit of work: a matched pair, settled by the id of its settlement."""

    messages = (SettlementInstruction, HoldInstruction, QueryAdvices, QuerySettlementAdvices, OffsetQueue)

    def __init__(
        self, coordinator: Coordinator, places: Mapping[str, str] | None = None, calendars: Calendars = ALWAYS_OPEN
    ) -> None:
        """`places`: the ledger that settles each asset, where more than one carries it;
        others are found by asking every registered ledger what it carries. `calendars`:
        each ledger's settlement days and cut-off, and what the queue does at a cut-off."""
        super().__init__(coordinator)
        self.calendars = calendars
        self._book = AdviceBook(self._db, coordinator)
        self._places = dict(places or {})
        self._changed = trio.Event()
        self._matching = trio.Lock()
        self._limit = trio.CapacityLimiter(SETTLING_MAX)
        self._denominations: dict[str, Denomination] = {}
        self._queue: dict[str, Queued] = {}
        self._links: dict[str, trio.Event] = {}  # a linked settlement under way -> set once its pairs are done
        self._wanted: dict[tuple[str, str], set[str]] = {}  # (party, TxId) -> the TxIds of the party's open
        # instructions linked WITH it: a pair holding it settles only together with them
        self._offset_ms = 0  # when the queue last looked for trades that fund one another
        self._looking = trio.Lock()  # one look at a time: the recycler's, or one asked for
        self.offsets: list[offsetting.Released] = []  # what each such look released, the latest last
        self._recycler = Recycler(
            lambda: {leg.ledger for queued in self._queue.values() for leg in queued.legs},
            self._moments,
            self._look,
            coordinator.client,
            coordinator.clock,
        )

    # -- the bus ---------------------------------------------------------------------------

    async def _reply(self, signed: Signed) -> bytes:
        if isinstance(signed.msg, QueryAdvices):  # confidential: asked for by the party itself
            self.coordinator.registry.verify_all(signed)
            self.coordinator.registry.signed_by(signed, (signed.msg.party,))
            return self._book.page(signed.msg.party, signed.msg.from_seq, signed.msg.limit)
        if isinstance(signed.msg, QuerySettlementAdvices):  # or by the supervisor, who sees through
            self.coordinator.registry.verify_all(signed)
            self.coordinator.registry.signed_by(signed, (signed.msg.party,))
            if not self.coordinator.registry.has_role(signed.msg.party, Role.OBSERVER):
                raise Rejected(Code.NOT_AUTHORISED, "party", f"{signed.msg.party!r} does not hold the observer role")
            return self._book.of_settlement(signed.msg.settlement_id)
        if isinstance(signed.msg, OffsetQueue):
            return await self._offset_now(signed)
        async with self._matching:  # one instruction at a time: no side is matched twice
            if isinstance(signed.msg, HoldInstruction):
                return self._set_hold(signed)
            return await self.instruct(signed)

    async def instruct(self, signed: Signed) -> bytes:
        """Take one side; the reply is the advice it earned at once (unmatched or matched,
        or rejected with every problem of its document), or, for an instruction seen
        before, the latest advice it has."""
        msg = self._authenticated(signed)
        row = self._db.execute(
            "SELECT raw FROM instructions WHERE party = ? AND id = ?", (msg.party, msg.id)
        ).fetchone()
        if row is not None:
            if bytes(row[0]) != signed.encode():
                raise Rejected(Code.ID_REUSED, "id", f"instruction {msg.id} of {msg.party} was sent with other content")
            return self._book.latest(msg.party, msg.id)
        try:
            side = Side(signed, await self._sized(self._read(msg)))
        except Refused as refused:
            self._reject(signed, refused.problems)
            return self._book.latest(msg.party, msg.id)
        now_ms = self.coordinator.clock.now_ms()
        _, last_ms = matching.day_window(side.one.settlement_date)
        if now_ms > last_ms:
            raise Rejected(
                Code.EXPIRY_OUT_OF_RANGE, "document", f"its settlement date {side.one.settlement_date} has passed"
            )
        candidates = [
            await self._side(raw)
            for (raw,) in self._db.execute(
                "SELECT raw FROM instructions WHERE state = 'unmatched' AND party = ? AND counterparty = ? "
                "ORDER BY received_ms",
                (side.one.counterparty, side.one.party),
            )
        ]
        found = [(matching.differences(side.one, other.one), other) for other in candidates]
        match = next((other for differences, other in found if not differences), None)
        if match is None:
            self._add_unmatched(side, now_ms, min((d for d, _ in found), key=len, default=None))
        else:
            settlement_id = pair_terms(await self._matched(side, match), None).id
            self._add_matched(side, match, settlement_id, now_ms)
            self._serve(settlement_id)
        self._changed.set()
        return self._book.latest(msg.party, msg.id)

    def _set_hold(self, signed: Signed) -> bytes:
        """Hold or release the party's own instruction, before its pair's next try (a try
        under way goes on); the reply is the instruction's latest advice. The same id
        again changes nothing; with other content it is refused."""
        msg: HoldInstruction = self._authenticated(signed)
        row = self._db.execute("SELECT raw FROM holds WHERE party = ? AND id = ?", (msg.party, msg.id)).fetchone()
        if row is not None:
            if bytes(row[0]) != signed.encode():
                raise Rejected(Code.ID_REUSED, "id", f"hold {msg.id} of {msg.party} was sent with other content")
            return self._book.latest(msg.party, msg.instruction_id)
        found = self._db.execute(
            "SELECT state, settlement_id FROM instructions WHERE party = ? AND id = ?",
            (msg.party, msg.instruction_id),
        ).fetchone()
        if found is None:
            raise Rejected(
                Code.UNKNOWN_INSTRUCTION, "instruction_id", f"{msg.party} has no instruction {msg.instruction_id}"
            )
        state, pair_id = found
        if state not in ("unmatched", "matched", "queued"):
            raise Rejected(Code.INVALID_FIELD, "instruction_id", f"instruction {msg.instruction_id} is {state} already")
        now_ms = self.coordinator.clock.now_ms()
        queued = self._queue.get(pair_id) if pair_id else None
        with self._db:
            self._db.execute(
                "INSERT INTO holds (party, id, raw) VALUES (?, ?, ?)", (msg.party, msg.id, signed.encode())
            )
            self._db.execute(
                "UPDATE instructions SET held = ? WHERE party = ? AND id = ?",
                (int(msg.hold), msg.party, msg.instruction_id),
            )
            if queued is not None:
                holders = queued.held | {msg.party} if msg.hold else queued.held - {msg.party}
                for each in queued.sides:
                    if holders:
                        why = f"held by {', '.join(sorted(holders))}"
                        self._book.advise(each.msg, each.one, "pending", pair_id, _on_hold(each, holders), why, now_ms)
                    else:
                        self._book.advise(
                            each.msg, each.one, "matched", pair_id, "", f"released by {msg.party}", now_ms
                        )
        if queued is not None:
            queued.held = holders
            self._recycler.stir()
        log.info("instruction %s of %s %s", msg.instruction_id, msg.party, "held" if msg.hold else "released")
        return self._book.latest(msg.party, msg.instruction_id)

    def _authenticated(self, signed: Signed) -> Any:
        """The message (an instruction, a hold), signed by its party and for this coordinator."""
        msg = signed.msg
        registry = self.coordinator.registry
        registry.verify_all(signed)
        registry.signed_by(signed, (msg.party,))
        if msg.coordinator != self.coordinator.id:
            raise Rejected(Code.WRONG_LEDGER, "coordinator", f"this is coordinator {self.coordinator.id!r}")
        return msg

    def _read(self, msg: SettlementInstruction) -> OneSided:
        """The document's instruction; Refused, every problem listed, where it cannot
        be settled, and Rejected where it is not the signer's to give."""
        registry = self.coordinator.registry
        try:
            one = read(msg.format, msg.document, registry.identified_by)
        except Refused:
            raise
        except Rejected as error:  # one problem: too large, not well-formed, hostile
            raise Refused(error.code, [Problem(error.field, error.reason)]) from None
        if one.party != msg.party:
            raise Rejected(
                Code.NOT_AUTHORISED, "document", f"the document instructs for {one.party}, signed by {msg.party}"
            )
        if one.counterparty not in registry or one.counterparty == one.party:
            raise Refused(
                Code.UNKNOWN_SIGNER,
                [Problem("document", f"counterparty {one.counterparty!r} is not a registered party", "DEPT")],
            )
        return one

    def _reject(self, signed: Signed, problems: tuple[Problem, ...]) -> None:
        """A document Lockstep cannot settle: kept, so its id answers the same again, with
        a rejected advice giving every problem and its ISO reason code."""
        msg: SettlementInstruction = signed.msg
        now_ms = self.coordinator.clock.now_ms()
        reason = "; ".join(f"{p.field}: {p.reason}" for p in problems)
        with self._db:
            self._db.execute(
                "INSERT INTO instructions (party, id, raw, counterparty, settlement_date, state, settlement_id, "
                "received_ms) VALUES (?, ?, ?, '', '', 'rejected', NULL, ?)",
                (msg.party, msg.id, signed.encode(), now_ms),
            )
            self._book.advise(msg, None, "rejected", None, problems[0].code, reason, now_ms, problems)
        log.info("instruction %s of %s rejected: %s", msg.id, msg.party, reason)

    async def _side(self, raw: bytes) -> Side:
        """A side the desk took before: its document read as it was then."""
        signed = from_wire(decode(raw), allowed=(SettlementInstruction,))
        one = read(signed.msg.format, signed.msg.document, self.coordinator.registry.identified_by)
        return Side(signed, await self._sized(one))

    async def _sized(self, one: OneSided) -> OneSided:
        """A side given as a face amount, in units of its instrument's denomination."""
        if one.face_amount is None:
            return one
        return in_units(one, await self._denomination(_instrument(one)))

    async def _denomination(self, isin: str) -> Denomination:
        """A debt instrument's face value per unit, from the reference data its securities
        ledger keeps; Refused (DQUA) where it has none."""
        if isin not in self._denominations:
            ledger = await self._place(isin)
            client = self.coordinator.client(ledger)
            try:
                info = await client.query(QueryInfo(client.next_query_id(), ledger))
            except (BusTimeout, BadReply):
                raise Rejected(
                    Code.TIMEOUT, "document", f"ledger {ledger} did not give {isin}'s denomination"
                ) from None
            asset = next(held for held in info["assets"] if held["code"] == isin)
            reference = asset.get("reference") or {}
            if "face_value_minor" not in reference:
                raise Refused(
                    Code.INVALID_FIELD,
                    [Problem(FACE_FIELD, f"{isin} has no denomination in its reference data: give units", "DQUA")],
                )
            self._denominations[isin] = Denomination(reference["currency"], reference["face_value_minor"])
        return self._denominations[isin]

    # -- matching --------------------------------------------------------------------------

    async def _matched(
        self, a: Side, b: Side, attempt: int = 0, day: str | None = None, part: Part | None = None
    ) -> dict:
        """The pair as one `matched` authority, for its `attempt` on `day` (None, or its
        intended date: that date), of `part` of the trade (None: all of it)."""
        settle_on = day if day is not None and day != a.one.settlement_date else None
        part_from, part_to = (part.from_units, part.to_units) if part is not None else (0, None)
        first, second = (a, b) if matching.leg_order(a.one, b.one)[0] is a.one else (b, a)
        ledgers = await self._ledgers(a, b)
        signed = (first.signed.wire(), second.signed.wire())
        face_currency = face_value_minor = None
        if a.one.face_amount is not None or b.one.face_amount is not None:
            denomination = await self._denomination(_instrument(a.one))
            face_currency, face_value_minor = denomination.currency, denomination.face_value_minor
        matched = Matched(
            self.coordinator.id,
            ledgers,
            signed,
            face_currency,
            face_value_minor,
            attempt,
            settle_on,
            part_from,
            part_to,
        )
        return to_body(matched)

    async def _place(self, asset: str) -> str:
        if asset not in self._places:
            carriers = []
            for party in self.coordinator.registry:
                if self.coordinator.registry.has_role(party, Role.LEDGER):
                    client = self.coordinator.client(party)
                    try:
                        info = await client.query(QueryInfo(client.next_query_id(), party))
                    except (BusTimeout, BadReply):
                        raise Rejected(
                            Code.TIMEOUT,
                            "document",
                            f"ledger {party} did not say whether it carries "
                            f"{asset}: send again later, or name its ledger in settlement_ledgers",
                        ) from None
                    if any(held["code"] == asset for held in info["assets"]):
                        carriers.append(party)
            if len(carriers) != 1:
                raise Rejected(
                    Code.UNKNOWN_ASSET,
                    "document",
                    f"{asset} is carried by {', '.join(carriers) or 'no ledger'}: "
                    "the coordinator's settlement ledgers must name one",
                )
            self._places[asset] = carriers[0]
        return self._places[asset]

    def _add_unmatched(self, side: Side, now_ms: int, differences: list[matching.Difference] | None) -> None:
        if differences:
            code = differences[0].code
            reason = "; ".join(f"{d.code} {d.field}: {d.reason}" for d in differences)
        else:
            code, reason = "CMIS", f"no matching instruction from {side.one.counterparty} yet"
        with self._db:
            self._insert(side, "unmatched", None, now_ms)
            self._book.advise(side.msg, side.one, "unmatched", None, code, reason, now_ms)

    def _add_matched(self, side: Side, other: Side, settlement_id: str, now_ms: int) -> None:
        """Both sides matched; queued at once, each party told why, where a side is held."""
        holders = {each.msg.party for each in (side, other) if self._held(each)}
        links = [f"{each.msg.party}'s {reference}" for each in (other, side) for reference in each.one.settle_with]
        links += [
            f"{each.msg.party}'s {linking}"
            for each in (other, side)
            for linking in sorted(self._wanted.get((each.msg.party, each.one.reference), ()))
        ]
        state = "queued" if holders or links else "matched"
        with self._db:
            self._insert(side, state, settlement_id, now_ms)
            self._db.execute(
                "UPDATE instructions SET state = ?, settlement_id = ? WHERE party = ? AND id = ?",
                (state, settlement_id, other.msg.party, other.msg.id),
            )
            for each in (other, side):
                self._book.advise(
                    each.msg, each.one, "matched", settlement_id, "", f"matched with {each.one.counterparty}", now_ms
                )
            for each in (other, side) if holders else ():
                why = f"held by {', '.join(sorted(holders))}"
                self._book.advise(each.msg, each.one, "pending", settlement_id, _on_hold(each, holders), why, now_ms)
            for each in (other, side) if links and not holders else ():
                why = f"linked: settles together with {', '.join(links)}"
                self._book.advise(each.msg, each.one, "pending", settlement_id, "LINK", why, now_ms)

    def _held(self, side: Side) -> bool:
        row = self._db.execute(
            "SELECT held FROM instructions WHERE party = ? AND id = ?", (side.msg.party, side.msg.id)
        ).fetchone()
        return bool(row[0]) if row is not None else side.one.hold

    def _want(self, side: Side, wanted: bool) -> None:
        """Note (or forget, once it is done) what an open instruction is linked WITH."""
        for reference in side.one.settle_with:
            linking = self._wanted.setdefault((side.msg.party, reference), set())
            (linking.add if wanted else linking.discard)(side.one.reference)
            if not linking:
                del self._wanted[(side.msg.party, reference)]

    def _insert(self, side: Side, state: str, settlement_id: str | None, now_ms: int) -> None:
        self._want(side, True)
        self._db.execute(
            "INSERT INTO instructions (party, id, raw, counterparty, settlement_date, state, settlement_id, "
            "received_ms, held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                side.msg.party,
                side.msg.id,
                side.signed.encode(),
                side.one.counterparty,
                side.one.settlement_date,
                state,
                settlement_id,
                now_ms,
                int(side.one.hold),
            ),
        )

    # -- settling --------------------------------------------------------------------------

    async def _carry_out(self, settlement_id: str) -> None:
        """Settle a matched pair, trying again each time the queue releases it: again
        after a restart too (idempotent: the coordinator's journal knows what each
        attempt did). Each try is on the pair's settlement day, before its cut-off; a
        try the queue released together with other pairs is their linked settlement's."""
        if settlement_id.startswith(LINKED_PREFIX):
            return await self._settle_linked(settlement_id)
        a, b = await self._pair(settlement_id)
        while True:
            state, attempt, day, settled, part_to, link_id = self._db.execute(
                "SELECT state, attempt, settle_on, settled_units, part_to, link_id FROM instructions "
                "WHERE party = ? AND id = ?",
                (a.msg.party, a.msg.id),
            ).fetchone()
            if state not in ("matched", "queued"):
                return
            if link_id is not None:
                done = self._links.setdefault(link_id, trio.Event())
                self._serve(link_id)
                await done.wait()
                continue
            if state == "queued":
                queued = await self._enqueue(settlement_id, a, b)
                await queued.released.wait()
                if queued.expired:
                    return
                continue
            ledgers = await self._ledgers(a, b)
            day = self._day(a, b, ledgers, day)
            if self.coordinator.clock.now_ms() > self.calendars.cutoff_ms(ledgers, day):
                if not self._roll(a, b, settlement_id, ledgers, day, "matched past its cut-off"):
                    return
                continue
            part = self._part(a, b, settled, part_to)
            auth = await self._matched(a, b, attempt, day, part)
            async with self._limit:
                try:
                    record = await self.coordinator.settle(auth)
                except Rejected as error:  # refused before any leg moved (say, its date has passed)
                    why = f"{error.field}: {error.reason}"
                    self._finish(a, b, settlement_id, None, "failed", error.code.value, why)
                    return
            if record.phase is Phase.SETTLED:
                if part is not None and part.to_units < _units(a, b):
                    self._part_settled(a, b, settlement_id, attempt + 1, part, record.steps[-1][1])
                    continue
                self._finish(a, b, settlement_id, record.steps[-1][1], "settled", "", "", part=part)
                return
            if not self._recyclable(record, attempt):
                self._finish(a, b, settlement_id, None, record.phase.value, record.reason_code, record.reason)
                return
            await self._hold(a, b, settlement_id, attempt + 1, terms_of(auth, None).legs, record.reason)

    async def _pair(self, pair_id: str) -> tuple[Side, Side]:
        raws = self._db.execute("SELECT raw FROM instructions WHERE settlement_id = ? ORDER BY party", (pair_id,))
        a, b = [await self._side(raw) for (raw,) in raws.fetchall()]
        return a, b

    async def _settle_linked(self, link_id: str) -> None:
        """Settle the pairs the queue released together, as the linked settlement it
        recorded: each pair's try settles, or none does and each goes back to the queue
        (or fails) as it would alone, its outcome and its leaving the link in one
        transaction. The pairs' tasks wait for this one."""
        (raw,) = self._db.execute("SELECT auth FROM links WHERE id = ?", (link_id,)).fetchone()
        auth = decode(bytes(raw))
        try:
            async with self._limit:
                record = await self.coordinator.settle(auth)
        except Rejected as error:  # refused before any leg moved
            record, code, why = None, error.code.value, f"{error.field}: {error.reason}"
        moved_nothing = record is None or record.phase in (Phase.FAILED, Phase.ROLLED_BACK)
        for matched in auth["pairs"]:
            terms = pair_terms(matched, None)
            pair_id = matching.pair_of(terms.id)
            a, b = await self._pair(pair_id)
            if self._link_of(a) != link_id:
                continue  # done before a restart
            attempt = matched.get("attempt", 0)
            if record is not None and record.phase is Phase.SETTLED:
                self._finish(a, b, pair_id, record.steps[-1][1], "settled", "", f"linked settlement {link_id}")
            elif (record is not None and self._recyclable(record, attempt)) or (
                moved_nothing and self._offset_only(a, b, attempt)
            ):
                # recycled as it would be alone; and a pair only the queue put in the set, for
                # whatever failed the set having moved nothing, is tried again alone or in another
                reason = f"linked settlement {link_id}: {record.reason if record is not None else why}"
                await self._hold(a, b, pair_id, attempt + 1, terms.legs, reason)
            elif record is None:
                self._finish(a, b, pair_id, None, "failed", code, why)
            else:
                self._finish(a, b, pair_id, None, record.phase.value, record.reason_code, record.reason)
        log.info(
            "linked settlement %s of %d pairs: %s", link_id, len(auth["pairs"]), record.phase.value if record else code
        )
        self._links.pop(link_id, trio.Event()).set()

    def _offset_only(self, a: Side, b: Side, attempt: int) -> bool:
        """A pair no party linked (the queue's liquidity saving put it in a set) that may be tried again."""
        linked = any(side.one.settle_with or (side.msg.party, side.one.reference) in self._wanted for side in (a, b))
        return not linked and attempt < ATTEMPTS_MAX

    def _link_of(self, side: Side) -> str | None:
        row = self._db.execute(
            "SELECT link_id FROM instructions WHERE party = ? AND id = ?", (side.msg.party, side.msg.id)
        ).fetchone()
        return row[0]

    def _part(self, a: Side, b: Side, settled: int, part_to: int | None) -> Part | None:
        """The units this try moves: the part the queue released, or all that remain
        once a part has settled; None for the whole trade."""
        if part_to is None and not settled:
            return None
        return Part(settled, part_to if part_to is not None else _units(a, b))

    def _part_settled(self, a: Side, b: Side, pair_id: str, attempt: int, part: Part, settled_ms: int) -> None:
        """A part settled: each party confirmed it (sese.025 PAIN), and told what remains,
        pending (PART); the rest waits in the queue for its next try."""
        now_ms = self.coordinator.clock.now_ms()
        units = _units(a, b)
        why = f"{part.to_units} of {units} units settled, {units - part.to_units} remain"
        with self._db:
            self._update(
                (a, b), "state = 'queued', attempt = ?, settled_units = ?, part_to = NULL", attempt, part.to_units
            )
            for side in (a, b):
                self._book.confirm(side.msg, side.one, pair_id, settled_ms, now_ms, part)
                self._book.advise(side.msg, side.one, "pending", pair_id, "PART", why, now_ms)
        log.info("matched settlement %s: %s", pair_id, why)

    async def _ledgers(self, a: Side, b: Side) -> tuple[str, ...]:
        """The ledgers the pair pays on, in leg order (one, free of payment)."""
        first, second = (a, b) if matching.leg_order(a.one, b.one)[0] is a.one else (b, a)
        paid = [side.one.gives_asset for side in (first, second) if side.one.gives_asset is not None]
        return tuple([await self._place(asset) for asset in paid])

    def _day(self, a: Side, b: Side, ledgers: tuple[str, ...], day: str | None) -> str:
        """The pair's settlement day: as recorded, else its first on all its ledgers,
        recorded now."""
        if day is None:
            day = self.calendars.day_of(ledgers, a.one.settlement_date) or a.one.settlement_date
            self._set_day(a, b, day)
        return day

    def _set_day(self, a: Side, b: Side, day: str) -> None:
        with self._db:
            self._update((a, b), "settle_on = ?", day)

    def _update(self, sides: tuple[Side, ...], assignments: str, *values: object) -> None:
        """Set these columns of each side's instruction, in the transaction under way."""
        self._db.executemany(
            f"UPDATE instructions SET {assignments} WHERE party = ? AND id = ?",
            [(*values, side.msg.party, side.msg.id) for side in sides],
        )

    def _roll(self, a: Side, b: Side, pair_id: str, ledgers: tuple[str, ...], day: str, why: str) -> bool:
        """Past the cut-off of `day`: recycled to its next settlement day (True), where
        the desk recycles and the pair has not waited its days out; else failed, LATE."""
        following = self.calendars.next_day(ledgers, a.one.settlement_date, day)
        if following is not None:
            self._set_day(a, b, following)
            log.info("matched settlement %s recycled to %s: %s", pair_id, following, why)
            return True
        self._finish(a, b, pair_id, None, "failed", Code.EXPIRY_OUT_OF_RANGE.value, f"{why} on {day}", "LATE")
        return False

    def _recyclable(self, record, attempt: int) -> bool:
        """Whether a failed attempt goes back to the queue: it moved nothing, for want of
        securities or cash or of a ledger's answer in time (a ledger down, a partition),
        and it may be tried again (the queue sees to its cut-off)."""
        return (
            record.phase in (Phase.FAILED, Phase.ROLLED_BACK)
            and record.reason_code in RECYCLED
            and attempt < ATTEMPTS_MAX
        )

    async def _hold(
        self, a: Side, b: Side, pair_id: str, attempt: int, legs: tuple[SettlementLeg, ...], reason: str
    ) -> None:
        """Queue the pair for its next attempt, and tell each party why it waits: LACK
        where the securities are short, MONY where the cash is, as its ledgers say now;
        OTHR where neither is (a ledger that did not answer in time, or provided since:
        the queue releases it at its first look)."""
        held = await self._available({(leg.ledger, leg.from_account) for leg in legs})
        short = [leg for leg in legs if held.get((leg.ledger, leg.from_account, leg.asset), 0) < leg.amount]
        code = _lacking(short[0]) if short else "OTHR"
        now_ms = self.coordinator.clock.now_ms()
        with self._db:
            self._update((a, b), "state = 'queued', attempt = ?, link_id = NULL", attempt)
            for side in (a, b):
                self._book.advise(side.msg, side.one, "pending", pair_id, code, f"queued: {reason}", now_ms)
        log.info("matched settlement %s queued for attempt %d: %s", pair_id, attempt, reason)

    async def _enqueue(self, pair_id: str, a: Side, b: Side) -> Queued:
        """The pair in the queue, where the recycler looks for what it lacks."""
        attempt, day, settled = self._db.execute(
            "SELECT attempt, settle_on, settled_units FROM instructions WHERE party = ? AND id = ?",
            (a.msg.party, a.msg.id),
        ).fetchone()
        legs = pair_terms(await self._matched(a, b, attempt, part=self._part(a, b, settled, None)), None).legs
        day = self._day(a, b, tuple(leg.ledger for leg in legs), day)
        now_ms = self.coordinator.clock.now_ms()
        priority = min(a.one.priority, b.one.priority)
        holders = {side.msg.party for side in (a, b) if self._held(side)}
        references = frozenset((side.msg.party, side.one.reference) for side in (a, b))
        links = frozenset((side.msg.party, reference) for side in (a, b) for reference in side.one.settle_with)
        queued = Queued(pair_id, (a, b), legs, day, 0, 0, now_ms, priority, holders, settled, references, links)
        self._on_day(queued, day)
        self._queue[pair_id] = queued
        self._recycler.stir()
        return queued

    def _on_day(self, queued: Queued, day: str) -> None:
        ledgers = [leg.ledger for leg in queued.legs]
        queued.day, queued.opens_ms = day, matching.day_window(day)[0]
        queued.cutoff_ms = self.calendars.cutoff_ms(ledgers, day)

    def _finish(
        self,
        a: Side,
        b: Side,
        settlement_id: str,
        settled_ms: int | None,
        outcome: str,
        code: str,
        reason: str,
        iso: str | Mapping[str, str] | None = None,
        part: Part | None = None,
    ) -> None:
        """Each party's last advice, and the instructions' end state, in one transaction;
        `iso`: the ISO reason for both parties, where it is not the one `code` maps to."""
        now_ms = self.coordinator.clock.now_ms()
        for side in (a, b):
            self._want(side, False)
        with self._db:
            self._update((a, b), "state = ?, link_id = NULL", "settled" if settled_ms is not None else "failed")
            for side in (a, b):
                if settled_ms is not None:
                    self._book.confirm(side.msg, side.one, settlement_id, settled_ms, now_ms, part)
                else:
                    why = iso.get(side.msg.party) if isinstance(iso, Mapping) else iso
                    why = why or _FAILURE_REASONS.get(code, ("OTHR", "OTHR"))[side.one.gives_asset in CURRENCIES]
                    self._book.advise(
                        side.msg, side.one, "failed", settlement_id, why, f"{outcome}: {code}: {reason}", now_ms
                    )
        log.info("matched settlement %s %s", settlement_id, outcome)

    # -- running -----------------------------------------------------------------------------

    async def _resume(self) -> None:
        for (raw,) in self._db.execute(
            "SELECT raw FROM instructions WHERE state IN ('unmatched', 'matched', 'queued')"
        ).fetchall():
            self._want(await self._side(raw), True)
        for settlement_id, state in self._db.execute(
            "SELECT DISTINCT settlement_id, state FROM instructions WHERE state IN ('matched', 'queued')"
        ).fetchall():
            log.info("resuming %s settlement %s", state, settlement_id)
            self._serve(settlement_id)

    async def _work(self) -> None:
        """Cancel what stays unmatched past its settlement date; recycle what is queued."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._recycler.run)
            await self._cancel_unmatched()

    # -- the queue ---------------------------------------------------------------------------

    async def _offset_now(self, signed: Signed) -> bytes:
        """Look now, liquidity saving included, for the coordinator's operator or the
        supervisor; the reply says what it released."""
        msg: OffsetQueue = signed.msg
        registry = self.coordinator.registry
        registry.verify_all(signed)
        registry.signed_by(signed, (msg.party,))
        if msg.party != self.coordinator.id and not registry.has_role(msg.party, Role.OBSERVER):
            raise Rejected(
                Code.NOT_AUTHORISED, "party", f"{msg.party!r} is neither this coordinator nor holds the observer role"
            )
        found = await self._look(offset=True) or offsetting.Released(())
        report = OffsetReport(
            self.coordinator.id,
            self.coordinator.clock.now_ms(),
            tuple(tuple(c.id for c in each) for each in found.sets),
            found.value(),
            found.saved(),
        )
        return self.coordinator.sign(report)

    async def _look(self, offset: bool = False) -> offsetting.Released | None:
        async with self._looking:
            return await self._look_once(offset)

    async def _look_once(self, offset: bool) -> offsetting.Released | None:
        """Fail what is past its cut-off; release, by priority then oldest first, each
        pair whose payers hold what it pays (or a part of it) after the pairs released
        before it, and each set of pairs their parties linked once all are matched and
        their payers hold what they pay net; then, at its interval, look for pairs that
        fund one another. Each look's releases in one transaction."""
        now_ms = self.coordinator.clock.now_ms()
        waiting = sorted(self._queue.values(), key=lambda queued: (queued.priority, queued.since_ms, queued.pair_id))
        held = await self._available({(leg.ledger, leg.from_account) for queued in waiting for leg in queued.legs})
        released: list[tuple[Queued, int | None]] = []
        ready: list[Queued] = []  # waiting for nothing but what their payers hold
        for queued in waiting:
            short = [leg for leg in queued.legs if held.get((leg.ledger, leg.from_account, leg.asset), 0) < leg.amount]
            if queued.cutoff_ms < now_ms:
                self._expire(queued, short)
            elif (
                queued.held or queued.opens_ms > now_ms or queued.settle_with or queued.references & self._wanted.keys()
            ):
                continue  # held, not its day yet, or linked by its parties: settles only with the others
            elif not short:
                for leg in queued.legs:
                    held[(leg.ledger, leg.from_account, leg.asset)] -= leg.amount
                released.append((queued, None))
            elif (part := self._part_of(queued, held)) is not None:
                for leg, amount in zip(queued.legs, parts.amounts(_ones(queued), queued.legs, part), strict=True):
                    held[(leg.ledger, leg.from_account, leg.asset)] -= amount
                released.append((queued, part.to_units))
            elif not queued.settled:
                ready.append(queued)
        groups = self._linked_sets(now_ms, held)
        interval = self.calendars.offset_interval_ms
        found = None
        if offset or (interval and ready and now_ms >= self._offset_ms + interval):
            self._offset_ms = now_ms
            candidates = [queued.candidate() for queued in ready]  # searched off the loop: a large queue takes a while
            found = await trio.to_thread.run_sync(offsetting.search, candidates, held)
            # a side held while the search ran keeps its pair's set waiting (the hold comes first)
            found = offsetting.Released(
                tuple(each for each in found.sets if not any(self._queue[c.id].held for c in each))
            )
            if found.sets:
                self._offsetting_found(found)
            groups += [[self._queue[c.id] for c in each] for each in found.sets]
        linked = [made for group in groups if (made := await self._linked(group)) is not None]
        # a side held while the look waited (for balances, the search) keeps its pair waiting: the hold comes first
        self._release(
            [(q, part) for q, part in released if not q.held],
            [made for made in linked if not any(q.held for q in made[2])],
        )
        return found

    def _linked_sets(self, now_ms: int, held: dict[tuple[str, str, str], int]) -> list[list[Queued]]:
        """The sets of pairs their parties linked that may settle now: every pair of
        the set matched, none held, all on one day, their payers holding what the set
        pays net (counted out of `held`)."""
        by_reference = {reference: q for q in self._queue.values() for reference in q.references}
        linking: dict[tuple[str, str], list[Queued]] = {}  # a reference -> the pairs linked to it
        for q in self._queue.values():
            for reference in q.settle_with:
                linking.setdefault(reference, []).append(q)
        seen: set[str] = set()
        sets = []
        for queued in sorted(self._queue.values(), key=lambda q: (q.priority, q.since_ms, q.pair_id)):
            if queued.pair_id in seen or not queued.settle_with:
                continue
            found, todo, complete = {queued.pair_id: queued}, [queued], True
            while todo:
                current = todo.pop()
                linked = [by_reference.get(reference) for reference in current.settle_with]
                linked += [q for reference in current.references for q in linking.get(reference, ())]
                linked += [by_reference.get(reference) for reference in self._linking_with(current)]
                for other in linked:
                    if other is None:
                        complete = False  # a linked instruction not matched yet
                    elif other.pair_id not in found:
                        found[other.pair_id] = other
                        todo.append(other)
            seen |= found.keys()
            group = list(found.values())
            legs = [leg for q in group for leg in q.legs]
            if (
                complete
                and 2 <= len(group) <= LINKED_PAIRS_MAX
                and not any(q.held or q.settled or q.opens_ms > now_ms or q.cutoff_ms < now_ms for q in group)
                and len(netting.net(legs)) <= LEGS_MAX
                and len({q.day for q in group}) == 1
                and not netting.shortfalls(legs, held)
            ):
                for position, amount in netting.outflows(legs).items():
                    held[position] -= amount
                sets.append(group)
        return sets

    def _offsetting_found(self, found: offsetting.Released) -> None:
        value = ", ".join(format_amount(asset, amount) for asset, amount in sorted(found.value().items()))
        saved = ", ".join(format_amount(asset, amount) for asset, amount in sorted(found.saved().items()) if amount)
        log.info(
            "liquidity saving: %d settlements in %d sets released, %s; liquidity saved %s",
            found.count,
            len(found.sets),
            value,
            saved or "none",
        )
        self.offsets = [*self.offsets[-(OFFSETS_KEPT - 1) :], found]
        self.coordinator.on_offset(found.count, found.value(), found.saved())

    async def _linked(self, group: list[Queued]) -> tuple[str, bytes, list[Queued]] | None:
        """A set of pairs as one linked settlement: its id and authority; None, logged,
        for a set no linked authority can carry (one account named as two parties', say):
        its pairs wait, and fail at their cut-off."""
        ordered = sorted(group, key=lambda q: q.pair_id)
        pairs = []
        for queued in ordered:
            a, b = queued.sides
            attempt, day = self._db.execute(
                "SELECT attempt, settle_on FROM instructions WHERE party = ? AND id = ?", (a.msg.party, a.msg.id)
            ).fetchone()
            pairs.append(await self._matched(a, b, attempt, day))
        auth = to_body(Linked(self.coordinator.id, tuple(pairs)))
        try:
            return terms_of(auth, None).id, encode(auth), ordered
        except Rejected as error:
            log.warning("pairs %s cannot settle together: %s", ", ".join(q.pair_id for q in ordered), error)
            return None

    async def _available(self, accounts: set[tuple[str, str]]) -> dict[tuple[str, str, str], int]:
        """What each account holds available, per asset; an account its ledger does not
        say is taken to hold nothing (asked again at the next look)."""
        held: dict[tuple[str, str, str], int] = {}

        async def ask(ledger: str, account: str) -> None:
            client = self.coordinator.client(ledger)
            try:
                answer = await client.query(QueryBalances(client.next_query_id(), ledger, account))
            except (BusTimeout, BadReply, Rejected) as error:
                log.debug("the queue could not ask %s for %s: %s", ledger, account, error)
                return
            for asset, balance in answer["balances"].items():
                held[(ledger, account, asset)] = balance["available"]

        async with trio.open_nursery() as nursery:
            for ledger, account in sorted(accounts):
                nursery.start_soon(ask, ledger, account)
        return held

    def _part_of(self, queued: Queued, held: parts.Held) -> Part | None:
        least = self.calendars.partial_min_units
        return parts.best(_ones(queued), queued.legs, queued.settled, held, least)

    def _moments(self) -> list[int]:
        """When a waiting pair's cut-off passes, its day opens, or liquidity saving is
        due: the queue looks then."""
        now_ms = self.coordinator.clock.now_ms()
        moments = [queued.cutoff_ms + 1 for queued in self._queue.values()]
        if self.calendars.offset_interval_ms and self._queue:  # the next look for trades that fund one another
            moments.append(self._offset_ms + self.calendars.offset_interval_ms)
        return moments + [queued.opens_ms for queued in self._queue.values() if queued.opens_ms > now_ms]

    def _release(
        self, released: list[tuple[Queued, int | None]], linked: list[tuple[str, bytes, list[Queued]]]
    ) -> None:
        """Out of the queue, each to its next try: of all that remains, or of the units
        up to its `part_to`; or, for a set released together, of their linked settlement."""
        with self._db:
            self._db.executemany(
                "UPDATE instructions SET state = 'matched', part_to = ? "
                "WHERE party = ? AND id = ? AND state = 'queued'",
                [(part_to, side.msg.party, side.msg.id) for queued, part_to in released for side in queued.sides],
            )
            self._db.executemany("INSERT INTO links (id, auth) VALUES (?, ?)", [(i, auth) for i, auth, _ in linked])
            self._db.executemany(
                "UPDATE instructions SET state = 'matched', link_id = ? "
                "WHERE party = ? AND id = ? AND state = 'queued'",
                [
                    (link_id, side.msg.party, side.msg.id)
                    for link_id, _, group in linked
                    for q in group
                    for side in q.sides
                ],
            )
        for queued in [queued for queued, _ in released] + [q for _, _, group in linked for q in group]:
            del self._queue[queued.pair_id]
            queued.released.set()

    def _expire(self, queued: Queued, short: list[SettlementLeg]) -> None:
        """At its cut-off: recycled to its next settlement day where the desk recycles
        and it has days left; else failed, with what was still lacking, or who still
        held it."""
        a, b = queued.sides
        following = self.calendars.next_day([leg.ledger for leg in queued.legs], a.one.settlement_date, queued.day)
        if following is not None:
            self._set_day(a, b, following)
            self._on_day(queued, following)
            log.info("queued settlement %s recycled to %s", queued.pair_id, following)
            return
        cutoff = f"not settled by its cut-off on {queued.day}"
        if queued.settled:
            cutoff += f" ({queued.settled} of {_units(a, b)} units settled in parts before it)"
        if queued.held:
            holders = ", ".join(sorted(queued.held))
            why = {side.msg.party: _on_hold(side, queued.held) for side in (a, b)}
            self._finish(a, b, queued.pair_id, None, "failed", "held", f"{cutoff}: held by {holders}", why)
        elif unmatched := self._links_unmatched(queued):
            reason = f"{cutoff}: linked with {', '.join(unmatched)}, not matched and queued with it"
            self._finish(a, b, queued.pair_id, None, "failed", Code.NOT_AUTHORISED.value, reason, "LINK")
        else:
            lacking = short or list(queued.legs)
            reason = "; ".join(
                f"{leg.from_account} on {leg.ledger} lacked {format_amount(leg.asset, leg.amount)}" for leg in lacking
            )
            code = Code.INSUFFICIENT_FUNDS.value
            self._finish(a, b, queued.pair_id, None, "failed", code, f"{cutoff}: {reason}", _lacking(lacking[0]))
        del self._queue[queued.pair_id]
        queued.expired = True
        queued.released.set()

    def _links_unmatched(self, queued: Queued) -> list[str]:
        """The instructions linked with a queued pair, either way, not waiting in the queue."""
        waiting = {reference for other in self._queue.values() for reference in other.references}
        needed = set(queued.settle_with) | set(self._linking_with(queued))
        return [f"{party}'s {reference}" for party, reference in sorted(needed - waiting)]

    def _linking_with(self, queued: Queued) -> list[tuple[str, str]]:
        """(party, TxId) of each open instruction linked WITH one of the pair's sides."""
        return [
            (party, linking)
            for party, reference in queued.references
            for linking in self._wanted.get((party, reference), ())
        ]

    async def _cancel_unmatched(self) -> None:
        while True:
            row = self._db.execute("SELECT min(settlement_date) FROM instructions WHERE state = 'unmatched'").fetchone()
            cutoff = self.coordinator.clock.trio_time_at(matching.day_window(row[0])[1] + 1) if row[0] else float("inf")
            with trio.move_on_at(cutoff):
                await self._changed.wait()
            self._changed = trio.Event()
            await self._cancel_past(self.coordinator.clock.now_ms())

    async def _cancel_past(self, now_ms: int) -> None:
        stale = [
            await self._side(raw)
            for (raw, date) in self._db.execute(
                "SELECT raw, settlement_date FROM instructions WHERE state = 'unmatched'"
            ).fetchall()
            if matching.day_window(date)[1] < now_ms
        ]
        with self._db:
            for side in stale:
                self._db.execute(
                    "UPDATE instructions SET state = 'cancelled' WHERE party = ? AND id = ?",
                    (side.msg.party, side.msg.id),
                )
                why = f"unmatched past its settlement date {side.one.settlement_date}"
                self._book.advise(side.msg, side.one, "cancelled", None, "CANS", why, now_ms)
        for side in stale:
            self._want(side, False)
            log.info(
                "instruction %s of %s cancelled: unmatched past %s",
                side.msg.id,
                side.msg.party,
                side.one.settlement_date,
            )
